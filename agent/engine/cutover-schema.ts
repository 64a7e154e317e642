/**
 * cutover-schema — the cutover's schema handover and verification, and the
 * large objects' last pass, all inside the fence.
 *
 * Input: the cutover's source and target connections (source fenced,
 * everything below the fence applied), the spec and the migrated tables.
 * Output:
 *   - `largeObjectPass()`: the target's large objects made equal to the
 *     source's (logical replication does not carry them), with counts and
 *     the time it took;
 *   - `handOver()`: in ONE target transaction, triggers, rules and row
 *     security switched on as on the source, then the target's catalog
 *     compared with the source's (schema-describe.ts, schema-diff.ts); a
 *     difference the user did not accept rolls it all back and fails the
 *     cutover with the objects and what differs;
 *   - `undoHandover()`: a failed cutover after the handover switches them off
 *     again, so that the sync that goes on cannot fire them;
 *   - `refreshAfterHandover()`: materialized views refreshed once more after
 *     the cutover (CONCURRENTLY where a unique index allows), outside the fence.
 */
import type pg from 'pg';
import { closeQuietly, connect, qi, qn } from './conn';
import { PgferryError } from './errors';
import { selectTables, type TableInfo } from './catalog';
import { migratableTables } from './preflight';
import { NO_ROLE_MAPPING, planSchema, type MatviewRef, type SchemaPlan } from './schema';
import { selectSchemas } from './schema-objects-read';
import { describeSchema, type SchemaObject } from './schema-describe';
import { diffSchemas, formatSchemaDiff, type SchemaDifference } from './schema-diff';
import { syncLargeObjects, type LargeObjectSyncStats } from './large-objects';
import type { MigrationSpec } from './spec';
import type { RoleMapping } from './schema-privileges';
import type { LargeObjectsReport, SchemaCheckReport } from './state';

/** The role mapping of a spec (a spec stored before `roles` existed is read with the default). */
export function rolesOf(spec: MigrationSpec): RoleMapping {
  return spec.roles ?? NO_ROLE_MAPPING;
}

/**
 * One pass over the large objects (the load's, the sync's periodic ones and
 * the cutover's last one inside the fence). Passes of one migration never
 * overlap (large-objects.ts holds an advisory lock on the target), so a
 * periodic pass that read the source before the fence cannot write after
 * the fence's pass.
 */
export async function largeObjectPass(
  src: pg.Client,
  tgt: pg.Client,
  migrationId: string,
  spec: MigrationSpec,
  signal?: AbortSignal,
): Promise<LargeObjectsReport> {
  const t0 = Date.now();
  const s: LargeObjectSyncStats = await syncLargeObjects(src, tgt, { migrationId, roleMap: rolesOf(spec).map, signal });
  return { objects: s.objects, created: s.created, updated: s.updated, unlinked: s.unlinked, bytes: s.bytes, ms: Date.now() - t0 };
}

/** The plan of the migrated schemas, as the schema stage made it. */
export async function currentPlan(src: pg.Client, spec: MigrationSpec, tables: TableInfo[]): Promise<{ plan: SchemaPlan; schemas: string[] }> {
  const schemas = await selectSchemas(src, spec.tables);
  return { plan: await planSchema(src, tables, { schemas, roles: rolesOf(spec) }), schemas };
}

/**
 * Compare the two catalogs now (`pgferry schema diff`, and the handover).
 * `target` may be inside the handover's transaction: it sees its changes.
 */
export async function compareSchemas(
  src: pg.Client,
  tgt: pg.Client,
  spec: MigrationSpec,
  schemas: string[],
  tables: TableInfo[],
  accept: string[] = [],
  sourceObjects?: SchemaObject[],
): Promise<{ differences: SchemaDifference[]; objects: number }> {
  const which = { schemas, tables: tables.map((t) => ({ schema: t.schema, name: t.name })) };
  const [a, b] = await Promise.all([sourceObjects ?? describeSchema(src, which), describeSchema(tgt, which)]);
  const roles = rolesOf(spec);
  const migrated = new Set(tables.map((t) => qn(t.schema, t.name)));
  let differences = diffSchemas(a, b, { roleMap: roles.map, accept }).map((d) => (d.accepted || !expected(d, migrated) ? d : { ...d, accepted: true }));
  if (roles.missing === 'skip') {
    // What names a role the target lacks was skipped on purpose (and said then).
    const present = new Set((await tgt.query<{ r: string }>('SELECT rolname AS r FROM pg_catalog.pg_roles')).rows.map((x) => x.r));
    const sourceRoles = (await src.query<{ r: string }>('SELECT rolname AS r FROM pg_catalog.pg_roles')).rows.map((x) => roles.map[x.r] ?? x.r);
    const missing = new Set(sourceRoles.filter((r) => !present.has(r)).flatMap((r) => [r, qi(r)]));
    // Exactly those roles: an owner that is one, or ACL entries (`GRANT p TO role`, `; `-separated) all naming one.
    const grantee = (entry: string) => /^(?:GRANT|REVOKE) \S+ (?:TO|FROM) (.+?)(?: WITH GRANT OPTION)?$/.exec(entry)?.[1];
    const skipped = (d: SchemaDifference) =>
      d.what === 'owner'
        ? missing.has(d.source ?? '')
        : d.what === 'acl' && !d.target && !!d.source && d.source.split('; ').every((e) => missing.has(grantee(e) ?? ''));
    differences = differences.map((d) => (!d.accepted && skipped(d) ? { ...d, accepted: true } : d));
  }
  return { differences, objects: a.length };
}

/**
 * A difference the migration makes on purpose, said when it was made (the
 * preflight or the schema stage's warnings): the target's own `public`
 * schema keeps its owner and privileges (15+ gives it to pg_database_owner);
 * an extension is the target's (its owner, and its default version where the
 * source's is not offered); a foreign key to a table that is not migrated is
 * not created.
 */
function expected(d: SchemaDifference, migrated: Set<string>): boolean {
  if (d.identity === 'schema public' && (d.what === 'owner' || d.what === 'acl')) return true;
  if (d.kind === 'extension' && (d.what === 'owner' || d.what === 'definition')) return true;
  if (d.kind === 'constraint' && d.what === 'missing-on-target' && /^FOREIGN KEY/.test(d.source ?? '')) {
    const ref = /REFERENCES ((?:"(?:[^"]|"")*"|[^\s"(.]+)\.(?:"(?:[^"]|"")*"|[^\s"(]+))\(/.exec(d.source ?? '');
    return !!ref && !migrated.has(ref[1]);
  }
  return false;
}

/**
 * The handover (see the file comment). Returns the schema check; throws
 * CUTOVER_FAILED (nothing switched on) when the schemas differ.
 */
export async function handOver(
  src: pg.Client,
  tgt: pg.Client,
  spec: MigrationSpec,
  tables: TableInfo[],
  accept: string[],
  prepared?: PreparedHandover,
): Promise<{ check: SchemaCheckReport; plan: SchemaPlan }> {
  const t0 = Date.now();
  // `prepared`: read before the fence, and the caller has seen the catalog's signature unchanged since (the fence stops DDL).
  const ready = prepared;
  const { plan, schemas } = ready ?? (await currentPlan(src, spec, tables));
  await tgt.query('BEGIN');
  try {
    await tgt.query('SET LOCAL search_path = pg_catalog');
    for (const s of plan.handover) await tgt.query(s.sql);
    const { differences, objects } = await compareSchemas(src, tgt, spec, schemas, tables, accept, ready?.source);
    const bad = differences.filter((d) => !d.accepted);
    const check: SchemaCheckReport = { ok: bad.length === 0, objects, differences: formatSchemaDiff(differences, objects).split('\n').filter(Boolean), ms: 0 };
    if (bad.length > 0) {
      throw new PgferryError(
        'CUTOVER_FAILED',
        `The target's schema differs from the source's in ${bad.length} place(s): ${formatSchemaDiff(bad.slice(0, 10))}${bad.length > 10 ? ` … and ${bad.length - 10} more` : ''}`,
        `See all of it with: pgferry schema diff ${spec.id}. Fix the target (or the source) so they match, or accept a difference: \`cutoverOptions.acceptSchemaDifferences: ['<object>']\` in Pulumi, \`--accept-schema-difference '<object>'\` with pgferry cutover. Then cut over again.`,
      );
    }
    await tgt.query('COMMIT');
    check.ms = Date.now() - t0;
    return { check, plan };
  } catch (e) {
    await tgt.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
}

/** The source's side of the handover, read before the fence (its plan and its catalog's description). */
export interface PreparedHandover {
  plan: SchemaPlan;
  schemas: string[];
  source: SchemaObject[];
  /** `catalogSignature()` when it was read. */
  signature: string;
}

/**
 * Read the source's side of the handover before the fence, so that inside
 * it only a signature of the catalog is read again (`handOver` falls back to
 * reading it all when the signature changed).
 */
export async function prepareHandover(src: pg.Client, spec: MigrationSpec, tables: TableInfo[]): Promise<PreparedHandover> {
  const signature = await catalogSignature(src);
  const { plan, schemas } = await currentPlan(src, spec, tables);
  const source = await describeSchema(src, { schemas, tables: tables.map((t) => ({ schema: t.schema, name: t.name })) });
  return { plan, schemas, source, signature };
}

/** The catalogs a schema's description reads (DDL, GRANT and COMMENT all write some of them). */
const SIGNED_CATALOGS = [
  'pg_namespace',
  'pg_class',
  'pg_attribute',
  'pg_attrdef',
  'pg_constraint',
  'pg_index',
  'pg_type',
  'pg_proc',
  'pg_aggregate',
  'pg_operator',
  'pg_cast',
  'pg_collation',
  'pg_trigger',
  'pg_rewrite',
  'pg_policy',
  'pg_description',
  'pg_depend',
  'pg_default_acl',
  'pg_extension',
  'pg_sequence',
  'pg_statistic_ext',
  'pg_ts_config',
  'pg_ts_dict',
  'pg_inherits',
  'pg_event_trigger',
];

/**
 * A signature of the database's catalog: each catalog's row count and the
 * sum of its rows' xmin. Any DDL, GRANT or COMMENT inserts, updates or
 * deletes a catalog row, so it changes (a few milliseconds to read).
 */
export async function catalogSignature(src: pg.Client): Promise<string> {
  const parts = SIGNED_CATALOGS.map((c) => `SELECT '${c}' AS c, count(*) AS n, coalesce(sum(xmin::text::bigint), 0) AS x FROM pg_catalog.${c}`);
  const r = await src.query(parts.join(' UNION ALL '));
  return r.rows.map((x) => `${x.c}:${x.n}:${x.x}`).join(' ');
}

/** The inverse of each handover statement: what a failed cutover switches off again. */
export function inverseOfHandover(sql: string): string {
  return sql
    .replace(/ ENABLE (?:REPLICA |ALWAYS )?(TRIGGER|RULE) /, ' DISABLE $1 ')
    .replace(/ ENABLE ROW LEVEL SECURITY$/, ' DISABLE ROW LEVEL SECURITY')
    .replace(/ FORCE ROW LEVEL SECURITY$/, ' NO FORCE ROW LEVEL SECURITY');
}

/** Switch the handover off again on a fresh connection (a failed cutover's sync goes on). Returns what failed, if anything. */
export async function undoHandover(spec: MigrationSpec, plan: SchemaPlan): Promise<string | null> {
  let tgt: pg.Client | undefined;
  try {
    tgt = await connect('target', spec.target, { applicationName: `pgferry cutover ${spec.id}`, queryTimeoutMs: 30_000 });
    await tgt.query('BEGIN');
    for (const s of plan.handover) await tgt.query(inverseOfHandover(s.sql));
    await tgt.query('COMMIT');
    return null;
  } catch (e) {
    return (e as Error).message;
  } finally {
    if (tgt) await closeQuietly(tgt);
  }
}

/** After the handover: every materialized view refreshed once more with the last of the data, outside the fence. */
export async function refreshAfterHandover(spec: MigrationSpec, matviews: MatviewRef[], log: (level: 'info' | 'warn', msg: string) => void): Promise<void> {
  if (matviews.length === 0) return;
  let tgt: pg.Client | undefined;
  try {
    tgt = await connect('target', spec.target, { applicationName: `pgferry refresh ${spec.id}` });
    for (const m of matviews) {
      const t0 = Date.now();
      try {
        await tgt.query(`REFRESH MATERIALIZED VIEW ${m.concurrent ? 'CONCURRENTLY ' : ''}${m.name}`);
        log(
          'info',
          `Refreshed materialized view ${m.name}${m.concurrent ? ' concurrently' : ''} after the handover in ${((Date.now() - t0) / 1000).toFixed(1)} s`,
        );
      } catch (e) {
        log(
          'warn',
          `Refreshing materialized view ${m.name} after the handover failed: ${(e as Error).message}. Run REFRESH MATERIALIZED VIEW ${m.name}; on the target.`,
        );
      }
    }
  } catch (e) {
    log('warn', `Could not connect to the target to refresh its materialized views after the handover: ${(e as Error).message}`);
  } finally {
    if (tgt) await closeQuietly(tgt);
  }
}

export interface SchemaDiffResult {
  equal: boolean;
  objects: number;
  differences: SchemaDifference[];
  text: string;
}

/** `pgferry schema diff`: the handover's comparison, now, read-only on both servers. */
export async function schemaDiffNow(spec: MigrationSpec, opts: { beforeHandover: boolean; accept?: string[] }): Promise<SchemaDiffResult> {
  const src = await connect('source', spec.source, { applicationName: `pgferry schema diff ${spec.id}`, queryTimeoutMs: 120_000 });
  let tgt: pg.Client | undefined;
  try {
    tgt = await connect('target', spec.target, { applicationName: `pgferry schema diff ${spec.id}`, queryTimeoutMs: 120_000 });
    const tables = migratableTables((await selectTables(src, spec.tables)).tables);
    const schemas = await selectSchemas(src, spec.tables);
    const compared = await compareSchemas(src, tgt, spec, schemas, tables, opts.accept ?? []);
    const { objects } = compared;
    // Before the handover the target's triggers and rules are off and its row security too, on purpose.
    const differences = compared.differences.map((d) =>
      opts.beforeHandover && d.what === 'enabled' && /^(DISABLE|row security off)$/.test(d.target ?? '') && !d.accepted ? { ...d, accepted: true } : d,
    );
    return { equal: differences.every((d) => d.accepted), objects, differences, text: formatSchemaDiff(differences, objects) };
  } finally {
    await closeQuietly(src);
    if (tgt) await closeQuietly(tgt);
  }
}
