/**
 * The preflight of the way back (`rollbackWindow`), as a user meets it in
 * `pulumi preview`: a target without logical decoding, a target role that may
 * not replicate, a source role that may not set session_replication_role
 * (before PostgreSQL 15, and from 15 on until the grant) or create the schema
 * the reverse apply keeps its position in — each named with its fix, and none
 * of it checked without a `rollbackWindow`. Real clusters, 14 and 17.
 */
import assert from 'node:assert/strict';
import { runPreflight, type PreflightCheck, type PreflightReport } from '../agent/engine/preflight';
import { parseSpec, type MigrationSpecInput } from '../agent/engine/spec';
import { startCluster, type Cluster } from '../dev/testbed';

const REVERSE = [
  'reverse_wal_level',
  'reverse_replication_slots',
  'reverse_replication_privilege',
  'reverse_publication_privilege',
  'reverse_session_replication_role',
  'reverse_schema_privilege',
];

const one = (r: PreflightReport, name: string): PreflightCheck => {
  const found = r.checks.filter((c) => c.name === name);
  assert.equal(found.length, 1, `expected one '${name}' check, got: ${JSON.stringify(r.checks.map((c) => [c.name, c.verdict]))}`);
  return found[0]!;
};
const reverseVerdicts = (r: PreflightReport) => Object.fromEntries(r.checks.filter((c) => c.name.startsWith('reverse_')).map((c) => [c.name, c.verdict]));

describe('preflight of the way back: rollbackWindow (14 ↔ 17)', function () {
  this.timeout(180_000);
  let pg14: Cluster;
  /** A PostgreSQL 17 without logical decoding (wal_level replica): a target as many servers come. */
  let pg17: Cluster;

  before(async function () {
    [pg14, pg17] = await Promise.all([
      startCluster({ version: 14, fast: true }),
      startCluster({ version: 17, fast: true, settings: { wal_level: 'replica' } }),
    ]);
    await Promise.all([pg14.createDatabase('shop'), pg17.createDatabase('shop')]);
    await pg14.query('CREATE TABLE public.orders (id integer PRIMARY KEY, total numeric NOT NULL)', [], 'shop');
    await pg17.query('CREATE TABLE public.orders (id integer PRIMARY KEY, total numeric NOT NULL)', [], 'shop');
    // Ordinary roles: may log in and replicate, own the tables, nothing more.
    await pg14.query("CREATE ROLE ferry LOGIN REPLICATION PASSWORD 'ferry-pw-14'");
    await pg14.query('ALTER TABLE public.orders OWNER TO ferry', [], 'shop');
    await pg17.query("CREATE ROLE ferry LOGIN PASSWORD 'ferry-pw-17'");
    await pg17.query('ALTER TABLE public.orders OWNER TO ferry', [], 'shop');
  });

  after(async function () {
    await Promise.all([pg14?.stop(), pg17?.stop()]);
  });

  const as = (c: Cluster, user: string, password: string) => ({ ...c.endpoint('shop'), user, password });
  const preflight = async (extra: Partial<MigrationSpecInput>) =>
    (await runPreflight(parseSpec({ id: 'reverse_pf', source: pg14.endpoint('shop'), target: pg17.endpoint('shop'), ...extra }))).report;

  it('checks nothing of the way back without a rollbackWindow', async function () {
    const report = await preflight({ schemaMode: 'existing', overwriteTarget: true });
    assert.deepEqual(reverseVerdicts(report), {});
  });

  it('fails reverse_wal_level on a target with wal_level replica, naming the Azure server parameter, the restart and the way out', async function () {
    const report = await preflight({ schemaMode: 'existing', overwriteTarget: true, rollbackWindow: '72h' });
    const wal = one(report, 'reverse_wal_level');
    assert.equal(wal.verdict, 'fail');
    assert.match(wal.message, /wal_level is 'replica' on the target/);
    assert.match(wal.remedy, /server parameter wal_level to logical, then restart the server/);
    assert.match(wal.remedy, /ALTER SYSTEM SET wal_level = logical;/);
    assert.match(wal.remedy, /remove `rollbackWindow`/);
    assert.equal(report.ok, false);
    // As superusers on both sides, that is all that is missing for the way back.
    assert.deepEqual(reverseVerdicts(report), { ...Object.fromEntries(REVERSE.map((n) => [n, 'pass'])), reverse_wal_level: 'fail' });
  });

  it('fails the target role that may not replicate, and passes the one that owns the tables it must publish', async function () {
    const report = await preflight({ schemaMode: 'existing', overwriteTarget: true, rollbackWindow: '90m', target: as(pg17, 'ferry', 'ferry-pw-17') });
    const repl = one(report, 'reverse_replication_privilege');
    assert.equal(repl.verdict, 'fail');
    assert.match(repl.remedy, /ALTER ROLE "?ferry"? WITH REPLICATION; as a superuser \(on Azure: as the server admin\)/);
    const publish = one(report, 'reverse_publication_privilege');
    assert.equal(publish.verdict, 'fail', 'no CREATE on the database yet');
    assert.match(publish.remedy, /GRANT CREATE ON DATABASE "?shop"? TO "?ferry"?;/);

    await pg17.query('ALTER ROLE ferry WITH REPLICATION; GRANT CREATE ON DATABASE shop TO ferry');
    await pg17.query('CREATE TABLE public.ledger (id integer PRIMARY KEY); GRANT SELECT ON public.ledger TO ferry', [], 'shop');
    await pg14.query('CREATE TABLE public.ledger (id integer PRIMARY KEY)', [], 'shop');
    try {
      const after = await preflight({ schemaMode: 'existing', overwriteTarget: true, rollbackWindow: '90m', target: as(pg17, 'ferry', 'ferry-pw-17') });
      assert.equal(one(after, 'reverse_replication_privilege').verdict, 'pass');
      const notOwned = one(after, 'reverse_publication_privilege');
      assert.equal(notOwned.verdict, 'fail', 'public.ledger is the superuser’s on the target');
      assert.deepEqual(notOwned.objects, ['public.ledger']);
      await pg17.query('ALTER TABLE public.ledger OWNER TO ferry', [], 'shop');
      const owned = await preflight({ schemaMode: 'existing', overwriteTarget: true, rollbackWindow: '90m', target: as(pg17, 'ferry', 'ferry-pw-17') });
      assert.equal(one(owned, 'reverse_publication_privilege').verdict, 'pass');
    } finally {
      await pg17.query('DROP TABLE public.ledger', [], 'shop');
      await pg14.query('DROP TABLE public.ledger', [], 'shop');
    }
  });

  it('fails a PostgreSQL 14 source role that is not a superuser: it cannot set session_replication_role, nor create schema pgferry without CREATE', async function () {
    const report = await preflight({ schemaMode: 'existing', overwriteTarget: true, rollbackWindow: '3d', source: as(pg14, 'ferry', 'ferry-pw-14') });
    const srr = one(report, 'reverse_session_replication_role');
    assert.equal(srr.verdict, 'fail');
    assert.match(srr.message, /triggers would fire a second time/);
    assert.match(srr.remedy, /Before PostgreSQL 15 only a superuser may set it: connect `source` as a superuser/);
    const schema = one(report, 'reverse_schema_privilege');
    assert.equal(schema.verdict, 'fail');
    assert.match(schema.remedy, /GRANT CREATE ON DATABASE "?shop"? TO "?ferry"?;/);

    await pg14.query('GRANT CREATE ON DATABASE shop TO ferry');
    const granted = await preflight({ schemaMode: 'existing', overwriteTarget: true, rollbackWindow: '3d', source: as(pg14, 'ferry', 'ferry-pw-14') });
    assert.equal(one(granted, 'reverse_schema_privilege').verdict, 'pass');
    assert.equal(one(granted, 'reverse_session_replication_role').verdict, 'fail', 'still no way to set it before 15');
  });

  it('on a PostgreSQL 17 source, passes session_replication_role once the role is granted SET ON PARAMETER', async function () {
    // The way back from 17 to 14: the 17 cluster is the source here (only the source-side reverse checks matter).
    await pg17.query("CREATE ROLE back LOGIN REPLICATION PASSWORD 'back-pw-17'");
    const spec = () => ({
      schemaMode: 'existing' as const,
      overwriteTarget: true,
      rollbackWindow: '1h30m',
      source: as(pg17, 'back', 'back-pw-17'),
      target: pg14.endpoint('shop'),
    });
    const before = await preflight(spec());
    const srr = one(before, 'reverse_session_replication_role');
    assert.equal(srr.verdict, 'fail');
    assert.match(srr.remedy, /GRANT SET ON PARAMETER session_replication_role TO "?back"?; as a superuser on the source/);
    await pg17.query('GRANT SET ON PARAMETER session_replication_role TO back');
    const after = await preflight(spec());
    assert.equal(one(after, 'reverse_session_replication_role').verdict, 'pass');
  });
});
