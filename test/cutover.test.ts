/**
 * The cutover, as users fear it: under a continuous write load, with
 * failures injected at each step, twice, and against a target changed behind
 * pgferry's back. Real clusters, a real agent process.
 */
import assert from 'node:assert/strict';
import { startCluster, type Cluster } from '../dev/testbed';
import { AgentClient, isAgentError, type MigrationMessage } from '../api/client';
import { startAgent, type AgentProcess } from './support/agent';
import { assertSameData, waitFor } from './support/compare';
import { failpointsFile, type Failpoints } from './support/failpoints';
import { LEDGER_SCHEMA, assertLedgerHolds, ledgerWriter } from './support/ledger';

describe('cutover: PostgreSQL 14 → 17', function () {
  this.timeout(300_000);
  let source: Cluster;
  let target: Cluster;
  let agent: AgentProcess;
  let client: AgentClient;
  let fp: Failpoints;
  const DB = 'ledger';

  const spec = () => ({
    id: 'ledger',
    source: source.endpoint(DB),
    target: target.endpoint(DB),
    tables: { include: ['public.*'] },
    apply: { batchChanges: 500, batchMs: 20 },
  });

  async function waitSyncing(): Promise<MigrationMessage> {
    return waitFor('syncing', async () => {
      const m = await client.getMigration('ledger');
      if (m.phase === 'failed') throw new Error(`${m.errorCode}: ${m.errorMessage}`);
      return m.phase === 'syncing' ? m : undefined;
    });
  }

  async function sourceWritable(): Promise<boolean> {
    const c = await source.client(DB); // a new session: picks up the database default
    try {
      const r = await c.query('SHOW default_transaction_read_only');
      return r.rows[0].default_transaction_read_only === 'off';
    } finally {
      await c.end();
    }
  }

  async function expectCutoverFailure(p: Promise<unknown>, codes: string[]): Promise<void> {
    try {
      await p;
    } catch (e) {
      assert.ok(isAgentError(e), String(e));
      assert.ok(codes.includes(e.code), `expected one of ${codes}, got ${e.code}: ${e.message}`);
      return;
    }
    assert.fail('expected the cutover to fail');
  }

  before(async function () {
    [source, target] = await Promise.all([startCluster({ version: 14, fast: true }), startCluster({ version: 17, fast: true })]);
    await source.createDatabase(DB);
    await target.createDatabase(DB);
    await source.query(
      `${LEDGER_SCHEMA}
      INSERT INTO ledger (client_seq, note) SELECT -g, 'seed' FROM generate_series(1, 5000) g;`,
      [],
      DB,
    );
    fp = failpointsFile();
    agent = await startAgent({ env: { PGFERRY_FAILPOINTS_FILE: fp.path } });
    client = new AgentClient({ endpoint: agent.endpoint });
    await client.startMigration(spec());
    await waitSyncing();
  });
  after(async function () {
    client?.close();
    await agent?.stop();
    await Promise.all([source?.stop(), target?.stop()]);
    fp?.remove();
  });

  it('refuses to cut over a migration that is still loading or unknown', async function () {
    await expectCutoverFailure(client.cutover({ id: 'nope' }), ['MIGRATION_NOT_FOUND']);
  });

  it('can be cancelled while it waits for lag, with nothing fenced', async function () {
    const lock = await target.client(DB);
    await lock.query('BEGIN; LOCK TABLE ledger IN ACCESS EXCLUSIVE MODE');
    const w = ledgerWriter(() => source.client(DB));
    try {
      await waitFor('lag to build', async () => (await client.getMigration('ledger')).lagBytes > 0);
      const p = client.cutover({ id: 'ledger', maxLagBytes: 1, maxLagSeconds: 0.001, timeoutMs: 60_000 });
      p.catch(() => undefined); // asserted below
      await waitFor('the cutover to wait for lag', async () => (await client.getMigration('ledger')).cutover?.state === 'waiting-for-lag');
      await client.cancelCutover('ledger');
      await expectCutoverFailure(p, ['CUTOVER_CANCELLED']);
      assert.ok(await sourceWritable());
      assert.equal((await client.getMigration('ledger')).phase, 'syncing');
    } finally {
      await w.stop();
      await lock.query('ROLLBACK');
      await lock.end();
    }
  });

  it('times out while the target stops answering during the drain: fence lifted, source writable, still syncing', async function () {
    const w = ledgerWriter(() => source.client(DB));
    const lock = await target.client(DB);
    try {
      await waitFor('writes flowing', async () => w.committed.size > 50);
      // Let lag be small, then freeze the target's apply right before the fence.
      await lock.query('BEGIN; LOCK TABLE ledger IN ACCESS EXCLUSIVE MODE');
      // 'full': the default would time out before the fence, waiting for a verification the locked apply cannot pair.
      await expectCutoverFailure(client.cutover({ id: 'ledger', maxLagBytes: 64 << 20, maxLagSeconds: 600, timeoutMs: 4000, validation: 'full' }), [
        'CUTOVER_TIMEOUT',
      ]);
      assert.ok((await client.getMigration('ledger')).cutover?.fenceStartedAt, 'it timed out inside the fence');
      const m = await client.getMigration('ledger');
      assert.equal(m.phase, 'syncing');
      assert.equal(m.cutover?.state, 'failed');
      assert.ok(await sourceWritable(), 'the fence must be lifted');
    } finally {
      await lock.query('ROLLBACK');
      await lock.end();
      await w.stop();
    }
    await waitFor(
      'target to catch up',
      async () => {
        await assertSameData(source, target, DB);
        return true;
      },
      60_000,
    );
  });

  it("fails validation when a row was changed on the target behind pgferry's back, and lifts the fence", async function () {
    // In replica mode, as another replication into the same table would: the write guard does not see it, so the
    // continuous verification does not repair it first (test/verify.test.ts covers what it sees); the full check does.
    await target.query(
      "BEGIN; SET LOCAL session_replication_role = replica; UPDATE ledger SET note = 'tampered' WHERE id = (SELECT min(id) FROM ledger); COMMIT",
      [],
      DB,
    );
    await expectCutoverFailure(client.cutover({ id: 'ledger', validation: 'checksums' }), ['CUTOVER_FAILED']);
    const m = await client.getMigration('ledger');
    assert.equal(m.phase, 'syncing');
    assert.equal(m.cutover?.validationOk, false);
    const bad = m.cutover!.tables.filter((t) => !t.match).map((t) => t.table);
    assert.deepEqual(bad, ['public.ledger']);
    assert.ok(await sourceWritable());
    // repair the target from the source's value so the next cutover can pass
    const orig = await source.query('SELECT note FROM ledger WHERE id = (SELECT min(id) FROM ledger)', [], DB);
    await target.query('UPDATE ledger SET note = $1 WHERE id = (SELECT min(id) FROM ledger)', [orig.rows[0].note], DB);
  });

  it('lifts the fence when the agent is killed in the middle of a cutover, and keeps syncing', async function () {
    const lock = await target.client(DB);
    await lock.query('BEGIN; LOCK TABLE ledger IN ACCESS EXCLUSIVE MODE');
    await source.query("INSERT INTO ledger (client_seq, note) VALUES (-99999, 'pending at the fence')", [], DB);
    // 'full': with the apply locked out, the default would wait before the fence for a verification that cannot pair its snapshots.
    const p = client.cutover({ id: 'ledger', maxLagBytes: 64 << 20, maxLagSeconds: 600, timeoutMs: 120_000, validation: 'full' });
    p.catch(() => undefined); // the agent dies under it
    try {
      await waitFor('the cutover to drain', async () => (await client.getMigration('ledger')).cutover?.state === 'draining');
      assert.equal(await sourceWritable(), false, 'fenced while draining');
      agent.kill();
    } finally {
      await lock.query('ROLLBACK');
      await lock.end();
    }
    await agent.restart();
    client.close();
    client = new AgentClient({ endpoint: agent.endpoint });
    await waitFor('the fence lifted and the migration syncing', async () => {
      const m = await client.getMigration('ledger');
      return m.phase === 'syncing' && m.cutover?.state === 'failed' && (await sourceWritable());
    });
    await waitFor(
      'target to catch up',
      async () => {
        await assertSameData(source, target, DB);
        return true;
      },
      60_000,
    );
  });

  it('cuts over under a continuous write load: every committed row lands, sequences are ahead, the connection switches', async function () {
    const w = ledgerWriter(() => source.client(DB));
    // Two sessions opened before the fence: `early` has written when the fence goes up and commits during the
    // grace (acknowledged, so it must land); `late` begins writing only after the fence, in its old session (the
    // fence binds new sessions only): the grace must not wait for it, and it ends unacknowledged.
    const [early, late] = await Promise.all([source.client(DB), source.client(DB)]);
    early.on('error', () => undefined); // ended with the other sessions after its commit
    const lateError = new Promise<Error>((resolve) => late.on('error', resolve));
    let done: MigrationMessage;
    try {
      await waitFor('writes flowing', async () => w.committed.size > 200);
      await early.query("BEGIN; INSERT INTO ledger (client_seq, note) VALUES (-77001, 'in flight at the fence')");
      fp.set({ 'cutover.fenced': 1000 });
      const p = client.cutover({ id: 'ledger', validation: 'checksums', timeoutMs: 120_000 });
      p.catch(() => undefined); // awaited below
      await waitFor('the fence up', async () => fp.paused('cutover.fenced') > 0);
      const lateWrite = late.query("BEGIN; INSERT INTO ledger (client_seq, note) VALUES (-77002, 'begun after the fence')");
      await lateWrite;
      await early.query('COMMIT');
      done = await p;
      assert.match(
        String(
          await Promise.race([
            lateError,
            late.query('COMMIT').then(
              () => 'committed',
              (e) => e,
            ),
          ]),
        ),
        /terminat/i,
      );
      // keep the writer going a moment after the fence: its writes must be refused
      const refusedBefore = w.refused;
      await waitFor('writes refused after the fence', async () => w.refused > refusedBefore + 3);
    } finally {
      fp.set({});
      await w.stop();
      await early.end().catch(() => undefined);
      await late.end().catch(() => undefined);
    }
    const marks = await target.query('SELECT client_seq FROM ledger WHERE client_seq IN (-77001, -77002) ORDER BY 1', [], DB);
    assert.deepEqual(
      marks.rows.map((r) => r.client_seq),
      [-77001],
      'the transaction in flight at the fence landed; the one begun after it did not',
    );
    const grace = done!.cutover!.outageParts.find((x) => x.part === 'grace')!.ms;
    // The grace part holds the 1 s failpoint pause; waiting for the later transaction would add the whole graceMs (500 ms).
    assert.ok(grace < 1500, `the grace waited only for the transaction in flight at the fence, not for the later one (${grace} ms)`);
    assert.equal(done!.phase, 'completed');
    assert.equal(done!.activeEndpoint, 'target');
    const rep = done!.cutover!;
    assert.equal(rep.state, 'completed');
    assert.equal(rep.validationOk, true);
    assert.ok(rep.writeDowntimeMs > 0);
    assert.match(rep.fenceLsn, /^[0-9A-F]+\/[0-9A-F]+$/);
    assert.ok(rep.tables.length === 2 && rep.tables.every((t) => t.match));
    // Every commit the client saw succeed is on the target; nothing else but in-doubt ones.
    const t = await target.client(DB);
    try {
      await assertLedgerHolds(t, w);
    } finally {
      await t.end();
    }
    await assertSameData(source, target, DB);
    // Sequences on the target at or above the source's.
    for (const seq of ['ledger_id_seq', 'standalone_seq']) {
      const [s, t] = await Promise.all([source.query(`SELECT last_value FROM ${seq}`, [], DB), target.query(`SELECT last_value FROM ${seq}`, [], DB)]);
      assert.ok(BigInt(t.rows[0].last_value) >= BigInt(s.rows[0].last_value), `${seq}: target ${t.rows[0].last_value} < source ${s.rows[0].last_value}`);
    }
    // The first insert on the target does not collide.
    await target.query("INSERT INTO ledger (client_seq, note) VALUES (0, 'first on target')", [], DB);
    // The source stays fenced after completion.
    assert.equal(await sourceWritable(), false);
  });

  it('is harmless to run twice', async function () {
    const first = await client.getMigration('ledger');
    const again = await client.cutover({ id: 'ledger' });
    assert.equal(again.phase, 'completed');
    assert.equal(again.cutover!.fenceLsn, first.cutover!.fenceLsn);
    assert.equal(again.cutover!.writeDowntimeMs, first.cutover!.writeDowntimeMs);
  });
});
