/**
 * The preflight of the schema stage, as a user meets it on a 14 → 17
 * migration: roles the target lacks (named with the statements that create
 * them, or mapped, or skipped), a target user that cannot own what it
 * creates, extensions the target does not offer (plain and on an Azure-like
 * target), and what pgferry does not carry.
 */
import assert from 'node:assert/strict';
import { runPreflight, type PreflightCheck, type PreflightReport } from '../agent/engine/preflight';
import { extensionsCheck } from '../agent/engine/preflight-schema';
import { isPgferryError } from '../agent/engine/errors';
import { parseSpec, specFingerprint, withSpecDefaults, type MigrationSpec, type MigrationSpecInput } from '../agent/engine/spec';
import { specFromProto } from '../agent/server/server';
import { startCluster, type Cluster } from '../dev/testbed';
import { AgentClient } from '../api/client';
import { startAgent } from './support/agent';

/** A function owned by a role, a grant to another: both roles exist on the source only. */
const ROLES_DDL = `
CREATE TABLE public.orders (id integer PRIMARY KEY, total numeric NOT NULL);
CREATE FUNCTION public.order_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM public.orders';
ALTER FUNCTION public.order_count() OWNER TO app_owner;
GRANT SELECT ON public.orders TO reporting;
CREATE FUNCTION public.ddl_noop() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN END$$;
CREATE EVENT TRIGGER pgferry_test_ddl ON ddl_command_start EXECUTE FUNCTION public.ddl_noop();
`;

const named = (r: PreflightReport, name: string): PreflightCheck[] => r.checks.filter((c) => c.name === name);
const one = (r: PreflightReport, name: string): PreflightCheck => {
  const found = named(r, name);
  assert.equal(found.length, 1, `expected one '${name}' check, got: ${JSON.stringify(r.checks.map((c) => [c.name, c.verdict]))}`);
  return found[0]!;
};
const failures = (r: PreflightReport) => r.checks.filter((c) => c.verdict === 'fail').map((c) => `${c.name}: ${c.message}`);

describe('preflight of the schema stage (14 → 17)', function () {
  this.timeout(180_000);
  let source: Cluster;
  let target: Cluster;

  before(async function () {
    [source, target] = await Promise.all([startCluster({ version: 14, fast: true }), startCluster({ version: 17, fast: true })]);
    await source.query('CREATE ROLE app_owner NOLOGIN; CREATE ROLE reporting NOLOGIN;');
    await target.query('CREATE ROLE tgt_owner NOLOGIN; CREATE ROLE tgt_reader NOLOGIN;');
    await target.query("CREATE ROLE ferry LOGIN PASSWORD 'ferry-pw-1'");
    for (const db of ['roles', 'exts', 'azure']) await Promise.all([source.createDatabase(db), target.createDatabase(db)]);
    await source.query(ROLES_DDL, [], 'roles');
    await target.query('GRANT CREATE ON DATABASE roles TO ferry');
  });

  after(async function () {
    await Promise.all([source?.stop(), target?.stop()]);
  });

  const preflight = async (db: string, extra: Partial<MigrationSpecInput> = {}) =>
    (await runPreflight(parseSpec({ id: 'schema_pf', source: source.endpoint(db), target: target.endpoint(db), ...extra }))).report;

  it('fails schema_roles naming each role the target lacks, with the statement that creates it', async function () {
    const report = await preflight('roles');
    assert.equal(report.ok, false);
    const roles = one(report, 'schema_roles');
    assert.equal(roles.verdict, 'fail');
    assert.deepEqual([...roles.objects].sort(), ['app_owner', 'reporting']);
    assert.ok(roles.remedy.includes('CREATE ROLE "app_owner" NOLOGIN;'), roles.remedy);
    assert.ok(roles.remedy.includes('CREATE ROLE "reporting" NOLOGIN;'), roles.remedy);
    assert.match(roles.remedy, /roles: \{ map: \{ app_owner: '<existing target role>', reporting: '<existing target role>' \} \}/);
    assert.match(roles.remedy, /missing: 'skip'/);
    // Only the roles are wrong: every other failure is absent.
    assert.deepEqual(
      failures(report).filter((f) => !f.startsWith('schema_roles')),
      [],
    );
  });

  it('passes when `roles.map` names existing target roles', async function () {
    const report = await preflight('roles', { roles: { map: { app_owner: 'tgt_owner', reporting: 'tgt_reader' } } });
    assert.deepEqual(failures(report), []);
    assert.equal(report.ok, true);
    assert.equal(one(report, 'schema_roles').verdict, 'pass');
    assert.equal(one(report, 'schema_role_membership').verdict, 'pass'); // a superuser is a member of every role
  });

  it('fails a mapping to a role the target lacks, naming the mapping', async function () {
    const report = await preflight('roles', { roles: { map: { app_owner: 'no_such_role', reporting: 'tgt_reader' }, missing: 'skip' } });
    const roles = one(report, 'schema_roles');
    assert.equal(roles.verdict, 'fail');
    assert.deepEqual(roles.objects, ['app_owner']);
    assert.ok(roles.message.includes('`roles.map.app_owner`'), roles.message);
  });

  it("warns, and passes, with `roles.missing: 'skip'`", async function () {
    const report = await preflight('roles', { roles: { missing: 'skip' } });
    assert.deepEqual(failures(report), []);
    const roles = one(report, 'schema_roles');
    assert.equal(roles.verdict, 'warn');
    assert.deepEqual([...roles.objects].sort(), ['app_owner', 'reporting']);
  });

  it('fails schema_role_membership when the target user is not a member of an owning role, with the GRANT', async function () {
    const report = await preflight('roles', {
      target: { ...target.endpoint('roles'), user: 'ferry', password: 'ferry-pw-1' },
      roles: { map: { app_owner: 'tgt_owner', reporting: 'tgt_reader' } },
    });
    const member = one(report, 'schema_role_membership');
    assert.equal(member.verdict, 'fail');
    // The owners: tgt_owner (the mapped app_owner) and postgres, the tables' owner on the source;
    // tgt_reader is only granted to, never an owner: it needs no membership.
    assert.deepEqual(member.objects, ['postgres', 'tgt_owner']);
    assert.ok(member.remedy.includes('GRANT "tgt_owner" TO "ferry";'), member.remedy);
    assert.ok(!JSON.stringify(report).includes('ferry-pw-1'), 'the password leaked into the report');
  });

  it('names what pgferry does not migrate: the event trigger, and always the roles', async function () {
    const report = await preflight('roles', { roles: { missing: 'skip' } });
    const not = one(report, 'schema_not_migrated');
    assert.equal(not.verdict, 'warn');
    assert.ok(not.objects.includes('event trigger pgferry_test_ddl'), JSON.stringify(not.objects));
    assert.match(not.message, /roles/);
  });

  it('fails schema_extensions for an extension the target does not offer, and warns for another version', async function () {
    // Real extensions, made unknown to the target in the source's catalog: one renamed, one at a version the target lacks.
    await source.query(
      `CREATE EXTENSION hstore; CREATE EXTENSION citext;
       CREATE TABLE public.docs (id integer PRIMARY KEY, attrs hstore, tag citext);
       UPDATE pg_extension SET extname = 'pgferry_absent_ext' WHERE extname = 'hstore';
       UPDATE pg_extension SET extversion = '0.9' WHERE extname = 'citext';`,
      [],
      'exts',
    );
    const report = await preflight('exts');
    const exts = named(report, 'schema_extensions');
    const fail = exts.find((c) => c.verdict === 'fail');
    const warn = exts.find((c) => c.verdict === 'warn');
    assert.ok(fail && warn, JSON.stringify(exts));
    assert.deepEqual(fail.objects, ['pgferry_absent_ext']);
    assert.ok(fail.message.includes('pgferry_absent_ext 1.'), fail.message); // with the source's version
    assert.deepEqual(warn.objects, ['citext']);
    assert.ok(warn.message.includes('citext 0.9'), warn.message);
  });

  it('on an Azure-like target (azure.extensions is set), fails naming the server parameter to allow-list the extension', async function () {
    await source.query('CREATE EXTENSION citext; CREATE TABLE public.tags (id integer PRIMARY KEY, tag citext);', [], 'azure');
    await target.query("ALTER DATABASE azure SET azure.extensions = 'hstore'");
    const report = await preflight('azure');
    const fail = named(report, 'schema_extensions').find((c) => c.verdict === 'fail');
    assert.ok(fail, JSON.stringify(report.checks));
    assert.deepEqual(fail.objects, ['citext']);
    assert.ok(fail.remedy.includes('--name azure.extensions --value hstore,citext'), fail.remedy);
  });

  it("the agent's Preflight RPC carries `roles` from the proto message to the checks", async function () {
    const agent = await startAgent();
    const client = new AgentClient({ endpoint: agent.endpoint });
    try {
      const spec = { id: 'schema_pf', source: source.endpoint('roles'), target: target.endpoint('roles') };
      const verdict = async (roles?: { map?: Record<string, string>; missing?: string }) =>
        (await client.preflight({ ...spec, roles })).checks.find((c) => c.name === 'schema_roles')?.verdict;
      assert.equal(await verdict(), 'fail');
      assert.equal(await verdict({ map: { app_owner: 'tgt_owner', reporting: 'tgt_reader' } }), 'pass');
      assert.equal(await verdict({ missing: 'skip' }), 'warn');
    } finally {
      client.close();
      await agent.stop();
    }
  });

  it('schema_extensions: an extension absent from an Azure target is named as not offered (fabricated target list)', function () {
    const checks: PreflightCheck[] = [];
    extensionsCheck([{ name: 'timescaledb', version: '2.14.2', schema: 'public' }], new Map(), ['citext'], checks);
    assert.equal(checks.length, 1);
    assert.equal(checks[0]!.verdict, 'fail');
    assert.deepEqual(checks[0]!.objects, ['timescaledb']);
    assert.match(checks[0]!.remedy, /azure\.extensions/);
  });
});

describe('the `roles` argument of a spec', function () {
  const base = { id: 'roles_arg', source: { connectionString: 'postgresql://a@h/d' }, target: { connectionString: 'postgresql://b@h2/d' } };

  it("defaults to no mapping and 'fail', and a spec stored before `roles` existed loads with the same fingerprint", function () {
    const spec = parseSpec(base);
    assert.deepEqual(spec.roles, { map: {}, missing: 'fail' });
    const stored = { ...spec } as Partial<MigrationSpec>;
    delete stored.roles;
    const loaded = withSpecDefaults(stored as MigrationSpec);
    assert.deepEqual(loaded.roles, { map: {}, missing: 'fail' });
    assert.equal(specFingerprint(loaded), specFingerprint(stored as MigrationSpec));
    assert.notEqual(specFingerprint(parseSpec({ ...base, roles: { missing: 'skip' } })), specFingerprint(spec));
  });

  it('rejects empty and over-long role names and unknown `missing` values with INVALID_SPEC naming the field', function () {
    for (const [roles, path] of [
      [{ map: { app_owner: '' } }, 'roles.map.app_owner'],
      [{ map: { '': 'app' } }, 'roles.map'],
      [{ map: { app_owner: 'x'.repeat(64) } }, 'roles.map.app_owner'],
      [{ missing: 'ignore' }, 'roles.missing'],
    ] as const) {
      assert.throws(
        () => parseSpec({ ...base, roles }),
        (e: unknown) => isPgferryError(e) && e.code === 'INVALID_SPEC' && e.message.includes(`\`${path}\``),
      );
    }
  });

  it('arrives from the proto message with its map intact (an empty name is for the spec to reject, not dropped)', function () {
    const msg = { ...base, roles: { map: { app_owner: 'app', reporting: '' }, missing: '' } };
    assert.deepEqual((specFromProto(msg) as { roles: unknown }).roles, { map: { app_owner: 'app', reporting: '' } });
    assert.equal((specFromProto({ ...base, roles: { map: {}, missing: '' } }) as { roles?: unknown }).roles, undefined);
  });
});
