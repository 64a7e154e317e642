/**
 * dataset — the initial-load dataset of ARCHITECTURE.md's performance
 * anchors, built once on the source with generate_series:
 *
 *   public.big        N rows (default 3 M), bigint PK, two secondary indexes
 *                     (account_id: scattered values; created_at: ascending),
 *                     ~100 B per row
 *   public.small_01…  C tables (default 30) of R rows (default 20 000), bigint PK
 *
 * It also gives the baselines their target DDL (the same tables, with or
 * without the secondary indexes) and checks a loaded target: every table's
 * row count equals the source's and every index of the source exists, so a
 * contender that loads nothing, or skips the indexes, cannot look fast.
 */
import type pg from 'pg';
import type { Cluster } from '../dev/testbed';

export interface BenchTable {
  name: string;
  rows: number;
  /** CREATE TABLE with its primary key. */
  createSql: string;
  /** Secondary indexes (built after the load by the raw pipe, in place for native). */
  indexSql: string[];
  /** INSERT … SELECT generate_series that fills it on the source. */
  fillSql: string;
}

export interface LoadDataset {
  tables: BenchTable[];
  totalRows: number;
}

export interface SourceFacts {
  /** Sum of pg_total_relation_size (heap + TOAST + all indexes) of the tables. */
  totalBytes: number;
  /** Sum of pg_table_size (heap + TOAST, no indexes). */
  heapBytes: number;
  rowsByTable: Map<string, number>;
  indexesByTable: Map<string, number>;
}

/** The dataset for `rows` large-table rows and `smallTables` × `smallRows`. */
export function defineDataset(rows: number, smallTables: number, smallRows: number): LoadDataset {
  // ~100 B rows: 8 + 8 + 8 + ~7 (numeric) + 2 + 49 (text) bytes of data + 24 of tuple header.
  const tables: BenchTable[] = [
    {
      name: 'big',
      rows,
      createSql: `CREATE TABLE big (
      id bigint PRIMARY KEY,
      account_id bigint NOT NULL,
      created_at timestamptz NOT NULL,
      amount numeric(12,2) NOT NULL,
      status smallint NOT NULL,
      note text NOT NULL)`,
      indexSql: ['CREATE INDEX big_account_idx ON big (account_id)', 'CREATE INDEX big_created_idx ON big (created_at)'],
      fillSql: `INSERT INTO big
      SELECT g, (g::bigint * 7919) % 100003, timestamptz '2025-01-01 00:00:00+00' + g * interval '1 second',
             (g % 100000) / 100.0, (g % 5)::smallint, md5(g::text) || substr(md5((g + 1)::text), 1, 16)
        FROM generate_series(1, ${rows}) g`,
    },
  ];
  for (let i = 1; i <= smallTables; i++) {
    const name = `small_${String(i).padStart(2, '0')}`;
    tables.push({
      name,
      rows: smallRows,
      createSql: `CREATE TABLE ${name} (id bigint PRIMARY KEY, n integer NOT NULL, at timestamptz NOT NULL, v text NOT NULL)`,
      indexSql: [],
      fillSql: `INSERT INTO ${name}
        SELECT g, g % 1000, timestamptz '2025-06-01 00:00:00+00' + g * interval '1 minute', md5(g::text) || md5((g * ${i})::text)
          FROM generate_series(1, ${smallRows}) g`,
    });
  }
  return { tables, totalRows: tables.reduce((a, t) => a + t.rows, 0) };
}

/** Create and fill the dataset in `db` on the source, then freeze, analyze and checkpoint. */
export async function buildDataset(source: Cluster, db: string, ds: LoadDataset): Promise<SourceFacts> {
  await source.createDatabase(db);
  const c = await source.client(db);
  try {
    await c.query("SET synchronous_commit = off; SET maintenance_work_mem = '256MB'");
    for (const t of ds.tables) {
      await c.query(t.createSql);
      await c.query(t.fillSql);
      for (const ix of t.indexSql) await c.query(ix);
    }
    // Hint bits and the visibility map set now, so no contender pays for them.
    await c.query('VACUUM (FREEZE, ANALYZE)');
    await c.query('CHECKPOINT');
    return await sourceFacts(c, ds);
  } finally {
    await c.end();
  }
}

async function sourceFacts(c: pg.Client, ds: LoadDataset): Promise<SourceFacts> {
  const names = ds.tables.map((t) => t.name);
  const sizes = await c.query(
    `SELECT coalesce(sum(pg_total_relation_size(('public.' || quote_ident(n))::regclass)), 0)::bigint AS total,
      coalesce(sum(pg_table_size(('public.' || quote_ident(n))::regclass)), 0)::bigint AS heap
    FROM unnest($1::text[]) n`,
    [names],
  );
  return {
    totalBytes: Number(sizes.rows[0].total),
    heapBytes: Number(sizes.rows[0].heap),
    rowsByTable: await rowCounts(c, names),
    indexesByTable: await indexCounts(c, names),
  };
}

async function rowCounts(c: pg.Client, names: string[]): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const n of names) {
    const r = await c.query(`SELECT count(*)::bigint AS n FROM public.${n}`);
    out.set(n, Number(r.rows[0].n));
  }
  return out;
}

async function indexCounts(c: pg.Client, names: string[]): Promise<Map<string, number>> {
  const r = await c.query(`SELECT tablename, count(*)::int AS n FROM pg_indexes WHERE schemaname = 'public' AND tablename = ANY($1::text[]) GROUP BY 1`, [
    names,
  ]);
  const out = new Map<string, number>(names.map((n) => [n, 0]));
  for (const row of r.rows) out.set(row.tablename, row.n);
  return out;
}

/**
 * Check a loaded target database against the source facts: same row count
 * and at least as many indexes per table (a valid one each: indisvalid).
 * Returns the number of rows checked; throws naming every difference.
 */
export async function verifyTarget(target: Cluster, db: string, ds: LoadDataset, facts: SourceFacts): Promise<number> {
  const c = await target.client(db);
  try {
    const names = ds.tables.map((t) => t.name);
    const counts = await rowCounts(c, names);
    const indexes = await indexCounts(c, names);
    const invalid = await c.query(`SELECT count(*)::int AS n FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
      JOIN pg_namespace s ON s.oid = t.relnamespace WHERE s.nspname = 'public' AND NOT i.indisvalid`);
    const diffs: string[] = [];
    for (const n of names) {
      if (counts.get(n) !== facts.rowsByTable.get(n)) diffs.push(`${n}: ${counts.get(n)} rows on the target, ${facts.rowsByTable.get(n)} on the source`);
      if ((indexes.get(n) ?? 0) < (facts.indexesByTable.get(n) ?? 0))
        diffs.push(`${n}: ${indexes.get(n)} indexes on the target, ${facts.indexesByTable.get(n)} on the source`);
    }
    if (invalid.rows[0].n > 0) diffs.push(`${invalid.rows[0].n} invalid index(es) on the target`);
    if (diffs.length) throw new Error(`target ${db} does not match the source:\n  ${diffs.join('\n  ')}`);
    return [...counts.values()].reduce((a, b) => a + b, 0);
  } finally {
    await c.end();
  }
}
