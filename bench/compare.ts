/**
 * compare — "the target holds the same data as the source", table by table:
 * row count and the order-independent checksum of agent/engine/checksum.ts, read
 * with the agent's session settings (agent/engine/conn.ts SESSION_OPTIONS) so both
 * sides print values identically. Used after the apply and cutover
 * scenarios: a contender that is fast but wrong must not pass.
 */
import pg from 'pg';
import type { Cluster } from '../dev/testbed';
import { SESSION_OPTIONS } from '../agent/engine/conn';
import { tableFingerprint } from '../agent/engine/checksum';

async function sessionClient(c: Cluster, db: string): Promise<pg.Client> {
  const client = new pg.Client({ ...c.endpoint(db), options: SESSION_OPTIONS });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

/** Ordinary tables and leaf partitions of the user's schemas, with their non-generated columns. */
async function dataTables(c: pg.Client): Promise<Array<{ schema: string; name: string; columns: string[] }>> {
  // attname is of type `name`; node-postgres parses text[] but not name[].
  const r = await c.query(`SELECT n.nspname::text AS schema, c.relname::text AS name,
      array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attgenerated = '') AS columns
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE c.relkind = 'r' AND n.nspname NOT IN ('information_schema', 'pgferry') AND n.nspname NOT LIKE 'pg\\_%'
    GROUP BY 1, 2 ORDER BY 1, 2`);
  return r.rows;
}

/** Throws naming every table whose count or checksum differs; returns the number of tables compared. */
export async function assertSameData(source: Cluster, target: Cluster, db: string): Promise<number> {
  const s = await sessionClient(source, db);
  const t = await sessionClient(target, db);
  try {
    const tables = await dataTables(s);
    if (tables.length === 0) throw new Error(`no tables to compare in ${db}`);
    const diffs: string[] = [];
    for (const tb of tables) {
      const [a, b] = await Promise.all([
        tableFingerprint(s, tb.schema, tb.name, tb.columns),
        tableFingerprint(t, tb.schema, tb.name, tb.columns).catch((e: Error) => ({ rows: -1, checksum: e.message })),
      ]);
      if (a.rows !== b.rows || a.checksum !== b.checksum)
        diffs.push(`${tb.schema}.${tb.name}: source ${a.rows} rows/${a.checksum}, target ${b.rows} rows/${b.checksum}`);
    }
    if (diffs.length) throw new Error(`the target differs from the source in ${db}: ${diffs.join('; ')}`);
    return tables.length;
  } finally {
    await s.end();
    await t.end();
  }
}
