/**
 * schema-objects-read — the schema stage's reads of everything in the
 * migrated schemas that is not a table: functions, procedures, aggregates,
 * operators, casts, views and materialized views, triggers, rules,
 * policies, text search dictionaries and configurations, extended
 * statistics, comments, owners, grants and default privileges, and the
 * `pg_depend` edges between all of it.
 *
 * Input: a source connection (under `withCanonicalSettings`, so every
 * deparser qualifies names), the migrated schemas and tables.
 * Output: catalog rows; schema-objects.ts turns them into DDL.
 *
 * Objects that belong to an extension are left out (the extension brings
 * them). Queries work on sources 12–18; columns that differ across versions
 * are read through `to_jsonb(row)`.
 */
import type pg from 'pg';
import { compilePattern } from './catalog';
import { GUARD_TRIGGER } from './verify-guard';

/** An object of the catalog, as pg_depend names it. */
export interface ObjRef {
  classid: number;
  objid: number;
}
export const refKey = (r: ObjRef): string => `${r.classid}:${r.objid}`;

/** The catalogs' oids (stable across versions, but read once to be sure). */
export interface ClassIds {
  pg_class: number;
  pg_proc: number;
  pg_type: number;
  pg_operator: number;
  pg_cast: number;
  pg_ts_dict: number;
  pg_ts_config: number;
  pg_constraint: number;
  pg_attrdef: number;
  pg_rewrite: number;
  pg_trigger: number;
  pg_policy: number;
  pg_statistic_ext: number;
  pg_namespace: number;
  pg_collation: number;
  pg_extension: number;
  pg_index: number;
}

export async function readClassIds(c: pg.Client): Promise<ClassIds> {
  const names = [
    'pg_class',
    'pg_proc',
    'pg_type',
    'pg_operator',
    'pg_cast',
    'pg_ts_dict',
    'pg_ts_config',
    'pg_constraint',
    'pg_attrdef',
    'pg_rewrite',
    'pg_trigger',
    'pg_policy',
    'pg_statistic_ext',
    'pg_namespace',
    'pg_collation',
    'pg_extension',
    'pg_index',
  ];
  const r = await c.query<{ n: string; oid: number }>(`SELECT n, n::regclass::oid::int AS oid FROM unnest($1::text[]) AS n`, [names]);
  return Object.fromEntries(r.rows.map((row) => [row.n, row.oid])) as unknown as ClassIds;
}

/** One privilege of an ACL; `grantee` 'public' is PUBLIC. Null ACL: the object has its defaults. */
export interface AclEntry {
  grantee: string;
  priv: string;
  grantable: boolean;
}

/** SQL: the ACL `expr` exploded to `AclEntry[]` json (NULL stays NULL: the defaults). */
const aclJson = (expr: string) =>
  `(SELECT coalesce(json_agg(json_build_object('grantee', CASE WHEN e.grantee = 0 THEN 'public' ELSE pg_get_userbyid(e.grantee) END, 'priv', e.privilege_type, 'grantable', e.is_grantable)), '[]') FROM aclexplode(${expr}) e WHERE ${expr} IS NOT NULL HAVING ${expr} IS NOT NULL)`;

/** `NOT EXISTS` this object being a member of an extension. */
const notInExtension = (classid: string, oid: string) =>
  `NOT EXISTS (SELECT 1 FROM pg_depend xd WHERE xd.classid = ${classid} AND xd.objid = ${oid} AND (xd.deptype = 'i' OR (xd.refclassid = 'pg_extension'::regclass AND xd.deptype = 'e')))`;

export interface FunctionRow {
  oid: number;
  schema: string;
  name: string;
  /** 'f' function, 'p' procedure, 'a' aggregate, 'w' window function. */
  kind: string;
  identity_args: string;
  args: string;
  def: string | null;
  owner: string;
  acl: AclEntry[] | null;
  /** Aggregates: pg_aggregate as json, with the functions and types it names already as text. */
  agg: Record<string, unknown> | null;
}

export async function readFunctions(c: pg.Client, schemas: number[]): Promise<FunctionRow[]> {
  const r = await c.query<FunctionRow>(
    `
    SELECT p.oid::int AS oid, n.nspname AS schema, p.proname AS name, p.prokind::text AS kind,
           pg_get_function_identity_arguments(p.oid) AS identity_args, pg_get_function_arguments(p.oid) AS args,
           CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END AS def,
           pg_get_userbyid(p.proowner) AS owner, ${aclJson('p.proacl')} AS acl,
           CASE WHEN p.prokind = 'a' THEN (
             SELECT jsonb_build_object(
               'kind', a.aggkind, 'sfunc', a.aggtransfn::regproc::text, 'stype', format_type(a.aggtranstype, NULL),
               'sspace', a.aggtransspace, 'finalfunc', nullif(a.aggfinalfn::oid, 0)::regproc::text,
               'finalextra', a.aggfinalextra, 'combinefunc', nullif(a.aggcombinefn::oid, 0)::regproc::text,
               'serialfunc', nullif(a.aggserialfn::oid, 0)::regproc::text, 'deserialfunc', nullif(a.aggdeserialfn::oid, 0)::regproc::text,
               'initcond', a.agginitval, 'msfunc', nullif(a.aggmtransfn::oid, 0)::regproc::text,
               'minvfunc', nullif(a.aggminvtransfn::oid, 0)::regproc::text,
               'mstype', CASE WHEN a.aggmtranstype <> 0 THEN format_type(a.aggmtranstype, NULL) END, 'msspace', a.aggmtransspace,
               'mfinalfunc', nullif(a.aggmfinalfn::oid, 0)::regproc::text, 'mfinalextra', a.aggmfinalextra,
               'minitcond', a.aggminitval, 'sortop', nullif(a.aggsortop, 0)::regoperator::text,
               'finalmodify', to_jsonb(a) ->> 'aggfinalmodify', 'mfinalmodify', to_jsonb(a) ->> 'aggmfinalmodify',
               'parallel', p.proparallel, 'numdirect', a.aggnumdirectargs)
             FROM pg_aggregate a WHERE a.aggfnoid = p.oid) END AS agg
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE p.pronamespace = ANY($1::oid[]) AND ${notInExtension("'pg_proc'::regclass", 'p.oid')}
     ORDER BY n.nspname, p.proname, p.oid`,
    [schemas],
  );
  return r.rows;
}

export interface OperatorRow {
  oid: number;
  schema: string;
  name: string;
  left: string | null;
  right: string | null;
  fn: string;
  commutator: string | null;
  negator: string | null;
  restrict: string | null;
  join: string | null;
  hashes: boolean;
  merges: boolean;
  owner: string;
}

export async function readOperators(c: pg.Client, schemas: number[]): Promise<OperatorRow[]> {
  const r = await c.query<OperatorRow>(
    `
    SELECT o.oid::int AS oid, n.nspname AS schema, o.oprname AS name,
           CASE WHEN o.oprleft <> 0 THEN format_type(o.oprleft, NULL) END AS left,
           CASE WHEN o.oprright <> 0 THEN format_type(o.oprright, NULL) END AS right,
           o.oprcode::regproc::text AS fn,
           CASE WHEN o.oprcom <> 0 THEN (SELECT quote_ident(cn.nspname) || '.' || co.oprname FROM pg_operator co JOIN pg_namespace cn ON cn.oid = co.oprnamespace WHERE co.oid = o.oprcom) END AS commutator,
           CASE WHEN o.oprnegate <> 0 THEN (SELECT quote_ident(nn.nspname) || '.' || ng.oprname FROM pg_operator ng JOIN pg_namespace nn ON nn.oid = ng.oprnamespace WHERE ng.oid = o.oprnegate) END AS negator,
           nullif(o.oprrest::oid, 0)::regproc::text AS restrict, nullif(o.oprjoin::oid, 0)::regproc::text AS join,
           o.oprcanhash AS hashes, o.oprcanmerge AS merges, pg_get_userbyid(o.oprowner) AS owner
      FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
     WHERE o.oprnamespace = ANY($1::oid[]) AND o.oprcode <> 0 AND ${notInExtension("'pg_operator'::regclass", 'o.oid')}
     ORDER BY n.nspname, o.oprname, o.oid`,
    [schemas],
  );
  return r.rows;
}

export interface CastRow {
  oid: number;
  source: string;
  target: string;
  fn: string | null;
  method: string;
  context: string;
}

/** User-defined casts that involve a type or function of the migrated schemas. */
export async function readCasts(c: pg.Client, schemas: number[]): Promise<CastRow[]> {
  const r = await c.query<CastRow>(
    `
    SELECT k.oid::int AS oid, format_type(k.castsource, NULL) AS source, format_type(k.casttarget, NULL) AS target,
           CASE WHEN k.castfunc <> 0 THEN k.castfunc::regprocedure::text END AS fn, k.castmethod::text AS method, k.castcontext::text AS context
      FROM pg_cast k
     WHERE k.oid >= 16384 AND ${notInExtension("'pg_cast'::regclass", 'k.oid')}
       AND (EXISTS (SELECT 1 FROM pg_type t WHERE t.oid IN (k.castsource, k.casttarget) AND t.typnamespace = ANY($1::oid[]))
            OR EXISTS (SELECT 1 FROM pg_proc p WHERE p.oid = k.castfunc AND p.pronamespace = ANY($1::oid[])))
     ORDER BY 2, 3`,
    [schemas],
  );
  return r.rows;
}

export interface ViewRow {
  oid: number;
  schema: string;
  name: string;
  /** 'v' view, 'm' materialized view. */
  kind: string;
  def: string;
  options: string[] | null;
  owner: string;
  acl: AclEntry[] | null;
  /** Relations the view reads that are neither migrated tables nor views of the migrated schemas. */
  missing: string[];
  /** A unique index without WHERE on plain columns: REFRESH ... CONCURRENTLY works. */
  concurrent_ok: boolean;
}

export async function readViews(c: pg.Client, schemas: number[], tableOids: number[]): Promise<ViewRow[]> {
  const r = await c.query<ViewRow>(
    `
    WITH views AS (
      SELECT c.oid FROM pg_class c
       WHERE c.relnamespace = ANY($1::oid[]) AND c.relkind IN ('v', 'm') AND ${notInExtension("'pg_class'::regclass", 'c.oid')}
    )
    SELECT c.oid::int AS oid, n.nspname AS schema, c.relname AS name, c.relkind::text AS kind,
           regexp_replace(pg_get_viewdef(c.oid), ';\\s*$', '') AS def, c.reloptions AS options,
           pg_get_userbyid(c.relowner) AS owner, ${aclJson('c.relacl')} AS acl,
           coalesce((SELECT array_agg(DISTINCT d.refobjid::regclass::text)
              FROM pg_rewrite w JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid
             WHERE w.ev_class = c.oid AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> c.oid
               AND d.refobjid NOT IN (SELECT oid FROM views) AND d.refobjid <> ALL($2::oid[])
               -- relations that hold rows (a composite type's or a sequence's pg_class entry is created with its type or sequence)
               AND (SELECT rc.relkind IN ('r', 'p', 'v', 'm', 'f') AND rn.nspname NOT IN ('pg_catalog', 'information_schema')
                      FROM pg_class rc JOIN pg_namespace rn ON rn.oid = rc.relnamespace WHERE rc.oid = d.refobjid)), '{}') AS missing,
           EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique AND i.indpred IS NULL
                      AND i.indexprs IS NULL AND i.indisvalid) AS concurrent_ok
      FROM views v JOIN pg_class c ON c.oid = v.oid JOIN pg_namespace n ON n.oid = c.relnamespace
     ORDER BY n.nspname, c.relname`,
    [schemas, tableOids],
  );
  return r.rows;
}

export interface RelSubRow {
  oid: number;
  rel: number;
  rel_schema: string;
  rel_name: string;
  name: string;
  def: string;
  /** Triggers and rules: O (origin), D (disabled), R (replica), A (always). */
  enabled: string;
}

/** Triggers a user wrote on these relations (not the internal ones, nor partitions' clones). */
export async function readTriggers(c: pg.Client, relOids: number[]): Promise<RelSubRow[]> {
  const r = await c.query<RelSubRow>(
    `
    SELECT g.oid::int AS oid, g.tgrelid::int AS rel, n.nspname AS rel_schema, c.relname AS rel_name, g.tgname AS name,
           pg_get_triggerdef(g.oid) AS def, g.tgenabled::text AS enabled
      FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE g.tgrelid = ANY($1::oid[]) AND NOT g.tgisinternal AND coalesce((to_jsonb(g) ->> 'tgparentid')::oid, 0) = 0 AND g.tgname <> $2
     ORDER BY n.nspname, c.relname, g.tgname`,
    [relOids, GUARD_TRIGGER],
  );
  return r.rows;
}

/** Rules on these relations, but not the `_RETURN` rule that makes a view. */
export async function readRules(c: pg.Client, relOids: number[]): Promise<Array<RelSubRow & { on_view: boolean }>> {
  const r = await c.query<RelSubRow & { on_view: boolean }>(
    `
    SELECT w.oid::int AS oid, w.ev_class::int AS rel, n.nspname AS rel_schema, c.relname AS rel_name, w.rulename AS name,
           pg_get_ruledef(w.oid) AS def, w.ev_enabled::text AS enabled, c.relkind IN ('v', 'm') AS on_view
      FROM pg_rewrite w JOIN pg_class c ON c.oid = w.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE w.ev_class = ANY($1::oid[]) AND w.rulename <> '_RETURN'
     ORDER BY n.nspname, c.relname, w.rulename`,
    [relOids],
  );
  return r.rows;
}

export interface PolicyRow {
  oid: number;
  rel: number;
  rel_schema: string;
  rel_name: string;
  name: string;
  cmd: string;
  permissive: boolean;
  /** Role names; 'public' for PUBLIC. */
  roles: string[];
  qual: string | null;
  with_check: string | null;
}

export async function readPolicies(c: pg.Client, relOids: number[]): Promise<PolicyRow[]> {
  const r = await c.query<PolicyRow>(
    `
    SELECT p.oid::int AS oid, p.polrelid::int AS rel, n.nspname AS rel_schema, c.relname AS rel_name, p.polname AS name,
           p.polcmd::text AS cmd, p.polpermissive AS permissive,
           ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r)::text END FROM unnest(p.polroles) AS r ORDER BY 1)::text[] AS roles,
           pg_get_expr(p.polqual, p.polrelid) AS qual, pg_get_expr(p.polwithcheck, p.polrelid) AS with_check
      FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE p.polrelid = ANY($1::oid[])
     ORDER BY n.nspname, c.relname, p.polname`,
    [relOids],
  );
  return r.rows;
}

export interface RelFlagsRow {
  oid: number;
  schema: string;
  name: string;
  rls: boolean;
  force_rls: boolean;
  owner: string;
  acl: AclEntry[] | null;
  /** Per column: name, ACL, storage when it differs from the type's, compression (14+), options. */
  columns: Array<{ name: string; acl: AclEntry[] | null; storage: string | null; compression: string | null; options: string[] | null }>;
}

/** Row security, owner, ACLs and column options of the migrated tables. */
export async function readRelFlags(c: pg.Client, relOids: number[]): Promise<RelFlagsRow[]> {
  const r = await c.query<RelFlagsRow>(
    `
    SELECT c.oid::int AS oid, n.nspname AS schema, c.relname AS name, c.relrowsecurity AS rls, c.relforcerowsecurity AS force_rls,
           pg_get_userbyid(c.relowner) AS owner, ${aclJson('c.relacl')} AS acl,
           coalesce((SELECT json_agg(json_build_object(
                       'name', a.attname, 'acl', ${aclJson('a.attacl')},
                       'storage', CASE WHEN a.attstorage <> t.typstorage THEN a.attstorage::text END,
                       'compression', nullif(to_jsonb(a) ->> 'attcompression', ''),
                       'options', a.attoptions) ORDER BY a.attnum)
                       FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]') AS columns
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = ANY($1::oid[])
     ORDER BY n.nspname, c.relname`,
    [relOids],
  );
  return r.rows;
}

export interface NamedRow {
  oid: number;
  schema: string;
  name: string;
  def: string;
  owner: string;
}

/** CREATE STATISTICS of the migrated tables. */
export async function readStatistics(c: pg.Client, relOids: number[]): Promise<NamedRow[]> {
  const r = await c.query<NamedRow>(
    `
    SELECT s.oid::int AS oid, n.nspname AS schema, s.stxname AS name, pg_get_statisticsobjdef(s.oid) AS def, pg_get_userbyid(s.stxowner) AS owner
      FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
     WHERE s.stxrelid = ANY($1::oid[])
     ORDER BY n.nspname, s.stxname`,
    [relOids],
  );
  return r.rows;
}

export interface TsDictRow extends Omit<NamedRow, 'def'> {
  template: string;
  options: string | null;
}
export interface TsConfigRow extends Omit<NamedRow, 'def'> {
  parser: string;
  /** token alias → dictionaries in order. */
  mappings: Array<{ token: string; dicts: string[] }>;
}

export async function readTextSearch(c: pg.Client, schemas: number[]): Promise<{ dicts: TsDictRow[]; configs: TsConfigRow[] }> {
  const dicts = await c.query<TsDictRow>(
    `
    SELECT d.oid::int AS oid, n.nspname AS schema, d.dictname AS name, pg_get_userbyid(d.dictowner) AS owner,
           CASE WHEN tn.nspname = 'pg_catalog' THEN quote_ident(t.tmplname) ELSE quote_ident(tn.nspname) || '.' || quote_ident(t.tmplname) END AS template,
           d.dictinitoption AS options
      FROM pg_ts_dict d JOIN pg_namespace n ON n.oid = d.dictnamespace
      JOIN pg_ts_template t ON t.oid = d.dicttemplate JOIN pg_namespace tn ON tn.oid = t.tmplnamespace
     WHERE d.dictnamespace = ANY($1::oid[]) AND ${notInExtension("'pg_ts_dict'::regclass", 'd.oid')}
     ORDER BY 2, 3`,
    [schemas],
  );
  const configs = await c.query<TsConfigRow>(
    `
    SELECT g.oid::int AS oid, n.nspname AS schema, g.cfgname AS name, pg_get_userbyid(g.cfgowner) AS owner,
           CASE WHEN pn.nspname = 'pg_catalog' THEN quote_ident(p.prsname) ELSE quote_ident(pn.nspname) || '.' || quote_ident(p.prsname) END AS parser,
           coalesce((SELECT json_agg(json_build_object('token', m.token, 'dicts', m.dicts) ORDER BY m.tokid)
              FROM (SELECT tt.tokid, tt.alias AS token, array_agg(cm.mapdict::regdictionary::text ORDER BY cm.mapseqno) AS dicts
                      FROM pg_ts_config_map cm JOIN ts_token_type(g.cfgparser) tt ON tt.tokid = cm.maptokentype
                     WHERE cm.mapcfg = g.oid GROUP BY tt.tokid, tt.alias) m), '[]') AS mappings
      FROM pg_ts_config g JOIN pg_namespace n ON n.oid = g.cfgnamespace
      JOIN pg_ts_parser p ON p.oid = g.cfgparser JOIN pg_namespace pn ON pn.oid = p.prsnamespace
     WHERE g.cfgnamespace = ANY($1::oid[]) AND ${notInExtension("'pg_ts_config'::regclass", 'g.oid')}
     ORDER BY 2, 3`,
    [schemas],
  );
  return { dicts: dicts.rows, configs: configs.rows };
}

export interface OwnedRow {
  classid: number;
  oid: number;
  /** 'type', 'domain', 'sequence', 'schema', … as ALTER … OWNER TO names it. */
  kind: string;
  /** The object as ALTER/GRANT/COMMENT names it, e.g. `rental.mood`. */
  name: string;
  owner: string;
  acl: AclEntry[] | null;
}

/** Owner and ACL of the migrated schemas, types and sequences (tables, views and functions come with their rows). */
export async function readOwnedObjects(c: pg.Client, schemas: number[], typeOids: number[], seqOids: number[]): Promise<OwnedRow[]> {
  const r = await c.query<OwnedRow>(
    `
    SELECT 'pg_namespace'::regclass::oid::int AS classid, n.oid::int AS oid, 'schema' AS kind, quote_ident(n.nspname) AS name,
           pg_get_userbyid(n.nspowner) AS owner, ${aclJson('n.nspacl')} AS acl
      FROM pg_namespace n WHERE n.oid = ANY($1::oid[])
    UNION ALL
    SELECT 'pg_type'::regclass::oid::int, t.oid::int, CASE t.typtype WHEN 'd' THEN 'domain' ELSE 'type' END,
           format_type(t.oid, NULL), pg_get_userbyid(t.typowner), ${aclJson('t.typacl')}
      FROM pg_type t WHERE t.oid = ANY($2::oid[])
    UNION ALL
    SELECT 'pg_class'::regclass::oid::int, s.oid::int, 'sequence', s.oid::regclass::text, pg_get_userbyid(s.relowner), ${aclJson('s.relacl')}
      FROM pg_class s WHERE s.oid = ANY($3::oid[])`,
    [schemas, typeOids, seqOids],
  );
  return r.rows;
}

export interface DefaultAclRow {
  role: string;
  schema: string | null;
  /** r tables, S sequences, f functions, T types, n schemas. */
  objtype: string;
  acl: AclEntry[];
}

export async function readDefaultAcls(c: pg.Client, schemas: number[]): Promise<DefaultAclRow[]> {
  const r = await c.query<DefaultAclRow>(
    `
    SELECT pg_get_userbyid(d.defaclrole) AS role, n.nspname AS schema, d.defaclobjtype::text AS objtype, ${aclJson('d.defaclacl')} AS acl
      FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
     WHERE d.defaclnamespace = ANY($1::oid[]) OR d.defaclnamespace = 0
     ORDER BY 1, 2, 3`,
    [schemas],
  );
  return r.rows;
}

export interface CommentRow {
  type: string;
  names: string[];
  args: string[];
  text: string;
}

/** Comments on the given objects (and on their columns). */
export async function readComments(c: pg.Client, objs: ObjRef[]): Promise<CommentRow[]> {
  if (objs.length === 0) return [];
  const r = await c.query<CommentRow>(
    `
    WITH given(classid, objid) AS (SELECT * FROM unnest($1::oid[], $2::oid[])),
    o(classid, objid) AS (
      SELECT * FROM given
      -- a relation's constraints and indexes, a domain's constraints
      UNION ALL SELECT 'pg_constraint'::regclass, k.oid FROM given g JOIN pg_constraint k
                 ON (g.classid = 'pg_class'::regclass AND k.conrelid = g.objid) OR (g.classid = 'pg_type'::regclass AND k.contypid = g.objid)
      UNION ALL SELECT 'pg_class'::regclass, i.indexrelid FROM given g JOIN pg_index i ON g.classid = 'pg_class'::regclass AND i.indrelid = g.objid
    )
    SELECT a.type, a.object_names AS names, a.object_args AS args, d.description AS text
      FROM o
      JOIN pg_description d ON d.classoid = o.classid AND d.objoid = o.objid
      CROSS JOIN LATERAL pg_identify_object_as_address(d.classoid, d.objoid, d.objsubid) a
     ORDER BY a.type, a.object_names::text, d.objsubid`,
    [objs.map((o) => o.classid), objs.map((o) => o.objid)],
  );
  return r.rows;
}

export interface DependRow {
  classid: number;
  objid: number;
  refclassid: number;
  refobjid: number;
  /** The extension the referenced object belongs to, if any. */
  ext: string | null;
  ext_schema: string | null;
  ref_desc: string;
}

/**
 * The pg_depend edges out of the given objects, with sub-objects (defaults,
 * constraints, a view's rule, a table's columns) folded into their owner.
 */
export async function readDependEdges(c: pg.Client, objs: ObjRef[]): Promise<DependRow[]> {
  if (objs.length === 0) return [];
  const r = await c.query<DependRow>(
    `
    WITH objs(classid, objid) AS (SELECT * FROM unnest($1::oid[], $2::oid[])),
    subs(classid, objid, owner_class, owner_id) AS (
      SELECT classid, objid, classid, objid FROM objs
      UNION ALL SELECT 'pg_attrdef'::regclass, d.oid, o.classid, o.objid FROM objs o JOIN pg_attrdef d ON o.classid = 'pg_class'::regclass AND d.adrelid = o.objid
      UNION ALL SELECT 'pg_constraint'::regclass, k.oid, o.classid, o.objid FROM objs o JOIN pg_constraint k
                 ON (o.classid = 'pg_class'::regclass AND k.conrelid = o.objid) OR (o.classid = 'pg_type'::regclass AND k.contypid = o.objid)
      UNION ALL SELECT 'pg_rewrite'::regclass, w.oid, o.classid, o.objid FROM objs o JOIN pg_rewrite w ON o.classid = 'pg_class'::regclass AND w.ev_class = o.objid AND w.rulename = '_RETURN'
      -- A composite type's fields are pg_attribute rows of its pg_class entry.
      UNION ALL SELECT 'pg_class'::regclass, t.typrelid, o.classid, o.objid FROM objs o JOIN pg_type t ON o.classid = 'pg_type'::regclass AND t.oid = o.objid AND t.typrelid <> 0
    )
    , edges AS (
      -- A reference to an array type is one to its element type; one to a
      -- table's or view's row type is one to the relation.
      SELECT s.owner_class, s.owner_id,
             CASE WHEN et.oid IS NULL THEN d.refclassid
                  WHEN et.typrelid <> 0 AND (SELECT relkind FROM pg_class WHERE oid = et.typrelid) <> 'c' THEN 'pg_class'::regclass::oid
                  ELSE 'pg_type'::regclass::oid END AS refclassid,
             CASE WHEN et.oid IS NULL THEN d.refobjid
                  WHEN et.typrelid <> 0 AND (SELECT relkind FROM pg_class WHERE oid = et.typrelid) <> 'c' THEN et.typrelid
                  ELSE et.oid END AS refobjid
        FROM subs s JOIN pg_depend d ON d.classid = s.classid AND d.objid = s.objid
        LEFT JOIN pg_type rt ON d.refclassid = 'pg_type'::regclass AND rt.oid = d.refobjid
        LEFT JOIN pg_type et ON et.oid = CASE WHEN rt.typcategory = 'A' AND rt.typelem <> 0 THEN rt.typelem ELSE rt.oid END
       WHERE d.deptype IN ('n', 'a')
    )
    SELECT DISTINCT e.owner_class::int AS classid, e.owner_id::int AS objid, e.refclassid::int AS refclassid, e.refobjid::int AS refobjid,
           x.extname AS ext, xn.nspname AS ext_schema, pg_describe_object(e.refclassid, e.refobjid, 0) AS ref_desc
      FROM edges e
      LEFT JOIN pg_depend xd ON xd.classid = e.refclassid AND xd.objid = e.refobjid AND xd.refclassid = 'pg_extension'::regclass AND xd.deptype = 'e'
      LEFT JOIN pg_extension x ON x.oid = xd.refobjid
      LEFT JOIN pg_namespace xn ON xn.oid = x.extnamespace
     WHERE NOT (e.refclassid = e.owner_class AND e.refobjid = e.owner_id)`,
    [objs.map((o) => o.classid), objs.map((o) => o.objid)],
  );
  return r.rows;
}

/** The namespaces' oids by name (only those that exist). */
export async function readSchemaOids(c: pg.Client, names: string[]): Promise<Map<string, number>> {
  const r = await c.query<{ name: string; oid: number }>(`SELECT nspname AS name, oid::int AS oid FROM pg_namespace WHERE nspname = ANY($1::text[])`, [names]);
  return new Map(r.rows.map((row) => [row.name, row.oid]));
}

/** Every type of the migrated schemas that pgferry creates: enums, domains, composites, ranges (not tables' row types, not arrays). */
export async function readSchemaTypes(c: pg.Client, schemas: number[]): Promise<number[]> {
  const r = await c.query<{ oid: number }>(
    `
    SELECT t.oid::int AS oid FROM pg_type t
     WHERE t.typnamespace = ANY($1::oid[]) AND t.typtype IN ('e', 'd', 'c', 'r', 'b')
       AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
       AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid)
       AND ${notInExtension("'pg_type'::regclass", 't.oid')}`,
    [schemas],
  );
  return r.rows.map((row) => row.oid);
}

/** Sequences of the migrated schemas that no migrated table uses (a function's nextval, say). */
export async function readSchemaSequences(c: pg.Client, schemas: number[]): Promise<number[]> {
  const r = await c.query<{ oid: number }>(
    `SELECT c.oid::int AS oid FROM pg_class c WHERE c.relnamespace = ANY($1::oid[]) AND c.relkind = 'S' AND ${notInExtension("'pg_class'::regclass", 'c.oid')}`,
    [schemas],
  );
  return r.rows.map((row) => row.oid);
}

export interface ExtensionRow {
  name: string;
  version: string;
  schema: string;
}

/** The extensions installed in the source database that live in the migrated schemas, or whose names are given. */
export async function readExtensions(c: pg.Client, schemas: number[], names: string[]): Promise<ExtensionRow[]> {
  const r = await c.query<ExtensionRow>(
    `SELECT x.extname AS name, x.extversion AS version, n.nspname AS schema
       FROM pg_extension x JOIN pg_namespace n ON n.oid = x.extnamespace
      WHERE (x.extnamespace = ANY($1::oid[]) OR x.extname = ANY($2::text[])) AND x.extname <> 'plpgsql'
      ORDER BY 1`,
    [schemas, names],
  );
  return r.rows;
}

/**
 * The migrated schemas: every schema of the source an include pattern's
 * schema part matches, unless an exclude pattern drops all of it
 * (`schema.*`). System schemas and pgferry's own are never migrated.
 */
export async function selectSchemas(c: pg.Client, sel: { include: string[]; exclude: string[] }): Promise<string[]> {
  const include = sel.include.map(compilePattern);
  const exclude = sel.exclude.map(compilePattern).filter((p) => p.name.test('') && p.name.test('any name'));
  const r = await c.query<{ name: string }>(
    `SELECT nspname AS name FROM pg_namespace
      WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'pgferry') AND nspname NOT LIKE 'pg\\_temp\\_%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
        AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass AND d.objid = pg_namespace.oid AND d.deptype = 'e')
      ORDER BY 1`,
  );
  return r.rows.map((row) => row.name).filter((n) => include.some((p) => p.schema.test(n)) && !exclude.some((p) => p.schema.test(n)));
}
