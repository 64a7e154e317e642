/**
 * apply — scenario (b), change-apply throughput: the same committed backlog
 * replayed by each contender whose consumer was stopped while it was written.
 *
 * Each contender gets its own source database, built identically
 * (`apply_native`, `apply_pgferry`, `apply_pgferry_stop`,
 * `apply_pgferry_restart`: acct with 100 000 rows, ledger with 100 000 rows,
 * both with primary keys), so all replay exactly the same backlog and none
 * decodes another's WAL:
 *
 *   T transactions (default 20 000), each 10 UPDATEs of acct + 10 INSERTs
 *   into ledger = 20·T row changes, written by two sessions on disjoint
 *   accounts (several transactions per round trip, synchronous_commit off on
 *   the writer only), then ONE last transaction of the same shape alone: when
 *   its last ledger row is visible on the target, every earlier transaction
 *   is too (both contenders apply in commit order).
 *
 *  - native   CREATE SUBSCRIPTION (copy_data; PostgreSQL's defaults, so values
 *             as text, unless --native-binary), wait until ready, ALTER
 *             SUBSCRIPTION … DISABLE and wait for its apply worker to exit,
 *             write the backlog, then time from ALTER SUBSCRIPTION … ENABLE
 *             (issued ≥ wal_retrieve_retry_interval after the DISABLE, see
 *             the guard in applyNative).
 *  - pgferry  StartMigration, wait until syncing and caught up and its
 *             one-off ANALYZE of the loaded tables done, PauseMigration and wait until its walsender and target session
 *             are gone, write the backlog, then time from ResumeMigration:
 *             the same thing as the native DISABLE/ENABLE (a consumer stopped
 *             and started again inside a server that keeps running). This is
 *             the goal's measure. The spec leaves `schemaChanges` to the
 *             agent's default, 'follow': the stream's Relation messages
 *             checked against the target's shape, the gated tables looked
 *             at, the source's catalog watched in the background.
 *  - pgferry-stop  exactly `pgferry`, but the migration is started with
 *             `schemaChanges: 'stop'` (none of the above). pgferry / pgferry-stop
 *             is what following the source's schema costs the apply.
 *  - pgferry-restart  the same, but the agent process is SIGTERMed instead
 *             of paused and the clock starts when a new process is spawned
 *             on the same state dir (Node's start-up, module loading and the
 *             resume of its migrations included; the time until it listened
 *             is shown separately). Reported for what an agent restart
 *             costs; not the goal's measure.
 *
 * Caught up = the backlog's last row is visible on the target (polled every
 * 50 ms for both). Before that, the first backlog row is watched for (every
 * 5 ms) to show each contender's start-up latency apart from its rate (the
 * goal's ratio is still taken over the whole time, start-up included); then
 * both tables are compared with the source by row count
 * and checksum (agent/engine/checksum.ts). pgferry's own status (appliedLsn,
 * lagBytes, changesApplied) is reported alongside. Both clusters are
 * CHECKPOINTed after the backlog, before the clock starts.
 *
 * Where the time goes: the CPU seconds of every process of each contender,
 * all started for this replay (so their totals are the replay's cost):
 * native = the apply worker (target) + its walsender (source); each pgferry
 * contender = the agent process (pgferry: the CPU it used from the resume on) + its apply
 * session's backend (target) + its walsender (source). Read from /proc when
 * caught up (this machine runs all of them).
 */
import type pg from 'pg';
import type { SchemaChangesMode } from '../api/client';
import type { Cluster } from '../dev/testbed';
import { BenchAgent, benchSpec } from './agent';
import { assertSameData } from './compare';
import { RssSampler, cpuSeconds, fatal, nowMs, pollUntil, sleep } from './measure';

/** pgferry-stop next to pgferry: the two whose ratio is taken run back to back (in both orders over the rounds). */
export const APPLY_CONTENDERS = ['native', 'pgferry', 'pgferry-stop', 'pgferry-restart'] as const;
export type ApplyContender = (typeof APPLY_CONTENDERS)[number];

export interface ApplyRun {
  contender: ApplyContender;
  round: number;
  txns: number;
  changes: number;
  /** WAL the backlog wrote on the source. */
  backlogWalBytes?: number;
  backlogWriteMs?: number;
  elapsedMs?: number;
  /** pgferry-restart: from the spawn until the agent listened (part of elapsedMs). */
  agentStartMs?: number;
  /** From the start of the clock until the first backlog row was visible on the target (part of elapsedMs). */
  firstChangeMs?: number;
  peakRssMb?: number;
  hwmRssMb?: number;
  /** CPU seconds per process of the contender (see the module comment). */
  cpu?: { label: string; seconds: number }[];
  /** pgferry's status when caught up (`schemaChanges`: the mode its status reports, '' when it reports none). */
  status?: { appliedLsn: string; lagBytes: number; changesApplied: number; backlogEndLsn: string; schemaChanges: string };
  error?: string;
}

export interface ApplyContext {
  source: Cluster;
  target: Cluster;
  txns: number;
  rounds: number;
  /** The native subscription WITH (binary = true) instead of PostgreSQL's default. */
  nativeBinary?: boolean;
  log: (msg: string) => void;
}

const ACCOUNTS = 100_000;
const LEDGER_SEED = 100_000;
const WRITER_SESSIONS = 2;
const TXNS_PER_ROUND_TRIP = 50;

const SCHEMA = `
CREATE TABLE acct (id bigint PRIMARY KEY, balance bigint NOT NULL, touched integer NOT NULL, note text NOT NULL);
CREATE TABLE ledger (id bigint PRIMARY KEY, acct_id bigint NOT NULL, amount bigint NOT NULL, at timestamptz NOT NULL, memo text NOT NULL);`;

export async function runApplyScenario(ctx: ApplyContext): Promise<ApplyRun[]> {
  const runs: ApplyRun[] = [];
  for (let round = 1; round <= ctx.rounds; round++) {
    const order = round % 2 === 1 ? APPLY_CONTENDERS : [...APPLY_CONTENDERS].reverse();
    for (const contender of order) {
      const db = `apply_${contender.replace('-', '_')}`;
      const run: ApplyRun = { contender, round, txns: ctx.txns, changes: ctx.txns * 20 };
      runs.push(run);
      ctx.log(`apply round ${round}/${ctx.rounds}: ${contender}, backlog of ${ctx.txns} transactions …`);
      try {
        await dropDatabases(ctx, db);
        await seedSource(ctx.source, db);
        await ctx.target.createDatabase(db);
        if (contender === 'native') await applyNative(ctx, db, run);
        else await applyPgferry(ctx, db, run, round, contender === 'pgferry-restart' ? 'restart' : 'resume', contender === 'pgferry-stop' ? 'stop' : undefined);
        ctx.log(`  ${contender}: ${(run.elapsedMs! / 1000).toFixed(2)} s, ${Math.round(run.changes / (run.elapsedMs! / 1000))} changes/s, data equal`);
      } catch (e) {
        run.error = (e as Error).message;
        delete run.elapsedMs;
        ctx.log(`  ${contender} FAILED: ${run.error}`);
      } finally {
        await dropDatabases(ctx, db).catch((e) => ctx.log(`  could not drop ${db}: ${(e as Error).message}`));
      }
    }
  }
  return runs;
}

async function dropDatabases(ctx: ApplyContext, db: string): Promise<void> {
  await ctx.target.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
  // A database that holds a replication slot cannot be dropped, even WITH (FORCE).
  await ctx.source.query('SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active', [db]);
  await ctx.source.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
}

async function seedSource(source: Cluster, db: string): Promise<void> {
  await source.createDatabase(db);
  const c = await source.client(db);
  try {
    await c.query(SCHEMA);
    await c.query(`INSERT INTO acct SELECT g, 1000, 0, md5(g::text) FROM generate_series(1, ${ACCOUNTS}) g`);
    await c.query(`INSERT INTO ledger SELECT g, 1 + g % ${ACCOUNTS}, g % 977, timestamptz '2025-01-01 00:00:00+00' + g * interval '1 second', md5((-g)::text)
      FROM generate_series(1, ${LEDGER_SEED}) g`);
    await c.query('VACUUM (FREEZE, ANALYZE)');
  } finally {
    await c.end();
  }
}

/** One backlog transaction: 10 UPDATEs of distinct accounts, 10 INSERTs into ledger. */
function backlogTxnSql(txn: number, firstAccount: number, accountSpan: number): string {
  const parts = ['BEGIN;'];
  for (let k = 0; k < 10; k++) {
    const acct = firstAccount + ((txn * 10 + k) % accountSpan);
    parts.push(`UPDATE acct SET balance = balance + ${k + 1}, touched = touched + 1 WHERE id = ${acct};`);
  }
  for (let k = 0; k < 10; k++) {
    const id = LEDGER_SEED + txn * 10 + k + 1;
    parts.push(`INSERT INTO ledger VALUES (${id}, ${1 + (id % ACCOUNTS)}, ${id % 1000}, now(), md5('${txn}/${k}'));`);
  }
  parts.push('COMMIT;');
  return parts.join('\n');
}

/**
 * Commit `txns` backlog transactions on the source; returns the last
 * ledger id (written by the very last commit), the WAL written, the end LSN.
 */
async function commitBacklog(
  source: Cluster,
  db: string,
  txns: number,
): Promise<{ lastLedgerId: number; walBytes: number; endLsn: string; elapsedMs: number }> {
  const t0 = nowMs();
  const sessions: pg.Client[] = [];
  try {
    for (let i = 0; i < WRITER_SESSIONS; i++) {
      const c = await source.client(db);
      await c.query('SET synchronous_commit = off');
      sessions.push(c);
    }
    const start = (await sessions[0]!.query('SELECT pg_current_wal_lsn()::text AS l')).rows[0].l as string;
    const span = Math.floor(ACCOUNTS / WRITER_SESSIONS);
    // Transactions 0 … txns-2 split between the sessions (disjoint accounts: no lock waits).
    await Promise.all(
      sessions.map(async (c, s) => {
        let batch: string[] = [];
        for (let txn = s; txn < txns - 1; txn += WRITER_SESSIONS) {
          batch.push(backlogTxnSql(txn, 1 + s * span, span));
          if (batch.length === TXNS_PER_ROUND_TRIP) {
            await c.query(batch.join('\n'));
            batch = [];
          }
        }
        if (batch.length) await c.query(batch.join('\n'));
      }),
    );
    // The last one alone, durably: its rows mark "caught up".
    await sessions[0]!.query('SET synchronous_commit = on');
    await sessions[0]!.query(backlogTxnSql(txns - 1, 1, ACCOUNTS));
    const end = await sessions[0]!.query('SELECT pg_current_wal_lsn()::text AS l, pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint AS b', [start]);
    return { lastLedgerId: LEDGER_SEED + txns * 10, walBytes: Number(end.rows[0].b), endLsn: end.rows[0].l, elapsedMs: nowMs() - t0 };
  } finally {
    await Promise.all(sessions.map((c) => c.end()));
  }
}

/**
 * Poll the target until the backlog's last row is there: every 5 ms until
 * its first row is (returns when that was, in ms since `t0`), then every 50 ms.
 */
async function waitForRow(
  target: Cluster,
  db: string,
  ledgerId: number,
  t0: number,
  what: string,
  failed?: () => Promise<string | undefined>,
): Promise<number> {
  const c = await target.client(db);
  try {
    let n = 0;
    await pollUntil(
      `${what} (its first change)`,
      async () => {
        if (failed && ++n % 200 === 0) {
          const f = await failed();
          if (f) throw fatal(f);
        }
        return (await c.query('SELECT 1 FROM ledger WHERE id > $1 LIMIT 1', [LEDGER_SEED])).rows.length > 0;
      },
      { intervalMs: 5 },
    );
    const firstMs = nowMs() - t0;
    await pollUntil(
      what,
      async () => {
        if (failed && ++n % 20 === 0) {
          const f = await failed();
          if (f) throw fatal(f);
        }
        return (await c.query('SELECT 1 FROM ledger WHERE id = $1', [ledgerId])).rows.length > 0;
      },
      { intervalMs: 50 },
    );
    return firstMs;
  } finally {
    await c.end();
  }
}

async function applyNative(ctx: ApplyContext, db: string, run: ApplyRun): Promise<void> {
  const sub = 'bench_apply_sub';
  const src = await ctx.source.client(db);
  const tgt = await ctx.target.client(db);
  try {
    await src.query('CREATE PUBLICATION bench_apply_pub FOR TABLE acct, ledger');
    await tgt.query(SCHEMA);
    const e = ctx.source.endpoint(db);
    await tgt.query(
      `CREATE SUBSCRIPTION ${sub} CONNECTION 'host=${e.host} port=${e.port} dbname=${db} user=${e.user} password=${e.password}' PUBLICATION bench_apply_pub WITH (copy_data = true${ctx.nativeBinary ? ', binary = true' : ''})`,
    );
    await pollUntil('the native subscription to be ready', async () => {
      const r = await tgt.query(
        `SELECT count(*) FILTER (WHERE srsubstate = 'r')::int AS ready FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1`,
        [sub],
      );
      return r.rows[0].ready === 2;
    });
    await tgt.query(`ALTER SUBSCRIPTION ${sub} DISABLE`);
    await pollUntil('the native apply worker to stop', async () => {
      const w = await tgt.query('SELECT 1 FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL', [sub]);
      const s = await src.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active', [sub]);
      return w.rows.length === 0 && s.rows.length === 0;
    });
    const disabledAt = nowMs();
    const backlog = await commitBacklog(ctx.source, db, ctx.txns);
    run.backlogWalBytes = backlog.walBytes;
    run.backlogWriteMs = backlog.elapsedMs;
    await Promise.all([ctx.source.query('CHECKPOINT'), ctx.target.query('CHECKPOINT')]);
    // Guard: up to PostgreSQL 15 the launcher starts apply workers at most once
    // per wal_retrieve_retry_interval (5 s) for ALL subscriptions, counted from
    // its last pass — which the DISABLE just caused. Enabling sooner would time
    // the launcher's throttle, not the apply (a small backlog is written in < 5 s).
    const retry = await tgt.query(`SELECT EXTRACT(EPOCH FROM current_setting('wal_retrieve_retry_interval')::interval) * 1000 AS ms`);
    const waitMs = disabledAt + Number(retry.rows[0].ms) + 250 - nowMs();
    if (waitMs > 0) await sleep(waitMs);
    const t0 = nowMs();
    await tgt.query(`ALTER SUBSCRIPTION ${sub} ENABLE`);
    run.firstChangeMs = await waitForRow(ctx.target, db, backlog.lastLedgerId, t0, 'the native subscriber to apply the backlog');
    run.elapsedMs = nowMs() - t0;
    run.cpu = await processCpu([
      ['apply worker', tgt, 'SELECT pid FROM pg_stat_subscription WHERE subname = $1 AND relid IS NULL', [sub]],
      ['walsender', src, 'SELECT pid FROM pg_stat_replication WHERE application_name = $1', [sub]],
    ]);
    await assertSameData(ctx.source, ctx.target, db);
  } finally {
    await tgt.query(`DROP SUBSCRIPTION IF EXISTS ${sub}`).catch((e) => ctx.log(`  DROP SUBSCRIPTION: ${(e as Error).message}`));
    await src.end();
    await tgt.end();
  }
}

/**
 * `how`: 'resume' = pause and resume the migration in the running agent; 'restart' = stop and spawn the agent process.
 * `schemaChanges`: the spec's, when given (absent: the agent's default, 'follow').
 */
async function applyPgferry(
  ctx: ApplyContext,
  db: string,
  run: ApplyRun,
  round: number,
  how: 'resume' | 'restart',
  schemaChanges?: SchemaChangesMode,
): Promise<void> {
  const agent = await BenchAgent.start();
  const id = `bench_apply_${how}${schemaChanges ? `_${schemaChanges}` : ''}_${round}`;
  let rss: RssSampler | undefined;
  try {
    await agent.client.startMigration({ ...benchSpec(id, ctx.source, db, ctx.target, db), ...(schemaChanges ? { schemaChanges } : {}) });
    await agent.waitPhase(id, 'syncing');
    await pollUntil(
      'pgferry to be caught up before the backlog',
      async () => {
        const m = await agent.client.getMigration(id);
        if (m.phase === 'failed') throw fatal(`migration ${id} failed: ${m.errorCode}: ${m.errorMessage}`);
        return m.phase === 'syncing' && m.lagBytes < 64 * 1024;
      },
      { timeoutMs: 120_000 },
    );
    // The one-off ANALYZE of the loaded tables runs in the background once the
    // sync starts; a pause or stop cuts it short and the resume runs it again,
    // inside the timed replay. Let it finish first, as the native contender's
    // copy has finished before its clock starts.
    await pollUntil(
      "pgferry's post-load ANALYZE to finish",
      async () => (await ctx.target.query("SELECT 1 FROM pgferry.migration_state WHERE migration_id = $1 AND marker = 'analyzed'", [id], db)).rows.length > 0,
      { timeoutMs: 120_000 },
    );
    if (how === 'resume') {
      await agent.client.pauseMigration(id);
      await pollUntil("pgferry's stream to stop after the pause", async () => {
        const s = await ctx.source.query('SELECT 1 FROM pg_replication_slots WHERE database = $1 AND active', [db]);
        const w = await ctx.target.query("SELECT 1 FROM pg_stat_activity WHERE application_name = 'pgferry-apply' AND datname = $1", [db]);
        return s.rows.length === 0 && w.rows.length === 0;
      });
    } else {
      await agent.stopProcess();
    }
    const backlog = await commitBacklog(ctx.source, db, ctx.txns);
    run.backlogWalBytes = backlog.walBytes;
    run.backlogWriteMs = backlog.elapsedMs;
    await Promise.all([ctx.source.query('CHECKPOINT'), ctx.target.query('CHECKPOINT')]);
    rss = new RssSampler(() => agent.pid);
    const cpuBefore = how === 'resume' ? (cpuSeconds(agent.pid) ?? 0) : 0;
    const t0 = nowMs();
    if (how === 'resume') {
      await agent.client.resumeMigration(id);
    } else {
      await agent.startProcess();
      run.agentStartMs = nowMs() - t0;
    }
    run.firstChangeMs = await waitForRow(ctx.target, db, backlog.lastLedgerId, t0, 'pgferry to apply the backlog', async () => {
      const m = await agent.client.getMigration(id);
      return m.phase === 'failed' ? `migration ${id} failed: ${m.errorCode}: ${m.errorMessage}` : undefined;
    });
    run.elapsedMs = nowMs() - t0;
    const [src, tgt] = [await ctx.source.client(db), await ctx.target.client(db)];
    try {
      const agentCpu = cpuSeconds(agent.pid);
      run.cpu = [
        ...(agentCpu !== undefined ? [{ label: 'agent', seconds: agentCpu - cpuBefore }] : []),
        ...(await processCpu([
          ['target backend', tgt, "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgferry-apply' AND datname = $1", [db]],
          ['walsender', src, "SELECT pid FROM pg_stat_replication WHERE application_name = 'pgferry-sync'", []],
        ])),
      ];
    } finally {
      await src.end();
      await tgt.end();
    }
    run.hwmRssMb = rss.hwmMb();
    run.peakRssMb = rss.stop().peakRssMb;
    const m = await agent.client.getMigration(id);
    run.status = {
      appliedLsn: m.appliedLsn,
      lagBytes: m.lagBytes,
      changesApplied: m.changesApplied,
      backlogEndLsn: backlog.endLsn,
      schemaChanges: m.schemaChanges?.mode ?? '',
    };
    await assertSameData(ctx.source, ctx.target, db);
  } catch (e) {
    const tail = agent.logTail(8);
    throw fatal(`${(e as Error).message}${tail ? `\n    agent log (last lines):\n    ${tail.split('\n').join('\n    ')}` : ''}`);
  } finally {
    rss?.stop();
    await agent.client.deleteMigration(id, { timeoutMs: 60_000 }).catch((e) => ctx.log(`  DeleteMigration: ${(e as Error).message}`));
    await agent.dispose();
  }
}

/** CPU seconds of the server processes the queries name (one pid each); a process not found is left out. */
async function processCpu(probes: [string, pg.Client, string, unknown[]][]): Promise<{ label: string; seconds: number }[]> {
  const out: { label: string; seconds: number }[] = [];
  for (const [label, client, sql, params] of probes) {
    const r = await client.query(sql, params);
    const seconds = r.rows.length === 1 ? cpuSeconds(Number(r.rows[0].pid)) : undefined;
    if (seconds !== undefined) out.push({ label, seconds });
  }
  return out;
}
