/**
 * checksum — an order-independent fingerprint of a table's rows, the same on
 * source and target when (and, barring a 2^-60 collision, only when) they
 * hold the same rows.
 *
 * Each row is rendered as text (`t::text` of the data columns, in the session
 * settings of conn.ts, so both sides print values identically), hashed with
 * md5, and the first 60 bits are summed as numeric (no overflow). Generated
 * columns are left out: the target computes them itself.
 */
import type pg from 'pg';
import { qi, qn } from './conn';

export interface TableFingerprint {
  rows: number;
  checksum: string;
}

export function checksumSql(schema: string, name: string, columns: string[]): string {
  const row = `ROW(${columns.map((c) => `t.${qi(c)}`).join(', ')})::text`;
  return `SELECT count(*)::bigint AS rows,
    coalesce(sum(('x' || substr(md5(${row}), 1, 15))::bit(60)::bigint::numeric), 0)::text AS checksum
    FROM ONLY ${qn(schema, name)} AS t`;
}

export async function tableFingerprint(client: pg.Client, schema: string, name: string, columns: string[]): Promise<TableFingerprint> {
  const r = await client.query(checksumSql(schema, name, columns));
  return { rows: Number(r.rows[0].rows), checksum: r.rows[0].checksum };
}

export async function tableRowCount(client: pg.Client, schema: string, name: string): Promise<number> {
  const r = await client.query(`SELECT count(*)::bigint AS n FROM ONLY ${qn(schema, name)}`);
  return Number(r.rows[0].n);
}
