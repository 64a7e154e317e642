/**
 * preflight-schema — what the schema stage needs of the target, and what it
 * does not carry, found before anything starts (`schemaMode: 'create'`).
 *
 * Input: both connections, the spec and the selected source tables; the
 * schema plan is built read-only from the source, exactly as the schema
 * stage builds it. Output: checks appended to the report: schema_roles,
 * schema_role_membership, schema_extensions, schema_not_migrated,
 * schema_objects. Read-only on both servers.
 */
import type pg from 'pg';
import { qn } from './conn';
import type { TableInfo } from './catalog';
import { asPgferryError } from './errors';
import { planSchema, type SchemaPlan, type SchemaStatement } from './schema';
import { selectSchemas } from './schema-objects-read';
import { DEFAULT_ROLES, type MigrationSpec } from './spec';
import { check, type PreflightCheck } from './preflight-check';

/** A role name as a statement writes it: always quoted (the remedies are copied as they are). */
const quoted = (r: string): string => `"${r.replace(/"/g, '""')}"`;
/** At most `n` items of a list, then how many more. */
const some = (items: string[], n = 20): string => `${items.slice(0, n).join(', ')}${items.length > n ? `, … (${items.length - n} more)` : ''}`;

/** The extensions the plan creates, as planSchema reports them. */
export type PlannedExtension = SchemaPlan['extensions'][number];

/** What the target offers of one extension. */
export interface TargetExtension {
  name: string;
  /** The version CREATE EXTENSION installs. */
  defaultVersion: string;
  /** Every version it can install. */
  versions: string[];
  /** The version installed in the target database, if any. */
  installed: string | null;
}

/**
 * The schema-stage checks. Builds the schema plan as the schema stage will
 * (every migrated schema, through `spec.roles`); a plan that cannot be
 * built is itself a failed `schema_objects` check.
 */
export async function schemaChecks(src: pg.Client, tgt: pg.Client, spec: MigrationSpec, tables: TableInfo[], checks: PreflightCheck[]): Promise<void> {
  const roles = spec.roles ?? DEFAULT_ROLES;
  let plan: SchemaPlan;
  let schemas: string[];
  try {
    schemas = await selectSchemas(src, spec.tables);
    plan = await planSchema(src, tables, { schemas, roles });
  } catch (e) {
    const err = asPgferryError(e, 'SCHEMA_FAILED', 'building the schema plan failed');
    checks.push({
      ...check(
        'schema_objects',
        'fail',
        `The schema of the selected tables cannot be planned: ${err.message}`,
        err.remedy || 'Check the source role may read the catalog.',
      ),
      code: err.code,
    });
    return;
  }
  const usr = (await tgt.query<{ usr: string }>('SELECT current_user AS usr')).rows[0]!.usr;
  const existing = await existingRoles(tgt, [...plan.roles, ...Object.values(roles.map)]);
  schemaRolesCheck(plan, roles, existing, checks);
  await roleMembershipCheck(tgt, usr, plan, existing, roles.map, checks);
  extensionsCheck(plan.extensions, await targetExtensions(tgt, plan.extensions), await azureExtensions(tgt), checks);
  await notMigratedCheck(src, tables, schemas, checks);
  if (plan.warnings.length) {
    checks.push(
      check(
        'schema_objects',
        'warn',
        `${plan.warnings.length} object(s) of the migrated schemas are not created on the target: ${plan.warnings.join(' ')}`,
        'Each line says why and what to do; create what you need on the target before the cutover, or leave it behind.',
        plan.warnings,
      ),
    );
  }
}

async function existingRoles(tgt: pg.Client, names: string[]): Promise<Set<string>> {
  const r = await tgt.query<{ rolname: string }>('SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY($1::text[])', [[...new Set(names)]]);
  return new Set(r.rows.map((row) => row.rolname));
}

/** Every statement of the plan, in the order the stages run them. */
function allStatements(plan: SchemaPlan): SchemaStatement[] {
  return [...plan.preData, ...plan.postData, ...plan.finish, ...plan.handover];
}

/** The objects whose statements name `role` (owners, grantees, policy roles). */
function objectsNaming(plan: SchemaPlan, role: string): string[] {
  return [
    ...new Set(
      allStatements(plan)
        .filter((s) => s.roles?.includes(role))
        .map((s) => s.object),
    ),
  ];
}

/**
 * schema_roles: every role the plan's owners, grants and policies name exists
 * on the target (roles are cluster objects: pgferry does not create them),
 * and every `roles.map` target exists. With `roles.missing: 'skip'` a missing
 * role is a warning (what needs it is skipped); a mapping to a missing role
 * fails whatever `missing` says (it names a role on purpose).
 */
export function schemaRolesCheck(plan: SchemaPlan, roles: MigrationSpec['roles'], existing: Set<string>, checks: PreflightCheck[]): void {
  const badMaps = Object.entries(roles.map).filter(([, to]) => !existing.has(to));
  if (badMaps.length) {
    checks.push(
      check(
        'schema_roles',
        'fail',
        `${badMaps.length} role mapping(s) name a target role that does not exist on the target: ${badMaps.map(([from, to]) => `\`roles.map.${from}\` → '${to}'`).join(', ')}.`,
        `Map each to a role that exists on the target, or create it there first: ${badMaps.map(([, to]) => `CREATE ROLE ${quoted(to)} NOLOGIN;`).join(' ')}`,
        badMaps.map(([from]) => from),
      ),
    );
  }
  const mappedTo = new Set(Object.values(roles.map));
  const missing = plan.roles.filter((r) => !existing.has(r) && !mappedTo.has(r));
  if (missing.length === 0) {
    if (badMaps.length === 0)
      checks.push(check('schema_roles', 'pass', `The ${plan.roles.length} role(s) the schema's owners and grants name exist on the target.`));
    return;
  }
  const detail = missing.map((r) => `'${r}' (${some(objectsNaming(plan, r), 5)})`).join('; ');
  const create = missing.map((r) => `CREATE ROLE ${quoted(r)} NOLOGIN;`).join(' ');
  const mapExample = `roles: { map: { ${missing.map((r) => `${/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(r) ? r : JSON.stringify(r)}: '<existing target role>'`).join(', ')} } }`;
  if (roles.missing === 'skip') {
    checks.push(
      check(
        'schema_roles',
        'warn',
        `${missing.length} role(s) the schema's owners, grants or policies name do not exist on the target; with \`roles.missing: 'skip'\` what needs them is skipped (the objects are created, owned by the migrating role, without those grants): ${detail}.`,
        `To keep them, create the roles on the target (${create}) or map them: \`${mapExample}\`.`,
        missing,
      ),
    );
    return;
  }
  checks.push(
    check(
      'schema_roles',
      'fail',
      `${missing.length} role(s) the schema's owners, grants or policies name do not exist on the target (roles are cluster objects; pgferry does not create them): ${detail}.`,
      `Create them on the target: ${create} Or map them to existing target roles: \`${mapExample}\`; or set \`roles: { missing: 'skip' }\` to skip the owners and grants that need them.`,
      missing,
    ),
  );
}

/**
 * The roles that will own objects on the target (ALTER … OWNER TO) or whose
 * default privileges are set (ALTER DEFAULT PRIVILEGES FOR ROLE).
 */
export function owningRoles(plan: SchemaPlan): string[] {
  const out = new Set<string>();
  for (const s of plan.finish) {
    if (s.kind === 'owner') for (const r of s.roles ?? []) out.add(r);
    else if (/^ALTER DEFAULT PRIVILEGES FOR ROLE /.test(s.sql) && s.roles?.[0]) out.add(s.roles[0]);
  }
  return [...out].sort();
}

/**
 * schema_role_membership: the target user can act as every existing role that
 * will own objects: ALTER … OWNER TO needs it (on 16+, as SET ROLE would), and
 * the apply keeps writing to the tables those roles then own. A superuser is
 * a member of every role.
 */
async function roleMembershipCheck(
  tgt: pg.Client,
  usr: string,
  plan: SchemaPlan,
  existing: Set<string>,
  map: Record<string, string>,
  checks: PreflightCheck[],
): Promise<void> {
  const owners = owningRoles(plan).filter((r) => existing.has(r));
  if (owners.length === 0) return;
  const num = Number((await tgt.query<{ v: string }>("SELECT current_setting('server_version_num') AS v")).rows[0]!.v);
  const priv = num >= 160000 ? 'SET' : 'MEMBER';
  const r = await tgt.query<{ rolname: string; ok: boolean }>(
    `SELECT rolname, pg_has_role(current_user, oid, '${priv}') AS ok FROM pg_catalog.pg_roles WHERE rolname = ANY($1::text[]) ORDER BY 1`,
    [owners],
  );
  const denied = r.rows.filter((row) => !row.ok).map((row) => row.rolname);
  if (denied.length === 0) {
    checks.push(check('schema_role_membership', 'pass', `Role '${usr}' on the target can act as the ${owners.length} role(s) that will own migrated objects.`));
    return;
  }
  const from = (role: string) => Object.entries(map).find(([, to]) => to === role)?.[0];
  checks.push(
    check(
      'schema_role_membership',
      'fail',
      `Role '${usr}' on the target is not a member of ${denied.length} role(s) that will own migrated objects: ${denied.map((d) => `'${d}'${from(d) ? ` (\`roles.map.${from(d)}\`)` : ''} (${some(objectsNaming(plan, d), 5)})`).join('; ')}. Setting an owner (ALTER … OWNER TO) needs the membership, and pgferry keeps writing to the tables those roles then own.`,
      `As a superuser or a role with ADMIN OPTION on them (on Azure: the server admin), run: ${denied.map((d) => `GRANT ${quoted(d)} TO ${quoted(usr)};`).join(' ')} Or connect to the target as a member of those roles, or map them (\`roles.map\`) to roles '${usr}' is a member of.`,
      denied,
    ),
  );
}

/** What the target offers of the planned extensions (pg_available_extensions, and what is installed). */
export async function targetExtensions(tgt: pg.Client, planned: PlannedExtension[]): Promise<Map<string, TargetExtension>> {
  if (planned.length === 0) return new Map();
  const r = await tgt.query<{ name: string; default_version: string; versions: string[]; installed: string | null }>(
    `SELECT e.name, e.default_version,
            ARRAY(SELECT v.version FROM pg_catalog.pg_available_extension_versions v WHERE v.name = e.name ORDER BY 1) AS versions,
            (SELECT x.extversion FROM pg_catalog.pg_extension x WHERE x.extname = e.name) AS installed
       FROM pg_catalog.pg_available_extensions e WHERE e.name = ANY($1::text[])`,
    [planned.map((x) => x.name)],
  );
  return new Map(r.rows.map((row) => [row.name, { name: row.name, defaultVersion: row.default_version, versions: row.versions, installed: row.installed }]));
}

/** The target's `azure.extensions` allow-list when it is Azure Database for PostgreSQL, else null. */
async function azureExtensions(tgt: pg.Client): Promise<string[] | null> {
  // current_setting(…, true): NULL where the parameter does not exist (any server but Azure's).
  const setting = (await tgt.query<{ s: string | null }>("SELECT current_setting('azure.extensions', true) AS s")).rows[0]!.s;
  if (setting === null) return null;
  return setting
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);
}

/**
 * schema_extensions: each extension the schema needs is offered by the target
 * (fail), at the source's version (warn: it is created at the target's
 * default version). On Azure an extension must also be allow-listed in the
 * `azure.extensions` server parameter.
 */
export function extensionsCheck(planned: PlannedExtension[], offered: Map<string, TargetExtension>, azure: string[] | null, checks: PreflightCheck[]): void {
  if (planned.length === 0) return;
  const absent = planned.filter((x) => !offered.has(x.name));
  const notAllowed = azure ? planned.filter((x) => offered.has(x.name) && !offered.get(x.name)!.installed && !azure.includes(x.name.toLowerCase())) : [];
  const blocked = [...absent, ...notAllowed];
  if (blocked.length) {
    const list = blocked.map((x) => `${x.name} ${x.version} (in schema ${x.schema})${absent.includes(x) ? '' : ' (not allow-listed)'}`);
    const names = blocked.map((x) => x.name);
    const remedy = azure
      ? `Allow-list them in the target's \`azure.extensions\` server parameter (keep the ones listed now: ${azure.length ? azure.join(',') : 'none'}): az postgres flexible-server parameter set --resource-group <group> --server-name <server> --name azure.extensions --value ${[...new Set([...azure, ...names])].join(',')}${absent.length ? `; ${absent.map((x) => x.name).join(', ')} ${absent.length === 1 ? 'is' : 'are'} not offered by Azure at all: drop ${absent.length === 1 ? 'it' : 'them'} on the source, or exclude what uses ${absent.length === 1 ? 'it' : 'them'}` : ''}.`
      : `Install ${names.length === 1 ? 'it' : 'them'} on the target server (PostgreSQL's contrib, or the extension's package for the target's major version, e.g. postgresql-<major>-<extension>), or drop ${names.length === 1 ? 'it' : 'them'} on the source if unused (DROP EXTENSION …), or exclude the schema that holds ${names.length === 1 ? 'it' : 'them'}.`;
    checks.push(
      check(
        'schema_extensions',
        'fail',
        `${blocked.length} extension(s) the schema needs cannot be created on the target: ${list.join(', ')}${azure ? '. The target is Azure Database for PostgreSQL, which creates only the extensions its `azure.extensions` parameter lists' : ''}.`,
        remedy,
        names,
      ),
    );
  }
  const otherVersion = planned
    .filter((x) => !blocked.includes(x) && offered.has(x.name))
    .map((x) => ({ x, t: offered.get(x.name)! }))
    .filter(({ x, t }) => (t.installed ? t.installed !== x.version : !t.versions.includes(x.version)));
  if (otherVersion.length) {
    checks.push(
      check(
        'schema_extensions',
        'warn',
        `${otherVersion.length} extension(s) will be at another version on the target than on the source: ${otherVersion.map(({ x, t }) => (t.installed ? `${x.name} ${x.version} on the source, ${t.installed} already installed on the target` : `${x.name} ${x.version} on the source, created at ${t.defaultVersion} on the target (it offers ${t.versions.join(', ')})`)).join('; ')}.`,
        "Usually harmless (a newer version keeps the older one's objects); check the extension's release notes if your schema relies on version-specific functions, or install the source's version on the target.",
        otherVersion.map(({ x }) => x.name),
      ),
    );
  }
  if (blocked.length === 0 && otherVersion.length === 0) {
    checks.push(
      check(
        'schema_extensions',
        'pass',
        `The target offers the ${planned.length} extension(s) the schema needs: ${planned.map((x) => `${x.name} ${x.version}`).join(', ')}.`,
      ),
    );
  }
}

/**
 * schema_not_migrated: what pgferry does not carry, named per object: event
 * triggers, foreign servers and the foreign tables of the migrated schemas,
 * the database's subscriptions, non-default tablespaces of migrated
 * relations; and always that roles (and their passwords) are not migrated.
 */
async function notMigratedCheck(src: pg.Client, tables: TableInfo[], schemas: string[], checks: PreflightCheck[]): Promise<void> {
  const lines: string[] = [];
  const objects: string[] = [];
  const events = (await src.query<{ name: string; event: string }>('SELECT evtname AS name, evtevent AS event FROM pg_catalog.pg_event_trigger ORDER BY 1'))
    .rows;
  if (events.length) {
    lines.push(`event triggers (database-wide; recreate them on the target if needed): ${some(events.map((e) => `${e.name} (on ${e.event})`))}`);
    objects.push(...events.map((e) => `event trigger ${e.name}`));
  }
  const servers = (
    await src.query<{ name: string; wrapper: string }>(
      `SELECT s.srvname AS name, w.fdwname AS wrapper FROM pg_catalog.pg_foreign_server s JOIN pg_catalog.pg_foreign_data_wrapper w ON w.oid = s.srvfdw ORDER BY 1`,
    )
  ).rows;
  if (servers.length) {
    lines.push(
      `foreign servers and their user mappings (create them on the target with the credentials they need): ${some(servers.map((s) => `${s.name} (${s.wrapper})`))}`,
    );
    objects.push(...servers.map((s) => `server ${s.name}`));
  }
  const foreign = (
    await src.query<{ schema: string; name: string; server: string }>(
      `SELECT n.nspname AS schema, c.relname AS name, s.srvname AS server
       FROM pg_catalog.pg_foreign_table f JOIN pg_catalog.pg_class c ON c.oid = f.ftrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
       JOIN pg_catalog.pg_foreign_server s ON s.oid = f.ftserver
      WHERE n.nspname = ANY($1::text[]) ORDER BY 1, 2`,
      [schemas],
    )
  ).rows;
  if (foreign.length) {
    lines.push(
      `foreign tables (their rows live elsewhere; recreate them after the servers): ${some(foreign.map((f) => `${qn(f.schema, f.name)} (server ${f.server})`))}`,
    );
    objects.push(...foreign.map((f) => qn(f.schema, f.name)));
  }
  const subs = await subscriptions(src);
  if (subs.length) {
    lines.push(`subscriptions of this database (create them on the target at the cutover, or they would apply twice): ${some(subs)}`);
    objects.push(...subs.map((s) => `subscription ${s}`));
  }
  const spaces = await tablespaces(src, tables, schemas);
  if (spaces.length) {
    lines.push(`non-default tablespaces (the target creates these in its default tablespace): ${some(spaces)}`);
    objects.push(...spaces);
  }
  lines.push(
    "roles: they are cluster objects, so pgferry neither creates them nor carries their passwords, attributes or memberships (the schema's owners and grants refer to roles that must exist on the target)",
  );
  checks.push(
    check(
      'schema_not_migrated',
      'warn',
      `pgferry does not migrate: ${lines.map((l, i) => `(${i + 1}) ${l}`).join('; ')}.`,
      'Create these on the target yourself, before the cutover. For roles: pg_dumpall --roles-only --no-role-passwords on the source gives the CREATE ROLE and GRANT statements; set the passwords on the target.',
      objects,
    ),
  );
}

/** The source database's subscriptions (empty when the role may not read pg_subscription). */
async function subscriptions(src: pg.Client): Promise<string[]> {
  try {
    const r = await src.query<{ name: string }>(
      `SELECT subname AS name FROM pg_catalog.pg_subscription WHERE subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) ORDER BY 1`,
    );
    return r.rows.map((row) => row.name);
  } catch {
    return [];
  }
}

/** Migrated relations and indexes in a non-default tablespace, as `relation (tablespace)`. */
async function tablespaces(src: pg.Client, tables: TableInfo[], schemas: string[]): Promise<string[]> {
  const r = await src.query<{ schema: string; name: string; kind: string; space: string }>(
    `SELECT n.nspname AS schema, c.relname AS name, c.relkind AS kind, t.spcname AS space
       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace JOIN pg_catalog.pg_tablespace t ON t.oid = c.reltablespace
      WHERE c.reltablespace <> 0 AND c.relkind IN ('r', 'p', 'm', 'i', 'I')
        AND (c.oid = ANY($1::oid[]) OR c.oid IN (SELECT indexrelid FROM pg_catalog.pg_index WHERE indrelid = ANY($1::oid[]))
             OR (n.nspname = ANY($2::text[]) AND c.relkind = 'm'))
      ORDER BY 1, 2`,
    [tables.map((t) => t.oid), schemas],
  );
  return r.rows.map((row) => `${row.kind === 'i' || row.kind === 'I' ? 'index ' : ''}${qn(row.schema, row.name)} (${row.space})`);
}
