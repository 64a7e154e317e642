/**
 * schema-read — the schema stage's reads of the SOURCE catalog: relations,
 * columns, sequences, types (and every type they are built from),
 * constraints, indexes, collations, and what their DDL depends on.
 *
 * Input: a source connection and the oids of the selected tables.
 * Output: catalog rows, as the plan (schema.ts) turns them into DDL.
 *
 * Every read runs under `withCanonicalSettings` (`search_path = pg_catalog`
 * and ISO date output), so `format_type`, `pg_get_expr`,
 * `pg_get_constraintdef` and `pg_get_indexdef` qualify every non-built-in
 * name: the DDL means the same on the target whatever its search_path.
 * Queries work on sources 12–17; columns that do not exist on every version
 * are read through `to_jsonb(row)`.
 */
import type pg from 'pg';

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

export async function withCanonicalSettings<T>(client: pg.Client, fn: () => Promise<T>): Promise<T> {
  const names = CANONICAL_SETTINGS.map(([n]) => n);
  const saved = await client.query(`SELECT ${names.map((_, i) => `current_setting($${i + 1}) AS s${i}`).join(', ')}`, names);
  const setAll = (values: string[]) =>
    client.query(
      `SELECT ${names.map((_, i) => `set_config($${2 * i + 1}, $${2 * i + 2}, false)`).join(', ')}`,
      names.flatMap((n, i) => [n, values[i]]),
    );
  await setAll(CANONICAL_SETTINGS.map(([, v]) => v));
  try {
    return await fn();
  } finally {
    // In an aborted transaction this fails, and the rollback restores them anyway.
    await setAll(names.map((_, i) => saved.rows[0][`s${i}`] as string)).catch(() => undefined);
  }
}

export const BUILTIN_SCHEMAS = new Set(['pg_catalog', 'information_schema']);

// ───────────────────────────── catalog reads ─────────────────────────────

export interface RelRow {
  oid: number;
  schema: string;
  name: string;
  kind: string;
  persistence: string;
  replident: string;
  is_partition: boolean;
  options: string[] | null;
  partkey: string | null;
  bound: string | null;
  parent_oid: number | null;
  n_parents: number;
  triggers: number;
  policies: number;
  rls: boolean;
}

export async function readRelations(c: pg.Client, oids: number[]): Promise<Map<number, RelRow>> {
  const r = await c.query<RelRow>(
    `
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
     WHERE c.oid = ANY($1::oid[])`,
    [oids],
  );
  return new Map(r.rows.map((row) => [row.oid, row]));
}

export interface ColRow {
  rel: number;
  attnum: number;
  name: string;
  type: string;
  type_oid: number;
  not_null: boolean;
  identity: string;
  generated: string;
  coll_schema: string | null;
  coll_name: string | null;
  default_expr: string | null;
}

export async function readColumns(c: pg.Client, oids: number[]): Promise<Map<number, ColRow[]>> {
  const r = await c.query<ColRow>(
    `
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
     ORDER BY a.attrelid, a.attnum`,
    [oids],
  );
  const out = new Map<number, ColRow[]>();
  for (const row of r.rows) {
    if (!out.has(row.rel)) out.set(row.rel, []);
    out.get(row.rel)!.push(row);
  }
  return out;
}

export interface SeqRow {
  oid: number;
  schema: string;
  name: string;
  persistence: string;
  type: string;
  start: string;
  increment: string;
  min: string;
  max: string;
  cache: string;
  cycle: boolean;
  deptype: string | null;
  owner_rel: number | null;
  owner_attnum: number | null;
  owner_schema: string | null;
  owner_table: string | null;
  owner_column: string | null;
}

/**
 * Sequences the tables use: owned by one of their columns (serial: deptype
 * 'a'; identity: 'i'), or referenced by a column default (nextval() records
 * a dependency of the default on the sequence).
 */
export async function readSequences(c: pg.Client, oids: number[], schemas: string[] = []): Promise<SeqRow[]> {
  const r = await c.query<SeqRow>(
    `
    WITH used AS (
      SELECT d.objid AS seq FROM pg_depend d
       WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
         AND d.refobjid = ANY($1::oid[]) AND d.refobjsubid > 0 AND d.deptype IN ('a', 'i')
      UNION
      SELECT d.refobjid FROM pg_depend d JOIN pg_attrdef ad ON ad.oid = d.objid
       WHERE d.classid = 'pg_attrdef'::regclass AND d.refclassid = 'pg_class'::regclass AND ad.adrelid = ANY($1::oid[])
      UNION
      -- Every other sequence of the migrated schemas (a function's nextval, say); not an extension's, nor the identity of a table not migrated.
      SELECT s.oid FROM pg_class s JOIN pg_namespace sn ON sn.oid = s.relnamespace WHERE s.relkind = 'S' AND sn.nspname = ANY($2::text[])
         AND NOT EXISTS (SELECT 1 FROM pg_depend xd WHERE xd.classid = 'pg_class'::regclass AND xd.objid = s.oid
                            AND (xd.deptype = 'e' OR (xd.deptype = 'i' AND xd.refobjid <> ALL($1::oid[]))))
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
     ORDER BY n.nspname, c.relname`,
    [oids, schemas],
  );
  const seen = new Set<number>();
  return r.rows.filter((s) => !seen.has(s.oid) && seen.add(s.oid) !== undefined);
}

export interface TypeRow {
  oid: number;
  schema: string;
  name: string;
  typtype: string;
  is_array: boolean;
  elem: number;
  base: number;
  base_type: string | null;
  not_null: boolean;
  default_expr: string | null;
  relid: number;
  relkind: string | null;
  coll_schema: string | null;
  coll_name: string | null;
  ext: string | null;
  ext_schema: string | null;
  multirange_of: number | null;
  labels: string[] | null;
}

async function readTypes(c: pg.Client, oids: number[]): Promise<TypeRow[]> {
  const r = await c.query<TypeRow>(
    `
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
     WHERE t.oid = ANY($1::oid[])`,
    [oids],
  );
  return r.rows;
}

export interface AttrRow {
  relid: number;
  name: string;
  type: string;
  type_oid: number;
  coll_schema: string | null;
  coll_name: string | null;
}
export interface DomainCheckRow {
  typid: number;
  name: string;
  def: string;
}
export interface RangeRow {
  typid: number;
  subtype: string;
  subtype_oid: number;
  opc_schema: string;
  opc_name: string;
  opc_default: boolean;
  coll_schema: string | null;
  coll_name: string | null;
  canonical: string | null;
  subdiff: string | null;
  mr_schema: string | null;
  mr_name: string | null;
}

async function readTypeDetails(c: pg.Client, composites: number[], domains: number[], ranges: number[]) {
  const attrs =
    composites.length === 0
      ? []
      : (
          await c.query<AttrRow>(
            `
    SELECT a.attrelid::int AS relid, a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, a.atttypid::int AS type_oid,
           CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN cn.nspname END AS coll_schema,
           CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN co.collname END AS coll_name
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
      LEFT JOIN pg_collation co ON co.oid = a.attcollation LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
     WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY a.attrelid, a.attnum`,
            [composites],
          )
        ).rows;
  // Domain NOT NULL lives in typnotnull (17 also lists it as contype 'n').
  const checks =
    domains.length === 0
      ? []
      : (
          await c.query<DomainCheckRow>(
            `
    SELECT k.contypid::int AS typid, k.conname AS name, pg_get_constraintdef(k.oid) AS def
      FROM pg_constraint k WHERE k.contypid = ANY($1::oid[]) AND k.contype = 'c'
     ORDER BY k.contypid, k.conname`,
            [domains],
          )
        ).rows;
  const rangeRows =
    ranges.length === 0
      ? []
      : (
          await c.query<RangeRow>(
            `
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
     WHERE r.rngtypid = ANY($1::oid[])`,
            [ranges],
          )
        ).rows;
  return { attrs, checks, ranges: rangeRows };
}

interface DepRow {
  ref_class: string;
  ref_oid: number;
  ref_desc: string;
  used_by: string;
  ref_schema: string | null;
  ext: string | null;
  ext_schema: string | null;
}

/**
 * What the DDL of these relations and types refers to outside pg_catalog:
 * types used only in expressions, collations, functions, operators and
 * operator classes, with the extension that owns each (if any).
 */
async function readDependencies(c: pg.Client, relOids: number[], typeOids: number[]): Promise<DepRow[]> {
  const r = await c.query<DepRow>(
    `
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
      LEFT JOIN pg_namespace xn ON xn.oid = x.extnamespace`,
    [relOids, typeOids],
  );
  return r.rows;
}

/** A user-defined collation; its columns differ across 12–17, so the row comes as json (`j`). */
export interface CollationRow {
  schema: string;
  name: string;
  j: Record<string, unknown>;
}

export async function readCollations(c: pg.Client, oids: number[]): Promise<CollationRow[]> {
  if (oids.length === 0) return [];
  const r = await c.query<CollationRow>(
    `
    SELECT n.nspname AS schema, co.collname AS name, to_jsonb(co) AS j
      FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace
     WHERE co.oid = ANY($1::oid[]) ORDER BY 1, 2`,
    [oids],
  );
  return r.rows;
}

export interface ConRow {
  oid: number;
  rel: number;
  name: string;
  type: string;
  def: string;
  ref_rel: number;
  inhcount: number;
  parent_con: number;
}

export async function readConstraints(c: pg.Client, oids: number[]): Promise<ConRow[]> {
  // Only the kinds we recreate: 18 adds NOT NULL constraints ('n'), which
  // travel with the columns; constraint triggers ('t') are triggers.
  const r = await c.query<ConRow>(
    `
    SELECT k.oid::int AS oid, k.conrelid::int AS rel, k.conname AS name, k.contype::text AS type,
           pg_get_constraintdef(k.oid) AS def, k.confrelid::int AS ref_rel,
           k.coninhcount::int AS inhcount, k.conparentid::int AS parent_con
      FROM pg_constraint k
     WHERE k.conrelid = ANY($1::oid[]) AND k.contype IN ('p', 'u', 'c', 'x', 'f')
     ORDER BY k.conrelid, array_position(ARRAY['p', 'u', 'c', 'x', 'f'], k.contype::text), k.conname`,
    [oids],
  );
  return r.rows;
}

export interface IndexRow {
  oid: number;
  rel: number;
  name: string;
  def: string;
  valid: boolean;
  replident: boolean;
  is_partition: boolean;
  backs_constraint: boolean;
}

export async function readIndexes(c: pg.Client, oids: number[]): Promise<IndexRow[]> {
  const r = await c.query<IndexRow>(
    `
    SELECT i.indexrelid::int AS oid, i.indrelid::int AS rel, ic.relname AS name, pg_get_indexdef(i.indexrelid) AS def,
           i.indisvalid AS valid, i.indisreplident AS replident, ic.relispartition AS is_partition,
           EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid
                      AND k.contype IN ('p', 'u', 'x')) AS backs_constraint
      FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
     WHERE i.indrelid = ANY($1::oid[])
     ORDER BY i.indrelid, ic.relname`,
    [oids],
  );
  return r.rows;
}

// ───────────────────────────── the type graph ─────────────────────────────

/**
 * The types the selected tables' columns use, every type those are built
 * from, and what the DDL of the tables and of the types to create refers to
 * outside pg_catalog.
 */
export interface TypeGraph {
  types: Map<number, TypeRow>;
  /** Composite types' fields, by the composite's relid. */
  attrsByRel: Map<number, AttrRow[]>;
  checksByType: Map<number, DomainCheckRow[]>;
  rangeByType: Map<number, RangeRow>;
  /** The column types and the types the DDL refers to: where the DDL's walk starts. */
  roots: Set<number>;
  /** Extensions the DDL needs: name → the extension's schema. */
  extensions: Map<string, string | null>;
  /** User-defined collations the DDL needs. */
  collations: Set<number>;
  /** What the DDL needs but pgferry does not create: description → warning. */
  foreign: Map<string, string>;
}

/**
 * Read the type graph of the relations `oids`, walking to a fixed point:
 * load the closure of the types found so far, then read what the relations
 * (once) and the types to create depend on, which may name more types.
 */
export async function readTypeGraph(
  c: pg.Client,
  oids: number[],
  columns: Map<number, ColRow[]>,
  whole: { types: number[]; schemas: Set<string> } = { types: [], schemas: new Set() },
): Promise<TypeGraph> {
  const g: TypeGraph = {
    types: new Map(),
    attrsByRel: new Map(),
    checksByType: new Map(),
    rangeByType: new Map(),
    roots: new Set(),
    extensions: new Map(),
    collations: new Set(),
    foreign: new Map(),
  };
  for (const cols of columns.values()) for (const col of cols) g.roots.add(col.type_oid);
  for (const t of whole.types) g.roots.add(t);
  const scannedTypes = new Set<number>();
  let relScanDone = false;
  for (;;) {
    await loadTypeClosure(c, [...g.roots], g);
    const toCreate = [...g.types.values()].filter((t) => creatable(t) && !scannedTypes.has(t.oid));
    if (relScanDone && toCreate.length === 0) break;
    const relIds = relScanDone ? [] : oids;
    const compositeRels = toCreate.filter((t) => t.typtype === 'c').map((t) => t.relid);
    const deps = await readDependencies(
      c,
      [...relIds, ...compositeRels],
      toCreate.map((t) => t.oid),
    );
    relScanDone = true;
    toCreate.forEach((t) => scannedTypes.add(t.oid));
    const newTypes = addDependencies(g, deps, whole.schemas);
    if (newTypes === 0 && toCreate.length === 0) break;
  }
  for (const t of g.types.values()) if (t.ext) g.extensions.set(t.ext, t.ext_schema);
  return g;
}

/** Sort what the DDL refers to into `g`; returns how many of it are types not seen before. */
function addDependencies(g: TypeGraph, deps: DepRow[], migrated: Set<string>): number {
  let newTypes = 0;
  for (const d of deps) {
    if (d.ext) {
      g.extensions.set(d.ext, d.ext_schema);
      continue;
    }
    if (d.ref_schema === null || BUILTIN_SCHEMAS.has(d.ref_schema)) continue;
    if (d.ref_class === 'pg_type') {
      if (!g.roots.has(d.ref_oid)) {
        g.roots.add(d.ref_oid);
        newTypes++;
      }
    } else if (d.ref_class === 'pg_collation') {
      g.collations.add(d.ref_oid);
    } else if (!migrated.has(d.ref_schema)) {
      // Functions and operators of the migrated schemas are created with them (schema-objects-plan.ts).
      g.foreign.set(
        d.ref_desc,
        `${d.ref_desc} (used by ${d.used_by}) is not created by pgferry: create it on the target before the schema stage runs, or the DDL that uses it fails.`,
      );
    }
  }
  return newTypes;
}

/** Types pgferry creates (user-defined, not owned by an extension, not built in). */
function creatable(t: TypeRow): boolean {
  return !BUILTIN_SCHEMAS.has(t.schema) && !t.ext && ['e', 'd', 'c', 'r'].includes(t.typtype) && !t.is_array;
}

/** The types `t` is built from. */
export function typeChildren(t: TypeRow, g: Pick<TypeGraph, 'attrsByRel' | 'rangeByType'>): number[] {
  if (t.is_array) return [t.elem];
  switch (t.typtype) {
    case 'm':
      return t.multirange_of ? [t.multirange_of] : [];
    case 'd':
      return [t.base];
    case 'c':
      return (g.attrsByRel.get(t.relid) ?? []).map((a) => a.type_oid);
    case 'r': {
      const r = g.rangeByType.get(t.oid);
      return r ? [r.subtype_oid] : [];
    }
    default:
      return [];
  }
}

/** Load the types and, breadth first, every type they are built from. */
async function loadTypeClosure(c: pg.Client, start: number[], g: TypeGraph): Promise<void> {
  const { types, attrsByRel: attrs, checksByType: checks, rangeByType: ranges } = g;
  let frontier = start.filter((o) => !types.has(o));
  while (frontier.length > 0) {
    const rows = await readTypes(c, frontier);
    rows.forEach((t) => types.set(t.oid, t));
    const walk = rows.filter((t) => !BUILTIN_SCHEMAS.has(t.schema) && !t.ext);
    const details = await readTypeDetails(
      c,
      walk.filter((t) => t.typtype === 'c' && !t.is_array).map((t) => t.relid),
      walk.filter((t) => t.typtype === 'd').map((t) => t.oid),
      walk.filter((t) => t.typtype === 'r').map((t) => t.oid),
    );
    for (const a of details.attrs) {
      if (!attrs.has(a.relid)) attrs.set(a.relid, []);
      attrs.get(a.relid)!.push(a);
    }
    for (const k of details.checks) {
      if (!checks.has(k.typid)) checks.set(k.typid, []);
      checks.get(k.typid)!.push(k);
    }
    for (const r of details.ranges) ranges.set(r.typid, r);
    const next = new Set<number>();
    for (const t of walk) for (const child of typeChildren(t, g)) if (child && !types.has(child)) next.add(child);
    frontier = [...next];
  }
}
