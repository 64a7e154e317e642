/**
 * schema-objects — the DDL of everything in the migrated schemas besides
 * tables: functions, procedures, aggregates, operators, casts, text search,
 * views and materialized views (pre-data, ordered by pg_depend with the
 * tables), then statistics, triggers, rules, policies, comments, owners,
 * grants and default privileges (finish, after the load), and the statements
 * of the handover (triggers, rules and row security switched on).
 *
 * Input: catalog rows (schema-objects-read.ts) and the role mapping.
 * Output: an `ObjectPlan`; schema.ts merges it into the `SchemaPlan`.
 *
 * Nothing the target holds may act on replicated rows: triggers and rules
 * on tables are created DISABLED and row security is switched on only at the
 * handover (the cutover, after the drain), whatever mode the apply runs in.
 * Their source state (ENABLE, ENABLE REPLICA, ENABLE ALWAYS, DISABLE) is
 * what the handover sets.
 */
import { qi, qn, ql } from './conn';
import type { SchemaStatement } from './schema-ddl';
import type { CommentRow, FunctionRow, OperatorRow, CastRow, TsDictRow, TsConfigRow, ViewRow, RelSubRow, PolicyRow, RelFlagsRow } from './schema-objects-read';

const ENABLE: Record<string, string> = { O: 'ENABLE', R: 'ENABLE REPLICA', A: 'ENABLE ALWAYS', D: 'DISABLE' };

export function functionName(f: Pick<FunctionRow, 'schema' | 'name' | 'identity_args'>): string {
  return `${qn(f.schema, f.name)}(${f.identity_args})`;
}

export function functionKind(f: Pick<FunctionRow, 'kind'>): 'FUNCTION' | 'PROCEDURE' | 'AGGREGATE' {
  return f.kind === 'p' ? 'PROCEDURE' : f.kind === 'a' ? 'AGGREGATE' : 'FUNCTION';
}

const FINAL_MODIFY: Record<string, string> = { r: 'READ_ONLY', s: 'SHAREABLE', w: 'READ_WRITE' };
const PARALLEL: Record<string, string> = { s: 'SAFE', r: 'RESTRICTED', u: 'UNSAFE' };

/** CREATE AGGREGATE from pg_aggregate's fields (PostgreSQL has no deparser for it). */
function aggregateSql(f: FunctionRow): string {
  const a = f.agg as Record<string, string | number | boolean | null>;
  const opts = [`SFUNC = ${a.sfunc}`, `STYPE = ${a.stype}`];
  const add = (cond: unknown, text: string) => cond && opts.push(text);
  add(a.sspace, `SSPACE = ${a.sspace}`);
  add(a.finalfunc, `FINALFUNC = ${a.finalfunc}`);
  add(a.finalfunc && a.finalextra, 'FINALFUNC_EXTRA');
  add(a.finalfunc && a.finalmodify, `FINALFUNC_MODIFY = ${FINAL_MODIFY[String(a.finalmodify)]}`);
  add(a.combinefunc, `COMBINEFUNC = ${a.combinefunc}`);
  add(a.serialfunc, `SERIALFUNC = ${a.serialfunc}`);
  add(a.deserialfunc, `DESERIALFUNC = ${a.deserialfunc}`);
  add(a.initcond !== null, `INITCOND = ${ql(String(a.initcond))}`);
  add(a.msfunc, `MSFUNC = ${a.msfunc}`);
  add(a.minvfunc, `MINVFUNC = ${a.minvfunc}`);
  add(a.mstype, `MSTYPE = ${a.mstype}`);
  add(a.msspace, `MSSPACE = ${a.msspace}`);
  add(a.mfinalfunc, `MFINALFUNC = ${a.mfinalfunc}`);
  add(a.mfinalfunc && a.mfinalextra, 'MFINALFUNC_EXTRA');
  add(a.mfinalfunc && a.mfinalmodify, `MFINALFUNC_MODIFY = ${FINAL_MODIFY[String(a.mfinalmodify)]}`);
  add(a.minitcond !== null, `MINITCOND = ${ql(String(a.minitcond))}`);
  add(a.sortop, `SORTOP = ${String(a.sortop).replace(/\(.*$/, '')}`);
  add(a.parallel && a.parallel !== 'u', `PARALLEL = ${PARALLEL[String(a.parallel)]}`);
  add(a.kind === 'h', 'HYPOTHETICAL');
  return `CREATE AGGREGATE ${qn(f.schema, f.name)}(${f.args || '*'}) (${opts.join(', ')})`;
}

export function functionStatement(f: FunctionRow): SchemaStatement {
  // Plain CREATE, not the deparser's CREATE OR REPLACE: a function the target already has is the user's, never replaced silently.
  return { kind: 'function', object: functionName(f), sql: f.kind === 'a' ? aggregateSql(f) : f.def!.trimEnd().replace(/^CREATE OR REPLACE /, 'CREATE ') };
}

export function operatorName(o: Pick<OperatorRow, 'schema' | 'name' | 'left' | 'right'>): string {
  return `${qi(o.schema)}.${o.name} (${o.left ?? 'NONE'}, ${o.right ?? 'NONE'})`;
}

export function operatorStatement(o: OperatorRow): SchemaStatement {
  const opts = [`FUNCTION = ${o.fn}`];
  if (o.left) opts.push(`LEFTARG = ${o.left}`);
  if (o.right) opts.push(`RIGHTARG = ${o.right}`);
  if (o.commutator) opts.push(`COMMUTATOR = OPERATOR(${o.commutator})`);
  if (o.negator) opts.push(`NEGATOR = OPERATOR(${o.negator})`);
  if (o.restrict) opts.push(`RESTRICT = ${o.restrict}`);
  if (o.join) opts.push(`JOIN = ${o.join}`);
  if (o.hashes) opts.push('HASHES');
  if (o.merges) opts.push('MERGES');
  return { kind: 'operator', object: operatorName(o), sql: `CREATE OPERATOR ${qi(o.schema)}.${o.name} (${opts.join(', ')})` };
}

export function castStatement(k: CastRow): SchemaStatement {
  const how = k.method === 'f' ? `WITH FUNCTION ${k.fn}` : k.method === 'i' ? 'WITH INOUT' : 'WITHOUT FUNCTION';
  const ctx = k.context === 'a' ? ' AS ASSIGNMENT' : k.context === 'i' ? ' AS IMPLICIT' : '';
  return { kind: 'cast', object: `(${k.source} AS ${k.target})`, sql: `CREATE CAST (${k.source} AS ${k.target}) ${how}${ctx}` };
}

export function tsDictStatement(d: TsDictRow): SchemaStatement {
  const name = qn(d.schema, d.name);
  return { kind: 'text-search', object: name, sql: `CREATE TEXT SEARCH DICTIONARY ${name} (TEMPLATE = ${d.template}${d.options ? `, ${d.options}` : ''})` };
}

export function tsConfigStatements(g: TsConfigRow): SchemaStatement[] {
  const name = qn(g.schema, g.name);
  return [
    { kind: 'text-search', object: name, sql: `CREATE TEXT SEARCH CONFIGURATION ${name} (PARSER = ${g.parser})` },
    ...g.mappings.map((m): SchemaStatement => ({
      kind: 'text-search',
      object: name,
      sql: `ALTER TEXT SEARCH CONFIGURATION ${name} ADD MAPPING FOR ${m.token} WITH ${m.dicts.join(', ')}`,
    })),
  ];
}

export function viewStatement(v: ViewRow): SchemaStatement {
  const name = qn(v.schema, v.name);
  const opts = v.options && v.options.length > 0 ? ` WITH (${v.options.join(', ')})` : '';
  return v.kind === 'm'
    ? { kind: 'materialized-view', object: name, sql: `CREATE MATERIALIZED VIEW ${name}${opts} AS\n${v.def}\nWITH NO DATA` }
    : { kind: 'view', object: name, sql: `CREATE VIEW ${name}${opts} AS\n${v.def}` };
}

/**
 * A trigger or rule: created, and — on a table — disabled until the
 * handover, which sets the source's state. On a view it never sees
 * replicated rows, so it gets its state at once.
 */
export function triggerOrRuleStatements(what: 'TRIGGER' | 'RULE', t: RelSubRow, onTable: boolean): { finish: SchemaStatement[]; handover: SchemaStatement[] } {
  const table = qn(t.rel_schema, t.rel_name);
  const object = `${what.toLowerCase()} ${qi(t.name)} on ${table}`;
  const kind = what === 'TRIGGER' ? 'trigger' : 'rule';
  const finish: SchemaStatement[] = [{ kind, object, sql: t.def.replace(/;\s*$/, '') }];
  const handover: SchemaStatement[] = [];
  const alter = (state: string) => `ALTER TABLE ${table} ${ENABLE[state]} ${what} ${qi(t.name)}`;
  if (onTable) {
    finish.push({ kind, object, sql: alter('D') });
    if (t.enabled !== 'D') handover.push({ kind: 'handover', object, sql: alter(t.enabled) });
  } else if (t.enabled !== 'O' && what === 'TRIGGER') {
    finish.push({ kind, object, sql: alter(t.enabled) });
  }
  return { finish, handover };
}

const POLICY_CMD: Record<string, string> = { r: 'SELECT', a: 'INSERT', w: 'UPDATE', d: 'DELETE', '*': 'ALL' };

/** CREATE POLICY; `roles` are already the target's. A role the target lacks can be left out of TO without changing what anyone sees. */
export function policyStatement(p: PolicyRow, roles: string[]): SchemaStatement {
  const table = qn(p.rel_schema, p.rel_name);
  const build = (rs: string[]) =>
    `CREATE POLICY ${qi(p.name)} ON ${table} AS ${p.permissive ? 'PERMISSIVE' : 'RESTRICTIVE'} FOR ${POLICY_CMD[p.cmd] ?? 'ALL'}` +
    ` TO ${rs.map((r) => (r === 'public' ? 'PUBLIC' : qi(r))).join(', ')}` +
    `${p.qual !== null ? ` USING (${p.qual})` : ''}${p.with_check !== null ? ` WITH CHECK (${p.with_check})` : ''}`;
  return {
    kind: 'policy',
    object: `policy ${qi(p.name)} on ${table}`,
    sql: build(roles),
    roles: roles.filter((r) => r !== 'public'),
    sqlWithout: (missing) => {
      const left = roles.filter((r) => !missing.has(r));
      return left.length > 0 ? build(left) : null;
    },
  };
}

/** Row security switched on at the handover (before it, a forced policy would hide rows from the apply). */
export function rowSecurityStatements(t: RelFlagsRow): SchemaStatement[] {
  const table = qn(t.schema, t.name);
  const out: SchemaStatement[] = [];
  if (t.rls) out.push({ kind: 'handover', object: table, sql: `ALTER TABLE ${table} ENABLE ROW LEVEL SECURITY` });
  if (t.force_rls) out.push({ kind: 'handover', object: table, sql: `ALTER TABLE ${table} FORCE ROW LEVEL SECURITY` });
  return out;
}

/** Column storage, compression and options that differ from the defaults. */
export function columnOptionStatements(t: RelFlagsRow): SchemaStatement[] {
  const table = qn(t.schema, t.name);
  const out: SchemaStatement[] = [];
  const STORAGE: Record<string, string> = { p: 'PLAIN', e: 'EXTERNAL', m: 'MAIN', x: 'EXTENDED' };
  for (const col of t.columns) {
    const at = `ALTER TABLE ONLY ${table} ALTER COLUMN ${qi(col.name)}`;
    const object = `${table}.${qi(col.name)}`;
    if (col.storage && STORAGE[col.storage]) out.push({ kind: 'column-option', object, sql: `${at} SET STORAGE ${STORAGE[col.storage]}` });
    if (col.compression) out.push({ kind: 'column-option', object, sql: `${at} SET COMPRESSION ${col.compression === 'l' ? 'lz4' : 'pglz'}` });
    if (col.options && col.options.length > 0) out.push({ kind: 'column-option', object, sql: `${at} SET (${col.options.join(', ')})` });
  }
  return out;
}

const COMMENT_SIMPLE: Record<string, string> = {
  table: 'TABLE',
  view: 'VIEW',
  'materialized view': 'MATERIALIZED VIEW',
  sequence: 'SEQUENCE',
  index: 'INDEX',
  'text search configuration': 'TEXT SEARCH CONFIGURATION',
  'text search dictionary': 'TEXT SEARCH DICTIONARY',
  'statistics object': 'STATISTICS',
  collation: 'COLLATION',
};

/** COMMENT ON for one pg_description row, from its object address; null for a kind pgferry does not carry. */
export function commentStatement(r: CommentRow): SchemaStatement | null {
  const n = r.names;
  let target: string | null = null;
  if (COMMENT_SIMPLE[r.type]) target = `${COMMENT_SIMPLE[r.type]} ${qn(n[0], n[1])}`;
  else if (r.type.endsWith(' column')) target = `COLUMN ${qn(n[0], n[1])}.${qi(n[2])}`;
  else if (r.type === 'function' || r.type === 'procedure' || r.type === 'aggregate')
    target = `${r.type.toUpperCase()} ${qn(n[0], n[1])}(${r.args.join(', ')})`;
  else if (r.type === 'type' || r.type === 'domain') target = `${r.type.toUpperCase()} ${n[0]}`;
  else if (r.type === 'schema') target = `SCHEMA ${qi(n[0])}`;
  else if (r.type === 'table constraint') target = `CONSTRAINT ${qi(n[2])} ON ${qn(n[0], n[1])}`;
  else if (r.type === 'domain constraint') target = `CONSTRAINT ${qi(r.args[0])} ON DOMAIN ${n[0]}`;
  else if (r.type === 'trigger' || r.type === 'policy' || r.type === 'rule') target = `${r.type.toUpperCase()} ${qi(n[2])} ON ${qn(n[0], n[1])}`;
  else if (r.type === 'operator') target = `OPERATOR ${qi(n[0])}.${n[1]} (${r.args[0] ?? 'NONE'}, ${r.args[1] ?? 'NONE'})`;
  else if (r.type === 'cast') target = `CAST (${n[0]} AS ${r.args[0]})`;
  if (!target) return null;
  return { kind: 'comment', object: target, sql: `COMMENT ON ${target} IS ${ql(r.text)}` };
}
