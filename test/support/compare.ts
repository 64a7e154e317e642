/**
 * Compare source and target table by table: row count and an
 * order-independent checksum of all data columns (agent/engine/checksum.ts), with
 * the same session settings the agent uses.
 */
import assert from 'node:assert/strict';
import pg from 'pg';
import { SESSION_OPTIONS } from '../../agent/engine/conn';
import { tableFingerprint } from '../../agent/engine/checksum';
import type { Cluster } from '../../dev/testbed';
import { formatLsn, parseLsn, type Lsn } from '../../agent/engine/lsn';

export async function sessionClient(c: Cluster, database: string): Promise<pg.Client> {
  const client = new pg.Client({ ...c.endpoint(database), ssl: false, options: SESSION_OPTIONS });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

/** Data tables (ordinary + leaf partitions) outside system/pgferry schemas, tables without columns included. */
export async function listDataTables(c: pg.Client): Promise<Array<{ schema: string; name: string; columns: string[] }>> {
  const r = await c.query(`SELECT n.nspname AS schema, c.relname AS name,
      coalesce(array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attgenerated = ''), '{}') AS columns
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgferry') AND n.nspname NOT LIKE 'pg\\_%'
    GROUP BY 1, 2 ORDER BY 1, 2`);
  return r.rows;
}

/** Assert every source data table equals its target twin; returns the tables compared. */
export async function assertSameData(source: Cluster, target: Cluster, database: string): Promise<string[]> {
  const s = await sessionClient(source, database);
  const t = await sessionClient(target, database);
  try {
    return await assertSameTables(s, t);
  } finally {
    await s.end();
    await t.end();
  }
}

/** The same over two open clients (source first); returns `schema.table` names compared. */
export async function assertSameTables(s: pg.Client, t: pg.Client): Promise<string[]> {
  const tables = await listDataTables(s);
  assert.ok(tables.length > 0, 'no tables to compare');
  const diffs: string[] = [];
  for (const tb of tables) {
    const [a, b] = await Promise.all([tableFingerprint(s, tb.schema, tb.name, tb.columns), tableFingerprint(t, tb.schema, tb.name, tb.columns)]);
    if (a.rows !== b.rows || a.checksum !== b.checksum)
      diffs.push(`${tb.schema}.${tb.name}: source ${a.rows} rows/${a.checksum}, target ${b.rows} rows/${b.checksum}`);
  }
  assert.deepEqual(diffs, [], `tables differ:\n${diffs.join('\n')}`);
  return tables.map((x) => `${x.schema}.${x.name}`);
}

export async function currentLsn(c: Cluster, database: string): Promise<Lsn> {
  const r = await c.query('SELECT pg_current_wal_lsn()::text AS l', [], database);
  return parseLsn(r.rows[0].l);
}

/** Poll `fn` until it returns a truthy value (bounded by `timeoutMs`, polling every 100 ms). */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false | null>, timeoutMs = 120_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export { formatLsn };
