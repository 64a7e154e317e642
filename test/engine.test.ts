/**
 * The engine, end to end, as a user meets it: a real agent process, real
 * source and target clusters of different major versions, a live writer.
 */
import assert from 'node:assert/strict';
import { startCluster, type Cluster, type PgMajor } from '../dev/testbed';
import { seedShop, startWriter } from '../dev/sample';
import { AgentClient, isAgentError, type MigrationMessage, type MigrationSpecMessage } from '../api/client';
import { startAgent, type AgentProcess } from './support/agent';
import { assertSameData, waitFor } from './support/compare';

const PAIRS: Array<{ source: PgMajor; target: PgMajor }> = [
  { source: 14, target: 17 },
  { source: 13, target: 17 },
];

function specFor(id: string, source: Cluster, target: Cluster, db: string, extra: Partial<MigrationSpecMessage> = {}): MigrationSpecMessage {
  return {
    id,
    source: { ...source.endpoint(db) },
    target: { ...target.endpoint(db) },
    tables: { include: ['public.*'] },
    copy: { workers: 2, splitBytes: 256 * 1024, indexJobs: 2 },
    apply: { batchChanges: 500, batchMs: 50 },
    ...extra,
  };
}

async function waitPhase(client: AgentClient, id: string, phase: string, timeoutMs = 120_000): Promise<MigrationMessage> {
  return waitFor(
    `migration ${id} to reach ${phase}`,
    async () => {
      const m = await client.getMigration(id);
      if (m.phase === 'failed') throw Object.assign(new Error(`migration failed: ${m.errorCode} ${m.errorMessage}`), { fatal: true });
      return m.phase === phase ? m : undefined;
    },
    timeoutMs,
  ).catch((e) => {
    throw e;
  });
}

async function expectCode(p: Promise<unknown>, code: string): Promise<void> {
  try {
    await p;
  } catch (e) {
    assert.ok(isAgentError(e), `expected an AgentError, got ${e}`);
    assert.equal(e.code, code, `expected ${code}, got ${e.code}: ${e.message}`);
    assert.ok(e.message.length > 10);
    return;
  }
  assert.fail(`expected the call to fail with ${code}`);
}

async function sourceObjects(c: Cluster, db: string, name: string): Promise<{ slots: number; pubs: number }> {
  const s = await c.query('SELECT count(*)::int AS n FROM pg_replication_slots WHERE slot_name LIKE $1', [`${name}%`], db);
  const p = await c.query('SELECT count(*)::int AS n FROM pg_publication WHERE pubname = $1', [name], db);
  return { slots: s.rows[0].n, pubs: p.rows[0].n };
}

for (const pair of PAIRS) {
  describe(`engine: PostgreSQL ${pair.source} → ${pair.target}`, function () {
    this.timeout(300_000);
    let source: Cluster;
    let target: Cluster;
    let agent: AgentProcess;
    let client: AgentClient;

    before(async function () {
      [source, target] = await Promise.all([startCluster({ version: pair.source, fast: true }), startCluster({ version: pair.target, fast: true })]);
      agent = await startAgent();
      client = new AgentClient({ endpoint: agent.endpoint });
    });
    after(async function () {
      client?.close();
      await agent?.stop();
      await Promise.all([source?.stop(), target?.stop()]);
    });

    it('loads a live database consistently and keeps it in sync while a writer inserts, updates and deletes', async function () {
      await source.createDatabase('shop');
      await target.createDatabase('shop');
      const seed = await source.client('shop');
      await seedShop(seed, 20_000);
      await seed.end();
      const writer = startWriter(() => source.client('shop'));
      try {
        const started = await client.startMigration(specFor('shop', source, target, 'shop'));
        assert.equal(started.id, 'shop');
        const again = await client.startMigration(specFor('shop', source, target, 'shop'));
        assert.equal(again.id, 'shop', 'the same id and spec returns the same migration');
        await expectCode(
          client.startMigration(specFor('shop', source, target, 'shop', { tables: { include: ['public.orders'] } })),
          'MIGRATION_EXISTS_DIFFERENT_SPEC',
        );
        const syncing = await waitPhase(client, 'shop', 'syncing');
        assert.ok(syncing.tablesTotal >= 9, `tables: ${syncing.tablesTotal}`);
        assert.equal(syncing.progress, 1);
        assert.ok(syncing.rowsCopied >= 20_000);
        assert.ok(syncing.tables.some((t) => t.name === 'orders' && t.rowsCopied > 0));
        // keep writing while syncing
        await waitFor('the writer to commit during sync', async () => writer.stats.commits > 200);
      } finally {
        const stats = await writer.stop();
        assert.ok(stats.commits > 0, `writer committed nothing: ${stats.lastError}`);
      }
      await waitFor(
        'target to equal source',
        async () => {
          await assertSameData(source, target, 'shop');
          return true;
        },
        60_000,
      );
      const m = await client.getMigration('shop');
      assert.equal(m.phase, 'syncing');
      assert.ok(m.changesApplied > 0);
      assert.ok(m.retainedWalBytes >= 0);
      assert.equal(m.activeEndpoint, 'source');
    });

    it("schemaMode existing: loads into the target's own tables and keeps them in sync, converting a column whose type differs there", async function () {
      await source.createDatabase('own');
      await target.createDatabase('own');
      await source.query(
        "CREATE TABLE m (id bigint PRIMARY KEY, v bigint, t text); INSERT INTO m SELECT g, g * 1000, 'r' || g FROM generate_series(1, 2000) g",
        [],
        'own',
      );
      // v is double precision on the target: a binary COPY would read the source's int8 bytes as float8.
      await target.query('CREATE TABLE m (id bigint PRIMARY KEY, v double precision, t text)', [], 'own');
      const report = await client.preflight(specFor('own', source, target, 'own', { schemaMode: 'existing' }));
      assert.equal(report.ok, true);
      const types = report.checks.find((c) => c.name === 'target_column_types');
      assert.equal(types?.verdict, 'warn', 'the differing type is named before anything starts');
      assert.deepEqual(types?.objects, ['public.m.v (bigint → double precision)']);
      await client.startMigration(specFor('own', source, target, 'own', { schemaMode: 'existing' }));
      await waitPhase(client, 'own', 'syncing');
      await source.query("INSERT INTO m SELECT g, g * 1000, 'r' || g FROM generate_series(2001, 2100) g; UPDATE m SET v = -v WHERE id <= 10", [], 'own');
      const sums = 'SELECT count(*)::int AS n, sum(v)::float8 AS s, min(v)::float8 AS lo, max(v)::float8 AS hi FROM m';
      await waitFor(
        "the target to hold the source's values",
        async () => {
          const [s, t] = await Promise.all([source.query(sums, [], 'own'), target.query(sums, [], 'own')]);
          return JSON.stringify(s.rows) === JSON.stringify(t.rows) ? true : undefined;
        },
        60_000,
      );
      assert.deepEqual((await target.query(sums, [], 'own')).rows, [{ n: 2100, s: ((2100 * 2101) / 2) * 1000 - 2 * 55_000, lo: -10_000, hi: 2_100_000 }]);
      await client.deleteMigration('own');
    });

    it('survives kill -9 of the agent during sync: no row lost, none doubled', async function () {
      const writer = startWriter(() => source.client('shop'));
      try {
        await waitFor('some commits', async () => writer.stats.commits > 100);
        agent.kill();
        await waitFor('more commits while the agent is down', async () => writer.stats.commits > 300);
        await agent.restart();
        client.close();
        client = new AgentClient({ endpoint: agent.endpoint });
        await waitPhase(client, 'shop', 'syncing');
        await waitFor('commits after the restart', async () => writer.stats.commits > 500);
      } finally {
        await writer.stop();
      }
      await waitFor(
        'target to equal source after the restart',
        async () => {
          await assertSameData(source, target, 'shop');
          return true;
        },
        60_000,
      );
    });

    it('deletes the migration: slot and publication gone from the source, target data kept', async function () {
      const before = await sourceObjects(source, 'shop', 'pgferry_shop');
      assert.deepEqual(before, { slots: 1, pubs: 1 });
      const res = await client.deleteMigration('shop');
      assert.ok(res.dropped.length >= 2);
      assert.deepEqual(await sourceObjects(source, 'shop', 'pgferry_shop'), { slots: 0, pubs: 0 });
      const rows = await target.query('SELECT count(*)::int AS n FROM orders', [], 'shop');
      assert.ok(rows.rows[0].n > 20_000);
      await expectCode(client.getMigration('shop'), 'MIGRATION_NOT_FOUND');
    });

    it('survives kill -9 during the initial load without copying finished tables again', async function () {
      await source.createDatabase('many');
      await target.createDatabase('many');
      const c = await source.client('many');
      for (let i = 0; i < 24; i++) {
        await c.query(`CREATE TABLE t${i} (id int PRIMARY KEY, v text); INSERT INTO t${i} SELECT g, md5(g::text) FROM generate_series(1, 20000) g`);
      }
      await c.end();
      await client.startMigration(specFor('many', source, target, 'many', { copy: { workers: 1, splitBytes: 1 << 30, indexJobs: 1 } }));
      await waitFor(
        'a few tables to be copied',
        async () => {
          const m = await client.getMigration('many');
          return m.phase === 'loading' && m.tablesCopied >= 3;
        },
        60_000,
      );
      agent.kill();
      await agent.restart();
      client.close();
      client = new AgentClient({ endpoint: agent.endpoint });
      await waitPhase(client, 'many', 'syncing');
      assert.match(agent.logs(), /Skipping table public\.t\d+, already copied on a previous run/);
      await waitFor(
        'target to equal source',
        async () => {
          await assertSameData(source, target, 'many');
          return true;
        },
        60_000,
      );
      await client.deleteMigration('many');
    });

    it('takes a rotated source password from a repeated start, without an agent restart', async function () {
      await source.createDatabase('rot');
      await target.createDatabase('rot');
      await source.query("CREATE ROLE mover LOGIN REPLICATION PASSWORD 'first-pass-111'", [], 'rot').catch(() => undefined);
      // mover owns the table: the owner must exist on the target too (the preflight says so otherwise).
      await target.query('CREATE ROLE mover NOLOGIN', [], 'rot').catch(() => undefined);
      await source.query(
        `GRANT CREATE ON DATABASE rot TO mover; CREATE TABLE r (id int PRIMARY KEY, v text); ALTER TABLE r OWNER TO mover;
        INSERT INTO r SELECT g, 'v' || g FROM generate_series(1, 100) g`,
        [],
        'rot',
      );
      const spec = (password: string) => specFor('rot', source, target, 'rot', { source: { ...source.endpoint('rot'), user: 'mover', password } });
      await client.startMigration(spec('first-pass-111'));
      await waitPhase(client, 'rot', 'syncing');
      await source.query("ALTER ROLE mover PASSWORD 'second-pass-222'", [], 'rot');
      const again = await client.startMigration(spec('second-pass-222'));
      assert.equal(again.id, 'rot');
      // Every session of the old password ends: the agent must come back with the new one.
      await source.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'mover'", [], 'rot');
      await source.query("INSERT INTO r SELECT g, 'after rotation' FROM generate_series(101, 200) g", [], 'rot');
      await waitFor(
        'target to equal source after the rotation',
        async () => {
          await assertSameData(source, target, 'rot');
          return true;
        },
        60_000,
      );
      const m = await client.getMigration('rot');
      assert.equal(m.phase, 'syncing', `${m.errorCode} ${m.errorMessage}`);
      await client.deleteMigration('rot');
    });

    describe('bad input gets a clear error and leaves nothing half-made', function () {
      before(async function () {
        await source.createDatabase('bad');
        await target.createDatabase('bad');
        await source.query('CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE nokey (v int)', [], 'bad');
      });
      const assertNothingMade = async (name = 'pgferry_bad') => {
        assert.deepEqual(await sourceObjects(source, 'bad', name), { slots: 0, pubs: 0 });
        const t = await target.query("SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = 'public'", [], 'bad');
        assert.equal(t.rows[0].n, 0);
      };
      const base = () => specFor('bad', source, target, 'bad', { tables: { include: ['public.a'] } });

      it('malformed spec → INVALID_SPEC', async function () {
        await expectCode(client.startMigration({ ...base(), id: 'Bad Id!' }), 'INVALID_SPEC');
        await expectCode(client.startMigration({ ...base(), tables: { include: ['no_dot_here'] } }), 'INVALID_SPEC');
        await assertNothingMade();
      });
      it('wrong password → AUTH_FAILED', async function () {
        await expectCode(client.startMigration({ ...base(), source: { ...source.endpoint('bad'), password: 'wrong-password' } }), 'AUTH_FAILED');
        await assertNothingMade();
      });
      it('unreachable host → SOURCE_UNREACHABLE', async function () {
        await expectCode(client.startMigration({ ...base(), source: { ...source.endpoint('bad'), port: 1 } }), 'SOURCE_UNREACHABLE');
        await assertNothingMade();
      });
      it('wrong database name → DATABASE_NOT_FOUND', async function () {
        await expectCode(client.startMigration({ ...base(), target: { ...target.endpoint('nope') } }), 'DATABASE_NOT_FOUND');
        await assertNothingMade();
      });
      it('a role without REPLICATION → INSUFFICIENT_PRIVILEGE', async function () {
        await source.query("CREATE ROLE weak LOGIN PASSWORD 'weak-pass-123'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO weak", [], 'bad');
        await expectCode(
          client.startMigration({ ...base(), source: { ...source.endpoint('bad'), user: 'weak', password: 'weak-pass-123' } }),
          'INSUFFICIENT_PRIVILEGE',
        );
        await assertNothingMade();
      });
      it('a slot name taken by something else → SLOT_NAME_TAKEN', async function () {
        await source.query("SELECT pg_create_logical_replication_slot('pgferry_bad', 'pgoutput')", [], 'bad');
        try {
          await expectCode(client.startMigration(base()), 'SLOT_NAME_TAKEN');
          const t = await target.query("SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = 'public'", [], 'bad');
          assert.equal(t.rows[0].n, 0);
        } finally {
          await source.query("SELECT pg_drop_replication_slot('pgferry_bad')", [], 'bad');
        }
      });
      it('a table without key or replica identity → PREFLIGHT_FAILED naming it and the fix', async function () {
        const report = await client.preflight({ ...base(), tables: { include: ['public.*'] } });
        assert.equal(report.ok, false);
        const ri = report.checks.find((c) => c.name === 'replica_identity');
        assert.equal(ri?.verdict, 'fail');
        assert.deepEqual(ri?.objects, ['public.nokey']);
        assert.match(ri!.remedy, /ALTER TABLE public\.nokey REPLICA IDENTITY FULL;/);
        await expectCode(client.startMigration({ ...base(), tables: { include: ['public.*'] } }), 'PREFLIGHT_FAILED');
        await assertNothingMade();
      });
      it('a pattern that matches nothing → PREFLIGHT_FAILED', async function () {
        const report = await client.preflight({ ...base(), tables: { include: ['public.a', 'billing.*'] } });
        const sel = report.checks.find((c) => c.name === 'table_selection' && c.verdict === 'fail');
        assert.deepEqual(sel?.objects, ['billing.*']);
        await assertNothingMade();
      });
    });
  });
}
