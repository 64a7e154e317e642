/**
 * Pause and resume, as an operator uses them: a real agent process, a
 * PostgreSQL 14 source with a live writer, a PostgreSQL 17 target. Paused
 * means nothing reaches the target and the source keeps the WAL; resumed
 * means it all arrives, nothing lost or doubled — also when the agent
 * restarted in between, and when the pause came in the middle of the load.
 */
import assert from 'node:assert/strict';
import type { Cluster } from '../dev/testbed';
import { startWriter } from '../dev/sample';
import { AgentClient, isAgentError, type MigrationMessage, type MigrationSpecMessage } from '../api/client';
import { assertSameData, waitFor } from './support/compare';
import { startShop, waitPhase, type RunningShop } from './support/running';

async function expectCode(p: Promise<unknown>, code: string, pattern?: RegExp): Promise<Error> {
  try {
    await p;
  } catch (e) {
    assert.ok(isAgentError(e), `expected an AgentError, got ${e}`);
    assert.equal(e.code, code, `expected ${code}, got ${e.code}: ${e.message}`);
    if (pattern) assert.match(`${e.message} ${e.remedy ?? ''}`, pattern);
    return e;
  }
  return assert.fail(`expected the call to fail with ${code}`);
}

/** Whether the migration's slot is in use, and how many sessions pgferry holds on the source and target for `db` (the status monitor aside). */
async function activity(
  source: Cluster,
  target: Cluster,
  db: string,
  slot: string,
): Promise<{ slotActive: boolean; sourceSessions: number; targetSessions: number }> {
  const s = await source.query('SELECT active FROM pg_replication_slots WHERE slot_name = $1', [slot], db);
  assert.equal(s.rows.length, 1, `slot ${slot} must still exist`);
  const sessions =
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'pgferry%' AND application_name NOT LIKE 'pgferry monitor%' AND pid <> pg_backend_pid()";
  const src = await source.query(sessions, [db], db);
  const tgt = await target.query(sessions, [db], db);
  return { slotActive: s.rows[0].active, sourceSessions: src.rows[0].n, targetSessions: tgt.rows[0].n };
}

async function count(c: Cluster, db: string, table: string): Promise<number> {
  return (await c.query(`SELECT count(*)::int AS n FROM ${table}`, [], db)).rows[0].n;
}

describe('pause and resume: PostgreSQL 14 → 17', function () {
  this.timeout(300_000);
  // The sample shop, migrated as `shop` and syncing; the other tests add their own databases.
  let shop: RunningShop;
  let source: Cluster;
  let target: Cluster;
  let client: AgentClient;

  before(async function () {
    shop = await startShop();
    ({ source, target, client } = shop);
  });
  after(async function () {
    client?.close();
    await shop?.stop();
  });

  /** The shop migration's spec, for another id and database. */
  const specFor = (id: string, db: string, extra: Partial<MigrationSpecMessage> = {}): MigrationSpecMessage => ({
    ...shop.spec,
    id,
    source: source.endpoint(db),
    target: target.endpoint(db),
    ...extra,
  });

  async function killAndRestartAgent(): Promise<void> {
    shop.agent.kill();
    await shop.agent.restart();
    client.close();
    client = new AgentClient({ endpoint: shop.agent.endpoint });
  }

  it('stops applying while paused (slot kept, WAL retained, cutover refused), stays paused across an agent restart, and catches up on resume', async function () {
    const syncing = await waitPhase(client, 'shop', 'syncing');
    assert.equal(syncing.paused, false);
    assert.equal(syncing.pausedAt, '');

    const writer = startWriter(() => source.client('shop'));
    try {
      await waitFor('the writer to commit while syncing', async () => writer.stats.commits > 50);
      const paused = await client.pauseMigration('shop');
      assert.equal(paused.paused, true);
      assert.equal(paused.phase, 'syncing', 'a pause keeps the phase');
      assert.ok(!Number.isNaN(Date.parse(paused.pausedAt)), `pausedAt: ${paused.pausedAt}`);
      await waitFor(
        'the stream to stop',
        async () => {
          const a = await activity(source, target, 'shop', paused.slotName);
          return !a.slotActive && a.sourceSessions === 0 && a.targetSessions === 0;
        },
        30_000,
      );

      // Nothing reaches the target while the writer goes on; the lag shows it.
      const frozen = await count(target, 'shop', 'orders');
      const commits = writer.stats.commits;
      await waitFor('more commits on the source', async () => writer.stats.commits > commits + 100);
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(await count(target, 'shop', 'orders'), frozen, 'paused: no change applied');
      const lagging = await waitFor(
        'the lag to show',
        async () => {
          const m = await client.getMigration('shop');
          return m.lagBytes > 0 ? m : undefined;
        },
        10_000,
      );
      assert.equal(lagging.paused, true);
      assert.equal(lagging.applyRate, 0);

      const again = await client.pauseMigration('shop');
      assert.equal(again.pausedAt, paused.pausedAt, 'pausing again changes nothing');
      await expectCode(client.cutover({ id: 'shop', timeoutMs: 10_000 }), 'WRONG_PHASE', /paused[\s\S]*pgferry resume shop/);

      // A paused migration stays paused when the agent comes back.
      await killAndRestartAgent();
      const afterRestart = await client.getMigration('shop');
      assert.equal(afterRestart.paused, true);
      assert.equal(afterRestart.pausedAt, paused.pausedAt);
      await new Promise((r) => setTimeout(r, 1000));
      const a = await activity(source, target, 'shop', paused.slotName);
      assert.deepEqual(a, { slotActive: false, sourceSessions: 0, targetSessions: 0 }, 'the restarted agent leaves it paused');
      assert.equal(await count(target, 'shop', 'orders'), frozen);
      assert.match(shop.agent.logs(), /Migration shop is paused .*pgferry resume shop/);
      // New apply settings (as a repeated start with a rotated password would bring) do not resume it.
      const restarted = await client.startMigration(specFor('shop', 'shop', { apply: { batchChanges: 500, batchMs: 60 } }));
      assert.equal(restarted.paused, true);
      await new Promise((r) => setTimeout(r, 1000));
      assert.deepEqual(
        await activity(source, target, 'shop', paused.slotName),
        { slotActive: false, sourceSessions: 0, targetSessions: 0 },
        'a repeated start leaves it paused',
      );

      const resumed = await client.resumeMigration('shop');
      assert.equal(resumed.paused, false);
      assert.equal(resumed.pausedAt, '');
      await waitFor('changes to flow again', async () => (await count(target, 'shop', 'orders')) > frozen, 60_000);
      const resumedAgain = await client.resumeMigration('shop');
      assert.equal(resumedAgain.paused, false, 'resuming a running migration changes nothing');
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
    assert.equal(m.paused, false);
  });

  it('pauses in the middle of the initial load and resumes without copying finished tables again', async function () {
    await source.createDatabase('many');
    await target.createDatabase('many');
    const c = await source.client('many');
    for (let i = 0; i < 12; i++) {
      await c.query(`CREATE TABLE t${i} (id int PRIMARY KEY, v text); INSERT INTO t${i} SELECT g, md5(g::text) FROM generate_series(1, 20000) g`);
    }
    // Copied first (largest first) by one worker, for seconds, while the other copies the small ones.
    await c.query('CREATE TABLE big (id int PRIMARY KEY, v text); INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 1000000) g');
    await c.end();
    await client.startMigration(specFor('many', 'many', { copy: { workers: 2, splitBytes: 1 << 30, indexJobs: 1 } }));
    // Paused in the middle of a COPY (which must not hold the pause up), after a few tables finished.
    await waitFor(
      'a few tables to be copied while the big one is copying',
      async () => {
        const m = await client.getMigration('many');
        if (m.phase === 'failed') throw new Error(`${m.errorCode}: ${m.errorMessage}`);
        return m.phase === 'loading' && m.tablesCopied >= 3 && m.tables.some((t) => t.name === 'big' && t.phase === 'copying' && t.bytesCopied > 0);
      },
      60_000,
    );
    const paused = await client.pauseMigration('many');
    assert.equal(paused.phase, 'loading');
    assert.equal(paused.paused, true);
    await waitFor(
      'the copy to stop',
      async () => {
        const a = await activity(source, target, 'many', paused.slotName);
        return a.sourceSessions === 0 && a.targetSessions === 0;
      },
      30_000,
    );
    const copied = (await client.getMigration('many')).tablesCopied;
    await new Promise((r) => setTimeout(r, 1000));
    const still = await client.getMigration('many');
    assert.equal(still.phase, 'loading');
    assert.equal(still.tablesCopied, copied, 'no table is copied while paused');

    for (const t of ['t0', 'big']) await source.query(`INSERT INTO ${t} VALUES (-1, 'written while paused')`, [], 'many');
    await client.resumeMigration('many');
    await waitPhase(client, 'many', 'syncing');
    assert.match(shop.agent.logs(), /Skipping table public\.t\d+, already copied on a previous run/);
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

  it('pauses during the index builds by cancelling the one in flight, and builds it on resume', async function () {
    await source.createDatabase('idx');
    await target.createDatabase('idx');
    // The index's function sleeps per row where the database says so: only on the
    // target, so the build there is still running when the pause comes.
    await source.query(
      `CREATE FUNCTION slow_key(int) RETURNS int LANGUAGE sql IMMUTABLE
         AS $$SELECT $1 FROM pg_sleep(coalesce(nullif(current_setting('pgferry_test.sleep', true), ''), '0')::float8)$$;
      CREATE TABLE s (id int PRIMARY KEY, v text); INSERT INTO s SELECT g, md5(g::text) FROM generate_series(1, 3000) g;
      CREATE INDEX s_slow ON s (slow_key(id));`,
      [],
      'idx',
    );
    await target.query("ALTER DATABASE idx SET pgferry_test.sleep = '0.005'", [], 'idx');
    await client.startMigration(specFor('idx', 'idx'));
    const building = "SELECT pid FROM pg_stat_activity WHERE datname = 'idx' AND state = 'active' AND query LIKE 'CREATE INDEX%slow_key%'";
    await waitFor(
      'the index build to run on the target',
      async () => {
        const m = await client.getMigration('idx');
        if (m.phase === 'failed') throw new Error(`${m.errorCode}: ${m.errorMessage}`);
        return (await target.query(building, [], 'idx')).rows.length > 0;
      },
      60_000,
    );
    const paused = await client.pauseMigration('idx');
    assert.equal(paused.phase, 'indexing');
    await waitFor('the cancelled build to end', async () => (await target.query(building, [], 'idx')).rows.length === 0, 10_000);
    const index = "SELECT 1 FROM pg_indexes WHERE schemaname = 'public' AND indexname = 's_slow'";
    assert.equal((await target.query(index, [], 'idx')).rows.length, 0, 'the build was cancelled, not waited for');
    assert.equal((await client.getMigration('idx')).phase, 'indexing');

    await target.query("CREATE OR REPLACE FUNCTION slow_key(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1'", [], 'idx');
    await client.resumeMigration('idx');
    await waitPhase(client, 'idx', 'syncing');
    assert.equal((await target.query(index, [], 'idx')).rows.length, 1, 'built on resume');
    await waitFor(
      'target to equal source',
      async () => {
        await assertSameData(source, target, 'idx');
        return true;
      },
      60_000,
    );
    await client.deleteMigration('idx');
  });

  it('refuses to pause what cannot be paused, naming the way out', async function () {
    await expectCode(client.pauseMigration('no_such_migration'), 'MIGRATION_NOT_FOUND');
    await expectCode(client.resumeMigration('no_such_migration'), 'MIGRATION_NOT_FOUND');
    // A completed migration: cut over the (resumed, in sync) shop migration first.
    const m: MigrationMessage = await client.cutover({ id: 'shop', validation: 'counts', timeoutMs: 120_000 });
    assert.equal(m.phase, 'completed');
    await expectCode(client.pauseMigration('shop'), 'WRONG_PHASE', /completed[\s\S]*pgferry delete shop/);
    await client.deleteMigration('shop');
  });
});
