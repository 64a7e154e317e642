/**
 * preflight-reverse — what the way back needs (a `rollbackWindow`;
 * reverse-sync.ts, cutback.ts), checked before the migration starts so that a
 * cutover never makes a reverse sync that cannot run.
 *
 * Input: the source and target connections (either may be missing when it
 * could not connect: its checks are then left out, the connection check
 * already failed), the spec and the selected tables. Output: checks appended
 * to the report, all named `reverse_*` (the provider maps them to
 * `rollbackWindow`). Read-only.
 *
 * - target: `reverse_wal_level`, `reverse_replication_slots` (a slot and a WAL
 *   sender free), `reverse_replication_privilege`, `reverse_publication_privilege`;
 * - source: `reverse_session_replication_role` (the reverse apply sets it to
 *   `replica`, or the old source's triggers would fire a second time for the
 *   rows it brings back), `reverse_schema_privilege` (the reverse apply keeps
 *   its applied position in schema `pgferry` of the source database).
 */
import type pg from 'pg';
import { qi, qn } from './conn';
import type { TableInfo } from './catalog';
import type { MigrationSpec } from './spec';
import { check, type PreflightCheck } from './preflight-check';

/** Said in every remedy: the way out when the server cannot be changed. */
const OR_OFF = 'Or remove `rollbackWindow` to migrate without a way back.';

interface TargetSide {
  usr: string;
  db: string;
  wal_level: string;
  superuser: boolean;
  replication: boolean;
  can_create: boolean;
  free_slots: number;
  free_senders: number;
}

interface SourceSide {
  usr: string;
  db: string;
  num: number;
  superuser: boolean;
  can_set_srr: boolean;
  can_create: boolean;
  schema_exists: boolean;
  schema_usable: boolean;
}

/** The `reverse_*` checks; nothing when the spec has no `rollbackWindow`. */
export async function reverseChecks(
  src: pg.Client | undefined,
  tgt: pg.Client | undefined,
  spec: MigrationSpec,
  tables: TableInfo[],
  checks: PreflightCheck[],
): Promise<void> {
  if (!spec.rollbackWindow) return;
  if (tgt) await targetReverseChecks(tgt, spec, tables, checks);
  if (src) await sourceReverseChecks(src, checks);
}

async function targetReverseChecks(tgt: pg.Client, spec: MigrationSpec, tables: TableInfo[], checks: PreflightCheck[]): Promise<void> {
  const t = (
    await tgt.query<TargetSide>(`
    SELECT current_user AS usr, current_database() AS db, current_setting('wal_level') AS wal_level,
           r.rolsuper AS superuser, r.rolreplication AS replication,
           has_database_privilege(current_user, current_database(), 'CREATE') AS can_create,
           (current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots))::int AS free_slots,
           (current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication))::int AS free_senders
      FROM pg_roles r WHERE r.rolname = current_user`)
  ).rows[0]!;
  checks.push(
    t.wal_level === 'logical'
      ? check('reverse_wal_level', 'pass', 'wal_level is logical on the target: the reverse sync can decode its changes.')
      : check(
          'reverse_wal_level',
          'fail',
          `wal_level is '${t.wal_level}' on the target; with \`rollbackWindow\` the target's changes stream back to the old source after the cutover, which needs 'logical'.`,
          `On Azure Database for PostgreSQL: set the server parameter wal_level to logical, then restart the server. Self-hosted: run ALTER SYSTEM SET wal_level = logical; and restart the target. ${OR_OFF}`,
        ),
  );
  checks.push(
    t.free_slots >= 1 && t.free_senders >= 1
      ? check('reverse_replication_slots', 'pass', `The target has ${t.free_slots} replication slot(s) and ${t.free_senders} WAL sender(s) free.`)
      : check(
          'reverse_replication_slots',
          'fail',
          `The target has ${t.free_slots} replication slot(s) and ${t.free_senders} WAL sender(s) free; the reverse sync needs one of each.`,
          `Raise max_replication_slots and max_wal_senders on the target (on Azure: the server parameters; self-hosted: ALTER SYSTEM SET max_replication_slots = 10; ALTER SYSTEM SET max_wal_senders = 10;), then restart it. ${OR_OFF}`,
        ),
  );
  checks.push(
    t.superuser || t.replication
      ? check('reverse_replication_privilege', 'pass', `Role '${t.usr}' may replicate from the target.`)
      : check(
          'reverse_replication_privilege',
          'fail',
          `Role '${t.usr}' has neither REPLICATION nor SUPERUSER on the target, so the reverse sync cannot stream the target's changes back.`,
          `Run ALTER ROLE ${qi(t.usr)} WITH REPLICATION; as a superuser (on Azure: as the server admin). ${OR_OFF}`,
        ),
  );
  checks.push(await publicationCheck(tgt, t, spec, tables));
}

/** The target role may create the reverse publication: CREATE on the database, and it owns the tables (or acts as their owners). */
async function publicationCheck(tgt: pg.Client, t: TargetSide, spec: MigrationSpec, tables: TableInfo[]): Promise<PreflightCheck> {
  if (t.superuser) return check('reverse_publication_privilege', 'pass', `Role '${t.usr}' is a superuser on the target: it may publish the migrated tables.`);
  if (!t.can_create) {
    return check(
      'reverse_publication_privilege',
      'fail',
      `Role '${t.usr}' may not create a publication in the target database '${t.db}' (no CREATE privilege there).`,
      `Run GRANT CREATE ON DATABASE ${qi(t.db)} TO ${qi(t.usr)}; as the database's owner or the server admin. ${OR_OFF}`,
    );
  }
  const data = tables.filter((x) => x.kind === 'r');
  if (spec.schemaMode === 'create' || data.length === 0) {
    return check(
      'reverse_publication_privilege',
      'pass',
      `Role '${t.usr}' may create a publication on the target; pgferry creates the tables there (schema_role_membership checks that it acts as their owners).`,
    );
  }
  const r = await tgt.query<{ schema: string; name: string }>(
    `SELECT n.nspname AS schema, c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[])) AND NOT pg_has_role(current_user, c.relowner, 'USAGE')
      ORDER BY 1, 2`,
    [data.map((x) => x.schema), data.map((x) => x.name)],
  );
  if (r.rows.length === 0)
    return check('reverse_publication_privilege', 'pass', `Role '${t.usr}' owns the migrated tables on the target: it may publish them.`);
  const names = r.rows.map((x) => qn(x.schema, x.name));
  return check(
    'reverse_publication_privilege',
    'fail',
    `Role '${t.usr}' does not own ${names.length} migrated table(s) on the target, so it cannot add them to the reverse publication.`,
    `Make '${t.usr}' their owner (ALTER TABLE … OWNER TO ${qi(t.usr)};) or a member of their owners (GRANT <owner> TO ${qi(t.usr)};), as a superuser or the server admin. ${OR_OFF}`,
    names,
  );
}

async function sourceReverseChecks(src: pg.Client, checks: PreflightCheck[]): Promise<void> {
  const num = Number((await src.query<{ v: string }>("SELECT current_setting('server_version_num') AS v")).rows[0]!.v);
  // has_parameter_privilege exists from PostgreSQL 15 (GRANT SET ON PARAMETER); before, only a superuser may set the parameter.
  const setPriv = num >= 150000 ? "has_parameter_privilege(current_user, 'session_replication_role', 'SET')" : 'false';
  const s = (
    await src.query<SourceSide>(`
    SELECT current_user AS usr, current_database() AS db, r.rolsuper AS superuser, ${setPriv} AS can_set_srr,
           has_database_privilege(current_user, current_database(), 'CREATE') AS can_create,
           EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'pgferry') AS schema_exists,
           COALESCE((SELECT has_schema_privilege(current_user, oid, 'CREATE') AND has_schema_privilege(current_user, oid, 'USAGE')
                       FROM pg_namespace WHERE nspname = 'pgferry'), false) AS schema_usable
      FROM pg_roles r WHERE r.rolname = current_user`)
  ).rows[0]!;
  s.num = num;
  const why =
    "the reverse sync applies the target's changes to the old source with session_replication_role = replica, or the source's triggers would fire a second time for rows they already produced on the target";
  checks.push(
    s.superuser || s.can_set_srr
      ? check('reverse_session_replication_role', 'pass', `Role '${s.usr}' may set session_replication_role on the source.`)
      : check(
          'reverse_session_replication_role',
          'fail',
          `Role '${s.usr}' may not set session_replication_role on the source: ${why}.`,
          num >= 150000
            ? `Run GRANT SET ON PARAMETER session_replication_role TO ${qi(s.usr)}; as a superuser on the source. ${OR_OFF}`
            : `Before PostgreSQL 15 only a superuser may set it: connect \`source\` as a superuser (or upgrade the source to 15+ and GRANT SET ON PARAMETER session_replication_role TO ${qi(s.usr)};). ${OR_OFF}`,
        ),
  );
  const schemaOk = s.superuser || (s.schema_exists ? s.schema_usable : s.can_create);
  checks.push(
    schemaOk
      ? check('reverse_schema_privilege', 'pass', `Role '${s.usr}' may keep the reverse sync's position in schema pgferry of the source database '${s.db}'.`)
      : check(
          'reverse_schema_privilege',
          'fail',
          s.schema_exists
            ? `Role '${s.usr}' may not create tables in the existing schema pgferry of the source database '${s.db}', where the reverse sync keeps its applied position (committed with the changes, for exactly-once apply).`
            : `Role '${s.usr}' may not create schema pgferry in the source database '${s.db}', where the reverse sync keeps its applied position (committed with the changes, for exactly-once apply).`,
          s.schema_exists
            ? `Run GRANT USAGE, CREATE ON SCHEMA pgferry TO ${qi(s.usr)}; on the source. ${OR_OFF}`
            : `Run GRANT CREATE ON DATABASE ${qi(s.db)} TO ${qi(s.usr)}; on the source (as its owner or a superuser). ${OR_OFF}`,
        ),
  );
}
