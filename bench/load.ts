/**
 * load — scenario (a), the initial load: the same dataset (dataset.ts) on the
 * same source, each contender into a fresh target database on the same
 * target cluster, timed to a loaded AND fully indexed target, then checked
 * (row counts and indexes equal the source's, verifyTarget) and torn down.
 *
 * Contenders (the order rotates from round to round):
 *  - native    PostgreSQL's own logical replication, set up as a DBA would:
 *              publication on the source, target tables with every index in
 *              place, CREATE SUBSCRIPTION … WITH (copy_data = true) using
 *              max_sync_workers_per_subscription = 2 (a cluster setting,
 *              run.ts); timed from the first DDL until every table's
 *              pg_subscription_rel.srsubstate is 'r' (ready).
 *  - raw pipe  The practical limit: PK-only target tables, binary COPY TO
 *              STDOUT | COPY FROM STDIN (pg-copy-streams) one table at a time
 *              on one connection pair, then the secondary indexes built two at
 *              a time — with the session settings pgferry's own workers use
 *              (synchronous_commit off, maintenance_work_mem 256MB), so the
 *              ratio measures the tool, not a setting.
 *  - pgferry   A real agent process (fresh per run), StartMigration with
 *              the defaults (schema create, 2 copy workers, 2 index jobs),
 *              timed from the call until the phase is `syncing` (loaded,
 *              indexed, analyzed); its RSS sampled every 100 ms.
 *
 * Every contender's time includes its connections and schema DDL. Both
 * clusters are CHECKPOINTed before each contender (outside the time), so no
 * one pays for the previous one's dirty buffers. All are polled at 100 ms.
 */
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import type pg from 'pg';
import type { Cluster } from '../dev/testbed';
import type { LoadDataset, SourceFacts } from './dataset';
import { verifyTarget } from './dataset';
import { BenchAgent, benchSpec } from './agent';
import { RssSampler, fatal, nowMs, pollUntil, sleep } from './measure';

export const LOAD_CONTENDERS = ['native', 'raw pipe', 'pgferry'] as const;
export type LoadContender = (typeof LOAD_CONTENDERS)[number];

export interface LoadRun {
  contender: LoadContender;
  round: number;
  elapsedMs?: number;
  rowsVerified?: number;
  /** Raw pipe: bytes that went through COPY (binary format). */
  copyBytes?: number;
  /** pgferry: peak of the 100 ms VmRSS samples, and the kernel's VmHWM. */
  peakRssMb?: number;
  hwmRssMb?: number;
  error?: string;
}

export interface LoadContext {
  source: Cluster;
  target: Cluster;
  sourceDb: string;
  ds: LoadDataset;
  facts: SourceFacts;
  rounds: number;
  log: (msg: string) => void;
}

export async function runLoadScenario(ctx: LoadContext): Promise<LoadRun[]> {
  const runs: LoadRun[] = [];
  for (let round = 1; round <= ctx.rounds; round++) {
    // The order rotates per round, so no contender always runs first (or last).
    const order = LOAD_CONTENDERS.map((_, i) => LOAD_CONTENDERS[(i + round - 1) % LOAD_CONTENDERS.length]!);
    for (const contender of order) {
      const db = `load_${contender.replace(' ', '_')}`;
      const run: LoadRun = { contender, round };
      runs.push(run);
      ctx.log(`load round ${round}/${ctx.rounds}: ${contender} …`);
      try {
        await prepareTarget(ctx, db);
        if (contender === 'native') run.elapsedMs = await loadNative(ctx, db);
        else if (contender === 'raw pipe') Object.assign(run, await loadRawPipe(ctx, db));
        else Object.assign(run, await loadPgferry(ctx, db, round));
        run.rowsVerified = await verifyTarget(ctx.target, db, ctx.ds, ctx.facts);
        ctx.log(
          `  ${contender}: ${(run.elapsedMs! / 1000).toFixed(1)} s, ${run.rowsVerified} rows verified${run.peakRssMb ? `, peak RSS ${run.peakRssMb.toFixed(0)} MB` : ''}`,
        );
      } catch (e) {
        run.error = (e as Error).message;
        delete run.elapsedMs;
        ctx.log(`  ${contender} FAILED: ${run.error}`);
      } finally {
        await ctx.target.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`).catch((e) => ctx.log(`  could not drop ${db}: ${(e as Error).message}`));
      }
    }
  }
  return runs;
}

/** A fresh target database, no slot left on the source, both clusters checkpointed. */
async function prepareTarget(ctx: LoadContext, db: string): Promise<void> {
  await ctx.target.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
  await ctx.target.createDatabase(db);
  const slots = await ctx.source.query('SELECT slot_name, active FROM pg_replication_slots');
  for (const s of slots.rows) {
    ctx.log(`  warning: slot ${s.slot_name} left on the source by the previous contender; dropping it`);
    if (!s.active) await ctx.source.query('SELECT pg_drop_replication_slot($1)', [s.slot_name]);
  }
  await Promise.all([ctx.source.query('CHECKPOINT'), ctx.target.query('CHECKPOINT')]);
}

function connInfo(c: Cluster, db: string): string {
  const e = c.endpoint(db);
  return `host=${e.host} port=${e.port} dbname=${db} user=${e.user} password=${e.password}`;
}

/** When the previous native run dropped its subscription (its workers' exit wakes the launcher). */
let lastNativeDropAt = -Infinity;

async function loadNative(ctx: LoadContext, db: string): Promise<number> {
  const pub = 'bench_native_pub';
  const sub = 'bench_native_sub';
  const src = await ctx.source.client(ctx.sourceDb);
  const tgt = await ctx.target.client(db);
  try {
    // Guard: up to PostgreSQL 15 the launcher starts apply workers at most once per
    // wal_retrieve_retry_interval, counted from its last pass (the previous DROP
    // SUBSCRIPTION caused one). Only tiny datasets run close enough to hit it.
    const retry = await tgt.query(`SELECT EXTRACT(EPOCH FROM current_setting('wal_retrieve_retry_interval')::interval) * 1000 AS ms`);
    const waitMs = lastNativeDropAt + Number(retry.rows[0].ms) + 250 - nowMs();
    if (waitMs > 0) await sleep(waitMs);
    const t0 = nowMs();
    await src.query(`CREATE PUBLICATION ${pub} FOR TABLE ${ctx.ds.tables.map((t) => `public.${t.name}`).join(', ')}`);
    for (const t of ctx.ds.tables) {
      await tgt.query(t.createSql);
      for (const ix of t.indexSql) await tgt.query(ix);
    }
    await tgt.query(`CREATE SUBSCRIPTION ${sub} CONNECTION '${connInfo(ctx.source, ctx.sourceDb)}' PUBLICATION ${pub} WITH (copy_data = true)`);
    const total = ctx.ds.tables.length;
    await pollUntil(
      'the native subscription to have every table ready',
      async () => {
        const r = await tgt.query(
          `SELECT count(*)::int AS total, count(*) FILTER (WHERE r.srsubstate = 'r')::int AS ready
        FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1`,
          [sub],
        );
        return r.rows[0].total === total && r.rows[0].ready === total;
      },
      { intervalMs: 100 },
    );
    const elapsedMs = nowMs() - t0;
    await syncErrorsOrNone(tgt, sub);
    return elapsedMs;
  } finally {
    // DROP SUBSCRIPTION also drops its slot on the source.
    await tgt.query(`DROP SUBSCRIPTION IF EXISTS ${sub}`).catch((e) => ctx.log(`  DROP SUBSCRIPTION: ${(e as Error).message}`));
    lastNativeDropAt = nowMs();
    await src.query(`DROP PUBLICATION IF EXISTS ${pub}`).catch(() => undefined);
    await src.end();
    await tgt.end();
  }
}

/** PG 15+: a native run that needed retries is reported (it still counts: that is what a user gets). */
async function syncErrorsOrNone(tgt: pg.Client, sub: string): Promise<void> {
  const has = await tgt.query(`SELECT 1 FROM pg_views WHERE viewname = 'pg_stat_subscription_stats'`);
  if (!has.rows.length) return;
  const r = await tgt.query('SELECT apply_error_count::int AS a, sync_error_count::int AS s FROM pg_stat_subscription_stats WHERE subname = $1', [sub]);
  if (r.rows[0] && (r.rows[0].a > 0 || r.rows[0].s > 0)) {
    process.stderr.write(`  note: the native subscription hit ${r.rows[0].s} sync and ${r.rows[0].a} apply errors (retried); see the target server log\n`);
  }
}

async function loadRawPipe(ctx: LoadContext, db: string): Promise<{ elapsedMs: number; copyBytes: number }> {
  const t0 = nowMs();
  const src = await ctx.source.client(ctx.sourceDb);
  const builders: pg.Client[] = [];
  let copyBytes = 0;
  try {
    const tgt = await ctx.target.client(db);
    builders.push(tgt);
    await tgt.query("SET synchronous_commit = off; SET maintenance_work_mem = '256MB'");
    for (const t of ctx.ds.tables) await tgt.query(t.createSql);
    for (const t of ctx.ds.tables) {
      const counter = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          copyBytes += chunk.length;
          cb(null, chunk);
        },
      });
      await pipeline(
        src.query(copyTo(`COPY public.${t.name} TO STDOUT (FORMAT binary)`)),
        counter,
        tgt.query(copyFrom(`COPY public.${t.name} FROM STDIN (FORMAT binary)`)),
      );
    }
    const queue = ctx.ds.tables.flatMap((t) => t.indexSql);
    if (queue.length > 1) {
      const second = await ctx.target.client(db);
      builders.push(second);
      await second.query("SET synchronous_commit = off; SET maintenance_work_mem = '256MB'");
    }
    await Promise.all(
      builders.map(async (c) => {
        for (let s = queue.shift(); s !== undefined; s = queue.shift()) await c.query(s);
      }),
    );
    return { elapsedMs: nowMs() - t0, copyBytes };
  } finally {
    await src.end();
    await Promise.all(builders.map((c) => c.end()));
  }
}

async function loadPgferry(ctx: LoadContext, db: string, round: number): Promise<Partial<LoadRun>> {
  const agent = await BenchAgent.start();
  const id = `bench_load_${round}`;
  const rss = new RssSampler(() => agent.pid);
  let deleted = false;
  try {
    const t0 = nowMs();
    await agent.client.startMigration(benchSpec(id, ctx.source, ctx.sourceDb, ctx.target, db));
    await agent.waitPhase(id, 'syncing', 100);
    const elapsedMs = nowMs() - t0;
    const hwmRssMb = rss.hwmMb();
    const { peakRssMb } = rss.stop();
    const del = await agent.client.deleteMigration(id, { timeoutMs: 120_000 });
    deleted = true;
    if (del.dropped.length === 0) ctx.log('  note: DeleteMigration reported nothing dropped on the source');
    return { elapsedMs, peakRssMb, hwmRssMb };
  } catch (e) {
    rss.stop();
    const tail = agent.logTail(8);
    throw fatal(`${(e as Error).message}${tail ? `\n    agent log (last lines):\n    ${tail.split('\n').join('\n    ')}` : ''}`);
  } finally {
    // A failed migration still holds its slot on the source: Delete drops it.
    if (!deleted) await agent.client.deleteMigration(id, { timeoutMs: 60_000 }).catch(() => undefined);
    await agent.dispose();
  }
}
