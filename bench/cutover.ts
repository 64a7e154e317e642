/**
 * cutover — scenario (c), the application's outage at the cutover under
 * write load, and at the cutback after it, at two sizes of the sample
 * "shop" database (dev/sample.ts): `--shop-rows` orders and `--shop-scale`
 * (10) times that. Each size is seeded afresh (the seed is timed), then
 * gets its own agent and, in alternation, `--runs` cutovers with the
 * agent's default validation ('changes': only the rows applied since the
 * continuous verification are read inside the fence) and `--baseline-runs`
 * with `validation: 'full'` (every row of every table read inside the
 * fence: the cutover before issue 19), each on a fresh migration:
 *
 *   1. fresh target database; source writable (RESET default_transaction_read_only);
 *   2. two writers on the source (switch.ts): the sample writer (startWriter:
 *      orders with items, updates, deletes, partitions, a table without a
 *      key) and a tight one committing a 2-statement transaction per round
 *      trip as fast as it can (the pressure on the fence and the drain);
 *   3. StartMigration — pgferry's runs with `rollbackWindow` (cutback.ts:
 *      the cutover then also makes the reverse slot on the target, before
 *      its fence) — wait for `syncing`, keep writing ≥ 2 s in sync;
 *   4. Cutover (lag ≤ 1 MiB and ≤ 5 s; with 'changes' it also waits until the
 *      continuous verification has checked every table — nothing is fenced
 *      while it waits, shown as "before the fence"); its report gives the
 *      application outage `outageMs` (fence raised → completed cutover
 *      recorded, every step inside counted) with its parts, and per table the
 *      mode it was checked in and the rows read;
 *   5. as an application would, the tight writer then follows
 *      `activeEndpoint` to the target: its "gap" = its last commit on the
 *      source → its first commit on the target; it adds the RPC's return and
 *      the reconnect, and proves the sequences were set (a collision would
 *      fail its inserts). A run is judged on the larger of the outage and the gap;
 *   6. pgferry's runs: the cutback, measured the same way (cutback.ts), then
 *      the source compared with the frozen target; the baseline's: the source
 *      and target compared (count + checksum per table, the writer's
 *      post-switch rows taken out);
 *   7. the migration deleted, nothing of pgferry's left on either server
 *      (slots, publications, the `pgferry` schema the reverse apply made on
 *      the source: a note names what is, and the bench drops it), the
 *      target dropped, the fence RESET.
 *
 * A failed cutover or cutback is reported with the agent's error verbatim.
 */
import type { Cluster } from '../dev/testbed';
import { seedShop } from '../dev/sample';
import { assertSameData } from './compare';
import { isAgentError } from '../api/client';
import { BenchAgent, benchSpec } from './agent';
import { dropLeftovers } from './cleanup';
import { nowMs } from './measure';
import { Writers, followActiveEndpoint, measureSwitch, type SwitchFigures } from './switch';
import { ROLLBACK_WINDOW, compareAfterCutback, measureCutback, type CutbackFigures } from './cutback';

/** pgferry's default validation, and the named baseline: the complete check inside the fence. */
export type CutoverContender = 'pgferry' | 'full';

/** A cutover's figures (the tight writer's gap: its last commit on the source → its first on the target). */
export interface CutoverRun extends SwitchFigures {
  /** Orders in the shop database. */
  size: number;
  contender: CutoverContender;
  run: number;
  /** The migration carried `rollbackWindow` (pgferry's runs). */
  rollbackWindow?: string;
  /** pgferry's runs: the cutback after the completed cutover (absent when the cutover failed). */
  cutback?: CutbackFigures;
  /** Problems after a completed cutover (comparison, Delete, leftovers) and the cutback's report. */
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
  /** pgferry's runs with `rollbackWindow` and a cutback after each (`--no-rollback-window` turns it off). */
  cutback: boolean;
  log: (msg: string) => void;
}

/** A seed longer than this is said to take minutes. */
const SLOW_SEED_MS = 120_000;

const DB = 'shop';

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
  ctx.log(`cutover ${label}${run.contender === 'pgferry' && ctx.cutback ? `, rollbackWindow '${ROLLBACK_WINDOW}'` : ''} …`);
  try {
    await oneCutover(ctx, agent, id, run);
  } catch (e) {
    // After a completed cutover (outage known) a failure is a note, not a failed cutover.
    if (run.outageMs !== undefined) run.notes.push((e as Error).message);
    else run.error = (e as Error).message;
    ctx.log(`  ${label} ${run.error ? 'FAILED' : 'problem after the cutover'}: ${(e as Error).message}`);
  }
  if (run.outageMs !== undefined) ctx.log(`  cutover: ${switchLine(run)}`);
  if (run.cutback?.error) ctx.log(`  cutback FAILED: ${run.cutback.error}`);
  else if (run.cutback?.outageMs !== undefined) ctx.log(`  cutback: ${switchLine(run.cutback)}`);
  for (const n of run.notes) ctx.log(`  note: ${n}`);
}

function switchLine(f: SwitchFigures): string {
  const modes = Object.entries(f.modes ?? {}).map(([m, n]) => `${n} ${m}`);
  return (
    `outage ${f.outageMs} ms (${(f.outageParts ?? []).map((p) => `${p.part} ${p.ms}`).join(', ')}); writer gap ${fmtMs(f.clientGapMs)} ms; ` +
    `RPC ${fmtMs(f.rpcMs)} ms, fence raised after ${fmtMs(f.beforeFenceMs)} ms; tables ${modes.join(', ') || 'none checked'}, ${f.rowsChecked} rows read`
  );
}

const fmtMs = (ms: number | undefined) => (ms === undefined ? '–' : String(Math.round(ms)));

async function oneCutover(ctx: CutoverContext, agent: BenchAgent, id: string, run: CutoverRun): Promise<void> {
  await ctx.target.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  await ctx.target.createDatabase(DB);
  await ctx.source.query(`ALTER DATABASE ${DB} RESET default_transaction_read_only`);
  const note = (n: string) => run.notes.push(n);
  if (run.contender === 'pgferry' && ctx.cutback) run.rollbackWindow = ROLLBACK_WINDOW;
  const w = new Writers(ctx.source, ctx.target, DB);
  let started = false;
  try {
    try {
      await agent.client.startMigration({
        ...benchSpec(id, ctx.source, DB, ctx.target, DB),
        ...(run.rollbackWindow ? { rollbackWindow: run.rollbackWindow } : {}),
      });
      started = true;
      await agent.waitPhase(id, 'syncing');
      run.writerCommitsPerSec = await w.keepWriting(2000, 'in sync');
      // pgferry: the agent's default validation (nothing asked); the baseline asks for 'full'.
      const opts = run.contender === 'full' ? { validation: 'full' as const, expected: ['full', 'checksums'] } : { expected: ['changes'] };
      const m = await measureSwitch(agent, id, 'cutover', opts, run, note);
      await followActiveEndpoint(m, w, 'target', run, note);
      if (run.rollbackWindow) await measureCutback(agent, id, w, (run.cutback = {}), note);
    } finally {
      await w.stop();
    }
    if (!run.rollbackWindow) await compareAfterCutover(ctx);
    else if (run.cutback?.outageMs !== undefined && !run.cutback.error) await compareAfterCutback(ctx.source, ctx.target, DB, w, run.cutback);
  } finally {
    if (started) await cleanUpRun(ctx, agent, id, run);
  }
}

/**
 * The brief's order is Delete, drop the target, RESET the fence. Delete while
 * the source is still fenced is what a user does after a cutover; when it
 * fails, say so, lift the fence and delete again (the bench must go on).
 * Then nothing of pgferry's may be left on either server (cleanup.ts);
 * what is, is noted and dropped, so that the next run starts clean.
 */
async function cleanUpRun(ctx: CutoverContext, agent: BenchAgent, id: string, run: CutoverRun): Promise<void> {
  const what = run.outageMs === undefined ? 'the failed cutover' : run.cutback?.outageMs !== undefined ? 'the completed cutback' : 'the completed cutover';
  try {
    await agent.client.deleteMigration(id, { timeoutMs: 60_000 });
  } catch (e) {
    run.notes.push(`DeleteMigration after ${what} failed: ${isAgentError(e) ? `${e.code}: ${e.message}` : (e as Error).message}`);
    await ctx.source.query(`ALTER DATABASE ${DB} RESET default_transaction_read_only`);
    await ctx.target.query(`ALTER DATABASE ${DB} RESET default_transaction_read_only`);
    await agent.client.deleteMigration(id, { timeoutMs: 60_000 }).catch((e2: Error) => run.notes.push(`DeleteMigration again: ${e2.message}`));
  }
  const left = await dropLeftovers(ctx.source, ctx.target, DB);
  if (left.length) run.notes.push(`left after DeleteMigration (after ${what}), dropped by the bench: ${left.join(', ')}`);
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
