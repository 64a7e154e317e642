/**
 * The way back (issue 21), as a cautious team uses it: a migration with a
 * rollback window cuts over under a live writer that follows
 * `activeEndpoint`; the writer goes on on the target while the old source
 * follows it (through a kill -9 of the agent), and a cutback returns it to
 * the source with every acknowledged write of the three periods there.
 * Then: the window's end and a delete during the window leave nothing
 * behind, and no change goes round in a loop. Real clusters, a real agent.
 */
import assert from 'node:assert/strict';
import { startCluster, type Cluster } from '../dev/testbed';
import { AgentClient, isAgentError, type MigrationMessage } from '../api/client';
import { startAgent, type AgentProcess } from './support/agent';
import { failpointsFile, type Failpoints } from './support/failpoints';
import { assertSameTables, waitFor } from './support/compare';
import { LEDGER_SCHEMA, assertLedgerHolds, ledgerWriter } from './support/ledger';

/** The ledger, and a keyless table whose rows a loop would double (REPLICA IDENTITY FULL: no key stops a second insert). */
const SCHEMA = `${LEDGER_SCHEMA}
  CREATE TABLE notes (period int NOT NULL, n int NOT NULL);
  ALTER TABLE notes REPLICA IDENTITY FULL;`;

describe('cutback: the way back, PostgreSQL 14 → 17', function () {
  this.timeout(300_000);
  let source: Cluster;
  let target: Cluster;
  let agent: AgentProcess;
  let client: AgentClient;
  let fp: Failpoints;

  const spec = (db: string, rollbackWindow?: string) => ({
    id: db,
    source: source.endpoint(db),
    target: target.endpoint(db),
    tables: { include: ['public.*'] },
    apply: { batchChanges: 500, batchMs: 20 },
    ...(rollbackWindow ? { rollbackWindow } : {}),
  });

  async function setUp(db: string, rollbackWindow?: string): Promise<void> {
    await Promise.all([source.createDatabase(db), target.createDatabase(db)]);
    await source.query(`${SCHEMA} INSERT INTO ledger (client_seq, note) SELECT -g, 'seed' FROM generate_series(1, 2000) g;`, [], db);
    await client.startMigration(spec(db, rollbackWindow));
    await waitFor(`${db} syncing`, async () => {
      const m = await client.getMigration(db);
      if (m.phase === 'failed') throw new Error(`${m.errorCode}: ${m.errorMessage}`);
      return m.phase === 'syncing';
    });
  }

  /** A new session of `db` on `c` may write (the database default is not read-only). */
  async function writable(c: Cluster, db: string): Promise<boolean> {
    const r = await c.query('SHOW default_transaction_read_only', [], db);
    return r.rows[0].default_transaction_read_only === 'off';
  }

  async function slotsAndPublications(c: Cluster, db: string): Promise<string[]> {
    const r = await c.query(
      `SELECT 'slot ' || slot_name AS o FROM pg_replication_slots WHERE database = current_database()
       UNION ALL SELECT 'publication ' || pubname FROM pg_publication ORDER BY 1`,
      [],
      db,
    );
    return r.rows.map((x) => x.o as string);
  }

  async function waitReverseStreaming(db: string): Promise<MigrationMessage> {
    return waitFor(`${db}: the reverse sync streaming with little lag`, async () => {
      const m = await client.getMigration(db);
      return m.reverse?.state === 'streaming' && m.reverse.appliedLsn !== '' && Number(m.reverse.lagBytes) < 1 << 20 ? m : undefined;
    });
  }

  before(async function () {
    [source, target] = await Promise.all([startCluster({ version: 14, fast: true }), startCluster({ version: 17, fast: true })]);
    fp = failpointsFile();
    agent = await startAgent({ env: { PGFERRY_FAILPOINTS_FILE: fp.path } });
    client = new AgentClient({ endpoint: agent.endpoint });
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed')
      console.log(
        agent
          .logs()
          .split('\n')
          .filter((l) => /reverse|cutback|error|warn/i.test(l))
          .slice(-40)
          .join('\n'),
      );
  });
  after(async function () {
    client?.close();
    await agent?.stop();
    await Promise.all([source?.stop(), target?.stop()]);
    fp?.remove();
  });

  it('cutover → the writer on the target → kill -9 in the reverse sync and in a cutback → cutback → the writer on the source: every acknowledged write on the source, no loop', async function () {
    const DB = 'back';
    await setUp(DB, '1h');
    // The writer follows activeEndpoint, as an application reading the `activeConnection` output would.
    let active: 'source' | 'target' = 'source';
    const follow = setInterval(() => {
      client.getMigration(DB).then(
        (m) => (active = m.activeEndpoint === 'target' ? 'target' : 'source'),
        () => undefined,
      );
    }, 50);
    const w = ledgerWriter(() => (active === 'target' ? target : source).client(DB));
    const notes = (c: Cluster, period: number) => c.query('INSERT INTO notes SELECT $1, g FROM generate_series(1, 100) g', [period], DB);
    try {
      await notes(source, 1);
      await waitFor('period 1 writes', async () => w.committed.size > 200);
      const over = await client.cutover({ id: DB, timeoutMs: 120_000 });
      assert.equal(over.phase, 'completed');
      await waitFor('the writer on the target', async () => active === 'target' && w.committed.size > 0);
      const atCutover = w.committed.size;
      await notes(target, 2);
      await waitReverseStreaming(DB);
      await waitFor('period 2 writes', async () => w.committed.size > atCutover + 300);

      // The forward slot is gone from the old source (nothing applied back is streamed forward), the reverse one is on the target.
      assert.deepEqual(await slotsAndPublications(source, DB), []);
      assert.deepEqual(await slotsAndPublications(target, DB), ['publication pgferry_back_back', 'slot pgferry_back_back']);
      assert.equal(await writable(source, DB), false, 'the old source stays fenced for everyone but the reverse apply');

      agent.kill();
      await waitFor('more period 2 writes while the agent is down', async () => w.committed.size > atCutover + 600);
      await agent.restart();
      client.close();
      client = new AgentClient({ endpoint: agent.endpoint });
      await waitReverseStreaming(DB);

      // A row changed on the old source behind pgferry's back fails the cutback, which lifts the target's fence.
      const fix = await source.client(DB);
      await fix.query('SET default_transaction_read_only = off');
      const id = (await fix.query("UPDATE ledger SET note = 'tampered' WHERE id = (SELECT min(id) FROM ledger) RETURNING id")).rows[0].id;
      await assert.rejects(client.cutback({ id: DB, timeoutMs: 60_000 }), (e: unknown) => {
        assert.ok(isAgentError(e), String(e));
        assert.match(e.message, /ledger/);
        assert.match(e.message, /fence was lifted and verified/);
        return true;
      });
      let m = await client.getMigration(DB);
      assert.equal(m.phase, 'completed');
      assert.equal(m.activeEndpoint, 'target');
      assert.equal(await writable(target, DB), true, "the target's fence lifted");
      assert.equal((await client.getMigration(DB)).reverse?.state, 'streaming', 'the reverse sync goes on');
      const truth = await target.query('SELECT note FROM ledger WHERE id = $1', [id], DB);
      await fix.query('UPDATE ledger SET note = $1 WHERE id = $2', [truth.rows[0].note, id]);
      await fix.end();
      let beforeBack = w.committed.size;
      await waitFor('the writer still on the target', async () => w.committed.size > beforeBack + 100);

      // kill -9 of the agent in the middle of a cutback (the target fenced, draining): the restarted agent lifts the
      // target's fence (verified), the application stays there and the reverse sync goes on.
      fp.set({ 'cutback.draining': 5000 });
      const dying = client.cutback({ id: DB, timeoutMs: 60_000 });
      dying.catch(() => undefined); // the agent dies under it
      await waitFor('the cutback held while draining', async () => fp.paused('cutback.draining') > 0);
      assert.equal(await writable(target, DB), false, 'the target is fenced while the cutback drains');
      agent.kill();
      fp.set({});
      await agent.restart();
      client.close();
      client = new AgentClient({ endpoint: agent.endpoint });
      await waitFor("the target's fence lifted after the restart", async () => writable(target, DB));
      m = await client.getMigration(DB);
      assert.equal(m.phase, 'completed');
      assert.equal(m.cutback?.state, 'failed');
      assert.match(m.cutback?.error ?? '', /agent restart/);
      await waitReverseStreaming(DB);
      beforeBack = w.committed.size;
      await waitFor('the writer back on the target', async () => w.committed.size > beforeBack + 100);

      m = await client.cutback({ id: DB, timeoutMs: 120_000 });
      assert.equal(m.phase, 'cut-back');
      assert.equal(m.activeEndpoint, 'source');
      assert.equal(m.cutback?.state, 'completed');
      assert.equal(m.cutback?.validationOk, true);
      assert.ok(Number(m.cutback?.outageMs) > 0, 'the outage is in the report');
      assert.deepEqual(
        m.cutback?.outageParts.map((p) => p.part),
        ['grace', 'terminate', 'drain', 'sequences', 'verification', 'completing'],
      );
      const atCutback = w.committed.size;
      await waitFor('period 3 writes on the source', async () => active === 'source' && w.committed.size > atCutback + 200);
    } finally {
      clearInterval(follow);
      await w.stop();
    }
    assert.equal(await writable(target, DB), false, 'the target is fenced after the cutback');
    assert.equal(await writable(source, DB), true);
    const s = await source.client(DB);
    const t = await target.client(DB);
    try {
      await assertLedgerHolds(s, w);
      // No loop: each period's notes once on each side.
      for (const c of [s, t]) {
        const r = await c.query('SELECT period, count(*)::int AS n FROM notes GROUP BY 1 ORDER BY 1');
        assert.deepEqual(r.rows, [
          { period: 1, n: 100 },
          { period: 2, n: 100 },
        ]);
      }
      // The target is frozen at the cutback's fence: the source is it plus what the writer did since.
      const tmax = (await t.query('SELECT max(id) AS m FROM ledger')).rows[0].m;
      await s.query('BEGIN');
      await s.query(`CREATE TEMP TABLE later ON COMMIT DROP AS SELECT * FROM ledger WHERE id > $1`, [tmax]);
      await s.query('DELETE FROM ledger WHERE id > $1', [tmax]);
      await s.query('UPDATE counters c SET n = c.n - l.k FROM (SELECT client_seq % 5 AS id, count(*) AS k FROM later GROUP BY 1) l WHERE c.id = l.id');
      await assertSameTables(s, t);
      await s.query('ROLLBACK');
      // Sequences on the source past every value the target handed out.
      const [sv, tv] = await Promise.all([s.query('SELECT last_value FROM ledger_id_seq'), t.query('SELECT last_value FROM ledger_id_seq')]);
      assert.ok(BigInt(sv.rows[0].last_value) >= BigInt(tv.rows[0].last_value));
    } finally {
      await s.end();
      await t.end();
    }
    assert.deepEqual(await slotsAndPublications(target, DB), [], 'the reverse slot and publication are dropped after the cutback');
    const done = await client.getMigration(DB);
    assert.equal(done.reverse?.state, 'dropped');
    assert.match(done.reverse?.dropReason ?? '', /cutback completed/);
    // Idempotent.
    assert.equal((await client.cutback({ id: DB })).cutback?.fenceLsn, done.cutback?.fenceLsn);
    await client.deleteMigration(DB);
    assert.deepEqual(await slotsAndPublications(source, DB), []);
  });

  it("the window's end drops the reverse slot and publication on the target, and a cutback is refused after it", async function () {
    const DB = 'window';
    await setUp(DB, '12s');
    await client.cutover({ id: DB, timeoutMs: 120_000 });
    await target.query("INSERT INTO ledger (client_seq, note) VALUES (1, 'on the target')", [], DB);
    const m = await waitReverseStreaming(DB);
    assert.ok(m.reverse?.windowEndsAt, 'the status says when the window ends');
    assert.equal((await slotsAndPublications(target, DB)).length, 2);
    await waitFor('the window to end', async () => (await client.getMigration(DB)).reverse?.state === 'dropped', 60_000);
    const after = await client.getMigration(DB);
    assert.match(after.reverse?.dropReason ?? '', /window ended/);
    assert.deepEqual(await slotsAndPublications(target, DB), []);
    assert.equal((await source.query("SELECT count(*)::int AS n FROM ledger WHERE note = 'on the target'", [], DB)).rows[0].n, 1);
    await assert.rejects(client.cutback({ id: DB }), /rollback window .* is over/);
    await client.deleteMigration(DB);
    assert.deepEqual(await slotsAndPublications(source, DB), []);
  });

  it('a delete during the window drops the reverse objects: nothing is left on either server', async function () {
    const DB = 'gone';
    await setUp(DB, '1h');
    await client.cutover({ id: DB, timeoutMs: 120_000 });
    await target.query("INSERT INTO ledger (client_seq, note) VALUES (1, 'on the target')", [], DB);
    await waitReverseStreaming(DB);
    await waitFor('the row back on the old source', async () => {
      return (await source.query("SELECT count(*)::int AS n FROM ledger WHERE note = 'on the target'", [], DB)).rows[0].n === 1;
    });
    assert.equal((await source.query("SELECT count(*)::int AS n FROM pgferry.apply_state WHERE migration_id = 'gone'", [], DB)).rows[0].n, 1);
    await client.deleteMigration(DB);
    assert.deepEqual(await slotsAndPublications(target, DB), []);
    assert.deepEqual(await slotsAndPublications(source, DB), []);
    const left = await source.query("SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = 'pgferry'", [], DB);
    assert.equal(left.rows[0].n, 0, 'the reverse apply kept its position in a pgferry schema on the source: dropped with the migration');
  });

  it('refuses a cutback without a rollback window, naming why', async function () {
    const DB = 'nowindow';
    await setUp(DB);
    await assert.rejects(client.cutback({ id: DB }), /phase 'syncing'/);
    await client.cutover({ id: DB, timeoutMs: 120_000 });
    await assert.rejects(client.cutback({ id: DB }), /without a rollback window/);
    await client.deleteMigration(DB);
  });
});
