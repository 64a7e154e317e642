/**
 * cutover — scenario (c), the application's outage at the cutover under
 * write load, at two sizes of the sample "shop" database (dev/sample.ts):
 * `--shop-rows` orders and `--shop-scale` (10) times that. Each size is
 * seeded afresh (the seed is timed), then gets its own agent and, in
 * alternation, `--runs` cutovers with the agent's default validation
 * ('changes': only the rows applied since the continuous verification are
 * read inside the fence) and `--baseline-runs` with `validation: 'full'`
 * (every row of every table read inside the fence: the cutover before
 * issue 19), each on a fresh migration:
 *
 *   1. fresh target database; source writable (RESET default_transaction_read_only);
 *   2. two writers on the source: the sample writer (startWriter: orders with
 *      items, updates, deletes, partitions, a table without a key) and a tight
 *      one committing a 2-statement transaction per round trip as fast as it
 *      can (the pressure on the fence and the drain);
 *   3. StartMigration, wait for `syncing`, keep writing ≥ 2 s in sync;
 *   4. Cutover (lag ≤ 1 MiB and ≤ 5 s; with 'changes' it also waits until the
 *      continuous verification has checked every table — nothing is fenced
 *      while it waits, shown as "before the fence"); its report gives the
 *      application outage `outageMs` (fence raised → completed cutover
 *      recorded, every step inside counted) with its parts, and per table the
 *      mode it was checked in and the rows read;
 *   5. as an application would, the tight writer then switches to the target:
 *      its "gap" = its last commit on the source → its first commit on the
 *      target; it adds the RPC's return and the reconnect, and proves the
 *      sequences were set (a collision would fail its inserts). A run is
 *      judged on the larger of the outage and the gap;
 *   6. the source and target are compared (count + checksum per table,
 *      the writer's post-switch rows taken out), then the migration is
 *      deleted, the target dropped, the fence RESET.
 *
 * A failed cutover is reported with the agent's error verbatim.
 */
import { loadavg } from 'node:os';
import type pg from 'pg';
import type { Cluster } from '../dev/testbed';
import { seedShop, startWriter } from '../dev/sample';
import { assertSameData } from './compare';
import { isAgentError, type CutoverReportMessage } from '../api/client';
import { BenchAgent, benchSpec } from './agent';
import { fatal, nowMs, pollUntil, sleep } from './measure';

/** pgferry's default validation, and the named baseline: the complete check inside the fence. */
export type CutoverContender = 'pgferry' | 'full';

export interface CutoverRun {
  /** Orders in the shop database. */
  size: number;
  contender: CutoverContender;
  run: number;
  /** The validation the agent reports it ran. */
  validation?: string;
  /** The report's application outage: fence raised → completed cutover recorded. */
  outageMs?: number;
  outageParts?: Array<{ part: string; ms: number }>;
  /** Cutover RPC sent → fence raised (waits for lag and verification; nothing fenced). */
  beforeFenceMs?: number;
  cutoverRpcMs?: number;
  /** The tight writer's last commit on the source → its first on the target. */
  clientGapMs?: number;
  /** Tables checked inside the fence, per mode (unchanged, changes, full, counts). */
  modes?: Record<string, number>;
  /** Rows read on each side inside the fence, all tables. */
  rowsChecked?: number;
  /** The tables not checked 'unchanged', each with its mode and rows read ("public.orders changes 4 102"). */
  checkedTables?: string[];
  /** Commits per second of both writers while in sync, before the cutover. */
  writerCommitsPerSec?: number;
  /** The machine's 1-minute load average when the cutover returned (other processes add noise). */
  loadAvg?: number;
  validationOk?: boolean;
  /** The cutover itself failed (verbatim). */
  error?: string;
  /** Problems after a completed cutover (comparison, Delete). */
  notes: string[];
}

/** One size of the shop database, as seeded. */
export interface CutoverSize {
  orders: number;
  seedMs: number;
  /** pg_database_size of the seeded source database. */
  sourceBytes: number;
}

export interface CutoverResult {
  sizes: CutoverSize[];
  runs: CutoverRun[];
}

export interface CutoverContext {
  source: Cluster;
  target: Cluster;
  /** Orders at the smaller size; the larger is `shopRows × shopScale`. */
  shopRows: number;
  shopScale: number;
  /** Runs of pgferry's default, and of the 'full' baseline, at each size. */
  runs: number;
  baselineRuns: number;
  log: (msg: string) => void;
}

/** Longest a cutover may take, the wait for the continuous verification included. */
const CUTOVER_TIMEOUT_MS = 600_000;
/** A seed longer than this is said to take minutes. */
const SLOW_SEED_MS = 120_000;

const DB = 'shop';

/**
 * A writer committing `BEGIN; INSERT …; UPDATE …; COMMIT` per round trip on
 * the side it is pointed at; reconnects on failure (fenced sessions are
 * terminated, new ones are read-only). Records when it last committed on
 * the source and first committed on the target.
 */
class TightWriter {
  commits = 0;
  failures = 0;
  lastError = '';
  lastSourceCommitAt = 0;
  firstTargetCommitAt = 0;
  private side: 'source' | 'target' = 'source';
  private running = true;
  private loop: Promise<void>;
  constructor(
    private readonly source: Cluster,
    private readonly target: Cluster,
  ) {
    this.loop = this.run();
  }
  switchToTarget(): void {
    this.side = 'target';
  }
  private async run(): Promise<void> {
    let c: pg.Client | null = null;
    let on: 'source' | 'target' = 'source';
    let n = 0;
    while (this.running) {
      try {
        if (c && on !== this.side) {
          await c.end().catch(() => undefined);
          c = null;
        }
        if (!c) {
          on = this.side;
          c = await (on === 'source' ? this.source : this.target).client(DB);
        }
        n++;
        // On the target only the INSERT: it proves the sequence was set, and is easy to take out again.
        await c.query(
          on === 'source'
            ? `BEGIN; INSERT INTO orders (customer_id, total, note) VALUES (${11 + (n % 500)}, ${n % 97}, 'tight');
             UPDATE customers SET name = 'Customer tight ${n}' WHERE id = ${11 + (n % 500)}; COMMIT`
            : `INSERT INTO orders (customer_id, total, note) VALUES (${11 + (n % 500)}, ${n % 97}, 'tight')`,
        );
        this.commits++;
        if (on === 'source') this.lastSourceCommitAt = nowMs();
        else if (!this.firstTargetCommitAt) this.firstTargetCommitAt = nowMs();
      } catch (e) {
        this.failures++;
        this.lastError = (e as Error).message;
        await c?.query('ROLLBACK').catch(() => undefined);
        await c?.end().catch(() => undefined);
        c = null;
        await sleep(5);
      }
    }
    await c?.end().catch(() => undefined);
  }
  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }
}

export async function runCutoverScenario(ctx: CutoverContext): Promise<CutoverResult> {
  const result: CutoverResult = { sizes: [], runs: [] };
  try {
    for (const [i, orders] of [ctx.shopRows, ctx.shopRows * ctx.shopScale].entries()) {
      result.sizes.push(await seedSize(ctx, orders));
      const agent = await BenchAgent.start();
      try {
        for (const [contender, n] of schedule(ctx.runs, ctx.baselineRuns)) {
          const run: CutoverRun = { size: orders, contender, run: n, notes: [] };
          result.runs.push(run);
          await measuredCutover(ctx, agent, `bench_cut_${i + 1}_${contender === 'pgferry' ? 'p' : 'f'}${n}`, run);
        }
      } finally {
        await agent.dispose();
      }
    }
  } finally {
    await ctx.source.query(`ALTER DATABASE ${DB} RESET default_transaction_read_only`).catch(() => undefined);
    await ctx.source.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`).catch(() => undefined);
  }
  return result;
}

/** pgferry's runs and the baseline's, alternating (p1 f1 p2 f2 p3 …), so that drift on the machine hits both. */
function schedule(runs: number, baselineRuns: number): Array<[CutoverContender, number]> {
  const out: Array<[CutoverContender, number]> = [];
  for (let i = 1; i <= Math.max(runs, baselineRuns); i++) {
    if (i <= runs) out.push(['pgferry', i]);
    if (i <= baselineRuns) out.push(['full', i]);
  }
  return out;
}

/** A fresh shop database of `orders` orders on the source, timed. */
async function seedSize(ctx: CutoverContext, orders: number): Promise<CutoverSize> {
  ctx.log(`cutover: seeding the shop database (${orders.toLocaleString('en-US')} orders) …`);
  await ctx.source.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  await ctx.source.createDatabase(DB);
  const t0 = nowMs();
  const seed = await ctx.source.client(DB);
  try {
    await seedShop(seed, orders);
  } finally {
    await seed.end();
  }
  const seedMs = nowMs() - t0;
  const size = await ctx.source.query(`SELECT pg_database_size('${DB}')::bigint AS b`);
  const sourceBytes = Number(size.rows[0].b);
  ctx.log(
    `  seeded in ${(seedMs / 1000).toFixed(1)} s${seedMs > SLOW_SEED_MS ? ' (minutes: the larger size makes the bench long)' : ''}, ${(sourceBytes / 1024 / 1024).toFixed(0)} MB`,
  );
  return { orders, seedMs, sourceBytes };
}

/** One run, logged; a failure becomes the run's error (or a note after a completed cutover). */
async function measuredCutover(ctx: CutoverContext, agent: BenchAgent, id: string, run: CutoverRun): Promise<void> {
  const label = `${run.size.toLocaleString('en-US')} orders, ${run.contender === 'pgferry' ? 'pgferry (default validation)' : "baseline (validation 'full')"} run ${run.run}`;
  ctx.log(`cutover ${label} …`);
  try {
    await oneCutover(ctx, agent, id, run);
    const modes = Object.entries(run.modes ?? {}).map(([m, n]) => `${n} ${m}`);
    ctx.log(
      `  outage ${run.outageMs} ms (${(run.outageParts ?? []).map((p) => `${p.part} ${p.ms}`).join(', ')}); writer gap ${fmtMs(run.clientGapMs)} ms; ` +
        `RPC ${fmtMs(run.cutoverRpcMs)} ms, fence raised after ${fmtMs(run.beforeFenceMs)} ms; tables ${modes.join(', ') || 'none checked'}, ${run.rowsChecked} rows read`,
    );
  } catch (e) {
    // After a completed cutover (outage known) a failure is a note, not a failed cutover.
    if (run.outageMs !== undefined) run.notes.push((e as Error).message);
    else run.error = (e as Error).message;
    ctx.log(`  ${label} ${run.error ? 'FAILED' : 'problem after the cutover'}: ${(e as Error).message}`);
  }
  for (const n of run.notes) ctx.log(`  note: ${n}`);
}

const fmtMs = (ms: number | undefined) => (ms === undefined ? '–' : String(Math.round(ms)));

async function oneCutover(ctx: CutoverContext, agent: BenchAgent, id: string, run: CutoverRun): Promise<void> {
  await ctx.target.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  await ctx.target.createDatabase(DB);
  await ctx.source.query(`ALTER DATABASE ${DB} RESET default_transaction_read_only`);
  const sample = startWriter(() => ctx.source.client(DB));
  const tight = new TightWriter(ctx.source, ctx.target);
  try {
    await agent.client.startMigration(benchSpec(id, ctx.source, DB, ctx.target, DB));
    await agent.waitPhase(id, 'syncing');
    const c0 = sample.stats.commits + tight.commits;
    const t0 = nowMs();
    await pollUntil('the writers to keep committing for 2 s in sync', async () => nowMs() - t0 >= 2000 && sample.stats.commits + tight.commits > c0 + 50, {
      timeoutMs: 120_000,
    });
    run.writerCommitsPerSec = (sample.stats.commits + tight.commits - c0) / ((nowMs() - t0) / 1000);
    const r0 = nowMs();
    const sentAt = Date.now();
    let m;
    try {
      // pgferry: the agent's default validation (nothing asked); the baseline asks for 'full'.
      m = await agent.client.cutover({ id, timeoutMs: CUTOVER_TIMEOUT_MS, ...(run.contender === 'full' ? { validation: 'full' as const } : {}) });
    } catch (e) {
      throw fatal(`Cutover RPC failed: ${isAgentError(e) ? `${e.code}: ${e.detail}` : (e as Error).message}`);
    }
    run.cutoverRpcMs = nowMs() - r0;
    run.loadAvg = loadavg()[0];
    const rep = m.cutover;
    if (!rep || rep.state !== 'completed') {
      throw fatal(`Cutover did not complete: phase ${m.phase}, state ${rep?.state ?? '(no report)'}: ${rep?.error || m.errorMessage || '(no error given)'}`);
    }
    readReport(rep, run, sentAt);
    tight.switchToTarget();
    await pollUntil('the tight writer to commit on the target', async () => tight.firstTargetCommitAt > 0, { timeoutMs: 30_000 }).catch(() => {
      throw fatal(`the application could not write to the target after the cutover: ${tight.lastError}`);
    });
    run.clientGapMs = tight.firstTargetCommitAt - tight.lastSourceCommitAt;
  } finally {
    await tight.stop();
    await sample.stop();
  }
  await compareAfterCutover(ctx);
  await cleanUpRun(ctx, agent, id, run);
}

/** The completed cutover's report into the run: outage and parts, per-table modes, rows read. */
function readReport(rep: CutoverReportMessage, run: CutoverRun, sentAt: number): void {
  run.validation = rep.validation;
  run.validationOk = rep.validationOk;
  run.outageMs = Number(rep.outageMs);
  run.outageParts = rep.outageParts.map((p) => ({ part: p.part, ms: Number(p.ms) }));
  run.beforeFenceMs = rep.fenceStartedAt ? Date.parse(rep.fenceStartedAt) - sentAt : undefined;
  run.modes = {};
  run.rowsChecked = 0;
  run.checkedTables = [];
  for (const t of rep.tables) {
    const mode = t.mode || '(none given)';
    run.modes[mode] = (run.modes[mode] ?? 0) + 1;
    run.rowsChecked += Number(t.rowsChecked);
    if (mode !== 'unchanged') run.checkedTables.push(`${t.table} ${mode} ${Number(t.rowsChecked).toLocaleString('en-US')}`);
  }
  const partsSum = run.outageParts.reduce((a, p) => a + p.ms, 0);
  if (partsSum !== run.outageMs) run.notes.push(`the outage's parts add up to ${partsSum} ms, not to outageMs ${run.outageMs} ms`);
  if (Number(rep.writeDowntimeMs) !== run.outageMs) run.notes.push(`writeDowntimeMs ${rep.writeDowntimeMs} differs from outageMs ${run.outageMs}`);
  const expected = run.contender === 'full' ? ['full', 'checksums'] : ['changes'];
  if (!expected.includes(rep.validation)) run.notes.push(`the agent ran validation '${rep.validation}', expected ${expected.join(' or ')}`);
}

/**
 * The brief's order is Delete, drop the target, RESET the fence. Delete while
 * the source is still fenced is what a user does after a cutover; when it
 * fails, say so, lift the fence and delete again (the bench must go on).
 */
async function cleanUpRun(ctx: CutoverContext, agent: BenchAgent, id: string, run: CutoverRun): Promise<void> {
  try {
    await agent.client.deleteMigration(id, { timeoutMs: 60_000 });
  } catch (e) {
    run.notes.push(
      `DeleteMigration after the completed cutover failed while the source was fenced: ${isAgentError(e) ? `${e.code}: ${e.message}` : (e as Error).message}`,
    );
    await ctx.source.query(`ALTER DATABASE ${DB} RESET default_transaction_read_only`);
    await agent.client.deleteMigration(id, { timeoutMs: 60_000 });
  }
  await ctx.target.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  await ctx.source.query(`ALTER DATABASE ${DB} RESET default_transaction_read_only`);
}

/**
 * Source and target equal, table by table (count + checksum), once the rows
 * the tight writer inserted on the target after the switch are taken out
 * again (they are above every source id, since sequences were set). The
 * target database is dropped right after, so editing it is harmless.
 */
async function compareAfterCutover(ctx: CutoverContext): Promise<void> {
  const max = await ctx.source.query('SELECT coalesce(max(id), 0)::bigint AS m FROM orders', [], DB);
  await ctx.target.query('DELETE FROM orders WHERE id > $1', [max.rows[0].m], DB);
  await assertSameData(ctx.source, ctx.target, DB);
}
