/**
 * catalog — which tables a migration covers, and what the pipeline needs to
 * know about each (columns, key, size), read from the source's catalog.
 *
 * Input: a source connection and the spec's table selection.
 * Output: `TableInfo[]` in a stable order, plus the patterns that matched nothing.
 *
 * Selection semantics: table-pattern.ts (PostgreSQL's identifier rules, with
 * `*` and `?` outside quotes). A partitioned table brings all its partitions; data is copied
 * per leaf partition, and changes arrive as the root (publish_via_partition_root).
 */
import type pg from 'pg';
import { qi, qn } from './conn';
import { parseTablePattern, type NameMatcher } from './table-pattern';

export interface ColumnInfo {
  name: string;
  attnum: number;
  /** `format_type()` text, e.g. `numeric(12,2)`, `public.mood[]`. */
  type: string;
  typeOid: number;
  notNull: boolean;
  /** Stored generated column: never copied nor applied (the target computes it). */
  generated: boolean;
  /** '' | 'a' (GENERATED ALWAYS AS IDENTITY) | 'd' (BY DEFAULT). */
  identity: '' | 'a' | 'd';
  /** A type defined by the user (or an array of one): copied as text, not binary. */
  userType: boolean;
}

export interface TableInfo {
  oid: number;
  schema: string;
  name: string;
  /** 'r' ordinary table, 'p' partitioned table (holds no data itself). */
  kind: 'r' | 'p';
  /** For a partition: the top-most partitioned table it belongs to. */
  root: { schema: string; name: string } | null;
  /** For a partition: the direct parent (used by the schema stage). */
  parent: { schema: string; name: string } | null;
  persistence: 'p' | 'u' | 't';
  replicaIdentity: 'd' | 'n' | 'f' | 'i';
  hasPrimaryKey: boolean;
  /** Columns that identify a row for UPDATE/DELETE; empty when REPLICA IDENTITY FULL or none. */
  keyColumns: string[];
  /** Unique indexes that cannot be a replica identity (on an expression, or partial). */
  unusableUniqueIndexes?: string[];
  columns: ColumnInfo[];
  estimatedRows: number;
  bytes: number;
  pages: number;
}

export function tableKey(t: { schema: string; name: string }): string {
  return qn(t.schema, t.name);
}

/** Columns whose values travel (copy and apply): everything but generated columns. */
export function dataColumns(t: TableInfo): ColumnInfo[] {
  return t.columns.filter((c) => !c.generated);
}

interface Pattern {
  text: string;
  schema: NameMatcher;
  name: NameMatcher;
}

/** A pattern in its parsed form (table-pattern.ts); throws TablePatternError on a bad one (the spec has rejected it already). */
export function compilePattern(p: string): Pattern {
  const parsed = parseTablePattern(p);
  return { text: p, schema: parsed.schema, name: parsed.table };
}

const matches = (p: Pattern, schema: string, name: string) => p.schema.test(schema) && p.name.test(name);

export interface Selection {
  tables: TableInfo[];
  /** Include patterns that matched no table. */
  unmatched: string[];
  /** Partitions matched while their partitioned root was not. */
  orphanPartitions: TableInfo[];
}

/** Read the selected tables from the source catalog. */
export async function selectTables(client: pg.Client, sel: { include: string[]; exclude: string[] }): Promise<Selection> {
  const include = sel.include.map(compilePattern);
  const exclude = sel.exclude.map(compilePattern);
  const all = await listTables(client);
  const byOid = new Map(all.map((t) => [t.oid, t]));
  const chosen = new Set<number>();
  const hit = new Set<string>();
  const orphans: TableInfo[] = [];
  for (const t of all) {
    const inc = include.filter((p) => matches(p, t.schema, t.name));
    if (inc.length === 0) continue;
    inc.forEach((p) => hit.add(p.text));
    if (exclude.some((p) => matches(p, t.schema, t.name))) continue;
    if (t.root) {
      const root = all.find((r) => r.schema === t.root!.schema && r.name === t.root!.name);
      const rootSelected = root && include.some((p) => matches(p, root.schema, root.name)) && !exclude.some((p) => matches(p, root.schema, root.name));
      if (!rootSelected) {
        orphans.push(t);
        continue;
      }
    }
    chosen.add(t.oid);
  }
  // A selected partitioned table brings every partition below it.
  for (const t of all) {
    if (t.root && !chosen.has(t.oid)) {
      const root = all.find((r) => r.schema === t.root!.schema && r.name === t.root!.name);
      if (root && chosen.has(root.oid)) chosen.add(t.oid);
    }
  }
  const tables = [...chosen].map((oid) => byOid.get(oid)!);
  await loadColumns(client, tables);
  return { tables, unmatched: include.filter((p) => !hit.has(p.text)).map((p) => p.text), orphanPartitions: orphans };
}

async function listTables(client: pg.Client): Promise<TableInfo[]> {
  const r = await client.query(`
    WITH RECURSIVE anc AS (
      SELECT i.inhrelid AS rel, i.inhparent AS parent, 1 AS depth FROM pg_inherits i
      UNION ALL
      SELECT a.rel, i.inhparent, a.depth + 1 FROM anc a JOIN pg_inherits i ON i.inhrelid = a.parent
    )
    SELECT c.oid::int AS oid, n.nspname AS schema, c.relname AS name, c.relkind AS kind,
           c.relpersistence AS persistence, c.relreplident AS replident, c.relispartition AS is_partition,
           greatest(c.reltuples, 0)::float8 AS est_rows, c.relpages::int AS pages,
           CASE WHEN c.relkind = 'r' THEN pg_table_size(c.oid) ELSE 0 END::float8 AS bytes,
           EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'p') AS has_pk,
           (SELECT coalesce(array_agg(ic.relname::text ORDER BY ic.relname), '{}') FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
             WHERE i.indrelid = c.oid AND i.indisunique AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL)) AS unusable_unique,
           (SELECT json_build_object('schema', rn.nspname, 'name', rc.relname) FROM anc a JOIN pg_class rc ON rc.oid = a.parent
              JOIN pg_namespace rn ON rn.oid = rc.relnamespace
             WHERE a.rel = c.oid ORDER BY a.depth DESC LIMIT 1) AS root,
           (SELECT json_build_object('schema', pn.nspname, 'name', pc.relname) FROM pg_inherits i JOIN pg_class pc ON pc.oid = i.inhparent
              JOIN pg_namespace pn ON pn.oid = pc.relnamespace WHERE i.inhrelid = c.oid LIMIT 1) AS parent
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p')
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgferry')
       AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
     ORDER BY n.nspname, c.relname`);
  return r.rows.map((row) => ({
    oid: row.oid,
    schema: row.schema,
    name: row.name,
    kind: row.kind,
    root: row.is_partition ? row.root : null,
    parent: row.is_partition ? row.parent : null,
    persistence: row.persistence,
    replicaIdentity: row.replident,
    hasPrimaryKey: row.has_pk,
    keyColumns: [],
    unusableUniqueIndexes: row.unusable_unique,
    columns: [],
    estimatedRows: Number(row.est_rows),
    bytes: Number(row.bytes),
    pages: Number(row.pages),
  }));
}

async function loadColumns(client: pg.Client, tables: TableInfo[]): Promise<void> {
  if (tables.length === 0) return;
  const oids = tables.map((t) => t.oid);
  const cols = await client.query(
    `
    SELECT a.attrelid::int AS rel, a.attname AS name, a.attnum::int AS attnum,
           format_type(a.atttypid, a.atttypmod) AS type, a.atttypid::int AS type_oid, a.attnotnull AS not_null,
           a.attgenerated <> '' AS generated, a.attidentity AS identity,
           (CASE WHEN t.typelem <> 0 THEN t.typelem ELSE t.oid END) >= 16384 AS user_type
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY a.attrelid, a.attnum`,
    [oids],
  );
  // The row identity used by UPDATE/DELETE: the replica identity index
  // (explicit USING INDEX, else the primary key), its key columns only (not
  // an INCLUDE column: the stream's old key does not carry those).
  const keys = await client.query(
    `
    SELECT i.indrelid::int AS rel, array_agg(a.attname::text ORDER BY k.ord) AS cols
      FROM pg_index i
      CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
      JOIN pg_class c ON c.oid = i.indrelid
     WHERE i.indrelid = ANY($1::oid[]) AND k.ord <= i.indnkeyatts
       AND ((c.relreplident = 'i' AND i.indisreplident) OR (c.relreplident = 'd' AND i.indisprimary))
     GROUP BY i.indrelid`,
    [oids],
  );
  const byRel = new Map<number, TableInfo>(tables.map((t) => [t.oid, t]));
  for (const row of cols.rows) {
    byRel.get(row.rel)?.columns.push({
      name: row.name,
      attnum: row.attnum,
      type: row.type,
      typeOid: row.type_oid,
      notNull: row.not_null,
      generated: row.generated,
      identity: row.identity,
      userType: row.user_type,
    });
  }
  for (const row of keys.rows) {
    const t = byRel.get(row.rel);
    if (t && t.replicaIdentity !== 'f') t.keyColumns = row.cols;
  }
  // Partitions inherit the root's identity for the purpose of routing changes.
}

/** Tables that hold rows (ordinary tables and leaf partitions), largest first. */
export function dataTables(tables: TableInfo[]): TableInfo[] {
  return tables.filter((t) => t.kind === 'r').sort((a, b) => b.bytes - a.bytes || tableKey(a).localeCompare(tableKey(b)));
}

/** Tables the publication lists: roots and standalone tables (partitions publish via their root). */
export function publishedTables(tables: TableInfo[]): TableInfo[] {
  return tables.filter((t) => t.root === null);
}

/**
 * Can UPDATE/DELETE on this table be replicated? A table needs a primary key,
 * REPLICA IDENTITY USING INDEX, or REPLICA IDENTITY FULL; and a key on a
 * generated column does not count, as logical replication never sends one.
 */
export function hasUsableIdentity(t: TableInfo): boolean {
  return identityProblem(t) === null;
}

/** Why UPDATE/DELETE on this table cannot be replicated (for the preflight's message), or null when they can. */
export function identityProblem(t: TableInfo): string | null {
  if (t.replicaIdentity === 'f') return null;
  if (t.replicaIdentity === 'n') return 'REPLICA IDENTITY NOTHING';
  if (dataColumns(t).length === 0) return t.columns.length ? 'only generated columns, which replication does not send' : 'no columns, so no key';
  const generated = t.keyColumns.filter((k) => t.columns.find((c) => c.name === k)?.generated);
  if (generated.length) return `its key holds generated column(s) ${generated.map((k) => qi(k)).join(', ')}, which replication does not send`;
  if (t.keyColumns.length > 0) return null;
  const unusable = t.unusableUniqueIndexes ?? [];
  if (unusable.length)
    return `no primary key; its unique index(es) ${unusable.map((i) => qi(i)).join(', ')} are on an expression or partial, which cannot identify rows`;
  return 'no primary key and no replica identity';
}
