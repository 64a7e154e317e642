/**
 * schema-follow-objects — during the sync (and once in the cutover's fence),
 * what the application changes on the source besides tables and columns is
 * made on the target too: indexes, constraints but the primary key, views,
 * materialized views, routines, triggers (created disabled), rules,
 * policies, statistics, types and enum values, sequences, comments, owners
 * and grants.
 *
 * Input: source and target connections, the migrated tables and schemas,
 * the role mapping, the accepted differences.
 * Output: the changes applied on the target, and what failed.
 *
 * The catalogs are compared as the cutover's check does (schema-describe.ts,
 * schema-diff.ts); what the target lacks is made from the schema stage's
 * plan of the source (schema.ts), what must go is dropped by its identity.
 * Never touched: tables, columns, sequences' values, `enabled` states (the
 * target stays quiet until the handover).
 */
import type pg from 'pg';
import type { TableInfo } from './catalog';
import { qi, ql } from './conn';
import { PgferryError, sqlState } from './errors';
import { planSchema, type SchemaStatement } from './schema';
import { describeSchema, type SchemaObject } from './schema-describe';
import { diffSchemas, type SchemaDifference } from './schema-diff';
import type { RoleMapping } from './schema-privileges';
import { withCanonicalSettings } from './schema-read';

export interface AppliedChange {
  /** The object as the schema check names it: `index public.orders_note_idx`. */
  object: string;
  /** What was done, in a few words: `index created`, `view replaced`, `enum value added`. */
  change: string;
  /** The statements run, `;\n`-separated. */
  statement: string;
}

export interface ReconcileOptions {
  tables: TableInfo[];
  schemas: string[];
  roles: RoleMapping;
  /** Identities whose differences the user accepted (`acceptSchemaDifferences`): left as they are. */
  accept?: string[];
  signal?: AbortSignal;
}

export interface ReconcileResult {
  applied: AppliedChange[];
  /** Statements the target refused (each ran on its own; the others still ran). Tried again by the next call. */
  failed: Array<{ object: string; statement: string; error: string }>;
  /** Differences pgferry does not follow during the sync (an enum value removed, a type changed): the cutover's check will name them. */
  unsupported: Array<{ object: string; difference: string }>;
}

/** Passes of one call at most: create, then owner, then grants, and one to spare. */
const MAX_PASSES = 5;
/** DDL waits this long for a lock before it fails (and is tried again by the next call), so the apply never queues behind it for long. */
const LOCK_TIMEOUT = '10s';

/**
 * Types the source has and the target lacks are created; enum values the source has and the target lacks are added in
 * the source's order (ALTER TYPE … ADD VALUE … AFTER). Never drops anything. Safe at any moment of the sync (an enum
 * value added never invalidates a row). Throws SCHEMA_FAILED naming what the target refused, after trying the rest.
 */
export async function reconcileTypes(src: pg.Client, tgt: pg.Client, opts: ReconcileOptions): Promise<AppliedChange[]> {
  const r = await reconcile(src, tgt, opts, true);
  if (r.failed.length === 0) return r.applied;
  const what = r.failed.map((f) => `${f.object}: ${f.error}`).join('; ');
  throw new PgferryError(
    'SCHEMA_FAILED',
    `Following the source's types on the target failed: ${what}.`,
    'Fix the cause named above on the target, then retry.',
  );
}

/**
 * Everything but tables and columns: applies on the target what was added,
 * changed or dropped on the source (see the file comment). Each change runs
 * on its own: one failing (an index on a column the stream has not brought
 * yet) is reported in `failed` and the others still run. Indexes are built
 * CONCURRENTLY (but on a partitioned table, which cannot), so the apply's
 * writes go on meanwhile. The caller's session settings are left as found;
 * it must not be inside a transaction.
 */
export async function reconcileObjects(src: pg.Client, tgt: pg.Client, opts: ReconcileOptions): Promise<ReconcileResult> {
  return reconcile(src, tgt, opts, false);
}

// ───────────────────────────── the passes ─────────────────────────────

/** One thing to do on the target: its statements, run together (`tx`), one by one, or as index builds. */
interface Change {
  object: string;
  change: string;
  sql: string[];
  mode: 'tx' | 'each' | 'index';
  /** Tried (in one transaction) when `sql` fails: a replacement that CREATE OR REPLACE refused. */
  fallback?: string[];
  /** 0 types, 1 drops, 2 creations (plan order), 3 comments, 4 owners, 5 privileges. */
  phase: number;
  order: number;
}

/** The source's DDL of an object (and its place in the plan), by the identity the schema check gives it. */
type DdlEntry = { order: number; statements: SchemaStatement[] };
type SourceDdl = Map<string, DdlEntry>;

async function reconcile(src: pg.Client, tgt: pg.Client, opts: ReconcileOptions, typesOnly: boolean): Promise<ReconcileResult> {
  const scope = { schemas: opts.schemas, tables: opts.tables.map((t) => ({ schema: t.schema, name: t.name })) };
  const result: ReconcileResult = { applied: [], failed: [], unsupported: [] };
  let source: SchemaObject[] | undefined;
  let ddl: SourceDdl | undefined;
  const done = new Set<string>();
  for (let pass = 0; pass < MAX_PASSES; pass++) {
    throwIfStopped(opts.signal);
    source ??= await describeSchema(src, scope);
    const target = await describeSchema(tgt, scope);
    const missingRoles = await rolesTheTargetLacks(tgt, opts.roles, source);
    const diffs = diffSchemas(source, target, { roleMap: opts.roles.map, accept: opts.accept }).filter((d) => followed(d, typesOnly, missingRoles));
    result.failed = [];
    result.unsupported = [];
    if (diffs.length === 0) break;
    ddl ??= await sourceDdl(src, opts);
    const planned = [...plannedChanges(diffs, ddl, { source, target, missingRoles, typesOnly }, result), ...(await enumValueChanges(src, tgt, diffs, result))];
    // A change made earlier in this call whose difference is still there would only be made again: said instead.
    const changes = planned.filter((c) => !done.has(`${c.object}\u0000${c.change}`));
    for (const c of planned.filter((x) => !changes.includes(x))) result.unsupported.push({ object: c.object, difference: `still differs after ${c.change}` });
    changes.sort((a, b) => a.phase - b.phase || a.order - b.order);
    const before = result.applied.length;
    await withTargetSettings(tgt, async () => {
      for (const c of changes) {
        throwIfStopped(opts.signal);
        if (await runChange(tgt, c, result)) done.add(`${c.object}\u0000${c.change}`);
      }
    });
    if (result.applied.length === before) break;
  }
  return result;
}

const throwIfStopped = (signal?: AbortSignal) => {
  if (signal?.aborted) throw new PgferryError('INTERNAL', 'Following the source schema was stopped.', '');
};

/**
 * The differences followed: not accepted ones, `enabled` states, a table's or column's definition, what differs on
 * purpose (the target's `public` schema, an extension's owner and version), nor an owner the target lacks ('skip').
 */
function followed(d: SchemaDifference, typesOnly: boolean, missingRoles: Set<string>): boolean {
  if (d.accepted || d.what === 'enabled') return false;
  if (typesOnly) return (d.kind === 'type' || d.kind === 'domain') && (d.what === 'missing-on-target' || d.what === 'definition');
  if ((d.kind === 'table' || d.kind === 'column') && !['comment', 'owner', 'acl'].includes(d.what)) return false;
  if (d.identity === 'schema public' && (d.what === 'owner' || d.what === 'acl')) return false;
  if (d.kind === 'extension' && (d.what === 'owner' || d.what === 'definition')) return false;
  if (d.what === 'owner' && missingRoles.has(d.source ?? '')) return false;
  return true;
}

/** With `roles.missing: 'skip'`, the (target) roles the source's objects name that the target lacks. */
async function rolesTheTargetLacks(tgt: pg.Client, roles: RoleMapping, source: SchemaObject[]): Promise<Set<string>> {
  if (roles.missing !== 'skip') return new Set();
  const named = new Set<string>();
  for (const o of source) {
    if (o.owner) named.add(roles.map[o.owner] ?? o.owner);
    for (const e of [...(o.acl ?? []), ...(o.roles ?? [])]) {
      const role = unquoteRole(/(?:TO|FROM) (.+?)(?: WITH GRANT OPTION)?$/.exec(e)?.[1] ?? e);
      if (role !== 'PUBLIC') named.add(roles.map[role] ?? role);
    }
  }
  const r = await tgt.query<{ r: string }>('SELECT rolname AS r FROM pg_catalog.pg_roles WHERE rolname = ANY($1::text[])', [[...named]]);
  const present = new Set(r.rows.map((x) => x.r));
  return new Set([...named].filter((n) => !present.has(n)));
}

const unquoteRole = (r: string): string => (r.startsWith('"') ? r.slice(1, -1).replace(/""/g, '"') : r);

/**
 * Settings for the DDL (restored afterwards): names resolved in pg_catalog only (every name is qualified), function
 * bodies not checked (as the schema stage does: a body may name a table the sync brings later), a lock timeout.
 */
async function withTargetSettings<T>(tgt: pg.Client, fn: () => Promise<T>): Promise<T> {
  return withCanonicalSettings(tgt, async () => {
    const saved = await tgt.query<{ b: string; l: string }>(`SELECT current_setting('check_function_bodies') AS b, current_setting('lock_timeout') AS l`);
    await tgt.query(`SELECT set_config('check_function_bodies', 'off', false), set_config('lock_timeout', $1, false)`, [LOCK_TIMEOUT]);
    try {
      return await fn();
    } finally {
      const { b, l } = saved.rows[0];
      await tgt.query(`SELECT set_config('check_function_bodies', $1, false), set_config('lock_timeout', $2, false)`, [b, l]).catch(() => undefined);
    }
  });
}

// ───────────────────────────── the source's DDL ─────────────────────────────

/** The plan of the source (the schema stage's), each statement under the identity of the object it makes. */
async function sourceDdl(src: pg.Client, opts: ReconcileOptions): Promise<SourceDdl> {
  const plan = await planSchema(src, opts.tables, { schemas: opts.schemas, roles: opts.roles });
  const routines = await routineIdentities(src, opts.schemas);
  const out: SourceDdl = new Map();
  [...plan.preData, ...plan.postData, ...plan.finish].forEach((s, order) => {
    const made = statementIdentity(s, routines);
    if (!made) return;
    const entry = out.get(made.identity) ?? { order, statements: [] };
    entry.statements.push(made.statement);
    out.set(made.identity, entry);
  });
  return out;
}

/** Routines as the plan names them (`public.f(a integer)`) → as the schema check does (`function public.f(integer)`). */
async function routineIdentities(src: pg.Client, schemas: string[]): Promise<Map<string, string>> {
  const r = await withCanonicalSettings(src, () =>
    src.query<{ schema: string; name: string; args: string; identity: string }>(
      `SELECT n.nspname AS schema, p.proname AS name, pg_get_function_identity_arguments(p.oid) AS args,
              CASE p.prokind WHEN 'p' THEN 'procedure ' WHEN 'a' THEN 'aggregate ' ELSE 'function ' END || p.oid::regprocedure::text AS identity
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = ANY($1::text[])`,
      [schemas],
    ),
  );
  return new Map(r.rows.map((x) => [`${qi(x.schema)}.${qi(x.name)}(${x.args})`, x.identity]));
}

/** A name's dotted parts, each as written (quoted or not): `s."a.b".c` → [`s`, `"a.b"`, `c`]. */
const nameParts = (name: string): string[] => name.match(/"(?:[^"]|"")*"|[^."]+/g) ?? [];

/** The identity of the object a plan statement makes (null: not an object this file follows), and the statement to run for it. */
function statementIdentity(s: SchemaStatement, routines: Map<string, string>): { identity: string; statement: SchemaStatement } | null {
  const o = s.object;
  const as = (identity: string | undefined) => (identity ? { identity, statement: s } : null);
  switch (s.kind) {
    case 'schema':
    case 'extension':
    case 'sequence':
    case 'cast':
    case 'index':
    case 'view':
    case 'statistics':
      return as(`${s.kind} ${o}`);
    case 'type':
      return as(/^CREATE COLLATION/.test(s.sql) ? `collation ${o}` : /^(CREATE|ALTER) DOMAIN/.test(s.sql) ? `domain ${o}` : `type ${o}`);
    case 'constraint':
    case 'foreign-key': {
      const parts = nameParts(o);
      return as(`constraint ${parts[2]} on ${parts[0]}.${parts[1]}`);
    }
    case 'materialized-view':
      return as(`materialized view ${o}`);
    case 'replica-identity': {
      // The replica identity's index, built with it: only the index is this file's (the identity is the table's).
      const index = /^CREATE (?:UNIQUE )?INDEX IF NOT EXISTS ("(?:[^"]|"")*"|\S+) /.exec(s.sql);
      if (!index) return null;
      const create = s.sql.split(';\n')[0].replace(' INDEX IF NOT EXISTS ', ' INDEX ');
      return { identity: `index ${nameParts(o)[0]}.${index[1]}`, statement: { kind: 'index', object: o, sql: create } };
    }
    case 'function':
      return as(routines.get(o));
    case 'operator':
      return as(`operator ${o.replace(' (', '(').replace(', ', ',')}`);
    case 'text-search':
      return as(`text search ${/DICTIONARY/.test(s.sql.slice(0, 40)) ? 'dictionary' : 'configuration'} ${o}`);
    case 'trigger':
    case 'rule':
    case 'policy':
      return as(o);
    default:
      return null;
  }
}

// ───────────────────────────── what to do ─────────────────────────────

type Described = { source: SchemaObject[]; target: SchemaObject[]; missingRoles: Set<string>; typesOnly: boolean };

/** Kinds dropped first to last: what hangs off an object before the object. */
const DROP_ORDER = 'trigger rule policy statistics constraint index materialized-view view function procedure aggregate type domain'.split(' ');

/** The changes that make the target's objects what the source's are; what cannot be followed goes to `result.unsupported`. */
function plannedChanges(diffs: SchemaDifference[], ddl: SourceDdl, d: Described, result: ReconcileResult): Change[] {
  const out: Change[] = [];
  const bySide = (objs: SchemaObject[]) => new Map(objs.map((o) => [o.identity, o]));
  const [src, tgt] = [bySide(d.source), bySide(d.target)];
  // Tables the target does not have yet: what hangs off them comes with them (another part of the sync copies them).
  const absent = new Set(d.source.filter((o) => o.kind === 'table' && !tgt.has(o.identity)).map((o) => nameOf(o.identity)));
  const ownerDiffers = new Set(diffs.filter((x) => x.what === 'owner').map((x) => x.identity));
  const unsupported = (x: SchemaDifference, why: string) => result.unsupported.push({ object: x.identity, difference: `${x.what}: ${why}` });
  for (const x of diffs) {
    const plan = ddl.get(x.identity);
    if (x.kind === 'default-privileges' || x.what === 'acl') {
      if (ownerDiffers.has(x.identity)) continue; // the defaults the ACL is read against change with the owner
      const sql = privilegeStatements(x, d.missingRoles);
      if (sql === null) unsupported(x, 'pgferry does not change the privileges of this kind of object');
      else if (sql.length > 0) out.push({ object: x.identity, change: 'privileges changed', sql, mode: 'each', phase: 5, order: 0 });
    } else if (x.what === 'missing-on-target') {
      const c = creation(x, plan, src.get(x.identity), d.missingRoles, absent);
      if (typeof c === 'string') {
        if (c) unsupported(x, c);
      } else out.push(c);
    } else if (x.what === 'extra-on-target') {
      if (d.typesOnly) continue;
      const c = drop(x, tgt.get(x.identity)!);
      if (c) out.push(c);
      else if (x.kind !== 'table' && x.kind !== 'column') unsupported(x, 'pgferry does not drop this kind of object on the target during the sync');
    } else if (x.what === 'definition') {
      if ((x.kind === 'type' || x.kind === 'domain') && /^ENUM \(/.test(x.source ?? '')) continue; // enumValueChanges
      const c = d.typesOnly ? null : replacement(x, plan, tgt.get(x.identity)!);
      if (c) out.push(c);
      else unsupported(x, 'pgferry does not change this kind of object on the target during the sync');
    } else if (x.what === 'comment') {
      const sql = `COMMENT ON ${sqlName(x.kind, x.identity).comment} IS ${x.source === undefined ? 'NULL' : ql(x.source)}`;
      out.push({ object: x.identity, change: x.source === undefined ? 'comment removed' : 'comment set', sql: [sql], mode: 'each', phase: 3, order: 0 });
    } else if (x.what === 'owner') {
      const name = sqlName(x.kind, x.identity);
      if (!name.alter || x.source === undefined) unsupported(x, 'pgferry does not change the owner of this kind of object');
      else out.push({ object: x.identity, change: 'owner changed', sql: [`ALTER ${name.alter} OWNER TO ${qi(x.source)}`], mode: 'each', phase: 4, order: 0 });
    }
  }
  return out;
}

/** How to create an object the target lacks (or why not: '' when it is not this file's, or the plan leaves it out on purpose). */
function creation(
  x: SchemaDifference,
  plan: DdlEntry | undefined,
  s: SchemaObject | undefined,
  missingRoles: Set<string>,
  absent: Set<string>,
): Change | string {
  if (x.kind === 'table' || x.kind === 'column') return '';
  if (x.kind === 'sequence' && / OWNED BY /.test(s?.definition ?? '')) return ''; // comes with its column
  const sql = (plan?.statements ?? [])
    .map((p) => (p.roles?.some((r) => missingRoles.has(r)) && p.sqlWithout ? p.sqlWithout(missingRoles) : p.sql))
    .filter((q): q is string => q !== null);
  const on = /^(?:constraint|trigger|rule|policy) /.test(x.identity)
    ? onRelation(nameOf(x.identity)).rel
    : / (?:ON(?: ONLY)?|FROM) (\S+)/.exec(sql[0] ?? '')?.[1];
  if (on && absent.has(on)) return '';
  if (x.kind === 'constraint' && /^PRIMARY KEY/.test(s?.definition ?? '')) return 'a primary key is not added during the sync';
  if (!plan) {
    // A foreign key to a table that is not migrated, or a view that reads one: the schema stage said so.
    if ((x.kind === 'constraint' && /^FOREIGN KEY/.test(s?.definition ?? '')) || x.kind === 'view' || x.kind === 'materialized-view') return '';
    return 'the schema plan has no statement for it';
  }
  const base = { object: x.identity, change: `${kindLabel(x.kind)} created`, phase: x.kind === 'type' || x.kind === 'domain' ? 0 : 2, order: plan.order };
  if (x.kind === 'index') return { ...base, sql, mode: 'index' };
  if (x.kind === 'constraint') return { ...base, ...constraintAdd(sql[0]) };
  if (x.kind === 'materialized-view') return { ...base, sql: [...sql, `REFRESH MATERIALIZED VIEW ${nameOf(x.identity)}`], mode: 'tx' };
  return { ...base, sql, mode: 'tx' };
}

/**
 * A CHECK or FOREIGN KEY is added NOT VALID, then validated (the scan's lock lets the apply write meanwhile);
 * UNIQUE and EXCLUDE as they are (their index is built under the table's lock).
 */
function constraintAdd(sql: string): Pick<Change, 'sql' | 'mode' | 'fallback'> {
  const m = /^ALTER TABLE (.+?) ADD CONSTRAINT ("(?:[^"]|"")*"|\S+) (CHECK|FOREIGN KEY) /.exec(sql);
  if (!m || / NOT VALID$/.test(sql)) return { sql: [sql], mode: 'tx' };
  // A partitioned table refuses a NOT VALID foreign key (up to 17): then added as it is.
  return { sql: [`${sql} NOT VALID`, `ALTER TABLE ${m[1]} VALIDATE CONSTRAINT ${m[2]}`], mode: 'each', fallback: [sql] };
}

/** The identity without its kind: `index public.x` → `public.x`, `trigger t on public.x` → `t on public.x`. */
const nameOf = (identity: string): string => identity.replace(/^(?:foreign table|materialized view|text search \w+|default privileges|\S+) /, '');

/** `t on public.x` → the name and the relation. */
const onRelation = (rest: string) => (([, name, rel]) => ({ name, rel }))(/^("(?:[^"]|"")*"|\S+) on (.+)$/.exec(rest)!);

/** What drops an object the source no longer has (null: not dropped during the sync). */
function drop(x: SchemaDifference, t: SchemaObject): Change | null {
  const rest = nameOf(x.identity);
  const order = DROP_ORDER.indexOf(x.kind);
  const change = { object: x.identity, change: `${kindLabel(x.kind)} dropped`, phase: 1, order };
  if (['statistics', 'view', 'materialized-view', 'function', 'procedure', 'aggregate', 'type', 'domain'].includes(x.kind)) {
    return { ...change, sql: [`DROP ${sqlName(x.kind, x.identity).alter}`], mode: 'tx' };
  }
  switch (x.kind) {
    case 'trigger':
    case 'rule':
    case 'policy': {
      const { name, rel } = onRelation(rest);
      return { ...change, sql: [`DROP ${x.kind.toUpperCase()} ${name} ON ${rel}`], mode: 'tx' };
    }
    case 'constraint': {
      if (/^PRIMARY KEY/.test(t.definition)) return null;
      const { name, rel } = onRelation(rest);
      // Foreign keys first: a unique constraint one references cannot go before it.
      return { ...change, order: /^FOREIGN KEY/.test(t.definition) ? order - 0.5 : order, sql: [`ALTER TABLE ${rel} DROP CONSTRAINT ${name}`], mode: 'tx' };
    }
    case 'index':
      return { ...change, sql: [`DROP INDEX IF EXISTS ${rest}`], mode: 'index' };
    default:
      return null;
  }
}

/** What makes an object the source changed like the source's: replaced in place where PostgreSQL can, else dropped and created again. */
function replacement(x: SchemaDifference, plan: DdlEntry | undefined, t: SchemaObject): Change | null {
  if (!plan) return null;
  const sql = plan.statements.map((s) => s.sql);
  const change = { object: x.identity, change: `${kindLabel(x.kind)} replaced`, phase: 2, order: plan.order };
  const dropped = drop({ ...x, what: 'extra-on-target' }, t);
  switch (x.kind) {
    case 'function':
    case 'procedure':
    case 'aggregate':
    case 'view': {
      // CREATE OR REPLACE keeps the owner, the grants and what depends on it; it refuses a changed result or column list.
      const orReplace = sql.map((q) => q.replace(/^CREATE (FUNCTION|PROCEDURE|AGGREGATE|VIEW) /, 'CREATE OR REPLACE $1 '));
      return { ...change, sql: orReplace, mode: 'tx', fallback: [...dropped!.sql, ...sql] };
    }
    case 'materialized-view':
      return { ...change, sql: [...dropped!.sql, ...sql, `REFRESH MATERIALIZED VIEW ${nameOf(x.identity)}`], mode: 'tx' };
    case 'index':
      return { ...change, sql: [...dropped!.sql, ...sql], mode: 'index' };
    case 'constraint':
      if (!dropped) return null;
      return { ...change, sql: [...dropped.sql, ...sql], mode: 'tx' };
    case 'trigger':
    case 'rule':
    case 'policy':
    case 'statistics':
      return { ...change, sql: [...dropped!.sql, ...sql], mode: 'tx' };
    case 'sequence': {
      // Its options only (never its value, which the cutover sets); OWNED BY goes with the column.
      const create = /^CREATE (?:UNLOGGED )?SEQUENCE (\S+) AS (.*)$/s.exec(sql[0] ?? '');
      if (!create || stripOwned(x.source) === stripOwned(x.target)) return null;
      return { ...change, change: 'sequence changed', sql: [`ALTER SEQUENCE ${create[1]} AS ${create[2]}`], mode: 'tx' };
    }
    default:
      return null;
  }
}

const stripOwned = (def: string | undefined) => (def ?? '').replace(/ OWNED BY .*$/, '');

/** The schema check's kind → its label in an identity, where the two differ. */
const kindLabel = (kind: string): string => (kind === 'text-search-config' ? 'text search configuration' : kind.replace(/-/g, ' '));

/** How GRANT names a kind (ALTER names it by its label). */
const grantKind = (kind: string): string | undefined =>
  ['table', 'view', 'materialized-view'].includes(kind)
    ? 'TABLE'
    : ['function', 'procedure', 'aggregate'].includes(kind)
      ? 'ROUTINE'
      : ['sequence', 'type', 'domain', 'schema'].includes(kind)
        ? kind.toUpperCase()
        : undefined;
const NO_OWNER = new Set(['index', 'constraint', 'trigger', 'rule', 'policy', 'column', 'cast', 'extension', 'default-privileges']);

/** How COMMENT, ALTER … OWNER and GRANT name an object, from its identity. */
function sqlName(kind: string, identity: string): { comment: string; alter?: string; grant?: string } {
  let rest = nameOf(identity);
  let label = kindLabel(kind).toUpperCase();
  if (kind === 'table' && identity.startsWith('foreign table ')) label = 'FOREIGN TABLE';
  if (kind === 'operator') rest = rest.replace(/\((.*)\)$/, (_, args: string) => ` (${args.replace(/,/g, ', ')})`);
  if (['constraint', 'trigger', 'rule', 'policy'].includes(kind)) {
    const { name, rel } = onRelation(rest);
    rest = `${name} ON ${rel}`;
  }
  const comment = `${label} ${rest}`;
  const grant = grantKind(kind);
  return { comment, alter: NO_OWNER.has(kind) ? undefined : comment, grant: grant ? `${grant} ${rest}` : undefined };
}

const ACL_ENTRY = /^(GRANT|REVOKE) (\S+) (?:TO|FROM) (.+?)( WITH GRANT OPTION)?$/;

/**
 * GRANT and REVOKE from an `acl` difference (entries relative to the default privileges, the source's roles mapped):
 * what only the target has undone, then what only the source has done. Null: not a kind GRANT knows.
 */
function privilegeStatements(x: SchemaDifference, missingRoles: Set<string>): string[] | null {
  let grant: (priv: string, role: string, wgo: string) => string;
  let revoke: (priv: string, role: string) => string;
  if (x.kind === 'default-privileges') {
    const m = /^default privileges on (\w+)(?: in schema (.+?))? for role (.+)$/.exec(x.identity);
    if (!m) return null;
    const prefix = `ALTER DEFAULT PRIVILEGES FOR ROLE ${m[3]}${m[2] ? ` IN SCHEMA ${m[2]}` : ''}`;
    grant = (p, r, wgo) => `${prefix} GRANT ${p} ON ${m[1].toUpperCase()} TO ${r}${wgo}`;
    revoke = (p, r) => `${prefix} REVOKE ${p} ON ${m[1].toUpperCase()} FROM ${r}`;
  } else if (x.kind === 'column') {
    const parts = nameParts(nameOf(x.identity));
    const [table, column] = [parts.slice(0, -1).join('.'), parts[parts.length - 1]];
    grant = (p, r, wgo) => `GRANT ${p} (${column}) ON TABLE ${table} TO ${r}${wgo}`;
    revoke = (p, r) => `REVOKE ${p} (${column}) ON TABLE ${table} FROM ${r}`;
  } else {
    const on = sqlName(x.kind, x.identity).grant;
    if (!on) return null;
    grant = (p, r, wgo) => `GRANT ${p} ON ${on} TO ${r}${wgo}`;
    revoke = (p, r) => `REVOKE ${p} ON ${on} FROM ${r}`;
  }
  const entries = (side: string | undefined) => (side ? side.split('; ') : []).map((e) => ACL_ENTRY.exec(e)).filter((e): e is RegExpExecArray => e !== null);
  const known = (e: RegExpExecArray) => !missingRoles.has(unquoteRole(e[3]));
  const out: string[] = [];
  // What only the target has: a grant revoked, a revoked default granted back.
  for (const e of entries(x.target).filter(known)) out.push(e[1] === 'GRANT' ? revoke(e[2], e[3]) : grant(e[2], e[3], ''));
  for (const e of entries(x.source).filter(known)) out.push(e[1] === 'GRANT' ? grant(e[2], e[3], e[4] ?? '') : revoke(e[2], e[3]));
  return out;
}

// ───────────────────────────── enum values ─────────────────────────────

/**
 * ALTER TYPE … ADD VALUE for the labels the source's enums have and the
 * target's lack, each after the label before it in the source's order. A
 * label the target has and the source does not (dropped, renamed), or the
 * same labels in another order, cannot be followed.
 */
async function enumValueChanges(src: pg.Client, tgt: pg.Client, diffs: SchemaDifference[], result: ReconcileResult): Promise<Change[]> {
  const enums = diffs.filter((x) => x.kind === 'type' && x.what === 'definition' && /^ENUM \(/.test(x.source ?? '') && /^ENUM \(/.test(x.target ?? ''));
  if (enums.length === 0) return [];
  const names = enums.map((x) => nameOf(x.identity));
  const labels = async (c: pg.Client) => {
    const r = await c.query<{ t: string; labels: string[] }>(
      `SELECT t, ARRAY(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e WHERE e.enumtypid = t::regtype ORDER BY e.enumsortorder) AS labels
         FROM unnest($1::text[]) AS t`,
      [names],
    );
    return new Map(r.rows.map((x) => [x.t, x.labels]));
  };
  const [onSource, onTarget] = [await labels(src), await labels(tgt)];
  const out: Change[] = [];
  enums.forEach((x, i) => {
    const name = names[i];
    const want = onSource.get(name) ?? [];
    const have = onTarget.get(name) ?? [];
    const common = want.filter((l) => have.includes(l));
    if (have.some((l) => !want.includes(l)) || common.some((l, j) => have.filter((h) => want.includes(h))[j] !== l)) {
      result.unsupported.push({ object: x.identity, difference: 'definition: enum values removed, renamed or reordered on the source cannot be followed' });
      return;
    }
    // In the source's order, each after the label before it (there by then); a new first label before the first one the target has.
    const sql: string[] = [];
    want.forEach((label, j) => {
      if (have.includes(label)) return;
      const where = j > 0 ? ` AFTER ${ql(want[j - 1])}` : common.length > 0 ? ` BEFORE ${ql(common[0])}` : '';
      sql.push(`ALTER TYPE ${name} ADD VALUE IF NOT EXISTS ${ql(label)}${where}`);
    });
    out.push({ object: x.identity, change: sql.length === 1 ? 'enum value added' : 'enum values added', sql, mode: 'each', phase: 0, order: i });
  });
  return out;
}

// ───────────────────────────── running ─────────────────────────────

/** Runs one change; what the target refuses goes to `result.failed` with the statement and the error. Returns whether it was applied. */
async function runChange(tgt: pg.Client, c: Change, result: ReconcileResult): Promise<boolean> {
  const ran: string[] = [];
  const run = async (sql: string[], mode: Change['mode']) => {
    if (mode === 'tx') await tgt.query('BEGIN');
    try {
      for (const q of sql) ran.push(mode === 'index' ? await indexStatement(tgt, q) : (await tgt.query(q), q));
      if (mode === 'tx') await tgt.query('COMMIT');
    } catch (e) {
      if (mode === 'tx') await tgt.query('ROLLBACK').catch(() => undefined);
      throw e;
    }
  };
  try {
    try {
      await run(c.sql, c.mode);
    } catch (e) {
      if (!c.fallback) throw e;
      ran.length = 0;
      await run(c.fallback, 'tx');
    }
    result.applied.push({ object: c.object, change: c.change, statement: ran.join(';\n') });
    return true;
  } catch (e) {
    const state = sqlState(e);
    result.failed.push({ object: c.object, statement: [...c.sql].join(';\n'), error: `${(e as Error).message}${state ? ` (SQLSTATE ${state})` : ''}` });
    return false;
  }
}

/**
 * CREATE or DROP INDEX CONCURRENTLY (the apply writes meanwhile), without the lock timeout (the build waits for older
 * transactions); as written on a partitioned table, which refuses it. A failed build's invalid index is dropped.
 */
async function indexStatement(tgt: pg.Client, sql: string): Promise<string> {
  const concurrent = sql.replace(/^(CREATE (?:UNIQUE )?INDEX |DROP INDEX )/, '$1CONCURRENTLY ');
  await tgt.query(`SELECT set_config('lock_timeout', '0', false)`);
  try {
    await tgt.query(concurrent);
    return concurrent;
  } catch (e) {
    if (sqlState(e) === '0A000') {
      await tgt.query(sql);
      return sql;
    }
    const name = /^CREATE (?:UNIQUE )?INDEX ("(?:[^"]|"")*"|\S+) ON (?:ONLY )?("(?:[^"]|"")*"|[^\s".]+)\./.exec(sql);
    if (name && sqlState(e) !== '42P07') {
      const index = `${name[2]}.${name[1]}`;
      const invalid = await tgt.query('SELECT 1 FROM pg_catalog.pg_index WHERE indexrelid = to_regclass($1) AND NOT indisvalid', [index]);
      if (invalid.rows.length > 0) await tgt.query(`DROP INDEX CONCURRENTLY IF EXISTS ${index}`);
    }
    throw e;
  } finally {
    await tgt.query(`SELECT set_config('lock_timeout', $1, false)`, [LOCK_TIMEOUT]);
  }
}
