/**
 * schema-apply — the target side of the schema stage: runs a `SchemaPlan`
 * (schema.ts) on the target, and checks a target schema the user created.
 *
 * Input: a target connection and the plan, or the selected tables.
 * Output: `applyPreData()` creates the pre-data objects in ONE transaction;
 * `applyPostDataStatement()` builds one post-data statement unless it is
 * built already; `verifyExistingSchema()` (for `schemaMode: 'existing'`) throws
 * SCHEMA_DRIFT naming what the target lacks. Failures are SCHEMA_FAILED,
 * naming the object and the statement, with a remedy from the SQLSTATE.
 * schema.ts re-exports these: callers import the stage from there.
 */
import type pg from 'pg';
import type { TableInfo } from './catalog';
import { qi, qn, ql } from './conn';
import { PgferryError, sqlState, type PgServerError } from './errors';
import type { SchemaStatement } from './schema-ddl';

/**
 * The part of a `SchemaPlan` that `applyPreData()` runs. Named here rather
 * than imported: schema.ts re-exports this file, so importing it back would
 * be a cycle.
 */
export interface PreDataPlan {
  preData: SchemaStatement[];
}

export interface ApplyPreDataOptions {
  /**
   * Runs inside the schema transaction just before COMMIT, e.g. to record a
   * "schema done" marker atomically with the DDL. Default: nothing.
   */
  beforeCommit?: (target: pg.Client) => Promise<void>;
}

/** The statement's first line, for an error message. */
const firstLine = (sql: string) => sql.split('\n')[0].slice(0, 200);

function remedyFor(e: unknown, object: string): string {
  const hint = (e as PgServerError | undefined)?.hint;
  switch (sqlState(e)) {
    case '42P07':
    case '42710':
    case '42P06':
      return `${object} already exists on the target: drop it, or set \`schemaMode: 'existing'\` to load into the existing schema.`;
    case '42883':
    case '42704':
      return "Create the missing function, operator, type or collation on the target first (pgferry does not migrate functions), then retry; or create the schema yourself and set `schemaMode: 'existing'`.";
    case '58P01':
    case '0A000':
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
export async function applyPreData(target: pg.Client, plan: PreDataPlan, opts: ApplyPreDataOptions = {}): Promise<void> {
  const tablesToCreate = plan.preData.filter((s) => (s.kind === 'table' || s.kind === 'partition') && s.existsSql);
  const existing: string[] = [];
  for (let i = 0; i < tablesToCreate.length; i += 200) {
    const chunk = tablesToCreate.slice(i, i + 200);
    const r = await target.query<{ object: string }>(chunk.map((s) => `SELECT ${ql(s.object)} AS object WHERE EXISTS (${s.existsSql})`).join('\nUNION ALL\n'));
    existing.push(...r.rows.map((row) => row.object));
  }
  if (existing.length > 0) {
    throw new PgferryError(
      'SCHEMA_FAILED',
      `The target already has ${existing.length === 1 ? 'table' : 'tables'} ${existing.join(', ')}; nothing was created.`,
      `Drop ${existing.length === 1 ? 'it' : 'them'} on the target, or set \`schemaMode: 'existing'\` to load into the existing tables.`,
    );
  }
  let current: SchemaStatement | undefined;
  try {
    await target.query('BEGIN');
    // Every name in the plan is qualified; pg_catalog alone keeps a target
    // session's search_path from resolving a built-in name to a user object.
    await target.query('SET LOCAL search_path = pg_catalog');
    // A classic function body may name tables created after it (pg_dump does the same).
    await target.query('SET LOCAL check_function_bodies = off');
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
    throw new PgferryError(
      'SCHEMA_FAILED',
      `${what}: ${err?.message ?? String(e)}${state ? ` (SQLSTATE ${state})` : ''}${current ? `; statement: ${firstLine(current.sql)}` : ''}. Nothing was created.`,
      remedyFor(e, current?.object ?? 'an object'),
      { cause: e },
    );
  }
}

/** The part of a `SchemaPlan` that `applyFinish()` runs. */
export interface FinishPlan {
  finish: SchemaStatement[];
  matviews: Array<{ name: string; concurrent: boolean }>;
}

/**
 * Run the finish (after the load and the post-data) in ONE target
 * transaction: statistics, triggers and rules (created disabled), policies,
 * comments, owners, grants and default privileges; then every materialized
 * view refreshed (in dependency order). With `missing: 'skip'`, a statement
 * that names a role the target lacks is skipped (or, for a policy, created
 * without that role) and said in a warning; otherwise the statement fails
 * with the role named. Returns the warnings.
 */
export async function applyFinish(
  target: pg.Client,
  plan: FinishPlan,
  opts: ApplyPreDataOptions & { missingRoles: 'fail' | 'skip'; log?: (msg: string) => void },
): Promise<string[]> {
  const warnings: string[] = [];
  const named = [...new Set(plan.finish.flatMap((s) => s.roles ?? []))];
  const present = new Set(
    (await target.query<{ r: string }>('SELECT rolname AS r FROM pg_catalog.pg_roles WHERE rolname = ANY($1::text[])', [named])).rows.map((x) => x.r),
  );
  const missing = new Set(named.filter((r) => !present.has(r)));
  let current: SchemaStatement | undefined;
  try {
    await target.query('BEGIN');
    await target.query('SET LOCAL search_path = pg_catalog');
    for (const s of plan.finish) {
      current = s;
      let sql: string | null = s.sql;
      const lacking = (s.roles ?? []).filter((r) => missing.has(r));
      if (lacking.length > 0 && opts.missingRoles === 'skip') {
        sql = s.sqlWithout ? s.sqlWithout(missing) : null;
        warnings.push(
          `${s.kind} of ${s.object}: role ${lacking.map((r) => qi(r)).join(', ')} does not exist on the target (roles.missing: 'skip'): ${sql ? 'created without it' : 'skipped'}.`,
        );
      }
      if (sql !== null) await target.query(sql);
    }
    for (const m of plan.matviews) {
      current = { kind: 'refresh', object: m.name, sql: `REFRESH MATERIALIZED VIEW ${m.name}` };
      const t0 = Date.now();
      await target.query(current.sql);
      opts.log?.(`Refreshed materialized view ${m.name} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }
    current = undefined;
    await opts.beforeCommit?.(target);
    await target.query('COMMIT');
    return warnings;
  } catch (e) {
    await target.query('ROLLBACK').catch(() => undefined);
    if (e instanceof PgferryError) throw e;
    const err = e as PgServerError;
    const state = sqlState(e);
    const what = current ? `${current.kind} of ${current.object} on the target failed` : 'Committing the finish of the schema on the target failed';
    throw new PgferryError(
      'SCHEMA_FAILED',
      `${what}: ${err?.message ?? String(e)}${state ? ` (SQLSTATE ${state})` : ''}${current ? `; statement: ${firstLine(current.sql)}` : ''}. Nothing of this step was kept (it runs in one transaction).`,
      state === '42704' && current?.roles?.length
        ? `Create the role on the target (CREATE ROLE ${qi(current.roles[0])} NOLOGIN;), map it with \`roles: { map: { <source role>: '<target role>' } }\`, or set \`roles: { missing: 'skip' }\`; then retry.`
        : remedyFor(e, current?.object ?? 'an object'),
      { cause: e },
    );
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
    throw new PgferryError(
      'SCHEMA_FAILED',
      `Building ${s.kind} ${s.object} on the target failed: ${err?.message ?? String(e)}${state ? ` (SQLSTATE ${state})` : ''}; statement: ${firstLine(s.sql)}.`,
      remedyFor(e, s.object),
      { cause: e },
    );
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
    schema: string;
    name: string;
    kind: string;
    columns: Array<{ name: string; generated: boolean; notNull: boolean; hasDefault: boolean; identity: boolean }>;
  }>(
    `
    SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind,
           coalesce(json_agg(json_build_object('name', a.attname, 'generated', a.attgenerated <> '', 'notNull', a.attnotnull,
                                               'hasDefault', a.atthasdef, 'identity', a.attidentity <> '') ORDER BY a.attnum)
                    FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped), '[]') AS columns
      FROM unnest($1::text[], $2::text[]) AS want(schema, name)
      JOIN pg_catalog.pg_namespace n ON n.nspname = want.schema
      JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = want.name
      LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
     GROUP BY n.nspname, c.relname, c.relkind`,
    [tables.map((t) => t.schema), tables.map((t) => t.name)],
  );
  const found = new Map(r.rows.map((row) => [`${row.schema}\u0000${row.name}`, row]));
  const missing: string[] = [];
  const problems: string[] = [];
  const fixes: string[] = [];
  for (const t of tables) {
    const name = qn(t.schema, t.name);
    const have = found.get(`${t.schema}\u0000${t.name}`);
    if (!have) {
      missing.push(name);
      continue;
    }
    if (have.kind !== 'r' && have.kind !== 'p') {
      problems.push(`${name} exists but is not a table (relkind '${have.kind}')`);
      continue;
    }
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
    throw new PgferryError(
      'SCHEMA_DRIFT',
      `The target schema does not match the selected source tables: ${capped(problems, '; ')}.`,
      `Create what is missing on the target${examples}, or drop the target tables and set \`schemaMode: 'create'\` so that pgferry creates them.`,
    );
  }
}

/** Join at most `max` items, saying how many more there are. */
function capped(items: string[], sep: string, max = 25): string {
  return items.length <= max ? items.join(sep) : `${items.slice(0, max).join(sep)}${sep}and ${items.length - max} more`;
}
