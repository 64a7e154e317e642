/**
 * preflight — read-only checks that a spec can be migrated, each with a name,
 * a verdict (pass | warn | fail) and the exact remedy.
 *
 * Input: a validated spec (and, for a migration that already exists, which
 * slot/publication it owns). Output: a `PreflightReport`. Nothing is changed on
 * either server: this runs in `pulumi preview` on pull requests.
 */
import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import { connect, qn, describeEndpoint, resolveEndpoint } from './conn';
import { selectTables, hasUsableIdentity, identityProblem, tableKey, type TableInfo } from './catalog';
import { isPgferryError, asPgferryError } from './errors';
import { publicationNameOf, slotNameOf, type MigrationSpec } from './spec';
import { selectSchemas } from './schema-objects-read';
import { check, type PreflightCheck, type PreflightContext } from './preflight-check';
import { targetChecks } from './preflight-target';
import { schemaChecks } from './preflight-schema';
import { reverseChecks } from './preflight-reverse';

export type { PreflightCheck, PreflightContext, Verdict } from './preflight-check';

export interface PreflightReport {
  ok: boolean;
  checks: PreflightCheck[];
  sourceVersion: string;
  targetVersion: string;
  tableCount: number;
}

export interface PreflightResult {
  report: PreflightReport;
  tables: TableInfo[];
}

/** Tables that can take part: unlogged ones cannot be published. */
export function migratableTables(tables: TableInfo[]): TableInfo[] {
  return tables.filter((t) => t.persistence === 'p');
}

export async function runPreflight(spec: MigrationSpec, ctx: PreflightContext = {}): Promise<PreflightResult> {
  const checks: PreflightCheck[] = [];
  let sourceVersion = '';
  let targetVersion = '';
  let tables: TableInfo[] = [];
  let src: pg.Client | undefined;
  let tgt: pg.Client | undefined;
  // A name no other session has: the target looks for it among its own sessions (sameDatabase).
  const probe = `pgferry preflight ${randomBytes(8).toString('hex')}`;
  try {
    try {
      src = await connect('source', spec.source, { applicationName: probe });
      checks.push(check('source_connection', 'pass', `Connected to the source ${describeEndpoint(resolveEndpoint(spec.source))}.`));
    } catch (e) {
      const err = asPgferryError(e);
      checks.push({ ...check('source_connection', 'fail', err.message, err.remedy), code: err.code });
    }
    try {
      tgt = await connect('target', spec.target, { applicationName: 'pgferry preflight' });
      checks.push(check('target_connection', 'pass', `Connected to the target ${describeEndpoint(resolveEndpoint(spec.target))}.`));
    } catch (e) {
      const err = asPgferryError(e);
      checks.push({ ...check('target_connection', 'fail', err.message, err.remedy), code: err.code });
    }
    const same = src && tgt ? await sameDatabase(src, tgt, probe) : null;
    if (same) {
      // Every other check would read the source's own tables as the target's
      // (and advise dropping them): this one is the whole answer.
      checks.push(
        check(
          'same_database',
          'fail',
          `The source and the target are the same database: the target connection (${describeEndpoint(resolveEndpoint(spec.target))}) reaches the very server and database that the source connection (${describeEndpoint(resolveEndpoint(spec.source))}) reaches (${same}). A migration onto itself would fence the source and copy its tables onto themselves.`,
          "Point `target` at the new server and database (for Azure, the flexible server's fullyQualifiedDomainName and the database created there). Nothing was changed on either server.",
        ),
      );
      return { report: { ok: false, checks, sourceVersion, targetVersion, tableCount: 0 }, tables: [] };
    }
    let srcMajor = 0;
    if (src) {
      const s = await sourceChecks(src, spec, ctx, checks);
      sourceVersion = s.version;
      srcMajor = s.major;
      tables = s.tables;
    }
    if (tgt) {
      const t = await targetChecks(tgt, spec, ctx, tables, srcMajor, checks);
      targetVersion = t.version;
    }
    // What the schema stage needs of the target (roles, extensions) and what it does not carry.
    if (src && tgt && spec.schemaMode === 'create' && migratableTables(tables).length > 0) {
      await schemaChecks(src, tgt, spec, migratableTables(tables), checks);
    }
    // What the way back needs (a `rollbackWindow`), of both servers.
    await reverseChecks(src, tgt, spec, migratableTables(tables), checks);
  } catch (e) {
    if (!isPgferryError(e) && !(e as { code?: string })?.code) throw e;
    const err = asPgferryError(e, 'INTERNAL', 'preflight query failed');
    checks.push(check('preflight', 'fail', err.message, err.remedy || 'Check the privileges of the connecting roles.'));
  } finally {
    await src?.end().catch(() => undefined);
    await tgt?.end().catch(() => undefined);
  }
  const report: PreflightReport = {
    ok: checks.every((c) => c.verdict !== 'fail'),
    checks,
    sourceVersion,
    targetVersion,
    tableCount: migratableTables(tables).filter((t) => t.kind === 'r').length,
  };
  return { report, tables: migratableTables(tables) };
}

/**
 * Whether two connections reach one database, told by the server itself and
 * never by host names (two names, or an address and a name, can reach one
 * server): the source's session, named `probe`, is visible among the
 * target's sessions in the same database; or, where sessions cannot be seen
 * (a pooler in between), the system identifier, the postmaster's start time
 * and the database OID are all equal. Returns what identified it, or null.
 */
async function sameDatabase(src: pg.Client, tgt: pg.Client, probe: string): Promise<string | null> {
  const ident = async (c: pg.Client) => {
    const r = await c.query(`SELECT d.oid::int8::text AS db_oid, pg_postmaster_start_time()::text AS started
      FROM pg_database d WHERE d.datname = current_database()`);
    let sysid: string | null = null;
    try {
      sysid = (await c.query('SELECT system_identifier::text AS s FROM pg_control_system()')).rows[0].s;
    } catch {
      /* not allowed: the session probe decides */
    }
    return { dbOid: r.rows[0].db_oid as string, started: r.rows[0].started as string, sysid };
  };
  const [a, b] = await Promise.all([ident(src), ident(tgt)]);
  const seen = await tgt.query('SELECT datid::int8::text AS db FROM pg_stat_activity WHERE application_name = $1', [probe]);
  const onOneServer = seen.rows.length > 0 || (a.sysid !== null && a.sysid === b.sysid && a.started === b.started);
  if (!onOneServer || a.dbOid !== b.dbOid) return null;
  return [a.sysid ? `system identifier ${a.sysid}` : 'one server', `database OID ${a.dbOid}`, `server started ${a.started}`].join(', ');
}

/** The source's settings and what its connecting role may do, read in one query. */
interface SourceInfo {
  version: string;
  num: number;
  wal_level: string;
  max_slots: number;
  max_senders: number;
  used_slots: number;
  used_senders: number;
  superuser: boolean;
  replication: boolean;
  usr: string;
  encoding: string;
  can_create: boolean;
  /** A bigint, as text. */
  large_objects: string;
}

/**
 * The source-side checks, in the report's order: version and settings,
 * privileges, the slot and publication names, the table selection, replica
 * identities, table ownership and SELECT, large objects.
 */
async function sourceChecks(src: pg.Client, spec: MigrationSpec, ctx: PreflightContext, checks: PreflightCheck[]) {
  const info = await readSourceInfo(src);
  const major = Math.floor(info.num / 10000);
  sourceSettingChecks(info, major, ctx, checks);
  await replicationPrivilegeChecks(src, info, checks);
  await nameChecks(src, spec, ctx, checks);
  const tables = await tableSelectionChecks(src, spec, checks);
  replicaIdentityChecks(tables, major, checks);
  await tableAccessChecks(src, info, tables, checks);
  largeObjectsCheck(info, checks);
  return { version: info.version, major, tables, encoding: info.encoding };
}

async function readSourceInfo(src: pg.Client): Promise<SourceInfo> {
  return (
    await src.query<SourceInfo>(`
    SELECT current_setting('server_version') AS version, current_setting('server_version_num')::int AS num,
           current_setting('wal_level') AS wal_level,
           current_setting('max_replication_slots')::int AS max_slots,
           current_setting('max_wal_senders')::int AS max_senders,
           (SELECT count(*) FROM pg_replication_slots)::int AS used_slots,
           (SELECT count(*) FROM pg_stat_replication)::int AS used_senders,
           r.rolsuper AS superuser, r.rolreplication AS replication, current_user AS usr,
           current_setting('server_encoding') AS encoding,
           has_database_privilege(current_user, current_database(), 'CREATE') AS can_create,
           (SELECT count(*) FROM pg_largeobject_metadata)::bigint AS large_objects
      FROM pg_roles r WHERE r.rolname = current_user`)
  ).rows[0];
}

/** source_version, wal_level, replication_slots, wal_senders. */
function sourceSettingChecks(info: SourceInfo, major: number, ctx: PreflightContext, checks: PreflightCheck[]): void {
  if (major < 12) {
    checks.push(
      check(
        'source_version',
        'fail',
        `The source runs PostgreSQL ${info.version}; pgferry needs 12 or newer.`,
        'Upgrade the source to PostgreSQL 12+ first (pg_upgrade), or migrate with pg_dump.',
      ),
    );
  }
  checks.push(
    info.wal_level === 'logical'
      ? check('wal_level', 'pass', 'wal_level is logical.')
      : check(
          'wal_level',
          'fail',
          `wal_level is '${info.wal_level}' on the source; logical replication needs 'logical'.`,
          'Run ALTER SYSTEM SET wal_level = logical; and restart the source (on Azure: set the server parameter wal_level to LOGICAL and restart).',
        ),
  );
  const needSlots = ctx.ownsSlot ? 1 : 2; // main slot + a temporary one (a load that resumes; each round of the continuous verification)
  const freeSlots = info.max_slots - info.used_slots + (ctx.ownsSlot ? 1 : 0);
  checks.push(
    freeSlots >= needSlots
      ? check('replication_slots', 'pass', `${freeSlots} replication slot(s) free.`)
      : check(
          'replication_slots',
          'fail',
          `Only ${freeSlots} of max_replication_slots=${info.max_slots} are free; pgferry needs ${needSlots}.`,
          `Raise max_replication_slots (ALTER SYSTEM SET max_replication_slots = ${info.max_slots + needSlots}; then restart), or drop unused slots (SELECT pg_drop_replication_slot(name)).`,
        ),
  );
  const freeSenders = info.max_senders - info.used_senders;
  checks.push(
    freeSenders >= 2
      ? check('wal_senders', 'pass', `${freeSenders} WAL sender(s) free.`)
      : check(
          'wal_senders',
          'fail',
          `Only ${freeSenders} of max_wal_senders=${info.max_senders} are free; pgferry needs 2.`,
          `Raise max_wal_senders (ALTER SYSTEM SET max_wal_senders = ${info.max_senders + 2}; then restart).`,
        ),
  );
}

/** replication_privilege, create_privilege: the role may replicate and create the publication. */
async function replicationPrivilegeChecks(src: pg.Client, info: SourceInfo, checks: PreflightCheck[]): Promise<void> {
  checks.push(
    info.superuser || info.replication
      ? check('replication_privilege', 'pass', `Role '${info.usr}' may replicate.`)
      : check(
          'replication_privilege',
          'fail',
          `Role '${info.usr}' has neither REPLICATION nor SUPERUSER on the source.`,
          `Run ALTER ROLE "${info.usr}" WITH REPLICATION; as a superuser (on Azure: as the server admin).`,
        ),
  );
  if (!info.superuser && !info.can_create) {
    checks.push(
      check(
        'create_privilege',
        'fail',
        `Role '${info.usr}' may not create a publication in this database.`,
        `Run GRANT CREATE ON DATABASE "${(await src.query('SELECT current_database() AS d')).rows[0].d}" TO "${info.usr}";`,
      ),
    );
  }
}

/** slot_name, publication_name: no other slot or publication holds this migration's names. */
async function nameChecks(src: pg.Client, spec: MigrationSpec, ctx: PreflightContext, checks: PreflightCheck[]): Promise<void> {
  const slotName = slotNameOf(spec);
  const pubName = publicationNameOf(spec);
  const slot = (await src.query('SELECT slot_name, database, plugin FROM pg_replication_slots WHERE slot_name = $1', [slotName])).rows[0];
  if (slot && !ctx.ownsSlot) {
    checks.push(
      check(
        'slot_name',
        'fail',
        `A replication slot named '${slotName}' already exists on the source and was not created by this migration.`,
        `Set \`slotName\` to another name, or drop the slot if it is unused: SELECT pg_drop_replication_slot('${slotName}');`,
        [slotName],
      ),
    );
  } else {
    checks.push(check('slot_name', 'pass', `Slot name '${slotName}' is available.`));
  }
  const pub = (await src.query('SELECT pubname FROM pg_publication WHERE pubname = $1', [pubName])).rows[0];
  if (pub && !ctx.ownsPublication) {
    checks.push(
      check(
        'publication_name',
        'fail',
        `A publication named '${pubName}' already exists on the source and was not created by this migration.`,
        `Set \`publicationName\` to another name, or drop it if it is unused: DROP PUBLICATION "${pubName}";`,
        [pubName],
      ),
    );
  }
}

/**
 * table_selection, unlogged_tables: the patterns, the partitions' roots, the
 * unlogged tables. Returns the migratable tables.
 */
async function tableSelectionChecks(src: pg.Client, spec: MigrationSpec, checks: PreflightCheck[]): Promise<TableInfo[]> {
  const sel = await selectTables(src, spec.tables);
  // A pattern `schema.*` naming a schema without tables (views and functions only) selects that schema's objects.
  const schemas = spec.schemaMode === 'create' ? await selectSchemas(src, { include: sel.unmatched, exclude: spec.tables.exclude }) : [];
  for (const p of sel.unmatched) {
    if (schemas.length > 0 && (await selectSchemas(src, { include: [p], exclude: spec.tables.exclude })).length > 0 && /\.\*$/.test(p)) {
      checks.push(
        check('table_selection', 'pass', `The pattern '${p}' matches no table; it selects the other objects of its schema(s) (views, functions, types).`, '', [
          p,
        ]),
      );
      continue;
    }
    checks.push(
      check(
        'table_selection',
        'fail',
        `The pattern '${p}' matches no table on the source.`,
        'Correct the pattern in `tables.include` (unquoted names fold to lower case; quote mixed-case names, e.g. \'public."Orders"\') or remove it.',
        [p],
      ),
    );
  }
  for (const t of sel.orphanPartitions) {
    checks.push(
      check(
        'table_selection',
        'fail',
        `${tableKey(t)} is a partition, but its partitioned table ${qn(t.root!.schema, t.root!.name)} is not selected.`,
        `Include ${qn(t.root!.schema, t.root!.name)} (it brings all its partitions) or exclude ${tableKey(t)}.`,
        [tableKey(t)],
      ),
    );
  }
  const unlogged = sel.tables.filter((t) => t.persistence === 'u');
  if (unlogged.length) {
    checks.push(
      check(
        'unlogged_tables',
        'warn',
        `${unlogged.length} unlogged table(s) cannot be replicated and will not be migrated: ${unlogged.map(tableKey).join(', ')}.`,
        'Make them logged (ALTER TABLE ... SET LOGGED) before starting if their data must move, or exclude them to silence this warning.',
        unlogged.map(tableKey),
      ),
    );
  }
  const tables = migratableTables(sel.tables);
  const data = tables.filter((t) => t.kind === 'r');
  if (sel.unmatched.length === 0 && data.length === 0) {
    checks.push(check('table_selection', 'fail', 'The table selection matches no table that holds data.', 'Adjust `tables.include` / `tables.exclude`.'));
  } else if (data.length) {
    checks.push(check('table_selection', 'pass', `${data.length} table(s) selected.`, '', data.map(tableKey)));
  }
  return tables;
}

/** replica_identity, partitioned_tables: UPDATEs and DELETEs of every table can be published. */
function replicaIdentityChecks(tables: TableInfo[], major: number, checks: PreflightCheck[]): void {
  // Identity is checked where rows live: the source refuses UPDATE/DELETE on a
  // published leaf partition without one, whatever its partitioned root has.
  const noIdentity = tables.filter((t) => t.kind === 'r' && !hasUsableIdentity(t));
  if (noIdentity.length) {
    checks.push(
      check(
        'replica_identity',
        'fail',
        `${noIdentity.length} table(s) have no usable key, so their UPDATEs and DELETEs cannot be replicated: ${noIdentity.map((t) => `${tableKey(t)} (${identityProblem(t)})`).join(', ')}.`,
        `Add a primary key, or run: ${noIdentity.map((t) => `ALTER TABLE ${tableKey(t)} REPLICA IDENTITY FULL;`).join(' ')}`,
        noIdentity.map(tableKey),
      ),
    );
  } else if (tables.length) {
    checks.push(check('replica_identity', 'pass', 'Every selected table has a replica identity.'));
  }
  if (major < 13 && tables.some((t) => t.kind === 'p')) {
    checks.push(
      check(
        'partitioned_tables',
        'fail',
        'Partitioned tables on a PostgreSQL 12 source cannot be published via their root.',
        'Upgrade the source to 13+, or select the partitions individually and create the target tables yourself (`schemaMode: existing`).',
      ),
    );
  }
}

/** table_ownership, select_privilege: the role may publish and read every selected table. */
async function tableAccessChecks(src: pg.Client, info: SourceInfo, tables: TableInfo[], checks: PreflightCheck[]): Promise<void> {
  if (!info.superuser && tables.length) {
    const owned = await src.query(
      `SELECT c.oid::int AS oid FROM pg_class c WHERE c.oid = ANY($1::oid[]) AND NOT pg_has_role(current_user, c.relowner, 'USAGE')`,
      [tables.map((t) => t.oid)],
    );
    const notOwned = tables.filter((t) => owned.rows.some((r) => r.oid === t.oid));
    if (notOwned.length) {
      checks.push(
        check(
          'table_ownership',
          'fail',
          `Role '${info.usr}' does not own ${notOwned.length} selected table(s), which CREATE PUBLICATION requires: ${notOwned.map(tableKey).join(', ')}.`,
          `Connect as the tables' owner, or GRANT the owning role to "${info.usr}".`,
          notOwned.map(tableKey),
        ),
      );
    }
  }
  if (tables.length) {
    const denied = await src.query(`SELECT c.oid::int AS oid FROM pg_class c WHERE c.oid = ANY($1::oid[]) AND NOT has_table_privilege(c.oid, 'SELECT')`, [
      tables.map((t) => t.oid),
    ]);
    if (denied.rows.length) {
      const names = tables.filter((t) => denied.rows.some((r) => r.oid === t.oid)).map(tableKey);
      checks.push(
        check(
          'select_privilege',
          'fail',
          `Role '${info.usr}' may not read ${names.join(', ')}.`,
          `GRANT SELECT ON ${names.join(', ')} TO "${info.usr}";`,
          names,
        ),
      );
    }
  }
}

/** large_objects: a warning, as logical replication does not carry them. */
function largeObjectsCheck(info: SourceInfo, checks: PreflightCheck[]): void {
  if (Number(info.large_objects) > 0) {
    checks.push(
      check(
        'large_objects',
        'warn',
        `The source database holds ${info.large_objects} large object(s); large objects are not replicated by logical replication and will not be migrated.`,
        'Move them separately (e.g. lo_export/lo_import) or store them as bytea.',
      ),
    );
  }
}

/** One line per failed check, for errors and logs. */
export function summarizeFailures(report: PreflightReport): string {
  return report.checks
    .filter((c) => c.verdict === 'fail')
    .map((c) => `[${c.name}] ${c.message}${c.remedy ? ` Fix: ${c.remedy}` : ''}`)
    .join('\n');
}
