/**
 * preflight-target — the target side of the preflight: the target's version,
 * encoding and privileges, and the selected tables on the target as
 * `schemaMode` wants them (absent, or present, empty and of the source's
 * column types).
 *
 * Input: a target connection, the spec and the selected source tables.
 * Output: checks appended to the report, in the report's order. Read-only.
 */
import type pg from 'pg';
import { qi, qn } from './conn';
import { tableKey, type TableInfo } from './catalog';
import type { MigrationSpec } from './spec';
import { check, type PreflightCheck, type PreflightContext } from './preflight-check';

/** The target's version and encoding and what its connecting role may do. */
interface TargetInfo {
  version: string;
  num: number;
  encoding: string;
  usr: string;
  can_create: boolean;
  superuser: boolean;
}

/** A selected table that exists on the target. */
interface TargetTable {
  schema: string;
  name: string;
  oid: number;
}

/**
 * The target-side checks, in the report's order: version, encoding and
 * privileges; then, unless resuming, the selected tables on the target, as
 * `schemaMode` wants them.
 */
export async function targetChecks(
  tgt: pg.Client,
  spec: MigrationSpec,
  ctx: PreflightContext,
  tables: TableInfo[],
  srcMajor: number,
  checks: PreflightCheck[],
) {
  const info = (
    await tgt.query<TargetInfo>(`SELECT current_setting('server_version') AS version, current_setting('server_version_num')::int AS num,
      current_setting('server_encoding') AS encoding, current_user AS usr,
      has_database_privilege(current_user, current_database(), 'CREATE') AS can_create,
      (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser`)
  ).rows[0];
  targetServerChecks(info, srcMajor, checks);
  if (ctx.resuming || tables.length === 0) return { version: info.version };
  const data = tables.filter((t) => t.kind === 'r');
  const existing = (
    await tgt.query<TargetTable>(
      `SELECT n.nspname AS schema, c.relname AS name, c.oid::int AS oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))`,
      [data.map((t) => t.schema), data.map((t) => t.name)],
    )
  ).rows;
  if (spec.schemaMode === 'create') {
    targetTablesAbsentCheck(existing, checks);
  } else {
    targetTablesPresentCheck(data, existing, checks);
    await targetEmptyCheck(tgt, spec, existing, checks);
    await targetColumnTypesCheck(tgt, data, checks);
  }
  return { version: info.version };
}

/** target_version, target_encoding, target_privilege. */
function targetServerChecks(info: TargetInfo, srcMajor: number, checks: PreflightCheck[]): void {
  const major = Math.floor(info.num / 10000);
  if (srcMajor && major < srcMajor) {
    checks.push(
      check(
        'target_version',
        'fail',
        `The target runs PostgreSQL ${info.version}, older than the source (${srcMajor}).`,
        'Migrate to a target of the same or a newer major version.',
      ),
    );
  } else {
    checks.push(check('target_version', 'pass', `Target PostgreSQL ${info.version}.`));
  }
  if (info.encoding !== 'UTF8') {
    checks.push(
      check(
        'target_encoding',
        'warn',
        `The target database encoding is ${info.encoding}; values are transferred as UTF-8 text.`,
        "Create the target database with ENCODING 'UTF8'.",
      ),
    );
  }
  if (!info.superuser && !info.can_create) {
    checks.push(
      check(
        'target_privilege',
        'fail',
        `Role '${info.usr}' may not create schemas in the target database.`,
        `Run GRANT CREATE ON DATABASE <target database> TO "${info.usr}"; or connect as the database owner.`,
      ),
    );
  }
}

/** target_tables for `schemaMode: 'create'`: no selected table exists on the target yet. */
function targetTablesAbsentCheck(existing: TargetTable[], checks: PreflightCheck[]): void {
  if (existing.length) {
    const names = existing.map((r) => qn(r.schema, r.name));
    checks.push(
      check(
        'target_tables',
        'fail',
        `${names.length} selected table(s) already exist on the target: ${names.slice(0, 20).join(', ')}${names.length > 20 ? ', …' : ''}.`,
        "Drop them on the target, or set `schemaMode: 'existing'` to load into them.",
        names,
      ),
    );
  } else {
    checks.push(check('target_tables', 'pass', 'No selected table exists on the target yet.'));
  }
}

/** target_tables for `schemaMode: 'existing'`: every selected table exists on the target. */
function targetTablesPresentCheck(data: TableInfo[], existing: TargetTable[], checks: PreflightCheck[]): void {
  const missing = data.filter((t) => !existing.some((r) => r.schema === t.schema && r.name === t.name)).map(tableKey);
  if (missing.length) {
    checks.push(
      check(
        'target_tables',
        'fail',
        `schemaMode is 'existing' but ${missing.length} table(s) are missing on the target: ${missing.join(', ')}.`,
        "Create them on the target, or set `schemaMode: 'create'`.",
        missing,
      ),
    );
  }
}

/** target_empty: the existing target tables hold no rows, or `overwriteTarget` lets pgferry truncate them. */
async function targetEmptyCheck(tgt: pg.Client, spec: MigrationSpec, existing: TargetTable[], checks: PreflightCheck[]): Promise<void> {
  const nonEmpty: string[] = [];
  for (const r of existing) {
    const has = await tgt.query(`SELECT EXISTS (SELECT 1 FROM ONLY ${qn(r.schema, r.name)}) AS x`);
    if (has.rows[0].x) nonEmpty.push(qn(r.schema, r.name));
  }
  if (nonEmpty.length) {
    checks.push(
      spec.overwriteTarget
        ? check(
            'target_empty',
            'warn',
            `${nonEmpty.length} target table(s) hold rows and will be TRUNCATED before the load (overwriteTarget is true): ${nonEmpty.join(', ')}.`,
            '',
            nonEmpty,
          )
        : check(
            'target_empty',
            'fail',
            `${nonEmpty.length} target table(s) already hold rows: ${nonEmpty.join(', ')}.`,
            'Empty them yourself, or set `overwriteTarget: true` to let pgferry truncate them before the load.',
            nonEmpty,
          ),
    );
  } else if (existing.length) {
    checks.push(check('target_empty', 'pass', 'The existing target tables are empty.'));
  }
}

/** target_column_types: a warning for each column whose type differs on the target. */
async function targetColumnTypesCheck(tgt: pg.Client, data: TableInfo[], checks: PreflightCheck[]): Promise<void> {
  const differing = await differingColumnTypes(tgt, data);
  if (differing.length) {
    checks.push(
      check(
        'target_column_types',
        'warn',
        `${differing.length} column(s) have another type on the target than on the source: ${differing.slice(0, 20).join(', ')}${differing.length > 20 ? ', …' : ''}. Their values are converted by the target's input functions, which fail, round or truncate where a value does not fit.`,
        "Give the target columns the source's types (ALTER TABLE … ALTER COLUMN … TYPE …) unless the difference is intended.",
        differing,
      ),
    );
  }
}

/**
 * Columns of `tables` whose type on the target is not the source's, as
 * `schema.table.column (source type → target type)`; tables or columns the
 * target lacks are other checks' business. Compared as format_type text:
 * the same name means the same type (user types are created under the
 * source's names).
 */
async function differingColumnTypes(tgt: pg.Client, tables: TableInfo[]): Promise<string[]> {
  const cols = tables.flatMap((t) => t.columns.filter((c) => !c.generated).map((c) => ({ t, c })));
  if (cols.length === 0) return [];
  const r = await tgt.query(
    `SELECT want.i, format_type(a.atttypid, a.atttypmod) AS type
      FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS want(schema, name, col, i)
      JOIN pg_catalog.pg_namespace n ON n.nspname = want.schema
      JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = want.name
      JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = want.col AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY want.i`,
    [cols.map((x) => x.t.schema), cols.map((x) => x.t.name), cols.map((x) => x.c.name)],
  );
  const out: string[] = [];
  for (const row of r.rows) {
    const { t, c } = cols[Number(row.i) - 1]!;
    if (row.type !== c.type) out.push(`${tableKey(t)}.${qi(c.name)} (${c.type} → ${row.type})`);
  }
  return out;
}
