/**
 * The fence must never outlive a cutover that did not complete. A live writer
 * on the source; the agent reaches both servers through proxies that a test
 * can cut; a failpoint holds the cutover at one step while a fault strikes:
 * the source or target path cut for 2 s, the source or target server
 * restarted, or the agent killed. Whatever happens, the cutover ends in one
 * of two states only: completed (the writer goes on on the target, nothing
 * lost), or not completed with the source verified writable, the sync
 * running and a later cutover that completes. Real clusters, a real agent.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { startCluster, type Cluster } from '../dev/testbed';
import { AgentClient, isAgentError, type CutoverRequestMessage, type MigrationMessage } from '../api/client';
import { startAgent, type AgentProcess } from './support/agent';
import { waitFor } from './support/compare';
import { LEDGER_SCHEMA, assertLedgerHolds, ledgerWriter } from './support/ledger';
import { startProxy, type CuttableProxy } from './support/proxy';
import { runCli } from './support/cli';
import { scrape, one } from './support/metrics-text';

/** Where the cutover is held while the fault strikes (failpoint `cutover.<step>`; `fenced` is right after the ALTER). */
const STEPS = ['waiting-for-lag', 'fenced', 'draining', 'sequences', 'large-objects', 'schema', 'validating', 'completing'] as const;
const FAULTS = ['source-cut', 'target-cut', 'source-restart', 'target-restart', 'agent-kill'] as const;
type Fault = (typeof FAULTS)[number];

describe('fence: a cutover interrupted at every step by every fault (PostgreSQL 14 → 17)', function () {
  this.timeout(600_000);
  let source: Cluster;
  let target: Cluster;
  let srcProxy: CuttableProxy;
  let tgtProxy: CuttableProxy;
  let agent: AgentProcess;
  let client: AgentClient;
  let failpoints: string;
  let n = 0;

  const holdAt = (step: string | null) => {
    writeFileSync(failpoints, JSON.stringify(step ? { [`cutover.${step}`]: { pauseMs: 1500 } } : {}));
    rmSync(`${failpoints}.hits`, { force: true });
  };
  const reached = (step: string) =>
    existsSync(`${failpoints}.hits`) &&
    readFileSync(`${failpoints}.hits`, 'utf8')
      .split('\n')
      .some((l) => l === `cutover.${step}` || l === `cutover.${step} paused`);

  /**
   * Start a cutover that the failpoint holds at `step`, and resolve once it is
   * there (a cutover that fails before says so instead of timing out).
   * `done` is the cutover's own promise, already guarded against an
   * unhandled rejection.
   */
  async function cutoverHeldAt(step: string, req: Omit<CutoverRequestMessage, 'maxLagBytes' | 'maxLagSeconds'>): Promise<{ done: Promise<MigrationMessage> }> {
    holdAt(step);
    let early: unknown;
    const p = client.cutover({ maxLagBytes: 64 << 20, maxLagSeconds: 600, ...req });
    p.catch((e) => {
      early = e;
    });
    await waitFor(
      `the cutover to reach ${step}`,
      async () => {
        if (early) throw new Error(`the cutover failed before ${step}: ${String(early)}`);
        return reached(step);
      },
      60_000,
    );
    return { done: p };
  }

  /** A fresh database and a migration of it, through the proxies, syncing. */
  async function newMigration(): Promise<{ id: string; db: string }> {
    const id = `f${++n}`;
    await Promise.all([source.createDatabase(id), target.createDatabase(id)]);
    await source.query(`${LEDGER_SCHEMA} INSERT INTO ledger (client_seq, note) SELECT -g, 'seed' FROM generate_series(1, 2000) g;`, [], id);
    await client.startMigration({
      id,
      source: { ...source.endpoint(id), host: srcProxy.host, port: srcProxy.port },
      target: { ...target.endpoint(id), host: tgtProxy.host, port: tgtProxy.port },
      tables: { include: ['public.*'] },
      apply: { batchChanges: 500, batchMs: 20 },
    });
    await waitFor(`${id} syncing`, async () => {
      const m = await client.getMigration(id);
      if (m.phase === 'failed') throw new Error(`${m.errorCode}: ${m.errorMessage}`);
      return m.phase === 'syncing';
    });
    return { id, db: id };
  }

  /** A new session on the source (it takes the database's default) is writable. */
  async function sourceWritable(db: string): Promise<boolean> {
    const c = await source.client(db);
    try {
      return (await c.query('SHOW default_transaction_read_only')).rows[0].default_transaction_read_only === 'off';
    } finally {
      await c.end();
    }
  }

  async function strike(fault: Fault): Promise<void> {
    switch (fault) {
      case 'source-cut':
        srcProxy.cut(2000);
        break;
      case 'target-cut':
        tgtProxy.cut(2000);
        break;
      case 'source-restart':
        await source.restart();
        break;
      case 'target-restart':
        await target.restart();
        break;
      case 'agent-kill':
        agent.kill();
        break;
    }
  }

  async function reconnectAfter(fault: Fault): Promise<void> {
    if (fault !== 'agent-kill') return;
    await agent.restart();
    client.close();
    client = new AgentClient({ endpoint: agent.endpoint });
  }

  before(async function () {
    [source, target] = await Promise.all([startCluster({ version: 14, fast: true }), startCluster({ version: 17, fast: true })]);
    [srcProxy, tgtProxy] = await Promise.all([startProxy(source.port), startProxy(target.port)]);
    failpoints = join(mkdtempSync(join(tmpdir(), 'pgferry-failpoints-')), 'failpoints.json');
    holdAt(null);
    agent = await startAgent({ metrics: true, env: { PGFERRY_FAILPOINTS_FILE: failpoints } });
    client = new AgentClient({ endpoint: agent.endpoint });
  });

  after(async function () {
    client?.close();
    await agent?.stop();
    await Promise.all([srcProxy?.close(), tgtProxy?.close()]);
    await Promise.all([source?.stop(), target?.stop()]);
    if (failpoints) rmSync(dirname(failpoints), { recursive: true, force: true });
  });

  const outcomes: string[] = [];
  after(function () {
    if (outcomes.length) console.log(`      outcomes:\n${outcomes.map((o) => `        ${o}`).join('\n')}`);
  });

  for (const fault of FAULTS) {
    for (const step of STEPS) {
      it(`${fault} while ${step}: completed, or not completed with the source verified writable and a next cutover that completes`, async function () {
        const { id, db } = await newMigration();
        let onTarget = false;
        const w = ledgerWriter(() => (onTarget ? target : source).client(db));
        try {
          await waitFor('writes flowing', async () => w.committed.size > 30);
          holdAt(step);
          const p = client.cutover({ id, validation: 'checksums', timeoutMs: 20_000, maxLagBytes: 64 << 20, maxLagSeconds: 600 });
          p.catch(() => undefined); // settled below through the status (the agent may die under it)
          await waitFor(`the cutover to reach ${step}`, async () => reached(step), 60_000);
          const faultAt = Date.now();
          await strike(fault);
          await p.catch((e) => {
            if (fault !== 'agent-kill') assert.ok(isAgentError(e), String(e));
          });
          holdAt(null);
          await reconnectAfter(fault);
          const settled = await waitFor(
            'completed, or syncing with the fence verified lifted',
            async () => {
              const m = await client.getMigration(id);
              if (m.phase === 'completed') return m;
              return m.phase === 'syncing' && m.cutover?.state === 'failed' && m.fence?.state === 'none' ? m : undefined;
            },
            60_000,
          );
          outcomes.push(`${fault} while ${step}: ${settled.phase === 'completed' ? 'completed' : `failed (${settled.cutover?.error.slice(0, 120)}…)`}`);
          let done: MigrationMessage = settled;
          if (settled.phase !== 'completed') {
            // The error says only what was verified when it failed (a lift not yet verified
            // is said so: the status above shows it verified since); the source takes writes again.
            assert.match(
              settled.cutover!.error,
              /Nothing was fenced|The fence was lifted and verified|The fence could NOT be lifted yet|Interrupted by an agent restart/,
            );
            assert.doesNotMatch(settled.cutover!.error, /stays writable/);
            assert.ok(await sourceWritable(db), 'a new session on the source is writable');
            const before = w.committed.size;
            await waitFor('the writer commits on the source again', async () => w.committed.size > before + 10, 30_000);
            outcomes.push(`  writer committing on the source again ${Date.now() - faultAt} ms after the fault began`);
            await waitFor('the network path to be back', async () => !srcProxy.down && !tgtProxy.down, 30_000);
            done = await client.cutover({ id, validation: 'checksums', timeoutMs: 60_000, maxLagBytes: 64 << 20, maxLagSeconds: 600 });
          }
          assert.equal(done.phase, 'completed');
          assert.equal(done.fence?.state, 'kept');
          assert.equal(await sourceWritable(db), false, 'the old source stays fenced after the handover');
          onTarget = true;
          const before = w.committed.size;
          await waitFor('the writer commits on the target', async () => w.committed.size > before + 10, 30_000);
        } finally {
          holdAt(null);
          srcProxy.restore();
          tgtProxy.restore();
          await w.stop();
        }
        const t = await target.client(db);
        try {
          await assertLedgerHolds(t, w);
        } finally {
          await t.end();
        }
        await client.deleteMigration(id);
      });
    }
  }

  it('a source unreachable for 20 seconds: the fence shows lift-pending the whole time (status, metric), and is lifted within seconds of the source coming back', async function () {
    this.timeout(300_000);
    const { id, db } = await newMigration();
    const w = ledgerWriter(() => source.client(db));
    try {
      await waitFor('writes flowing', async () => w.committed.size > 30);
      const { done: p } = await cutoverHeldAt('draining', { id, validation: 'checksums', timeoutMs: 5000 });
      srcProxy.cut(); // down until restored
      const downAt = Date.now();
      let err: unknown;
      try {
        await p;
      } catch (e) {
        err = e;
      }
      holdAt(null);
      assert.ok(isAgentError(err), String(err));
      assert.match(err.message, /could NOT be lifted yet/);
      assert.match(err.message, /ALTER DATABASE f\d+ RESET default_transaction_read_only/);
      let polls = 0;
      while (Date.now() - downAt < 20_000) {
        const m = await client.getMigration(id);
        assert.equal(m.fence?.state, 'lift-pending');
        assert.equal(m.phase, 'syncing');
        assert.equal(await sourceWritable(db), false, 'the source is still fenced (the agent cannot reach it)');
        const metrics = await scrape(agent.metricsPort!);
        assert.equal(one(metrics, 'pgferry_source_fence_lift_pending', { migration: id }), 1);
        assert.equal(one(metrics, 'pgferry_source_fence_up', { migration: id }), 1);
        polls++;
        await new Promise((r) => setTimeout(r, 2000));
      }
      assert.ok(polls >= 8);
      const status = await runCli(['status', id, '--agent', agent.endpoint, '--insecure-plaintext']);
      assert.match(status.stdout, /LIFT PENDING/);
      assert.match(status.stdout, /pgferry unfence/);
      const m = await client.getMigration(id);
      assert.ok(m.fence!.liftAttempts > 5, `lift attempts: ${m.fence!.liftAttempts}`);
      srcProxy.restore();
      await waitFor('the fence lifted after the source came back', async () => (await client.getMigration(id)).fence?.state === 'none', 30_000);
      assert.ok(await sourceWritable(db));
      const before = w.committed.size;
      await waitFor('the writer commits on the source again', async () => w.committed.size > before + 10, 30_000);
      const metrics = await scrape(agent.metricsPort!);
      assert.equal(one(metrics, 'pgferry_source_fence_lift_pending', { migration: id }), 0);
      assert.equal(one(metrics, 'pgferry_source_fence_up', { migration: id }), 0);
    } finally {
      holdAt(null);
      srcProxy.restore();
      await w.stop();
    }
    await client.deleteMigration(id);
  });

  it('a source path that drops packets mid-cutover: the cutover gives up within its timeout, the lift stays pending while the path is dead, and is verified once it returns', async function () {
    const { id, db } = await newMigration();
    const w = ledgerWriter(() => source.client(db));
    try {
      await waitFor('writes flowing', async () => w.committed.size > 30);
      const { done: p } = await cutoverHeldAt('sequences', { id, validation: 'counts', timeoutMs: 8000 });
      srcProxy.stall(); // nothing crosses, and no reset ever arrives
      let err: unknown;
      try {
        await p;
      } catch (e) {
        err = e;
      }
      holdAt(null);
      // Without a bound on its queries the cutover would wait for TCP to give up, minutes later, fenced all along.
      assert.ok(isAgentError(err), String(err));
      assert.match(err.message, /could NOT be lifted yet/);
      const m = await client.getMigration(id);
      assert.equal(m.fence?.state, 'lift-pending');
      assert.equal(await sourceWritable(db), false, 'still fenced while the agent cannot reach the source');
      srcProxy.restore();
      await waitFor('the fence lifted once the path carries traffic again', async () => (await client.getMigration(id)).fence?.state === 'none', 60_000);
      assert.ok(await sourceWritable(db));
      const before = w.committed.size;
      await waitFor('the writer commits on the source again', async () => w.committed.size > before + 10, 30_000);
    } finally {
      holdAt(null);
      srcProxy.restore();
      await w.stop();
    }
    await client.deleteMigration(id);
  });

  it('pgferry unfence: nothing to do on an unfenced source; lifts a pending fence; refuses the fence a completed cutover keeps unless --after-cutover', async function () {
    const { id, db } = await newMigration();
    const conn = ['--agent', agent.endpoint, '--insecure-plaintext'];
    const none = await runCli(['unfence', id, ...conn]);
    assert.equal(none.code, 0, none.stderr);
    assert.match(none.stdout, /nothing to do/);
    assert.ok(await sourceWritable(db));

    // A fence left pending: the agent cannot reach the source when the cutover fails.
    const { done: p } = await cutoverHeldAt('draining', { id, timeoutMs: 3000 });
    srcProxy.cut();
    await p.catch(() => undefined);
    holdAt(null);
    assert.equal((await client.getMigration(id)).fence?.state, 'lift-pending');
    const refused = await runCli(['unfence', id, ...conn]);
    assert.equal(refused.code, 1, 'the source is unreachable: unfence fails and says so');
    assert.match(refused.stderr, /could not be lifted/);
    assert.match(refused.stderr, /ALTER DATABASE/);
    srcProxy.restore();
    const lifted = await runCli(['unfence', id, ...conn]);
    assert.equal(lifted.code, 0, lifted.stderr);
    assert.equal((await client.getMigration(id)).fence?.state, 'none');
    assert.ok(await sourceWritable(db));

    // After a completed cutover the fence is kept on purpose.
    const done = await client.cutover({ id, maxLagBytes: 64 << 20, maxLagSeconds: 600, timeoutMs: 60_000 });
    assert.equal(done.fence?.state, 'kept');
    const kept = await runCli(['unfence', id, ...conn]);
    assert.equal(kept.code, 1);
    assert.match(kept.stderr, /--after-cutover/);
    assert.equal(await sourceWritable(db), false);
    const forced = await runCli(['unfence', id, '--after-cutover', ...conn]);
    assert.equal(forced.code, 0, forced.stderr);
    assert.ok(await sourceWritable(db));
    const again = await runCli(['unfence', id, '--after-cutover', ...conn]);
    assert.equal(again.code, 0, 'idempotent');
    await client.deleteMigration(id);
  });

  it('refuses a target that is the source itself, reached under another host name, naming it and advising nothing destructive', async function () {
    const id = `f${++n}`;
    await source.createDatabase(id);
    await source.query(LEDGER_SCHEMA, [], id);
    const spec = {
      id,
      source: source.endpoint(id),
      target: { ...source.endpoint(id), host: 'localhost' }, // the same server and database under another name
      tables: { include: ['public.*'] },
    };
    const report = await client.preflight(spec);
    assert.equal(report.ok, false);
    const same = report.checks.find((c) => c.name === 'same_database');
    assert.ok(same && same.verdict === 'fail', JSON.stringify(report.checks));
    assert.match(same.message, /same database/);
    assert.doesNotMatch(`${same.message} ${same.remedy}`, /[Dd]rop/);
    assert.ok(!report.checks.some((c) => c.name === 'target_tables'), "no advice about the target's tables, which are the source's");
    // And through the proxy (an address that is not the server's own): the same answer.
    const viaProxy = await client.preflight({ ...spec, target: { ...source.endpoint(id), host: srcProxy.host, port: srcProxy.port } });
    assert.ok(viaProxy.checks.some((c) => c.name === 'same_database' && c.verdict === 'fail'));
    // Another database on the same server is a legitimate target.
    await source.createDatabase(`${id}_copy`);
    const other = await client.preflight({ ...spec, target: { ...source.endpoint(`${id}_copy`), host: 'localhost' } });
    assert.ok(!other.checks.some((c) => c.name === 'same_database'), JSON.stringify(other.checks));
    await assert.rejects(client.startMigration(spec), (e: unknown) => isAgentError(e) && /same database/.test(e.message));
  });
});
