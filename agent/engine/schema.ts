/**
 * schema — the schema stage: the DDL the selected tables need on the target,
 * built from the SOURCE catalog (never pg_dump: its version would have to
 * match the source, which may be an older major than the target).
 *
 * Input: a source connection and the `TableInfo[]` of `selectTables()`.
 * Output: a `SchemaPlan`:
 *   - `preData`, run before the load in ONE target transaction by
 *     `applyPreData()`: schemas, extensions, collations, sequences (values
 *     are set at cutover), types (recursively, dependencies first), tables
 *     and partitions (parents first), PRIMARY KEY / UNIQUE / CHECK
 *     constraints, sequence ownership;
 *   - `postData`, run after the load (by indexes.ts, several at once):
 *     secondary indexes, EXCLUDE constraints, replica identities, then
 *     foreign keys. Each post-data statement is independent of the others of
 *     its wave and carries an `existsSql` probe so a rerun skips what is built;
 *   - `sequences` for the cutover to set, and `warnings` for what is not
 *     migrated (triggers, policies, foreign keys to unselected tables,
 *     functions the DDL needs but pgferry does not create).
 *
 * Every catalog read runs with `search_path = pg_catalog` (and ISO date
 * output), so `format_type`, `pg_get_expr`, `pg_get_constraintdef` and
 * `pg_get_indexdef` qualify every non-built-in name: the DDL means the same
 * on the target whatever its search_path. Queries work on sources 12–17;
 * columns that do not exist on every version are read through `to_jsonb(row)`.
 */
import type pg from 'pg';
import type { TableInfo } from './catalog';
import { qi, qn, ql } from './conn';
import { PgferryError, sqlState, type PgServerError } from './errors';

export const SCHEMA_STATEMENT_KINDS = [
  'schema', 'type', 'sequence', 'table', 'partition', 'constraint', 'index', 'foreign-key', 'sequence-owner', 'replica-identity',
] as const;
export type SchemaStatementKind = (typeof SCHEMA_STATEMENT_KINDS)[number];

/**
 * One DDL statement of the plan. Extensions and collations are of kind
 * 'type' (they exist for the types and expressions that need them).
 */
export interface SchemaStatement {
  kind: SchemaStatementKind;
  /** The object's quoted name, e.g. `typesdemo."AllTypes"`; constraints as `table.constraint`. */
  object: string;
  sql: string;
  /**
   * SQL returning one row iff the object already exists on the target.
   * Post-data: every statement has one (skip on re-run). Pre-data: tables
   * and partitions (which must NOT exist), schemas, extensions and
   * collations (skipped when they exist).
   */
  existsSql?: string;
}

export interface SequenceRef {
  schema: string;
  name: string;
  /** Owning column, if any, as 'schema.table.column' (each part quoted with `qi`). */
  ownedBy?: string;
}

export interface SchemaPlan {
  preData: SchemaStatement[];
  postData: SchemaStatement[];
  sequences: SequenceRef[];
  warnings: string[];
}

// ───────────────────────────── session settings ─────────────────────────────

/**
 * Settings under which the catalog is read: everything outside pg_catalog is
 * printed schema-qualified, constants print in unambiguous formats and floats
 * exactly. Restored afterwards (the caller's session is left as found).
 */
const CANONICAL_SETTINGS: Array<[string, string]> = [
  ['search_path', 'pg_catalog'],
  ['DateStyle', 'ISO, YMD'],
  ['IntervalStyle', 'postgres'],
  ['extra_float_digits', '3'],
];

async function withCanonicalSettings<T>(client: pg.Client, fn: () => Promise<T>): Promise<T> {
  const names = CANONICAL_SETTINGS.map(([n]) => n);
  const saved = await client.query(`SELECT ${names.map((_, i) => `current_setting($${i + 1}) AS s${i}`).join(', ')}`, names);
  const setAll = (values: string[]) => client.query(
    `SELECT ${names.map((_, i) => `set_config($${2 * i + 1}, $${2 * i + 2}, false)`).join(', ')}`,
    names.flatMap((n, i) => [n, values[i]]));
  await setAll(CANONICAL_SETTINGS.map(([, v]) => v));
  try {
    return await fn();
  } finally {
    // In an aborted transaction this fails, and the rollback restores them anyway.
    await setAll(names.map((_, i) => saved.rows[0][`s${i}`] as string)).catch(() => undefined);
  }
}

// ───────────────────────────── SQL snippets ─────────────────────────────

const BUILTIN_SCHEMAS = new Set(['pg_catalog', 'information_schema']);

function relationExistsSql(schema: string, name: string): string {
  return `SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ${ql(schema)} AND c.relname = ${ql(name)}`;
}
function constraintExistsSql(schema: string, table: string, name: string): string {
  return `SELECT 1 FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ${ql(schema)} AND c.relname = ${ql(table)} AND k.conname = ${ql(name)}`;
}
const firstLine = (sql: string) => sql.split('\n')[0].slice(0, 200);

// ───────────────────────────── catalog reads ─────────────────────────────

interface RelRow {
  oid: number; schema: string; name: string; kind: string; persistence: string; replident: string;
  is_partition: boolean; options: string[] | null; partkey: string | null; bound: string | null;
  parent_oid: number | null; n_parents: number; triggers: number; policies: number; rls: boolean;
}

async function readRelations(c: pg.Client, oids: number[]): Promise<Map<number, RelRow>> {
  const r = await c.query<RelRow>(`
    SELECT c.oid::int AS oid, n.nspname AS schema, c.relname AS name, c.relkind::text AS kind,
           c.relpersistence::text AS persistence, c.relreplident::text AS replident, c.relispartition AS is_partition,
           c.reloptions AS options, c.relrowsecurity AS rls,
           CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS partkey,
           CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END AS bound,
           (SELECT i.inhparent::int FROM pg_inherits i WHERE i.inhrelid = c.oid ORDER BY i.inhseqno LIMIT 1) AS parent_oid,
           (SELECT count(*) FROM pg_inherits i WHERE i.inhrelid = c.oid)::int AS n_parents,
           -- Triggers a user wrote: not the internal ones behind foreign keys,
           -- nor the clones a partition gets from its parent (tgparentid, 13+).
           (SELECT count(*) FROM pg_trigger g WHERE g.tgrelid = c.oid AND NOT g.tgisinternal
               AND coalesce((to_jsonb(g) ->> 'tgparentid')::oid, 0) = 0)::int AS triggers,
           (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid)::int AS policies
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = ANY($1::oid[])`, [oids]);
  return new Map(r.rows.map((row) => [row.oid, row]));
}

interface ColRow {
  rel: number; attnum: number; name: string; type: string; type_oid: number; not_null: boolean;
  identity: string; generated: string; coll_schema: string | null; coll_name: string | null; default_expr: string | null;
}

async function readColumns(c: pg.Client, oids: number[]): Promise<Map<number, ColRow[]>> {
  const r = await c.query<ColRow>(`
    SELECT a.attrelid::int AS rel, a.attnum::int AS attnum, a.attname AS name,
           format_type(a.atttypid, a.atttypmod) AS type, a.atttypid::int AS type_oid, a.attnotnull AS not_null,
           a.attidentity::text AS identity, a.attgenerated::text AS generated,
           CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN cn.nspname END AS coll_schema,
           CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN co.collname END AS coll_name,
           pg_get_expr(d.adbin, d.adrelid) AS default_expr
      FROM pg_attribute a
      JOIN pg_type t ON t.oid = a.atttypid
      LEFT JOIN pg_collation co ON co.oid = a.attcollation
      LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY a.attrelid, a.attnum`, [oids]);
  const out = new Map<number, ColRow[]>();
  for (const row of r.rows) {
    if (!out.has(row.rel)) out.set(row.rel, []);
    out.get(row.rel)!.push(row);
  }
  return out;
}

interface SeqRow {
  oid: number; schema: string; name: string; persistence: string; type: string;
  start: string; increment: string; min: string; max: string; cache: string; cycle: boolean;
  deptype: string | null; owner_rel: number | null; owner_attnum: number | null;
  owner_schema: string | null; owner_table: string | null; owner_column: string | null;
}

/**
 * Sequences the tables use: owned by one of their columns (serial: deptype
 * 'a'; identity: 'i'), or referenced by a column default (nextval() records
 * a dependency of the default on the sequence).
 */
async function readSequences(c: pg.Client, oids: number[]): Promise<SeqRow[]> {
  const r = await c.query<SeqRow>(`
    WITH used AS (
      SELECT d.objid AS seq FROM pg_depend d
       WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
         AND d.refobjid = ANY($1::oid[]) AND d.refobjsubid > 0 AND d.deptype IN ('a', 'i')
      UNION
      SELECT d.refobjid FROM pg_depend d JOIN pg_attrdef ad ON ad.oid = d.objid
       WHERE d.classid = 'pg_attrdef'::regclass AND d.refclassid = 'pg_class'::regclass AND ad.adrelid = ANY($1::oid[])
    )
    SELECT c.oid::int AS oid, n.nspname AS schema, c.relname AS name, c.relpersistence::text AS persistence,
           format_type(s.seqtypid, NULL) AS type, s.seqstart::text AS start, s.seqincrement::text AS increment,
           s.seqmin::text AS min, s.seqmax::text AS max, s.seqcache::text AS cache, s.seqcycle AS cycle,
           o.deptype::text AS deptype, o.refobjid::int AS owner_rel, o.refobjsubid::int AS owner_attnum,
           own_n.nspname AS owner_schema, own_c.relname AS owner_table, own_a.attname AS owner_column
      FROM used u
      JOIN pg_class c ON c.oid = u.seq AND c.relkind = 'S'
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_sequence s ON s.seqrelid = c.oid
      LEFT JOIN pg_depend o ON o.classid = 'pg_class'::regclass AND o.objid = c.oid
            AND o.refclassid = 'pg_class'::regclass AND o.refobjsubid > 0 AND o.deptype IN ('a', 'i')
      LEFT JOIN pg_class own_c ON own_c.oid = o.refobjid
      LEFT JOIN pg_namespace own_n ON own_n.oid = own_c.relnamespace
      LEFT JOIN pg_attribute own_a ON own_a.attrelid = o.refobjid AND own_a.attnum = o.refobjsubid
     ORDER BY n.nspname, c.relname`, [oids]);
  const seen = new Set<number>();
  return r.rows.filter((s) => !seen.has(s.oid) && seen.add(s.oid) !== undefined);
}

function sequenceRef(s: SeqRow): SequenceRef {
  const ref: SequenceRef = { schema: s.schema, name: s.name };
  if (s.owner_schema && s.owner_table && s.owner_column) ref.ownedBy = `${qn(s.owner_schema, s.owner_table)}.${qi(s.owner_column)}`;
  return ref;
}

function sequenceOptions(s: SeqRow): string {
  return `INCREMENT BY ${s.increment} MINVALUE ${s.min} MAXVALUE ${s.max} START WITH ${s.start} CACHE ${s.cache} ${s.cycle ? 'CYCLE' : 'NO CYCLE'}`;
}

interface TypeRow {
  oid: number; schema: string; name: string; typtype: string; is_array: boolean; elem: number;
  base: number; base_type: string | null; not_null: boolean; default_expr: string | null;
  relid: number; relkind: string | null; coll_schema: string | null; coll_name: string | null;
  ext: string | null; ext_schema: string | null; multirange_of: number | null;
  labels: string[] | null;
}

async function readTypes(c: pg.Client, oids: number[]): Promise<TypeRow[]> {
  const r = await c.query<TypeRow>(`
    SELECT t.oid::int AS oid, n.nspname AS schema, t.typname AS name, t.typtype::text AS typtype,
           EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid) AS is_array, t.typelem::int AS elem,
           t.typbasetype::int AS base,
           CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END AS base_type,
           t.typnotnull AS not_null, pg_get_expr(t.typdefaultbin, 0) AS default_expr,
           t.typrelid::int AS relid, (SELECT rc.relkind::text FROM pg_class rc WHERE rc.oid = t.typrelid) AS relkind,
           CASE WHEN t.typtype = 'd' AND t.typcollation <> bt.typcollation THEN cn.nspname END AS coll_schema,
           CASE WHEN t.typtype = 'd' AND t.typcollation <> bt.typcollation THEN co.collname END AS coll_name,
           x.extname AS ext, xn.nspname AS ext_schema,
           (SELECT r.rngtypid::int FROM pg_range r WHERE (to_jsonb(r) ->> 'rngmultitypid')::oid = t.oid) AS multirange_of,
           (SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid) AS labels
      FROM pg_type t
      JOIN pg_namespace n ON n.oid = t.typnamespace
      LEFT JOIN pg_type bt ON bt.oid = t.typbasetype
      LEFT JOIN pg_collation co ON co.oid = t.typcollation
      LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
      LEFT JOIN pg_depend xd ON xd.classid = 'pg_type'::regclass AND xd.objid = t.oid
            AND xd.refclassid = 'pg_extension'::regclass AND xd.deptype = 'e'
      LEFT JOIN pg_extension x ON x.oid = xd.refobjid
      LEFT JOIN pg_namespace xn ON xn.oid = x.extnamespace
     WHERE t.oid = ANY($1::oid[])`, [oids]);
  return r.rows;
}

interface AttrRow { relid: number; name: string; type: string; type_oid: number; coll_schema: string | null; coll_name: string | null }
interface DomainCheckRow { typid: number; name: string; def: string }
interface RangeRow {
  typid: number; subtype: string; subtype_oid: number; opc_schema: string; opc_name: string; opc_default: boolean;
  coll_schema: string | null; coll_name: string | null; canonical: string | null; subdiff: string | null;
  mr_schema: string | null; mr_name: string | null;
}

async function readTypeDetails(c: pg.Client, composites: number[], domains: number[], ranges: number[]) {
  const attrs = composites.length === 0 ? [] : (await c.query<AttrRow>(`
    SELECT a.attrelid::int AS relid, a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, a.atttypid::int AS type_oid,
           CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN cn.nspname END AS coll_schema,
           CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN co.collname END AS coll_name
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
      LEFT JOIN pg_collation co ON co.oid = a.attcollation LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
     WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY a.attrelid, a.attnum`, [composites])).rows;
  // Domain NOT NULL lives in typnotnull (17 also lists it as contype 'n').
  const checks = domains.length === 0 ? [] : (await c.query<DomainCheckRow>(`
    SELECT k.contypid::int AS typid, k.conname AS name, pg_get_constraintdef(k.oid) AS def
      FROM pg_constraint k WHERE k.contypid = ANY($1::oid[]) AND k.contype = 'c'
     ORDER BY k.contypid, k.conname`, [domains])).rows;
  const rangeRows = ranges.length === 0 ? [] : (await c.query<RangeRow>(`
    SELECT r.rngtypid::int AS typid, format_type(r.rngsubtype, NULL) AS subtype, r.rngsubtype::int AS subtype_oid,
           opn.nspname AS opc_schema, opc.opcname AS opc_name, opc.opcdefault AS opc_default,
           CASE WHEN r.rngcollation <> 0 AND r.rngcollation <> st.typcollation THEN cn.nspname END AS coll_schema,
           CASE WHEN r.rngcollation <> 0 AND r.rngcollation <> st.typcollation THEN co.collname END AS coll_name,
           CASE WHEN r.rngcanonical <> 0 THEN r.rngcanonical::regproc::text END AS canonical,
           CASE WHEN r.rngsubdiff <> 0 THEN r.rngsubdiff::regproc::text END AS subdiff,
           mn.nspname AS mr_schema, mt.typname AS mr_name
      FROM pg_range r
      JOIN pg_type st ON st.oid = r.rngsubtype
      JOIN pg_opclass opc ON opc.oid = r.rngsubopc JOIN pg_namespace opn ON opn.oid = opc.opcnamespace
      LEFT JOIN pg_collation co ON co.oid = r.rngcollation LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
      LEFT JOIN pg_type mt ON mt.oid = (to_jsonb(r) ->> 'rngmultitypid')::oid
      LEFT JOIN pg_namespace mn ON mn.oid = mt.typnamespace
     WHERE r.rngtypid = ANY($1::oid[])`, [ranges])).rows;
  return { attrs, checks, ranges: rangeRows };
}

interface DepRow {
  ref_class: string; ref_oid: number; ref_desc: string; used_by: string; ref_schema: string | null;
  ext: string | null; ext_schema: string | null;
}

/**
 * What the DDL of these relations and types refers to outside pg_catalog:
 * types used only in expressions, collations, functions, operators and
 * operator classes, with the extension that owns each (if any).
 */
async function readDependencies(c: pg.Client, relOids: number[], typeOids: number[]): Promise<DepRow[]> {
  const r = await c.query<DepRow>(`
    WITH objs(classid, objid) AS (
      SELECT 'pg_class'::regclass::oid, o FROM unnest($1::oid[]) AS o
      UNION ALL SELECT 'pg_class'::regclass::oid, i.indexrelid FROM pg_index i WHERE i.indrelid = ANY($1::oid[])
      UNION ALL SELECT 'pg_attrdef'::regclass::oid, d.oid FROM pg_attrdef d WHERE d.adrelid = ANY($1::oid[])
      UNION ALL SELECT 'pg_constraint'::regclass::oid, k.oid FROM pg_constraint k
                 WHERE k.conrelid = ANY($1::oid[]) OR k.contypid = ANY($2::oid[])
      UNION ALL SELECT 'pg_type'::regclass::oid, t FROM unnest($2::oid[]) AS t
    ), refs AS (
      SELECT DISTINCT ON (d.refclassid, d.refobjid) d.refclassid, d.refobjid, d.classid, d.objid, d.objsubid
        FROM objs o JOIN pg_depend d ON d.classid = o.classid AND d.objid = o.objid
       WHERE d.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass, 'pg_opclass'::regclass,
                              'pg_opfamily'::regclass, 'pg_collation'::regclass, 'pg_type'::regclass)
       ORDER BY d.refclassid, d.refobjid, d.classid, d.objid, d.objsubid
    )
    SELECT r.refclassid::regclass::text AS ref_class, r.refobjid::int AS ref_oid,
           pg_describe_object(r.refclassid, r.refobjid, 0) AS ref_desc,
           pg_describe_object(r.classid, r.objid, r.objsubid) AS used_by,
           (SELECT nspname FROM pg_namespace WHERE oid = CASE r.refclassid
               WHEN 'pg_proc'::regclass THEN (SELECT pronamespace FROM pg_proc WHERE oid = r.refobjid)
               WHEN 'pg_operator'::regclass THEN (SELECT oprnamespace FROM pg_operator WHERE oid = r.refobjid)
               WHEN 'pg_opclass'::regclass THEN (SELECT opcnamespace FROM pg_opclass WHERE oid = r.refobjid)
               WHEN 'pg_opfamily'::regclass THEN (SELECT opfnamespace FROM pg_opfamily WHERE oid = r.refobjid)
               WHEN 'pg_collation'::regclass THEN (SELECT collnamespace FROM pg_collation WHERE oid = r.refobjid)
               WHEN 'pg_type'::regclass THEN (SELECT typnamespace FROM pg_type WHERE oid = r.refobjid) END) AS ref_schema,
           x.extname AS ext, xn.nspname AS ext_schema
      FROM refs r
      LEFT JOIN pg_depend xd ON xd.classid = r.refclassid AND xd.objid = r.refobjid
            AND xd.refclassid = 'pg_extension'::regclass AND xd.deptype = 'e'
      LEFT JOIN pg_extension x ON x.oid = xd.refobjid
      LEFT JOIN pg_namespace xn ON xn.oid = x.extnamespace`, [relOids, typeOids]);
  return r.rows;
}

/** `CREATE COLLATION` for a user-defined collation; columns differ across 12–17, so read as json. */
async function collationStatements(c: pg.Client, oids: number[]): Promise<Array<SchemaStatement & { schema: string }>> {
  if (oids.length === 0) return [];
  const r = await c.query<{ schema: string; name: string; j: Record<string, unknown> }>(`
    SELECT n.nspname AS schema, co.collname AS name, to_jsonb(co) AS j
      FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace
     WHERE co.oid = ANY($1::oid[]) ORDER BY 1, 2`, [oids]);
  return r.rows.map(({ schema, name, j }) => {
    const str = (k: string) => (typeof j[k] === 'string' && j[k] !== '' ? j[k] as string : null);
    const opts: string[] = [];
    const provider = str('collprovider');
    if (provider === 'i' || provider === 'b') {
      opts.push(`PROVIDER = ${provider === 'i' ? 'icu' : 'builtin'}`);
      // 15–16: colliculocale; 17+: colllocale; before 15 ICU kept it in collcollate.
      const locale = str('colllocale') ?? str('colliculocale') ?? str('collcollate') ?? '';
      opts.push(`LOCALE = ${ql(locale)}`);
      if (str('collicurules')) opts.push(`RULES = ${ql(str('collicurules')!)}`);
    } else {
      opts.push('PROVIDER = libc', `LC_COLLATE = ${ql(str('collcollate') ?? '')}`, `LC_CTYPE = ${ql(str('collctype') ?? '')}`);
    }
    if (j.collisdeterministic === false) opts.push('DETERMINISTIC = false');
    return {
      schema, kind: 'type' as const, object: qn(schema, name),
      sql: `CREATE COLLATION IF NOT EXISTS ${qn(schema, name)} (${opts.join(', ')})`,
      existsSql: `SELECT 1 FROM pg_catalog.pg_collation co JOIN pg_catalog.pg_namespace n ON n.oid = co.collnamespace WHERE n.nspname = ${ql(schema)} AND co.collname = ${ql(name)}`,
    };
  });
}

interface ConRow {
  oid: number; rel: number; name: string; type: string; def: string; ref_rel: number;
  inhcount: number; parent_con: number;
}

async function readConstraints(c: pg.Client, oids: number[]): Promise<ConRow[]> {
  // Only the kinds we recreate: 18 adds NOT NULL constraints ('n'), which
  // travel with the columns; constraint triggers ('t') are triggers.
  const r = await c.query<ConRow>(`
    SELECT k.oid::int AS oid, k.conrelid::int AS rel, k.conname AS name, k.contype::text AS type,
           pg_get_constraintdef(k.oid) AS def, k.confrelid::int AS ref_rel,
           k.coninhcount::int AS inhcount, k.conparentid::int AS parent_con
      FROM pg_constraint k
     WHERE k.conrelid = ANY($1::oid[]) AND k.contype IN ('p', 'u', 'c', 'x', 'f')
     ORDER BY k.conrelid, array_position(ARRAY['p', 'u', 'c', 'x', 'f'], k.contype::text), k.conname`, [oids]);
  return r.rows;
}

interface IndexRow {
  oid: number; rel: number; name: string; def: string; valid: boolean; replident: boolean;
  is_partition: boolean; backs_constraint: boolean;
}

async function readIndexes(c: pg.Client, oids: number[]): Promise<IndexRow[]> {
  const r = await c.query<IndexRow>(`
    SELECT i.indexrelid::int AS oid, i.indrelid::int AS rel, ic.relname AS name, pg_get_indexdef(i.indexrelid) AS def,
           i.indisvalid AS valid, i.indisreplident AS replident, ic.relispartition AS is_partition,
           EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid
                      AND k.contype IN ('p', 'u', 'x')) AS backs_constraint
      FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
     WHERE i.indrelid = ANY($1::oid[])
     ORDER BY i.indrelid, ic.relname`, [oids]);
  return r.rows;
}

// ───────────────────────────── the plan ─────────────────────────────

/**
 * Build the DDL the selected tables need, from the source catalog.
 * Read-only on the source; the session's settings are restored afterwards.
 *
 * @example
 *   const { tables } = await selectTables(source, spec.tables);
 *   const plan = await planSchema(source, tables);
 *   await applyPreData(target, plan);      // then load, then plan.postData
 */
export async function planSchema(source: pg.Client, tables: TableInfo[]): Promise<SchemaPlan> {
  return withCanonicalSettings(source, () => buildPlan(source, tables));
}

async function buildPlan(c: pg.Client, tables: TableInfo[]): Promise<SchemaPlan> {
  const warnings: string[] = [];
  const oids = [...new Set(tables.map((t) => t.oid))];
  const rels = await readRelations(c, oids);
  const gone = tables.filter((t) => !rels.has(t.oid));
  if (gone.length > 0) {
    throw new PgferryError('SCHEMA_FAILED',
      `Selected table(s) ${gone.map((t) => qn(t.schema, t.name)).join(', ')} no longer exist on the source.`,
      'Start the migration again so that the table selection is read afresh.');
  }
  const selected = new Set(oids);
  const relName = (oid: number) => { const r = rels.get(oid)!; return qn(r.schema, r.name); };
  // A partition is created with PARTITION OF only when its parent is migrated too.
  const partitionOfSelected = (r: RelRow) => r.is_partition && r.parent_oid !== null && selected.has(r.parent_oid);

  const columns = await readColumns(c, oids);
  const sequences = await readSequences(c, oids);

  // ── types, collations, extensions: walk to a fixed point ──
  const types = new Map<number, TypeRow>();
  const attrsByRel = new Map<number, AttrRow[]>();
  const checksByType = new Map<number, DomainCheckRow[]>();
  const rangeByType = new Map<number, RangeRow>();
  const extensions = new Map<string, string | null>();
  const collations = new Set<number>();
  const foreign = new Map<string, string>(); // what we do not create: description -> warning
  const roots = new Set<number>();
  for (const cols of columns.values()) for (const col of cols) roots.add(col.type_oid);
  const scannedTypes = new Set<number>();
  let relScanDone = false;
  for (;;) {
    await loadTypeClosure(c, [...roots], types, attrsByRel, checksByType, rangeByType);
    const toCreate = [...types.values()].filter((t) => creatable(t) && !scannedTypes.has(t.oid));
    if (relScanDone && toCreate.length === 0) break;
    const relIds = relScanDone ? [] : oids;
    const compositeRels = toCreate.filter((t) => t.typtype === 'c').map((t) => t.relid);
    const deps = await readDependencies(c, [...relIds, ...compositeRels], toCreate.map((t) => t.oid));
    relScanDone = true;
    toCreate.forEach((t) => scannedTypes.add(t.oid));
    let newTypes = 0;
    for (const d of deps) {
      if (d.ext) { extensions.set(d.ext, d.ext_schema); continue; }
      if (d.ref_schema === null || BUILTIN_SCHEMAS.has(d.ref_schema)) continue;
      if (d.ref_class === 'pg_type') {
        if (!roots.has(d.ref_oid)) { roots.add(d.ref_oid); newTypes++; }
      } else if (d.ref_class === 'pg_collation') {
        collations.add(d.ref_oid);
      } else {
        foreign.set(d.ref_desc, `${d.ref_desc} (used by ${d.used_by}) is not created by pgferry: create it on the target before the schema stage runs, or the DDL that uses it fails.`);
      }
    }
    if (newTypes === 0 && toCreate.length === 0) break;
  }
  for (const t of types.values()) if (t.ext) extensions.set(t.ext, t.ext_schema);

  // ── pre-data ──
  const schemas = new Set<string>();
  const preTypes: SchemaStatement[] = [];
  const visited = new Set<number>();
  const visit = (oid: number) => {
    if (visited.has(oid)) return;
    visited.add(oid);
    const t = types.get(oid);
    if (!t || BUILTIN_SCHEMAS.has(t.schema) || t.ext) return;
    for (const dep of typeChildren(t, attrsByRel, rangeByType)) visit(dep);
    if (t.is_array || t.typtype === 'm' || t.typtype === 'p') return;
    const stmts = typeStatements(t, attrsByRel, checksByType, rangeByType, warnings);
    if (stmts.length > 0) schemas.add(t.schema);
    preTypes.push(...stmts);
  };
  [...roots].sort((a, b) => a - b).forEach(visit);

  const preSequences: SchemaStatement[] = [];
  const owners: SchemaStatement[] = [];
  const identityByColumn = new Map<string, SeqRow>();
  for (const s of sequences) {
    const ownerSelected = s.owner_rel !== null && selected.has(s.owner_rel);
    if (s.deptype === 'i' && ownerSelected) {
      identityByColumn.set(`${s.owner_rel}:${s.owner_attnum}`, s);
      continue;
    }
    schemas.add(s.schema);
    preSequences.push({
      kind: 'sequence', object: qn(s.schema, s.name),
      sql: `CREATE ${s.persistence === 'u' ? 'UNLOGGED ' : ''}SEQUENCE ${qn(s.schema, s.name)} AS ${s.type} ${sequenceOptions(s)}`,
    });
    if (s.deptype === 'a' && ownerSelected) {
      owners.push({
        kind: 'sequence-owner', object: qn(s.schema, s.name),
        sql: `ALTER SEQUENCE ${qn(s.schema, s.name)} OWNED BY ${qn(s.owner_schema!, s.owner_table!)}.${qi(s.owner_column!)}`,
      });
    }
  }

  // Tables, parents before their partitions.
  const depth = (r: RelRow): number => (partitionOfSelected(r) ? 1 + depth(rels.get(r.parent_oid!)!) : 0);
  const ordered = [...rels.values()].sort((a, b) => depth(a) - depth(b)
    || a.schema.localeCompare(b.schema) || a.name.localeCompare(b.name));
  const preTables: SchemaStatement[] = [];
  for (const r of ordered) {
    schemas.add(r.schema);
    const name = qn(r.schema, r.name);
    const cols = columns.get(r.oid) ?? [];
    const unlogged = r.persistence === 'u' ? 'UNLOGGED ' : '';
    const withOpts = r.options && r.options.length > 0 ? ` WITH (${r.options.join(', ')})` : '';
    const partBy = r.kind === 'p' && r.partkey ? ` PARTITION BY ${r.partkey}` : '';
    if (partitionOfSelected(r)) {
      preTables.push({
        kind: 'partition', object: name, existsSql: relationExistsSql(r.schema, r.name),
        sql: `CREATE ${unlogged}TABLE ${name} PARTITION OF ${relName(r.parent_oid!)} ${r.bound}${partBy}${withOpts}`,
      });
      // What a partition holds differently from its parent.
      const parentCols = new Map((columns.get(r.parent_oid!) ?? []).map((p) => [p.name, p]));
      for (const col of cols) {
        const p = parentCols.get(col.name);
        if (!p || col.generated || p.generated || col.identity || p.identity) continue;
        if ((col.default_expr ?? null) !== (p.default_expr ?? null)) {
          preTables.push({
            kind: 'partition', object: name,
            sql: `ALTER TABLE ${name} ALTER COLUMN ${qi(col.name)} ${col.default_expr ? `SET DEFAULT ${col.default_expr}` : 'DROP DEFAULT'}`,
          });
        }
        if (col.not_null && !p.not_null) {
          preTables.push({ kind: 'partition', object: name, sql: `ALTER TABLE ${name} ALTER COLUMN ${qi(col.name)} SET NOT NULL` });
        }
      }
      continue;
    }
    if (r.is_partition) {
      warnings.push(`${name} is a partition of ${r.parent_oid !== null && rels.has(r.parent_oid) ? relName(r.parent_oid) : 'a table'} that is not selected: it is created as a standalone table.`);
    } else if (r.n_parents > 0) {
      warnings.push(`${name} inherits from another table: table inheritance is not recreated, it is created as a standalone table with all its columns.`);
    }
    const defs = cols.map((col) => columnDefinition(col, identityByColumn.get(`${r.oid}:${col.attnum}`)));
    preTables.push({
      kind: 'table', object: name, existsSql: relationExistsSql(r.schema, r.name),
      sql: `CREATE ${unlogged}TABLE ${name} (\n${defs.map((d) => `    ${d}`).join(',\n')}\n)${partBy}${withOpts}`,
    });
  }

  // ── constraints and indexes ──
  const cons = await readConstraints(c, oids);
  const indexes = await readIndexes(c, oids);
  const preConstraints: SchemaStatement[] = [];
  const postIndexes: SchemaStatement[] = [];
  const postExclude: SchemaStatement[] = [];
  const postIdentity: SchemaStatement[] = [];
  const postForeign: SchemaStatement[] = [];
  const orderIndex = new Map(ordered.map((r, i) => [r.oid, i]));
  cons.sort((a, b) => orderIndex.get(a.rel)! - orderIndex.get(b.rel)!);
  for (const k of cons) {
    const r = rels.get(k.rel)!;
    const inPartitionTree = partitionOfSelected(r);
    // Partitions get their parent's constraints by inheritance (guard 1:
    // declaring them again fails with "already exists"); a foreign key
    // referencing a partitioned table has one internal child per partition
    // (guard 2: those come with the parent constraint).
    if (inPartitionTree && k.inhcount > 0) continue;
    if (k.parent_con !== 0 && (inPartitionTree || k.type === 'f')) continue;
    const table = qn(r.schema, r.name);
    const stmt: SchemaStatement = {
      kind: 'constraint', object: `${table}.${qi(k.name)}`,
      sql: `ALTER TABLE ${table} ADD CONSTRAINT ${qi(k.name)} ${k.def}`,
      existsSql: constraintExistsSql(r.schema, r.name, k.name),
    };
    if (k.type === 'x') {
      postExclude.push(stmt);
    } else if (k.type === 'f') {
      if (!selected.has(k.ref_rel)) {
        const refName = await c.query<{ n: string }>('SELECT $1::oid::regclass::text AS n', [k.ref_rel]);
        warnings.push(`Foreign key ${qi(k.name)} on ${table} references ${refName.rows[0]?.n ?? 'a table'}, which is not selected: the constraint is not created on the target.`);
        continue;
      }
      postForeign.push({ ...stmt, kind: 'foreign-key' });
    } else {
      delete stmt.existsSql;
      preConstraints.push(stmt);
    }
  }
  const identityDone = new Set<number>();
  for (const i of indexes) {
    const r = rels.get(i.rel)!;
    if (i.backs_constraint) continue;
    // Indexes attached to a parent's index are created by the parent's CREATE INDEX.
    if (i.is_partition && partitionOfSelected(r)) continue;
    const table = qn(r.schema, r.name);
    if (!i.valid) {
      warnings.push(`Index ${qn(r.schema, i.name)} on ${table} is invalid on the source (a failed or unfinished build): it is not created on the target.`);
      continue;
    }
    // pg_get_indexdef says ON ONLY for a partitioned table, which would create
    // an invalid index that covers no partition; without ONLY it cascades.
    const def = i.def.replace(/^(CREATE (?:UNIQUE )?INDEX (?:"(?:[^"]|"")*"|[^\s"]+) ON )ONLY /, '$1');
    const exists = relationExistsSql(r.schema, i.name);
    if (i.replident && r.replident === 'i') {
      // The replica identity needs this index: build both in one statement so
      // no ordering between parallel post-data jobs is needed.
      identityDone.add(r.oid);
      postIndexes.push({
        kind: 'replica-identity', object: table,
        sql: `${def.replace(/^CREATE (UNIQUE )?INDEX /, 'CREATE $1INDEX IF NOT EXISTS ')};\nALTER TABLE ${table} REPLICA IDENTITY USING INDEX ${qi(i.name)}`,
        existsSql: `${relationExistsSql(r.schema, r.name)} AND c.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = c.oid AND i.indisreplident AND ic.relname = ${ql(i.name)})`,
      });
      continue;
    }
    postIndexes.push({ kind: 'index', object: qn(r.schema, i.name), sql: def, existsSql: exists });
  }
  for (const r of ordered) {
    const table = qn(r.schema, r.name);
    const base = relationExistsSql(r.schema, r.name);
    if (r.replident === 'f' || r.replident === 'n') {
      postIdentity.push({
        kind: 'replica-identity', object: table,
        sql: `ALTER TABLE ${table} REPLICA IDENTITY ${r.replident === 'f' ? 'FULL' : 'NOTHING'}`,
        existsSql: `${base} AND c.relreplident = '${r.replident}'`,
      });
    } else if (r.replident === 'i' && !identityDone.has(r.oid)) {
      const idx = indexes.find((i) => i.rel === r.oid && i.replident);
      if (!idx) continue;
      postIdentity.push({
        kind: 'replica-identity', object: table,
        sql: `ALTER TABLE ${table} REPLICA IDENTITY USING INDEX ${qi(idx.name)}`,
        existsSql: `${base} AND c.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = c.oid AND i.indisreplident AND ic.relname = ${ql(idx.name)})`,
      });
    }
    const notMigrated = [
      r.triggers > 0 ? `${r.triggers} trigger(s)` : '',
      r.policies > 0 ? `${r.policies} row-level security polic${r.policies === 1 ? 'y' : 'ies'}` : (r.rls ? 'row-level security enabled' : ''),
    ].filter(Boolean);
    if (notMigrated.length > 0) {
      warnings.push(`${table} has ${notMigrated.join(' and ')} on the source; pgferry does not migrate triggers, policies, grants, ownership or comments: recreate them on the target before cutover.`);
    }
  }

  // ── schemas, extensions, collations ──
  for (const [, s] of extensions) if (s) schemas.add(s);
  const collationStmts: SchemaStatement[] = [];
  for (const { schema, ...stmt } of await collationStatements(c, [...collations])) {
    schemas.add(schema);
    collationStmts.push(stmt);
  }
  const schemaStmts = [...schemas].filter((s) => !BUILTIN_SCHEMAS.has(s)).sort().map((s): SchemaStatement => ({
    kind: 'schema', object: qi(s), sql: `CREATE SCHEMA IF NOT EXISTS ${qi(s)}`,
    existsSql: `SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = ${ql(s)}`,
  }));
  const extStmts = [...extensions.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([ext, s]): SchemaStatement => ({
    kind: 'type', object: qi(ext),
    sql: `CREATE EXTENSION IF NOT EXISTS ${qi(ext)}${s && s !== 'pg_catalog' ? ` WITH SCHEMA ${qi(s)}` : ''} CASCADE`,
    existsSql: `SELECT 1 FROM pg_catalog.pg_extension WHERE extname = ${ql(ext)}`,
  }));
  warnings.push(...foreign.values());

  return {
    preData: [...schemaStmts, ...extStmts, ...collationStmts, ...preSequences, ...preTypes, ...preTables, ...preConstraints, ...owners],
    postData: [...postIndexes, ...postExclude, ...postIdentity, ...postForeign],
    sequences: sequences.map(sequenceRef),
    warnings,
  };
}

/** Types pgferry creates (user-defined, not owned by an extension, not built in). */
function creatable(t: TypeRow): boolean {
  return !BUILTIN_SCHEMAS.has(t.schema) && !t.ext && ['e', 'd', 'c', 'r'].includes(t.typtype) && !t.is_array;
}

function typeChildren(t: TypeRow, attrs: Map<number, AttrRow[]>, ranges: Map<number, RangeRow>): number[] {
  if (t.is_array) return [t.elem];
  switch (t.typtype) {
    case 'm': return t.multirange_of ? [t.multirange_of] : [];
    case 'd': return [t.base];
    case 'c': return (attrs.get(t.relid) ?? []).map((a) => a.type_oid);
    case 'r': { const r = ranges.get(t.oid); return r ? [r.subtype_oid] : []; }
    default: return [];
  }
}

/** Load the types and, breadth first, every type they are built from. */
async function loadTypeClosure(c: pg.Client, start: number[], types: Map<number, TypeRow>,
  attrs: Map<number, AttrRow[]>, checks: Map<number, DomainCheckRow[]>, ranges: Map<number, RangeRow>): Promise<void> {
  let frontier = start.filter((o) => !types.has(o));
  while (frontier.length > 0) {
    const rows = await readTypes(c, frontier);
    rows.forEach((t) => types.set(t.oid, t));
    const walk = rows.filter((t) => !BUILTIN_SCHEMAS.has(t.schema) && !t.ext);
    const details = await readTypeDetails(c,
      walk.filter((t) => t.typtype === 'c' && !t.is_array).map((t) => t.relid),
      walk.filter((t) => t.typtype === 'd').map((t) => t.oid),
      walk.filter((t) => t.typtype === 'r').map((t) => t.oid));
    for (const a of details.attrs) { if (!attrs.has(a.relid)) attrs.set(a.relid, []); attrs.get(a.relid)!.push(a); }
    for (const k of details.checks) { if (!checks.has(k.typid)) checks.set(k.typid, []); checks.get(k.typid)!.push(k); }
    for (const r of details.ranges) ranges.set(r.typid, r);
    const next = new Set<number>();
    for (const t of walk) for (const child of typeChildren(t, attrs, ranges)) if (child && !types.has(child)) next.add(child);
    frontier = [...next];
  }
}

/** PostgreSQL's default multirange name (makeMultirangeTypeName, 14+). */
function defaultMultirangeName(range: string): string {
  const at = range.indexOf('range');
  return at >= 0 ? `${range.slice(0, at)}multirange${range.slice(at + 5)}` : `${range}_multirange`;
}

function typeStatements(t: TypeRow, attrs: Map<number, AttrRow[]>, checks: Map<number, DomainCheckRow[]>,
  ranges: Map<number, RangeRow>, warnings: string[]): SchemaStatement[] {
  const name = qn(t.schema, t.name);
  const coll = (s: string | null, n: string | null) => (s && n ? ` COLLATE ${qn(s, n)}` : '');
  switch (t.typtype) {
    case 'e':
      return [{ kind: 'type', object: name, sql: `CREATE TYPE ${name} AS ENUM (${(t.labels ?? []).map(ql).join(', ')})` }];
    case 'd': {
      const all = checks.get(t.oid) ?? [];
      // CREATE DOMAIN takes no NOT VALID: such checks are added afterwards.
      const inline = all.filter((k) => !/ NOT VALID$/.test(k.def));
      const later = all.filter((k) => / NOT VALID$/.test(k.def));
      const parts = [`CREATE DOMAIN ${name} AS ${t.base_type}${coll(t.coll_schema, t.coll_name)}`];
      if (t.default_expr !== null) parts.push(`DEFAULT ${t.default_expr}`);
      if (t.not_null) parts.push('NOT NULL');
      for (const k of inline) parts.push(`CONSTRAINT ${qi(k.name)} ${k.def}`);
      return [
        { kind: 'type', object: name, sql: parts.join(' ') },
        ...later.map((k): SchemaStatement => ({ kind: 'type', object: name, sql: `ALTER DOMAIN ${name} ADD CONSTRAINT ${qi(k.name)} ${k.def}` })),
      ];
    }
    case 'c': {
      if (t.relkind !== 'c') {
        warnings.push(`Type ${name} is the row type of a table; pgferry does not create it separately: create that table on the target first.`);
        return [];
      }
      const fields = (attrs.get(t.relid) ?? []).map((a) => `${qi(a.name)} ${a.type}${coll(a.coll_schema, a.coll_name)}`);
      return [{ kind: 'type', object: name, sql: `CREATE TYPE ${name} AS (${fields.join(', ')})` }];
    }
    case 'r': {
      const r = ranges.get(t.oid);
      if (!r) return [];
      const opts = [`SUBTYPE = ${r.subtype}`];
      if (!r.opc_default) opts.push(`SUBTYPE_OPCLASS = ${qn(r.opc_schema, r.opc_name)}`);
      if (r.coll_schema && r.coll_name) opts.push(`COLLATION = ${qn(r.coll_schema, r.coll_name)}`);
      if (r.canonical) opts.push(`CANONICAL = ${r.canonical}`);
      if (r.subdiff) opts.push(`SUBTYPE_DIFF = ${r.subdiff}`);
      // Name the multirange only when it is not the default, so the statement
      // also runs on a target older than 14.
      if (r.mr_name && (r.mr_schema !== t.schema || r.mr_name !== defaultMultirangeName(t.name))) {
        opts.push(`MULTIRANGE_TYPE_NAME = ${qn(r.mr_schema!, r.mr_name)}`);
      }
      return [{ kind: 'type', object: name, sql: `CREATE TYPE ${name} AS RANGE (${opts.join(', ')})` }];
    }
    case 'b':
      warnings.push(`Type ${name} is a base type defined by functions outside any extension; pgferry cannot create it: create it on the target before the schema stage runs.`);
      return [];
    default:
      return [];
  }
}

function columnDefinition(col: ColRow, identitySeq: SeqRow | undefined): string {
  const parts = [qi(col.name), col.type];
  if (col.coll_schema && col.coll_name) parts.push(`COLLATE ${qn(col.coll_schema, col.coll_name)}`);
  if (col.generated && col.default_expr !== null) {
    // 's' stored (12+); 'v' virtual (18+).
    parts.push(`GENERATED ALWAYS AS (${col.default_expr}) ${col.generated === 'v' ? 'VIRTUAL' : 'STORED'}`);
  } else if (col.identity) {
    const how = col.identity === 'a' ? 'ALWAYS' : 'BY DEFAULT';
    // SEQUENCE NAME keeps the source's name, which the cutover sets.
    const opts = identitySeq ? ` (SEQUENCE NAME ${qn(identitySeq.schema, identitySeq.name)} ${sequenceOptions(identitySeq)})` : '';
    parts.push(`GENERATED ${how} AS IDENTITY${opts}`);
  } else if (col.default_expr !== null) {
    parts.push(`DEFAULT ${col.default_expr}`);
  }
  if (col.not_null) parts.push('NOT NULL');
  return parts.join(' ');
}

// ───────────────────────────── the target side ─────────────────────────────

export interface ApplyPreDataOptions {
  /**
   * Runs inside the schema transaction just before COMMIT, e.g. to record a
   * "schema done" marker atomically with the DDL. Default: nothing.
   */
  beforeCommit?: (target: pg.Client) => Promise<void>;
}

function remedyFor(e: unknown, object: string): string {
  const hint = (e as PgServerError | undefined)?.hint;
  switch (sqlState(e)) {
    case '42P07': case '42710': case '42P06':
      return `${object} already exists on the target: drop it, or set \`schemaMode: 'existing'\` to load into the existing schema.`;
    case '42883': case '42704':
      return 'Create the missing function, operator, type or collation on the target first (pgferry does not migrate functions), then retry; or create the schema yourself and set `schemaMode: \'existing\'`.';
    case '58P01': case '0A000':
      return `Install the extension on the target server (or allow-list it on a managed service), then retry.${hint ? ` ${hint}` : ''}`;
    case '42501':
      return 'Grant the target user the CREATE privilege on the target database (and on the schemas named above), or run the migration as the owner.';
    default:
      return `${hint ? `${hint} ` : ''}Fix the cause named above on the target, then retry; nothing was created (the schema stage runs in one transaction).`;
  }
}

/**
 * Run `plan.preData` on the target in ONE transaction: all of it or nothing.
 * Fails with SCHEMA_FAILED when a table already exists on the target (before
 * running anything), or naming the statement that failed. Schemas,
 * extensions and collations that already exist are kept as they are.
 */
export async function applyPreData(target: pg.Client, plan: SchemaPlan, opts: ApplyPreDataOptions = {}): Promise<void> {
  const tablesToCreate = plan.preData.filter((s) => (s.kind === 'table' || s.kind === 'partition') && s.existsSql);
  const existing: string[] = [];
  for (let i = 0; i < tablesToCreate.length; i += 200) {
    const chunk = tablesToCreate.slice(i, i + 200);
    const r = await target.query<{ object: string }>(chunk.map((s) => `SELECT ${ql(s.object)} AS object WHERE EXISTS (${s.existsSql})`).join('\nUNION ALL\n'));
    existing.push(...r.rows.map((row) => row.object));
  }
  if (existing.length > 0) {
    throw new PgferryError('SCHEMA_FAILED',
      `The target already has ${existing.length === 1 ? 'table' : 'tables'} ${existing.join(', ')}; nothing was created.`,
      `Drop ${existing.length === 1 ? 'it' : 'them'} on the target, or set \`schemaMode: 'existing'\` to load into the existing tables.`);
  }
  let current: SchemaStatement | undefined;
  try {
    await target.query('BEGIN');
    // Every name in the plan is qualified; pg_catalog alone keeps a target
    // session's search_path from resolving a built-in name to a user object.
    await target.query('SET LOCAL search_path = pg_catalog');
    for (const s of plan.preData) {
      current = s;
      if (s.existsSql && s.kind !== 'table' && s.kind !== 'partition' && (await target.query(s.existsSql)).rows.length > 0) continue;
      await target.query(s.sql);
    }
    current = undefined;
    await opts.beforeCommit?.(target);
    await target.query('COMMIT');
  } catch (e) {
    await target.query('ROLLBACK').catch(() => undefined);
    if (e instanceof PgferryError) throw e;
    const err = e as PgServerError;
    const state = sqlState(e);
    const what = current ? `Creating ${current.kind} ${current.object} on the target failed` : 'Committing the schema on the target failed';
    throw new PgferryError('SCHEMA_FAILED',
      `${what}: ${err?.message ?? String(e)}${state ? ` (SQLSTATE ${state})` : ''}${current ? `; statement: ${firstLine(current.sql)}` : ''}. Nothing was created.`,
      remedyFor(e, current?.object ?? 'an object'), { cause: e });
  }
}

/**
 * Run one post-data statement unless its `existsSql` finds it built; returns
 * whether it ran. Errors become SCHEMA_FAILED naming the object.
 */
export async function applyPostDataStatement(target: pg.Client, s: SchemaStatement): Promise<boolean> {
  try {
    if (s.existsSql && (await target.query(s.existsSql)).rows.length > 0) return false;
    await target.query(s.sql);
    return true;
  } catch (e) {
    const err = e as PgServerError;
    const state = sqlState(e);
    throw new PgferryError('SCHEMA_FAILED',
      `Building ${s.kind} ${s.object} on the target failed: ${err?.message ?? String(e)}${state ? ` (SQLSTATE ${state})` : ''}; statement: ${firstLine(s.sql)}.`,
      remedyFor(e, s.object), { cause: e });
  }
}

/**
 * For `schemaMode: 'existing'`: every selected table must exist on the target
 * with every non-generated source column (by name); a target column must not
 * be generated where the source's is not (its values could not be loaded),
 * and a target-only column must not be NOT NULL without a default (rows from
 * the source could not be inserted). Throws SCHEMA_DRIFT listing all of it.
 */
export async function verifyExistingSchema(target: pg.Client, tables: TableInfo[]): Promise<void> {
  if (tables.length === 0) return;
  const r = await target.query<{
    schema: string; name: string; kind: string;
    columns: Array<{ name: string; generated: boolean; notNull: boolean; hasDefault: boolean; identity: boolean }>;
  }>(`
    SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind,
           coalesce(json_agg(json_build_object('name', a.attname, 'generated', a.attgenerated <> '', 'notNull', a.attnotnull,
                                               'hasDefault', a.atthasdef, 'identity', a.attidentity <> '') ORDER BY a.attnum)
                    FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped), '[]') AS columns
      FROM unnest($1::text[], $2::text[]) AS want(schema, name)
      JOIN pg_catalog.pg_namespace n ON n.nspname = want.schema
      JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = want.name
      LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
     GROUP BY n.nspname, c.relname, c.relkind`, [tables.map((t) => t.schema), tables.map((t) => t.name)]);
  const found = new Map(r.rows.map((row) => [`${row.schema}\u0000${row.name}`, row]));
  const missing: string[] = [];
  const problems: string[] = [];
  const fixes: string[] = [];
  for (const t of tables) {
    const name = qn(t.schema, t.name);
    const have = found.get(`${t.schema}\u0000${t.name}`);
    if (!have) { missing.push(name); continue; }
    if (have.kind !== 'r' && have.kind !== 'p') { problems.push(`${name} exists but is not a table (relkind '${have.kind}')`); continue; }
    const cols = new Map(have.columns.map((col) => [col.name, col]));
    for (const col of t.columns) {
      const tc = cols.get(col.name);
      if (col.generated) continue;
      if (!tc) {
        problems.push(`column ${name}.${qi(col.name)} is missing`);
        fixes.push(`ALTER TABLE ${name} ADD COLUMN ${qi(col.name)} ${col.type}`);
      } else if (tc.generated) {
        problems.push(`column ${name}.${qi(col.name)} is generated on the target but not on the source, so its values cannot be loaded`);
      }
    }
    const sourceCols = new Set(t.columns.map((col) => col.name));
    for (const tc of have.columns) {
      if (!sourceCols.has(tc.name) && tc.notNull && !tc.hasDefault && !tc.generated && !tc.identity) {
        problems.push(`column ${name}.${qi(tc.name)} exists only on the target and is NOT NULL without a default, so rows from the source cannot be inserted`);
      }
    }
  }
  if (missing.length > 0) problems.unshift(`missing ${missing.length === 1 ? 'table' : 'tables'} ${capped(missing, ', ')}`);
  if (problems.length > 0) {
    const examples = fixes.length > 0 ? ` (for example: ${capped(fixes, '; ', 10)})` : '';
    throw new PgferryError('SCHEMA_DRIFT',
      `The target schema does not match the selected source tables: ${capped(problems, '; ')}.`,
      `Create what is missing on the target${examples}, or drop the target tables and set \`schemaMode: 'create'\` so that pgferry creates them.`);
  }
}

/** Join at most `max` items, saying how many more there are. */
function capped(items: string[], sep: string, max = 25): string {
  return items.length <= max ? items.join(sep) : `${items.slice(0, max).join(sep)}${sep}and ${items.length - max} more`;
}

/**
 * All sequences the selected tables use — owned by their columns (serial,
 * identity) or referenced by a column default via nextval() — for the cutover
 * to set. Each is listed once, ordered by schema and name.
 */
export async function listSequences(source: pg.Client, tables: TableInfo[]): Promise<SequenceRef[]> {
  return (await readSequences(source, [...new Set(tables.map((t) => t.oid))])).map(sequenceRef);
}
