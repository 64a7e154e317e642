/**
 * schema-describe — the schema verification's reading of a database: one
 * normalized descriptor per object of the migrated schemas (tables and
 * their columns, indexes, constraints, triggers, rules and policies; views,
 * sequences, statistics; and, through schema-describe-objects.ts, routines,
 * types, operators, casts, collations, text search objects, extensions,
 * schemas and default privileges), so that a source and a target, possibly
 * of different major versions, compare as equal strings.
 *
 * Input: a connection (source or target) and the migrated schemas, tables.
 * Output: `SchemaObject[]`, sorted by identity; schema-diff.ts compares two.
 *
 * Every read runs under `withCanonicalSettings`, so the server's deparsers
 * (`pg_get_viewdef`, `pg_get_functiondef`, `pg_get_constraintdef`, …)
 * qualify every name outside pg_catalog. Left out: members of extensions,
 * pgferry's bookkeeping schema `pgferry`, objects a parent makes for its
 * partitions (cloned indexes, foreign keys and triggers: compared through
 * the parent), and large objects (data, not schema).
 */
import type pg from 'pg';
import { qi, ql } from './conn';
import { withCanonicalSettings } from './schema-read';
import { GUARD_TRIGGER } from './verify-guard';
import {
  aclJson,
  notExtensionMember,
  readCollationsAndTextSearch,
  readDefaultPrivileges,
  readOperatorsAndCasts,
  readRoutines,
  readSchemasAndExtensions,
  readTypes,
  type AclRow,
  type DescribedRow,
} from './schema-describe-objects';

export const SCHEMA_OBJECT_KINDS = [
  'schema',
  'extension',
  'collation',
  'type',
  'domain',
  'function',
  'procedure',
  'aggregate',
  'operator',
  'cast',
  'sequence',
  'table',
  'column',
  'view',
  'materialized-view',
  'index',
  'constraint',
  'trigger',
  'rule',
  'policy',
  'statistics',
  'text-search-dictionary',
  'text-search-config',
  'default-privileges',
] as const;
export type SchemaObjectKind = (typeof SCHEMA_OBJECT_KINDS)[number];

/** One object of a database's schema, normalized so that equal means equivalent. */
export interface SchemaObject {
  kind: SchemaObjectKind;
  /** Stable key, unique in a database: `function public.f(integer)`, `trigger t_audit on app.t`, `column app.t.id`. */
  identity: string;
  /** DDL-like text from the server's deparsers (for a column: its type, default, storage, …). */
  definition: string;
  /** The owner's role name, for objects that have one. */
  owner?: string;
  /**
   * Privileges that differ from the object's built-in default, sorted, without
   * grantors: `GRANT SELECT TO app_ro`, `GRANT UPDATE TO app WITH GRANT OPTION`,
   * `REVOKE EXECUTE FROM PUBLIC`. Roles are quoted as identifiers.
   */
  acl?: string[];
  /**
   * Triggers and rules: `ENABLE`, `DISABLE`, `ENABLE REPLICA` or `ENABLE ALWAYS`.
   * Tables: `row security off|on|forced`.
   */
  enabled?: string;
  comment?: string;
  /** Policies: the roles they apply to, quoted, sorted (`PUBLIC` for everyone). */
  roles?: string[];
  /** Default privileges: the role whose future objects get them (its identity ends with `for role <role>`). */
  role?: string;
}

export interface DescribeOptions {
  /** The schemas to describe; `pgferry` (the bookkeeping schema) is always left out. */
  schemas: string[];
  /** Only these tables among the schemas' tables (views and materialized views are always described). */
  tables?: Array<{ schema: string; name: string }>;
}

/** Reads the descriptors of every object of `opts.schemas`; the session's settings are left as found. */
export async function describeSchema(c: pg.Client, opts: DescribeOptions): Promise<SchemaObject[]> {
  const schemas = opts.schemas.filter((s) => s !== 'pgferry');
  return withCanonicalSettings(c, async () => {
    const scope = await relationsInScope(c, schemas, opts.tables);
    const read: DescribedRow[] = [
      ...(await readSchemasAndExtensions(c, schemas)),
      ...(await readTypes(c, schemas)),
      ...(await readRoutines(c, schemas)),
      ...(await readOperatorsAndCasts(c, schemas)),
      ...(await readCollationsAndTextSearch(c, schemas)),
      ...(await readDefaultPrivileges(c, schemas)),
      ...(await readRelations(c, scope)),
      ...(await readColumns(c, scope)),
      ...(await readSequences(c, schemas, scope)),
      ...(await readTableParts(c, scope)),
    ];
    return read.map(toSchemaObject).sort((a, b) => (a.identity < b.identity ? -1 : a.identity > b.identity ? 1 : 0));
  });
}

// ───────────────────────────── normalization ─────────────────────────────

const ENABLED: Record<string, string> = { O: 'ENABLE', D: 'DISABLE', R: 'ENABLE REPLICA', A: 'ENABLE ALWAYS' };

/** A role as ACLs and policies print it: `PUBLIC`, or the name quoted as an identifier. */
export const displayRole = (name: string | null): string => (name === null ? 'PUBLIC' : qi(name));

function formatAcl(acl: AclRow[]): string[] {
  return acl.map((a) => (a.r ? `REVOKE ${a.p} FROM ${displayRole(a.g)}` : `GRANT ${a.p} TO ${displayRole(a.g)}${a.o ? ' WITH GRANT OPTION' : ''}`)).sort();
}

function toSchemaObject(r: DescribedRow): SchemaObject {
  const o: SchemaObject = { kind: r.kind as SchemaObjectKind, identity: r.identity, definition: r.definition ?? '' };
  if (r.kind === 'default-privileges') {
    const where = r.schema === null || r.schema === undefined ? '' : ` in schema ${qi(r.schema)}`;
    o.identity = `default privileges on ${r.objtype}${where} for role ${qi(r.role!)}`;
    o.role = r.role!;
  }
  if (r.viewdef) o.definition = [normalizeViewDef(r.viewdef), o.definition].filter(Boolean).join(' ');
  if (r.kind === 'procedure') o.definition = normalizeProcedureDef(o.definition);
  if (r.owner) o.owner = r.owner;
  if (r.acl) o.acl = formatAcl(r.acl);
  if (r.enabled) o.enabled = ENABLED[r.enabled] ?? r.enabled;
  if (r.comment !== null && r.comment !== undefined) o.comment = r.comment;
  if (r.roles) o.roles = r.roles.map(displayRole).sort();
  return o;
}

interface Token {
  text: string;
  space: boolean;
}

/** The tokens of a deparsed statement: literals and quoted names whole, words, and one token per other character. */
function tokenize(sql: string): Token[] {
  const out: Token[] = [];
  let space = false;
  for (let i = 0; i < sql.length;) {
    const ch = sql[i];
    let j = i + 1;
    if (/\s/.test(ch)) {
      while (j < sql.length && /\s/.test(sql[j])) j++;
      space = true;
      i = j;
      continue;
    }
    if (ch === "'" || ch === '"') {
      while (j < sql.length && !(sql[j] === ch && sql[j + 1] !== ch)) j += sql[j] === ch ? 2 : 1;
      j++;
    } else if (/[\w$]/.test(ch)) {
      while (j < sql.length && /[\w$]/.test(sql[j])) j++;
    }
    out.push({ text: sql.slice(i, j), space: space && out.length > 0 });
    space = false;
    i = j;
  }
  return out;
}

const isName = (t: Token | undefined) => t !== undefined && /^(?:[A-Za-z_][\w$]*|"(?:[^"]|"")+")$/.test(t.text);
const CLAUSE_END = new Set(['WHERE', 'GROUP', 'HAVING', 'WINDOW', 'ORDER', 'LIMIT', 'OFFSET', 'FETCH', 'FOR', 'UNION', 'INTERSECT', 'EXCEPT']);
const SET_OPS = new Set(['UNION', 'INTERSECT', 'EXCEPT']);

/**
 * A view's definition, as `pg_get_viewdef(oid, true)` prints it, without
 * what only the printer's version changes:
 *
 * - whitespace (indentation, line breaks) outside literals and quoted names;
 * - the qualification of the outer query's columns when it reads a single
 *   FROM item. Up to 15 a view's query kept the OLD and NEW placeholders
 *   among its range entries, so the printer always qualified (`orders.id`);
 *   16 dropped them, and a one-item query prints `id`. Both mean the same:
 *   with one FROM item, every column of the outer query is that item's. The
 *   qualifier is removed outside subqueries only (a subquery's references
 *   stay qualified on every version), and not where the name is a
 *   function's or a type's schema (`x.f(`, `::x.t`). When the single item's
 *   name cannot be told (TABLESAMPLE, say), nothing is removed: the views
 *   then show as different, never the other way round.
 *
 * Not normalized, because the query itself differs: a view written with the
 * SQL-standard forms EXTRACT, SUBSTRING … FROM, TRIM, POSITION, OVERLAY or
 * AT TIME ZONE is stored by 13 as a plain function call (`date_part`,
 * `"substring"`, `btrim`, `timezone`: 13 and 14+ call different functions
 * for EXTRACT) and printed by 14+ in the standard form. A view the schema
 * stage recreates from the source's own text compares equal; the same DDL
 * typed on both versions does not.
 */
export function normalizeViewDef(def: string): string {
  const tokens = tokenize(def.trim().replace(/;$/, ''));
  // Parentheses: the matching index, and whether the group is a subquery.
  const close = new Map<number, number>();
  const stack: number[] = [];
  tokens.forEach((t, i) => {
    if (t.text === '(') stack.push(i);
    else if (t.text === ')' && stack.length > 0) close.set(stack.pop()!, i);
  });
  const isSubquery = (open: number) => ['SELECT', 'WITH', 'VALUES'].includes(tokens[open + 1]?.text ?? '');
  // The outer query's tokens (depth 0), and its FROM clause.
  const outer: number[] = [];
  for (let i = 0; i < tokens.length; i++) {
    outer.push(i);
    if (tokens[i].text === '(' && close.has(i)) i = close.get(i)! - 1;
  }
  if (outer.some((i) => SET_OPS.has(tokens[i].text))) return join(tokens);
  const from = outer.findIndex((i) => tokens[i].text === 'FROM' && tokens[i - 1]?.text !== 'DISTINCT');
  if (from < 0) return join(tokens);
  let fromEnd = from + 1;
  while (fromEnd < outer.length && !CLAUSE_END.has(tokens[outer[fromEnd]].text)) fromEnd++;
  const item = outer.slice(from + 1, fromEnd).filter((i) => tokens[i].text !== '(' && tokens[i].text !== ')');
  if (item.some((i) => tokens[i].text === ',' || tokens[i].text === 'JOIN' || tokens[i].text === 'TABLESAMPLE')) return join(tokens);
  const names = item.filter((i) => isName(tokens[i]));
  if (names.length === 0) return join(tokens);
  const alias = tokens[names[names.length - 1]].text;
  // Remove `alias.` before a column, outside subqueries.
  const drop = new Set<number>();
  const visit = (a: number, b: number) => {
    for (let i = a; i < b; i++) {
      const t = tokens[i];
      if (t.text === '(' && close.has(i)) {
        if (!isSubquery(i)) visit(i + 1, close.get(i)!);
        i = close.get(i)!;
      } else if (t.text === alias && tokens[i + 1]?.text === '.' && isName(tokens[i + 2])) {
        const before = tokens[i - 1]?.text;
        const after = tokens[i + 3]?.text;
        if (before !== '.' && before !== ':' && after !== '(' && after !== '.') {
          drop.add(i).add(i + 1);
          tokens[i + 2] = { ...tokens[i + 2], space: t.space };
        }
      }
    }
  };
  visit(0, tokens.length);
  const kept = tokens.filter((_, i) => !drop.has(i));
  return join(kept);
}

/** Tokens back to text: one space wherever the original had whitespace. */
function join(tokens: Token[]): string {
  return tokens.map((t) => (t.space ? ` ${t.text}` : t.text)).join('');
}

/**
 * `pg_get_functiondef` of a procedure: 14+ prints the default argument mode
 * (`IN order_id bigint`), 13 does not; IN is dropped from the header.
 */
function normalizeProcedureDef(def: string): string {
  const eol = def.indexOf('\n');
  const header = eol < 0 ? def : def.slice(0, eol);
  const args = header.indexOf('(');
  if (args < 0) return def;
  const tokens = tokenize(header.slice(args));
  let depth = 0;
  const kept = tokens.filter((t, i) => {
    if (t.text === '(') depth++;
    if (t.text === ')') depth--;
    const prev = tokens[i - 1]?.text;
    return !(depth === 1 && t.text === 'IN' && (prev === '(' || prev === ','));
  });
  return header.slice(0, args) + join(kept).replace(/\( /, '(') + (eol < 0 ? '' : def.slice(eol));
}

// ───────────────────────────── relations ─────────────────────────────

/** The oids of the tables (all, or those named) and the views and materialized views of the schemas. */
async function relationsInScope(c: pg.Client, schemas: string[], tables?: Array<{ schema: string; name: string }>): Promise<number[]> {
  const r = await c.query<{ oid: number }>(
    `SELECT c.oid::int AS oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'p', 'f', 'v', 'm') AND ${notExtensionMember('pg_class', 'c.oid')}
        AND (c.relkind IN ('v', 'm') OR $2::jsonb IS NULL
             OR EXISTS (SELECT 1 FROM jsonb_to_recordset($2::jsonb) AS s(schema text, name text) WHERE s.schema = n.nspname AND s.name = c.relname))`,
    [schemas, tables ? JSON.stringify(tables) : null],
  );
  return r.rows.map((row) => row.oid);
}

async function rows(c: pg.Client, sql: string, params: unknown[]): Promise<DescribedRow[]> {
  return (await c.query<DescribedRow>(sql, params)).rows;
}

/**
 * Tables, views and materialized views. A table's definition holds its
 * kind, persistence, partitioning, parents, options, access method and
 * replica identity; its `enabled`, row level security.
 */
async function readRelations(c: pg.Client, scope: number[]): Promise<DescribedRow[]> {
  return rows(
    c,
    `SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized-view' ELSE 'table' END AS kind,
            CASE c.relkind WHEN 'v' THEN 'view ' WHEN 'm' THEN 'materialized view ' WHEN 'f' THEN 'foreign table ' ELSE 'table ' END
              || c.oid::regclass::text AS identity,
            CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid, true) END AS viewdef,
            concat_ws(' ',
              CASE WHEN c.relkind = 'm' AND NOT c.relispopulated THEN 'WITH NO DATA' END,
              CASE WHEN c.relpersistence = 'u' THEN 'UNLOGGED' END,
              CASE WHEN c.relkind = 'p' THEN 'PARTITION BY ' || pg_get_partkeydef(c.oid) END,
              CASE WHEN c.relispartition THEN 'PARTITION OF ' || (SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE i.inhrelid = c.oid)
                                               || ' ' || pg_get_expr(c.relpartbound, c.oid)
                   ELSE 'INHERITS (' || (SELECT string_agg(i.inhparent::regclass::text, ', ' ORDER BY i.inhseqno)
                                           FROM pg_inherits i WHERE i.inhrelid = c.oid) || ')' END,
              'SERVER ' || (SELECT quote_ident(fs.srvname) FROM pg_foreign_table ft JOIN pg_foreign_server fs ON fs.oid = ft.ftserver WHERE ft.ftrelid = c.oid),
              'WITH (' || (SELECT string_agg(o, ', ' ORDER BY o) FROM unnest(c.reloptions) o) || ')',
              CASE WHEN am.amname <> 'heap' THEN 'USING ' || quote_ident(am.amname) END,
              CASE WHEN c.relkind NOT IN ('r', 'p') THEN NULL WHEN c.relreplident = 'f' THEN 'REPLICA IDENTITY FULL' WHEN c.relreplident = 'n' THEN 'REPLICA IDENTITY NOTHING'
                WHEN c.relreplident = 'i' THEN 'REPLICA IDENTITY USING INDEX '
                              || (SELECT quote_ident(ic.relname) FROM pg_index ri JOIN pg_class ic ON ic.oid = ri.indexrelid
                                   WHERE ri.indrelid = c.oid AND ri.indisreplident) END) AS definition,
            CASE WHEN c.relkind IN ('r', 'p') THEN
              CASE WHEN c.relforcerowsecurity THEN 'row security ' || CASE WHEN c.relrowsecurity THEN 'forced' ELSE 'off, forced' END
                   ELSE 'row security ' || CASE WHEN c.relrowsecurity THEN 'on' ELSE 'off' END END END AS enabled,
            pg_get_userbyid(c.relowner) AS owner, ${aclJson('c.relacl', `acldefault('r', c.relowner)`)} AS acl,
            obj_description(c.oid, 'pg_class') AS comment
       FROM pg_class c LEFT JOIN pg_am am ON am.oid = c.relam
      WHERE c.oid = ANY($1::oid[])`,
    [scope],
  );
}

/**
 * Columns: position, type, collation, NOT NULL, default or generation
 * expression, identity, and storage, compression, statistics target and
 * options where they differ from the default. Identity is not compared on
 * partitions: 17 marks a partitioned table's identity on its partitions too,
 * 13 and 14 on the parent only.
 */
async function readColumns(c: pg.Client, scope: number[]): Promise<DescribedRow[]> {
  return rows(
    c,
    `SELECT 'column' AS kind, 'column ' || c.oid::regclass::text || '.' || quote_ident(a.attname) AS identity,
            concat_ws(' ', 'position ' || row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum), format_type(a.atttypid, a.atttypmod),
              CASE WHEN a.attcollation <> t.typcollation THEN format('COLLATE %I.%I', con.nspname, co.collname) END,
              CASE WHEN a.attnotnull THEN 'NOT NULL' END,
              CASE WHEN a.attgenerated = 's' THEN 'GENERATED ALWAYS AS (' || pg_get_expr(d.adbin, d.adrelid) || ') STORED'
                   ELSE 'DEFAULT ' || pg_get_expr(d.adbin, d.adrelid) END,
              CASE WHEN NOT c.relispartition THEN
                CASE a.attidentity WHEN 'a' THEN 'GENERATED ALWAYS AS IDENTITY' WHEN 'd' THEN 'GENERATED BY DEFAULT AS IDENTITY' END END,
              CASE WHEN a.attstorage <> t.typstorage THEN 'STORAGE ' || CASE a.attstorage WHEN 'p' THEN 'PLAIN' WHEN 'e' THEN 'EXTERNAL'
                                                                       WHEN 'm' THEN 'MAIN' ELSE 'EXTENDED' END END,
              'COMPRESSION ' || CASE j.j ->> 'attcompression' WHEN 'p' THEN 'pglz' WHEN 'l' THEN 'lz4' END,
              'STATISTICS ' || nullif(j.j ->> 'attstattarget', '-1'),
              'WITH (' || (SELECT string_agg(o, ', ' ORDER BY o) FROM unnest(a.attoptions) o) || ')') AS definition,
            ${aclJson('a.attacl', `acldefault('c', c.relowner)`)} AS acl, col_description(c.oid, a.attnum) AS comment
       FROM pg_attribute a CROSS JOIN LATERAL (SELECT to_jsonb(a) AS j) j
       JOIN pg_class c ON c.oid = a.attrelid JOIN pg_type t ON t.oid = a.atttypid
       LEFT JOIN pg_collation co ON co.oid = a.attcollation LEFT JOIN pg_namespace con ON con.oid = co.collnamespace
       LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped`,
    [scope],
  );
}

/**
 * Sequences of the schemas, but not an identity sequence of a table out of
 * scope (it goes with its table); OWNED BY only when the owner is in scope.
 */
async function readSequences(c: pg.Client, schemas: string[], scope: number[]): Promise<DescribedRow[]> {
  return rows(
    c,
    `SELECT 'sequence' AS kind, 'sequence ' || c.oid::regclass::text AS identity,
            concat_ws(' ', CASE WHEN c.relpersistence = 'u' THEN 'UNLOGGED' END, 'AS ' || format_type(s.seqtypid, NULL),
              'START ' || s.seqstart, 'INCREMENT ' || s.seqincrement, 'MINVALUE ' || s.seqmin, 'MAXVALUE ' || s.seqmax,
              'CACHE ' || s.seqcache, CASE WHEN s.seqcycle THEN 'CYCLE' ELSE 'NO CYCLE' END,
              (SELECT 'OWNED BY ' || d.refobjid::regclass::text || '.' || quote_ident(a.attname)
                 FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass
                  AND d.refobjsubid > 0 AND d.deptype IN ('a', 'i') AND d.refobjid = ANY($2::oid[]))) AS definition,
            pg_get_userbyid(c.relowner) AS owner, ${aclJson('c.relacl', `acldefault('s', c.relowner)`)} AS acl,
            obj_description(c.oid, 'pg_class') AS comment
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_sequence s ON s.seqrelid = c.oid
      WHERE c.relkind = 'S' AND n.nspname = ANY($1::text[]) AND ${notExtensionMember('pg_class', 'c.oid')}
        AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'i'
                           AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> ALL($2::oid[]))`,
    [schemas, scope],
  );
}

/**
 * What hangs off the relations in scope: indexes (not those of a PRIMARY
 * KEY, UNIQUE or EXCLUDE constraint: the constraint is compared), constraints
 * (not NOT NULL, which the column carries, nor a constraint trigger's), triggers, rules
 * (not a view's `_RETURN`), policies and extended statistics.
 */
async function readTableParts(c: pg.Client, scope: number[]): Promise<DescribedRow[]> {
  const sql = [
    `SELECT 'index' AS kind, 'index ' || i.indexrelid::regclass::text AS identity,
            pg_get_indexdef(i.indexrelid) || CASE WHEN i.indisclustered THEN ' CLUSTER' ELSE '' END
              || CASE WHEN NOT i.indisvalid THEN ' INVALID' ELSE '' END AS definition,
            obj_description(i.indexrelid, 'pg_class') AS comment
       FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
      WHERE i.indrelid = ANY($1::oid[]) AND NOT ic.relispartition
        AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x'))`,
    `SELECT 'constraint' AS kind, format('constraint %I on %s', k.conname, k.conrelid::regclass) AS identity,
            pg_get_constraintdef(k.oid) AS definition, obj_description(k.oid, 'pg_constraint') AS comment
       FROM pg_constraint k WHERE k.conrelid = ANY($1::oid[]) AND k.contype NOT IN ('n', 't') AND k.conparentid = 0`,
    `SELECT 'trigger' AS kind, format('trigger %I on %s', g.tgname, g.tgrelid::regclass) AS identity,
            pg_get_triggerdef(g.oid, false) AS definition, g.tgenabled::text AS enabled, obj_description(g.oid, 'pg_trigger') AS comment
       FROM pg_trigger g WHERE g.tgrelid = ANY($1::oid[]) AND NOT g.tgisinternal AND coalesce((to_jsonb(g) ->> 'tgparentid')::oid, 0) = 0
        AND g.tgname <> ${ql(GUARD_TRIGGER)}`,
    `SELECT 'rule' AS kind, format('rule %I on %s', r.rulename, r.ev_class::regclass) AS identity,
            pg_get_ruledef(r.oid, true) AS definition, r.ev_enabled::text AS enabled, obj_description(r.oid, 'pg_rewrite') AS comment
       FROM pg_rewrite r WHERE r.ev_class = ANY($1::oid[]) AND r.rulename <> '_RETURN'`,
    `SELECT 'policy' AS kind, format('policy %I on %s', p.polname, p.polrelid::regclass) AS identity,
            'AS ' || CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END
              || ' FOR ' || CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END
              || coalesce(' USING (' || pg_get_expr(p.polqual, p.polrelid) || ')', '')
              || coalesce(' WITH CHECK (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')', '') AS definition,
            ARRAY(SELECT CASE WHEN r = 0 THEN NULL ELSE pg_get_userbyid(r)::text END FROM unnest(p.polroles) r) AS roles,
            obj_description(p.oid, 'pg_policy') AS comment
       FROM pg_policy p WHERE p.polrelid = ANY($1::oid[])`,
    // stxstattarget: -1 for the default up to 16, NULL from 17.
    `SELECT 'statistics' AS kind, format('statistics %I.%I', n.nspname, s.stxname) AS identity,
            pg_get_statisticsobjdef(s.oid) || coalesce(' STATISTICS ' || nullif(to_jsonb(s) ->> 'stxstattarget', '-1'), '') AS definition,
            pg_get_userbyid(s.stxowner) AS owner, obj_description(s.oid, 'pg_statistic_ext') AS comment
       FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
      WHERE s.stxrelid = ANY($1::oid[]) AND ${notExtensionMember('pg_statistic_ext', 's.oid')}`,
  ];
  const out: DescribedRow[] = [];
  for (const q of sql) out.push(...(await rows(c, q, [scope])));
  return out;
}
