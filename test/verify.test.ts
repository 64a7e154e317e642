/**
 * The continuous verification, as a user meets it: while the sync runs the
 * agent compares every table with the source and repairs what differs; the
 * cutover waits until every table is verified, and inside its fence checks
 * only the rows applied since (nothing for a table nobody wrote); a change
 * on the target during the fence fails the cutover and lifts the fence; a
 * kill -9 in the middle of a verification loses no recorded progress and
 * invents none. PostgreSQL 14 → 17, a real agent process, a live writer.
 */
import assert from 'node:assert/strict';
import { startCluster, type Cluster } from '../dev/testbed';
import { AgentClient, isAgentError, type CutoverReportMessage, type MigrationMessage, type MigrationSpecMessage } from '../api/client';
import { startAgent, type AgentProcess } from './support/agent';
import { assertSameData } from './support/compare';
import { failpointsFile, type Failpoints } from './support/failpoints';
import { LEDGER_SCHEMA, assertLedgerHolds, ledgerWriter, type LedgerWriter } from './support/ledger';
import { pollUntil } from './support/running';

const SEED_ROWS = 8000;
const RANGE_ROWS = 500;
/** A failpoint pause that outlasts the test step (the agent is killed, or the file changed, meanwhile). */
const HOLD_MS = 600_000;
/** The data tables of every migration here. */
const TABLES = ['public.counters', 'public.ledger', 'public.quiet'];

/** The ledger's tables with `rows` seeded ledger rows (keys 1…rows), and `quiet`, which nobody writes. */
const seed = (rows: number) => `${LEDGER_SCHEMA}
INSERT INTO ledger (client_seq, note) SELECT -g, 'seed ' || g FROM generate_series(1, ${rows}) g;
CREATE TABLE quiet (id int PRIMARY KEY, v text);
INSERT INTO quiet SELECT g, 'q' || g FROM generate_series(1, 1200) g;`;

type VerificationOptions = NonNullable<MigrationSpecMessage['verification']>;
type VerifyRow = { table_name: string; pass_lsn: string | null; pass_after: string | null; pass_rows: string; verified: boolean; repaired_rows: string };

/** What the tests share: the clusters, the agent (with its failpoints file), a client of it, and the last migration's number. */
interface Harness {
  source: Cluster;
  target: Cluster;
  agent: AgentProcess;
  client: AgentClient;
  fp: Failpoints;
  n: number;
}

/** The clusters and the agent, started before the tests of the current `describe` and stopped after them. */
function harness(): Harness {
  const h = { n: 0 } as Harness;
  before(async function () {
    [h.source, h.target] = await Promise.all([startCluster({ version: 14, fast: true }), startCluster({ version: 17, fast: true })]);
    h.fp = failpointsFile();
    h.agent = await startAgent({ env: { PGFERRY_FAILPOINTS_FILE: h.fp.path } });
    h.client = new AgentClient({ endpoint: h.agent.endpoint });
  });
  after(async function () {
    h.client?.close();
    await h.agent?.stop();
    await Promise.all([h.source?.stop(), h.target?.stop()]);
    h.fp?.remove();
  });
  afterEach(function () {
    h.fp.set({});
  });
  return h;
}

interface NewMigration {
  verification?: Partial<VerificationOptions>;
  /** Ledger rows seeded (default 8000). */
  seedRows?: number;
  /** The agent to ask (default the harness'). */
  client?: AgentClient;
  /** Run on the target database before the migration starts. */
  targetSql?: (db: string) => string;
  /** Fields of the spec to set for database `db`. */
  spec?: (db: string) => Partial<MigrationSpecMessage>;
}

/** A fresh database seeded on the source, and its migration (ranges of 500 rows) syncing; returns its id (also the database's name). */
async function newMigration(h: Harness, o: NewMigration = {}): Promise<string> {
  const id = `v${++h.n}`;
  const c = o.client ?? h.client;
  await Promise.all([h.source.createDatabase(id), h.target.createDatabase(id)]);
  await h.source.query(seed(o.seedRows ?? SEED_ROWS), [], id);
  if (o.targetSql) await h.target.query(o.targetSql(id), [], id);
  await c.startMigration({
    id,
    source: h.source.endpoint(id),
    target: h.target.endpoint(id),
    tables: { include: ['public.*'] },
    apply: { batchChanges: 500, batchMs: 20 },
    verification: { rowsPerSecond: 0, rangeRows: RANGE_ROWS, disabled: false, ...o.verification },
    ...o.spec?.(id),
  });
  await pollUntil(`${id} syncing`, async () => {
    const m = await c.getMigration(id);
    if (m.phase === 'failed') throw new Error(`${m.errorCode}: ${m.errorMessage}`);
    return m.phase === 'syncing' ? m : undefined;
  });
  return id;
}

/** Wait until `ready` says yes to the migration's status; a timeout shows the verification's status. */
async function waitStatus(c: AgentClient, id: string, what: string, ready: (m: MigrationMessage) => boolean, timeoutMs?: number): Promise<MigrationMessage> {
  let last: MigrationMessage | undefined;
  try {
    return await pollUntil(
      `${id}: ${what}`,
      async () => {
        const m = (last = await c.getMigration(id));
        if (m.phase === 'failed') throw new Error(`${m.errorCode}: ${m.errorMessage}`);
        return ready(m) ? m : undefined;
      },
      timeoutMs,
    );
  } catch (e) {
    throw new Error(`${(e as Error).message}; the verification's status: ${JSON.stringify(last?.verification)}`, { cause: e });
  }
}

/** Every table verified (and still valid), as the status says. */
function waitVerified(h: Harness, id: string, c = h.client): Promise<MigrationMessage> {
  return waitStatus(c, id, 'every table verified', (m) => {
    const v = m.verification;
    return v?.state === 'verified' && v.tablesVerified === TABLES.length && v.tablesTotal === TABLES.length;
  });
}

/** The agent's JSON log lines about migration `id` with this `event`. */
function logEvents(h: Harness, id: string, event: string): Array<Record<string, unknown>> {
  return h.agent
    .logs()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((x) => x.event === event && x.migration === id);
}

/** The verification's progress as the target keeps it (`pgferry.verify_state`). */
async function verifyState(h: Harness, id: string): Promise<VerifyRow[]> {
  const r = await h.target.query(
    `SELECT table_name, pass_lsn::text AS pass_lsn, pass_after, pass_rows::text AS pass_rows, verified_lsn IS NOT NULL AS verified,
            repaired_rows::text AS repaired_rows
       FROM pgferry.verify_state WHERE migration_id = $1 ORDER BY table_name`,
    [id],
    id,
  );
  return r.rows;
}

const ledgerState = async (h: Harness, id: string) => (await verifyState(h, id)).find((r) => r.table_name === 'public.ledger')!;

/** A new session on the source (it takes the database's default) is writable. */
async function sourceWritable(h: Harness, db: string): Promise<boolean> {
  const c = await h.source.client(db);
  try {
    return (await c.query('SHOW default_transaction_read_only')).rows[0].default_transaction_read_only === 'off';
  } finally {
    await c.end();
  }
}

/** Wait until the writer has committed `more` more transactions. */
async function writes(w: LedgerWriter, more: number): Promise<void> {
  const before = w.committed.size;
  await pollUntil(`${more} more commits`, async () => (w.committed.size >= before + more ? true : undefined), 60_000);
}

async function assertLedgerOnTarget(h: Harness, db: string, w: LedgerWriter): Promise<void> {
  const t = await h.target.client(db);
  try {
    await assertLedgerHolds(t, w);
  } finally {
    await t.end();
  }
}

/** The report's outage parts: in protocol order, adding up to the outage. */
function assertOutage(rep: CutoverReportMessage): void {
  const parts = rep.outageParts.map((p) => p.part);
  assert.deepEqual(parts, ['grace', 'terminate', 'drain', 'sequences', 'large-objects', 'schema', 'verification', 'completing']);
  assert.equal(
    rep.outageParts.reduce((s, p) => s + p.ms, 0),
    rep.outageMs,
  );
}

/** How each table was checked inside the fence. */
const modes = (rep: CutoverReportMessage) => Object.fromEntries(rep.tables.map((t) => [t.table, { mode: t.mode, rowsChecked: t.rowsChecked }]));

describe('verify: continuous verification, and a fence that checks what changed (PostgreSQL 14 → 17)', function () {
  this.timeout(300_000);
  const h = harness();
  describe('before the fence, a difference on the target is found, repaired and named', () => repairs(h));
  describe('inside the fence, only what changed since the verification is read', () => insideTheFence(h));
  describe('a full check inside the fence, when asked for or when there is no verification', () => fullChecks(h));
  describe('a verification round never holds the cutover', () => cutoverNotHeld(h));
  describe('kill -9 of the agent during a verification', () => killDuringVerification(h));
});

function repairs(h: Harness): void {
  it("repairs rows changed on the target behind pgferry's back after their table was verified, names them, and the cutover then passes", async function () {
    const id = await newMigration(h);
    await waitVerified(h, id);
    // Three kinds of difference, by a session that is not the agent's (the write guard notes it).
    await h.target.query(
      `UPDATE ledger SET note = 'tampered' WHERE client_seq = -10;
       DELETE FROM ledger WHERE client_seq = -2000;
       INSERT INTO ledger (id, client_seq, note) VALUES (900000, -900000, 'only on the target');`,
      [],
      id,
    );
    const v = (await waitStatus(h.client, id, 'the repair', (m) => (m.verification?.rowsRepaired ?? 0) >= 3)).verification!;
    assert.equal(v.rowsRepaired, 3);
    assert.ok(v.rangesRepaired >= 1 && v.rangesRepaired <= 3, `rangesRepaired ${v.rangesRepaired}`);
    assert.ok(v.repairs.length >= 1 && v.repairs.every((l) => l.includes('public.ledger')), v.repairs.join('\n'));
    const repaired = logEvents(h, id, 'verify-repaired');
    assert.deepEqual([...new Set(repaired.map((x) => x.table))], ['public.ledger']);
    assert.equal(
      repaired.reduce((s, x) => s + Number(x.rows), 0),
      3,
    );
    assert.deepEqual(
      logEvents(h, id, 'foreign-write').map((x) => x.table),
      ['public.ledger'],
    );
    assert.equal((await ledgerState(h, id)).repaired_rows, '3');
    await assertSameData(h.source, h.target, id);

    const done = await h.client.cutover({ id, timeoutMs: 120_000 });
    assert.equal(done.phase, 'completed');
    const rep = done.cutover!;
    assert.equal(rep.validationOk, true);
    assert.ok(rep.tables.every((t) => t.match));
    // Verified again after its repair, nothing applied since: nothing to read inside the fence.
    assert.deepEqual(modes(rep)['public.ledger'], { mode: 'unchanged', rowsChecked: 0 });
    assertOutage(rep);
    await assertSameData(h.source, h.target, id);
    await h.client.deleteMigration(id);
  });

  // Regression (found in review, fixed: verify.ts sink `rangeDone` via verify-round.ts `recheck`): a range that differed is re-checked and
  // repaired, then recorded with 0 rows, and the range's rows were never counted when it first differed: the
  // status' `rowsVerified` (and verify_state's `verified_rows`) lose a range per repair. Count the range's rows
  // (the source's count in the re-check) when it is recorded.
  it('counts the rows of a repaired range as verified', async function () {
    const id = await newMigration(h);
    const all = SEED_ROWS + 5 + 1200;
    assert.equal((await waitVerified(h, id)).verification!.rowsVerified, all);
    await h.target.query("UPDATE ledger SET note = 'tampered' WHERE client_seq = -10", [], id);
    await waitStatus(h.client, id, 'the repair', (m) => (m.verification?.rowsRepaired ?? 0) >= 1);
    const v = (await waitVerified(h, id)).verification!;
    assert.equal(v.rowsVerified, all, `${v.rowsVerified} rows said verified of ${all}`);
    await h.client.deleteMigration(id);
  });

  // Where the target role may not set session_replication_role, that SET fails inside the repair's transaction:
  // the repair must go on without it (before c787896 the transaction was left aborted, and every round failed).
  it('repairs a changed row when the target role is not a superuser', async function () {
    const id = await newMigration(h, {
      targetSql: (
        db,
      ) => `DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'keeper') THEN CREATE ROLE keeper LOGIN PASSWORD 'keeper-pw'; END IF; END $$;
        GRANT CREATE ON DATABASE ${db} TO keeper; GRANT CREATE ON SCHEMA public TO keeper;`,
      spec: (db) => ({
        target: { ...h.target.endpoint(db), user: 'keeper', password: 'keeper-pw' },
        roles: { map: { [h.source.user]: 'keeper' }, missing: 'skip' },
      }),
    });
    await waitVerified(h, id);
    await h.target.query("UPDATE ledger SET note = 'tampered' WHERE client_seq = -10", [], id);
    await waitStatus(h.client, id, 'the repair', (m) => (m.verification?.rowsRepaired ?? 0) >= 1, 60_000);
    await assertSameData(h.source, h.target, id);
    await h.client.deleteMigration(id);
  });
}

function insideTheFence(h: Harness): void {
  it('fails the cutover on a row changed on the target during the fence, names the table, lifts the fence; a later cutover passes', async function () {
    const id = await newMigration(h);
    const w = ledgerWriter(() => h.source.client(id));
    try {
      await waitVerified(h, id);
      await writes(w, 50);
      h.fp.set({ 'cutover.sequences': 3000 });
      const p = h.client.cutover({ id, timeoutMs: 120_000 });
      p.catch(() => undefined); // asserted below
      await pollUntil('the fence (cutover.sequences)', async () => (h.fp.hits('cutover.sequences') > 0 ? true : undefined), 60_000);
      await h.target.query("UPDATE ledger SET note = 'changed during the fence' WHERE client_seq = -42", [], id);
      const err = await p.then(
        () => assert.fail('the cutover should fail'),
        (e: unknown) => e,
      );
      h.fp.set({});
      assert.ok(isAgentError(err), String(err));
      assert.equal(err.code, 'CUTOVER_FAILED');
      assert.match(err.message, /public\.ledger/);
      const m = await h.client.getMigration(id);
      assert.equal(m.phase, 'syncing');
      assert.equal(m.cutover?.state, 'failed');
      assert.equal(m.cutover?.validationOk, false);
      assert.deepEqual(
        m.cutover!.tables.filter((t) => !t.match).map((t) => [t.table, t.mode]),
        [['public.ledger', 'full']],
        'written by someone else since its verification: checked in full',
      );
      assert.ok(await sourceWritable(h, id), 'the fence is lifted');
      await writes(w, 20); // the application writes on the source again
      // The sync and its verification go on: the row is repaired, and the next cutover passes.
      await waitStatus(h.client, id, 'the repair', (x) => (x.verification?.rowsRepaired ?? 0) >= 1);
      const done = await h.client.cutover({ id, timeoutMs: 120_000 });
      assert.equal(done.phase, 'completed');
      assert.ok(done.cutover!.tables.every((t) => t.match));
      assert.equal(done.cutover!.attempts, 2);
    } finally {
      await w.stop();
    }
    await assertLedgerOnTarget(h, id, w);
    await assertSameData(h.source, h.target, id);
    await h.client.deleteMigration(id);
  });

  it('reads nothing inside the fence for a table nobody wrote since its verification, and only the changed keys of the others', async function () {
    const id = await newMigration(h);
    await waitVerified(h, id);
    // The writer goes on until the fence: what it wrote since the verification is what the fence may read.
    const w = ledgerWriter(() => h.source.client(id));
    let done: MigrationMessage;
    try {
      await writes(w, 30);
      done = await h.client.cutover({ id, timeoutMs: 120_000 });
    } finally {
      await w.stop();
    }
    assert.equal(done.phase, 'completed');
    const rep = done.cutover!;
    assert.equal(rep.validation, 'changes');
    assert.ok(rep.tables.every((t) => t.match));
    const written = (await h.source.query('SELECT count(*)::int AS n FROM ledger WHERE client_seq > $1', [w.base], id)).rows[0].n as number;
    const m = modes(rep);
    assert.deepEqual(m['public.quiet'], { mode: 'unchanged', rowsChecked: 0 });
    // Only keys the writer changed (one of five counters and one new ledger row per commit), never the whole table.
    assert.equal(m['public.counters'].mode, 'changes');
    assert.ok(m['public.counters'].rowsChecked >= 1 && m['public.counters'].rowsChecked <= 5, `counters: ${m['public.counters'].rowsChecked}`);
    assert.equal(m['public.ledger'].mode, 'changes');
    const ledger = m['public.ledger'].rowsChecked;
    assert.ok(ledger >= 1 && ledger <= written, `ledger: ${ledger} of ${written} written`);
    assertOutage(rep);
    await assertLedgerOnTarget(h, id, w);
    await assertSameData(h.source, h.target, id);
    await h.client.deleteMigration(id);
  });
}

function fullChecks(h: Harness): void {
  it("with validation 'full', checks every row of every table inside the fence", async function () {
    const id = await newMigration(h);
    await waitVerified(h, id);
    const done = await h.client.cutover({ id, validation: 'full', timeoutMs: 120_000 });
    assert.equal(done.phase, 'completed');
    const rep = done.cutover!;
    assert.equal(rep.validation, 'full');
    const counts = await h.source.query(
      `SELECT 'public.ledger' AS t, count(*)::int AS n FROM ledger UNION ALL SELECT 'public.counters', count(*)::int FROM counters
       UNION ALL SELECT 'public.quiet', count(*)::int FROM quiet`,
      [],
      id,
    );
    assert.deepEqual(modes(rep), Object.fromEntries(counts.rows.map((r) => [r.t, { mode: 'full', rowsChecked: r.n }])));
    assert.ok(rep.tables.every((t) => t.match && t.sourceChecksum !== '' && t.sourceChecksum === t.targetChecksum));
    await h.client.deleteMigration(id);
  });

  it('with the verification switched off, says so and checks every table in full inside the fence', async function () {
    const id = await newMigration(h, { verification: { disabled: true } });
    assert.equal((await h.client.getMigration(id)).verification?.state, 'off');
    const done = await h.client.cutover({ id, timeoutMs: 120_000 });
    assert.equal(done.phase, 'completed');
    assert.deepEqual(
      done.cutover!.tables.map((t) => t.mode),
      ['full', 'full', 'full'],
    );
    assert.ok(done.cutover!.warnings.some((x) => /did not run/.test(x)));
    await h.client.deleteMigration(id);
  });

  // When the verification cannot start (the write guards refused), the cutover must not wait for it (before
  // c787896 it did, until it timed out: the runner handed the cutover a verifier that never ran).
  it('without the write guards (the target role may not create triggers), syncs and checks every table in full at the cutover', async function () {
    const id = await newMigration(h, {
      // The tables exist on the target, owned by someone else; pgferry's role may write them but not add triggers.
      targetSql: (db) => `${LEDGER_SCHEMA.replace(/INSERT INTO counters[^;]*;/, '')} CREATE TABLE quiet (id int PRIMARY KEY, v text);
        DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mover') THEN CREATE ROLE mover LOGIN PASSWORD 'mover-pw'; END IF; END $$;
        GRANT CREATE ON DATABASE ${db} TO mover;
        GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO mover;
        GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO mover;`,
      spec: (db) => ({ target: { ...h.target.endpoint(db), user: 'mover', password: 'mover-pw' }, schemaMode: 'existing' }),
    });
    await pollUntil('the verification said it cannot start', async () => (logEvents(h, id, 'verify-off').length ? true : undefined));
    const outcome = await h.client.cutover({ id, timeoutMs: 20_000 }).then(
      (m) => m,
      (e: unknown) => (isAgentError(e) ? `${e.code}: ${e.message}` : String(e)),
    );
    assert.ok(typeof outcome !== 'string', `the cutover failed: ${outcome as string}`);
    assert.equal(outcome.phase, 'completed');
    assert.deepEqual(
      outcome.cutover!.tables.map((t) => t.mode),
      ['full', 'full', 'full'],
    );
    await assertSameData(h.source, h.target, id);
    await h.client.deleteMigration(id);
  });
}

function cutoverNotHeld(h: Harness): void {
  // Regression (found in review, fixed: verify.ts `halt`): a round that creates its source slot waits for every transaction open on the
  // source then (logical decoding's consistent point); `halt()` closes the round's other connections but not
  // that one, and awaits the round. The cutover calls `halt()` before its fence, outside its own timeout and
  // cancellation, so one idle-in-transaction session on the source holds the cutover until it ends (here a
  // pass over a truncated table, which `readiness()` does not wait for, is the round that waits).
  it('does not let a verification round that waits for a long source transaction hold the cutover past its timeout', async function () {
    const other = await startAgent();
    const c2 = new AgentClient({ endpoint: other.endpoint });
    try {
      const id = await newMigration(h, { client: c2 });
      await waitVerified(h, id, c2);
      const open = await h.source.client(id);
      try {
        await open.query('BEGIN; SELECT txid_current()');
        // A TRUNCATE leaves `quiet` changed "whole": verified again in a pass, whose round's slot waits for `open`.
        await h.source.query('TRUNCATE quiet', [], id);
        await pollUntil('a verification round waiting for its source slot', async () => {
          const r = await h.source.query("SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND wait_event IS NOT NULL", [
            `pgferry snapshot pgferry_v_${id}`,
          ]);
          return r.rows.length ? true : undefined;
        });
        const outcome = await c2.cutover({ id, timeoutMs: 5000 }, { timeoutMs: 20_000 }).then(
          (m) => m.phase,
          (e: unknown) => (isAgentError(e) ? e.code : String(e)),
        );
        assert.ok(['completed', 'CUTOVER_TIMEOUT'].includes(outcome), `the cutover (timeout 5 s) answered ${outcome} after 20 s`);
      } finally {
        await open.query('ROLLBACK').catch(() => undefined);
        await open.end();
      }
    } finally {
      c2.close();
      await other.stop();
    }
  });
}

/**
 * Rows read per second and side in the kill tests: well above what the writer inserts (a pass over a table
 * that grows faster than it is read never ends), low enough that the first round ends before the ledger does.
 */
const KILL_ROWS_PER_SECOND = 20_000;
/** Ledger rows the first round compares: its budget is five seconds' worth of rows. */
const FIRST_ROUND_ROWS = KILL_ROWS_PER_SECOND * 5;
/** A row beyond the first round, changed where the write guard cannot see it (session_replication_role = replica). */
const UNSEEN = FIRST_ROUND_ROWS + 10_000;

function killDuringVerification(h: Harness): void {
  for (const point of ['verify.paused', 'verify.range-compared', 'verify.repair-before-commit'] as const) {
    it(`at ${point}: no progress lost or invented, the sync resumes, the verification completes, and the cutover passes with every write`, async function () {
      // From the first round on (set before the migration starts).
      h.fp.set({ 'verify.paused': point === 'verify.paused' ? HOLD_MS : 5000 });
      const id = await newMigration(h, { verification: { rowsPerSecond: KILL_ROWS_PER_SECOND }, seedRows: FIRST_ROUND_ROWS + 20_000 });
      const w = ledgerWriter(() => h.source.client(id));
      try {
        const { held, hits } = await holdVerification(h, id, point);
        h.agent.kill();
        await h.agent.stop(); // returns once the process is gone
        const afterKill = await verifyState(h, id);
        assert.deepEqual(afterKill, held, 'the target holds exactly what was recorded before the kill');
        assertRecordedOnly(point, afterKill, hits);
        h.fp.set({});
        await h.agent.restart();
        h.client.close();
        h.client = new AgentClient({ endpoint: h.agent.endpoint });
        await assertSyncResumes(h, id, w);
        await waitVerified(h, id);
        // The unseen row was compared after the restart (never taken as verified), and repaired once.
        assert.equal((await ledgerState(h, id)).repaired_rows, '1');
        const done = await h.client.cutover({ id, timeoutMs: 120_000 });
        assert.equal(done.phase, 'completed');
        assert.ok(done.cutover!.tables.every((t) => t.match));
      } finally {
        h.fp.set({});
        await w.stop();
        await reviveAgent(h);
      }
      await assertLedgerOnTarget(h, id, w);
      await assertSameData(h.source, h.target, id);
      await h.client.deleteMigration(id);
      // Regression (found in review, fixed: verify.ts sink `repaired`): the `verify-repaired` line, the status' `repairs` and its counters are
      // written inside the repair's transaction, before its COMMIT: a repair that never committed (the kill
      // here, or a COMMIT that fails) is logged and counted as made. Log and count once the COMMIT succeeded.
      const logged = logEvents(h, id, 'verify-repaired').length;
      assert.equal(logged, 1, `${logged} repairs logged, 1 committed`);
    });
  }

  it('in a key round (at verify.paused): the keys it took are not taken as verified after the restart', async function () {
    const id = await newMigration(h);
    await waitVerified(h, id);
    // The first key round after the writer starts holds the apply, with every key applied so far taken.
    h.fp.set({ 'verify.paused': HOLD_MS });
    const w = ledgerWriter(() => h.source.client(id));
    try {
      await pollUntil('a key round', async () => (h.fp.paused('verify.paused') > 0 ? true : undefined));
      // One of the rows the round took, changed where the write guard cannot see it.
      const taken = await h.target.query(
        `BEGIN; SET LOCAL session_replication_role = replica;
         UPDATE ledger SET note = 'unseen' WHERE id = (SELECT max(id) FROM ledger) RETURNING client_seq; COMMIT;`,
        [],
        id,
      );
      assert.equal((taken as unknown as Array<{ rowCount: number }>)[2].rowCount, 1);
      h.agent.kill();
      await h.agent.stop();
      const flag = await h.target.query("SELECT verified_changed FROM pgferry.verify_state WHERE migration_id = $1 AND table_name = 'public.ledger'", [id], id);
      assert.deepEqual(flag.rows, [{ verified_changed: true }], 'the target knows the ledger changed since its verification');
      h.fp.set({});
      await h.agent.restart();
      h.client.close();
      h.client = new AgentClient({ endpoint: h.agent.endpoint });
      await assertSyncResumes(h, id, w);
      // Its keys unknown after the restart, the ledger is verified again in full: the unseen row is found.
      await pollUntil('the unseen row repaired', async () => ((await ledgerState(h, id)).repaired_rows === '1' ? true : undefined));
      const done = await h.client.cutover({ id, timeoutMs: 120_000 });
      assert.equal(done.phase, 'completed');
      assert.ok(done.cutover!.tables.every((t) => t.match));
    } finally {
      h.fp.set({});
      await w.stop();
      await reviveAgent(h);
    }
    await assertLedgerOnTarget(h, id, w);
    await assertSameData(h.source, h.target, id);
    await h.client.deleteMigration(id);
  });
}

/**
 * Hold the agent at `point` during its first pass over the ledger (the
 * unseen row changed while the first round holds the apply, before the
 * round that will compare it); returns the verification's state on the
 * target then, and how many times the point was hit.
 */
async function holdVerification(h: Harness, id: string, point: string): Promise<{ held: VerifyRow[]; hits: number }> {
  await pollUntil('the first round', async () => (h.fp.hits('verify.paused') > 0 ? true : undefined));
  await h.target.query(`BEGIN; SET LOCAL session_replication_role = replica; UPDATE ledger SET note = 'unseen' WHERE client_seq = -${UNSEEN}; COMMIT;`, [], id);
  if (point === 'verify.range-compared') {
    // Let three ranges be recorded, then hold the next one compared and not yet recorded.
    h.fp.set({ [point]: 0 });
    await pollUntil('three ranges compared', async () => (h.fp.hits(point) >= 3 ? true : undefined));
    h.fp.set({ [point]: HOLD_MS }, true);
    // Not `hits > seen`: a range may be compared (and recorded) between reading `seen` and the agent
    // reading the new file; the held one is the first hit that paused (seen in CI, 2000 recorded of 1500).
    await pollUntil(`${point} held`, async () => (h.fp.paused(point) > 0 ? true : undefined));
  } else if (point === 'verify.repair-before-commit') {
    h.fp.set({ [point]: HOLD_MS });
    await pollUntil(`${point} held`, async () => (h.fp.paused(point) > 0 ? true : undefined));
  }
  return { held: await verifyState(h, id), hits: h.fp.hits(point) };
}

/** What the target says was verified is exactly what the agent had recorded when it died. */
function assertRecordedOnly(point: string, state: VerifyRow[], hits: number): void {
  const ledger = state.find((r) => r.table_name === 'public.ledger');
  assert.ok(ledger?.pass_lsn, 'the pass over the ledger had started');
  assert.equal(ledger.verified, false);
  if (point === 'verify.range-compared') {
    // Every range compared before the one held was recorded; the held one was not.
    const recorded = (hits - 1) * RANGE_ROWS;
    assert.ok(recorded < FIRST_ROUND_ROWS);
    assert.equal(ledger.pass_rows, String(recorded));
    assert.equal(ledger.pass_after, JSON.stringify([String(recorded)]));
  } else if (point === 'verify.paused') {
    assert.equal(ledger.pass_after, null);
    assert.equal(ledger.pass_rows, '0');
  } else {
    assert.equal(ledger.repaired_rows, '0', 'the repair and its record are one transaction: neither committed');
  }
}

/** A kill test that failed before its restart leaves the next test a running agent (not a cascade of ECONNREFUSED). */
async function reviveAgent(h: Harness): Promise<void> {
  if (h.agent.alive()) return;
  await h.agent.restart();
  h.client.close();
  h.client = new AgentClient({ endpoint: h.agent.endpoint });
}

/** The restarted agent applies again: the writer's next commits reach the target. */
async function assertSyncResumes(h: Harness, id: string, w: LedgerWriter): Promise<void> {
  await writes(w, 20);
  const last = Math.max(...w.committed);
  await pollUntil('a commit made after the restart on the target', async () => {
    const r = await h.target.query('SELECT 1 FROM ledger WHERE client_seq = $1', [last], id);
    return r.rows.length ? true : undefined;
  });
}
