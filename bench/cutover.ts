/**
 * cutover — scenario (c), cutover under write load, repeated `--runs` times,
 * each on a fresh migration of the sample "shop" database (dev/sample.ts):
 *
 *   1. fresh target database; source writable (RESET default_transaction_read_only);
 *   2. two writers on the source: the sample writer (startWriter: orders with
 *      items, updates, deletes, partitions, a table without a key) and a tight
 *      one committing a 2-statement transaction per round trip as fast as it
 *      can (the pressure on the fence and the drain);
 *   3. StartMigration, wait for `syncing`, keep writing ≥ 2 s in sync;
 *   4. Cutover (agent defaults: lag ≤ 1 MiB and ≤ 5 s, checksums validation);
 *      its report's `writeDowntimeMs` (fence start → target ready) is the
 *      figure; the RPC's own elapsed time is shown too;
 *   5. as an application would, the tight writer then switches to the target:
 *      "client gap" = its last commit on the source → its first commit on the
 *      target. It includes the validation (run while fenced) and the RPC's
 *      return, so it is an upper bound of what a user sees, and it checks
 *      that sequences were set (a collision would fail its inserts);
 *   6. the source and target are compared (count + checksum per table,
 *      the writer's post-switch rows taken out), then the migration is
 *      deleted, the target dropped, the fence RESET.
 *
 * A failed cutover is reported with the agent's error verbatim.
 */
import type pg from 'pg';
import type { Cluster } from '../dev/testbed';
import { seedShop, startWriter } from '../dev/sample';
import { assertSameData } from './compare';
import { isAgentError } from '../api/client';
import { BenchAgent, benchSpec } from './agent';
import { fatal, nowMs, pollUntil, sleep } from './measure';

export interface CutoverRun {
  run: number;
  writeDowntimeMs?: number;
  cutoverRpcMs?: number;
  clientGapMs?: number;
  /** Commits per second of both writers while in sync, before the cutover. */
  writerCommitsPerSec?: number;
  validationOk?: boolean;
  /** The cutover itself failed (verbatim). */
  error?: string;
  /** Problems after a completed cutover (comparison, Delete). */
  notes: string[];
}

export interface CutoverContext {
  source: Cluster;
  target: Cluster;
  shopRows: number;
  runs: number;
  log: (msg: string) => void;
}

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

export async function runCutoverScenario(ctx: CutoverContext): Promise<CutoverRun[]> {
  ctx.log(`cutover: seeding the shop database (${ctx.shopRows} orders) …`);
  await ctx.source.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  await ctx.source.createDatabase(DB);
  const seed = await ctx.source.client(DB);
  try {
    await seedShop(seed, ctx.shopRows);
  } finally {
    await seed.end();
  }
  const agent = await BenchAgent.start();
  const runs: CutoverRun[] = [];
  try {
    for (let i = 1; i <= ctx.runs; i++) {
      const run: CutoverRun = { run: i, notes: [] };
      runs.push(run);
      ctx.log(`cutover run ${i}/${ctx.runs} …`);
      try {
        await oneCutover(ctx, agent, `bench_cut_${i}`, run);
        ctx.log(
          `  write downtime ${run.writeDowntimeMs} ms (RPC ${Math.round(run.cutoverRpcMs!)} ms, client gap ${run.clientGapMs === undefined ? '–' : Math.round(run.clientGapMs)} ms)`,
        );
      } catch (e) {
        // After a completed cutover (downtime known) a failure is a note, not a failed cutover.
        if (run.writeDowntimeMs !== undefined) run.notes.push((e as Error).message);
        else run.error = (e as Error).message;
        ctx.log(`  cutover run ${i} ${run.error ? 'FAILED' : 'problem after the cutover'}: ${(e as Error).message}`);
      }
      for (const n of run.notes) ctx.log(`  note: ${n}`);
    }
  } finally {
    await agent.dispose();
    await ctx.source.query(`ALTER DATABASE ${DB} RESET default_transaction_read_only`).catch(() => undefined);
    await ctx.source.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`).catch(() => undefined);
  }
  return runs;
}

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
    let m;
    try {
      m = await agent.client.cutover({ id, timeoutMs: 180_000 });
    } catch (e) {
      throw fatal(`Cutover RPC failed: ${isAgentError(e) ? `${e.code}: ${e.detail}` : (e as Error).message}`);
    }
    run.cutoverRpcMs = nowMs() - r0;
    const rep = m.cutover;
    if (!rep || rep.state !== 'completed') {
      throw fatal(`Cutover did not complete: phase ${m.phase}, state ${rep?.state ?? '(no report)'}: ${rep?.error || m.errorMessage || '(no error given)'}`);
    }
    run.writeDowntimeMs = Number(rep.writeDowntimeMs);
    run.validationOk = rep.validationOk;
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
  // The brief's order is Delete, drop the target, RESET the fence. Delete while
  // the source is still fenced is what a user does after a cutover; when it
  // fails, say so, lift the fence and delete again (the bench must go on).
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
