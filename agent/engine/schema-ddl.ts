/**
 * schema-ddl — the DDL text of one object of the schema stage: a type,
 * domain, range or collation, a column, a sequence's options, and the
 * `existsSql` probes that let a rerun skip what is built.
 *
 * Input: catalog rows (schema-read.ts). Output: `SchemaStatement`s and SQL
 * text for the plan (schema.ts), every name qualified.
 */
import { qi, qn, ql } from './conn';
import type { ColRow, CollationRow, SeqRow, TypeGraph, TypeRow } from './schema-read';

export const SCHEMA_STATEMENT_KINDS = [
  'schema',
  'type',
  'sequence',
  'table',
  'partition',
  'constraint',
  'index',
  'foreign-key',
  'sequence-owner',
  'replica-identity',
  'extension',
  'function',
  'operator',
  'cast',
  'text-search',
  'view',
  'materialized-view',
  'column-option',
  'statistics',
  'trigger',
  'rule',
  'policy',
  'comment',
  'owner',
  'grant',
  'refresh',
  'handover',
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
  /**
   * Target roles the statement names (owners, grantees, policy roles). With
   * `roles.missing: 'skip'` a statement naming a role the target lacks is
   * skipped (with a warning); `sqlWithout` gives the statement without those
   * roles when that keeps its meaning (a policy's role list).
   */
  roles?: string[];
  sqlWithout?: (missing: Set<string>) => string | null;
}

export function relationExistsSql(schema: string, name: string): string {
  return `SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ${ql(schema)} AND c.relname = ${ql(name)}`;
}
export function constraintExistsSql(schema: string, table: string, name: string): string {
  return `SELECT 1 FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ${ql(schema)} AND c.relname = ${ql(table)} AND k.conname = ${ql(name)}`;
}

/** The table's replica identity is the index `index`. */
export function replicaIdentityIndexExistsSql(schema: string, table: string, index: string): string {
  return `${relationExistsSql(schema, table)} AND c.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = c.oid AND i.indisreplident AND ic.relname = ${ql(index)})`;
}

export function sequenceOptions(s: SeqRow): string {
  return `INCREMENT BY ${s.increment} MINVALUE ${s.min} MAXVALUE ${s.max} START WITH ${s.start} CACHE ${s.cache} ${s.cycle ? 'CYCLE' : 'NO CYCLE'}`;
}

/** PostgreSQL's default multirange name (makeMultirangeTypeName, 14+). */
function defaultMultirangeName(range: string): string {
  const at = range.indexOf('range');
  return at >= 0 ? `${range.slice(0, at)}multirange${range.slice(at + 5)}` : `${range}_multirange`;
}

/** CREATE TYPE / CREATE DOMAIN for `t` (a warning instead where pgferry cannot create it). */
export function typeStatements(t: TypeRow, g: TypeGraph, warnings: string[]): SchemaStatement[] {
  const name = qn(t.schema, t.name);
  const coll = (s: string | null, n: string | null) => (s && n ? ` COLLATE ${qn(s, n)}` : '');
  switch (t.typtype) {
    case 'e':
      return [{ kind: 'type', object: name, sql: `CREATE TYPE ${name} AS ENUM (${(t.labels ?? []).map(ql).join(', ')})` }];
    case 'd': {
      const all = g.checksByType.get(t.oid) ?? [];
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
      const fields = (g.attrsByRel.get(t.relid) ?? []).map((a) => `${qi(a.name)} ${a.type}${coll(a.coll_schema, a.coll_name)}`);
      return [{ kind: 'type', object: name, sql: `CREATE TYPE ${name} AS (${fields.join(', ')})` }];
    }
    case 'r': {
      const r = g.rangeByType.get(t.oid);
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
      warnings.push(
        `Type ${name} is a base type defined by functions outside any extension; pgferry cannot create it: create it on the target before the schema stage runs.`,
      );
      return [];
    default:
      return [];
  }
}

export function columnDefinition(col: ColRow, identitySeq: SeqRow | undefined): string {
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

/** `CREATE COLLATION` for a user-defined collation. */
export function collationStatement({ schema, name, j }: CollationRow): SchemaStatement {
  const str = (k: string) => (typeof j[k] === 'string' && j[k] !== '' ? (j[k] as string) : null);
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
    kind: 'type',
    object: qn(schema, name),
    sql: `CREATE COLLATION IF NOT EXISTS ${qn(schema, name)} (${opts.join(', ')})`,
    existsSql: `SELECT 1 FROM pg_catalog.pg_collation co JOIN pg_catalog.pg_namespace n ON n.oid = co.collnamespace WHERE n.nspname = ${ql(schema)} AND co.collname = ${ql(name)}`,
  };
}
