/**
 * run — the bench's entry (`npm run bench`, = `npm run build && node dist/bench/run.js`).
 *
 * Measures pgferry side by side with named baselines IN ONE RUN, on the same
 * two real clusters (source and target of the same major version, from
 * dev/testbed.ts, fsync ON — the default durability, equal for all):
 *
 *   (a) load     initial load vs native CREATE SUBSCRIPTION and the raw
 *                COPY|COPY pipe (load.ts, dataset.ts)
 *   (b) apply    change-apply throughput vs the native subscriber (apply.ts)
 *   (c) cutover  the application's outage at the cutover under write load, at
 *                two database sizes, vs validation 'full' inside the fence (cutover.ts),
 *                and at the cutback after each of pgferry's cutovers (cutback.ts)
 *
 * and prints one table per scenario and a summary of the goals (report.ts).
 * Knobs (argv or PGFERRY_BENCH_* env, see options.ts):
 *
 *   npm run bench                                   # 3 M rows, as ARCHITECTURE.md
 *   npm run bench -- --rows 200000                  # a quick run (a few minutes)
 *   npm run bench -- --only load --rounds 2 --version 14
 *
 * Everything it starts (clusters, agent processes, temp dirs) is removed at
 * the end, on failure and on Ctrl-C (cleanup.ts). Exit code 1 when a
 * contender (or a cutback) failed (unmet goals alone do not fail the run: it is a measurement).
 */
import { cpus, loadavg } from 'node:os';
import { startCluster, type Cluster } from '../dev/testbed';
import { onCleanup, cleanupAll } from './cleanup';
import { parseOptions, usage, type BenchOptions } from './options';
import { buildDataset, defineDataset } from './dataset';
import { runLoadScenario } from './load';
import { runApplyScenario } from './apply';
import { runCutoverScenario } from './cutover';
import { applyReport, cutoverReport, loadReport, summary, type GoalLine } from './report';
import { nowMs } from './measure';

const startedMs = nowMs();
function log(msg: string): void {
  process.stderr.write(`[${((nowMs() - startedMs) / 1000).toFixed(1).padStart(6)} s] ${msg}\n`);
}

/** The last ERROR/FATAL/WARNING lines a cluster's server printed, for error reports. */
function ringBuffer(size: number): { push: (l: string) => void; lines: () => string[] } {
  const buf: string[] = [];
  return {
    push: (l) => {
      buf.push(l);
      if (buf.length > size) buf.shift();
    },
    lines: () => [...buf],
  };
}

async function startBenchCluster(opts: BenchOptions, role: 'source' | 'target'): Promise<{ cluster: Cluster; logs: () => string[] }> {
  const ring = ringBuffer(40);
  const cluster = await startCluster({
    version: opts.version,
    // fsync stays on (no `fast`): every contender pays the same durability.
    settings: { max_sync_workers_per_subscription: '2', max_logical_replication_workers: '6', max_worker_processes: '16' },
    onLog: (line) => {
      if (/\b(ERROR|FATAL|PANIC|WARNING):/.test(line)) ring.push(line.trimEnd());
    },
  });
  onCleanup({ what: `${role} cluster`, run: () => cluster.stop() });
  return { cluster, logs: ring.lines };
}

async function main(): Promise<number> {
  let opts: BenchOptions;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (e) {
    const u = usage(e);
    if (u === undefined) throw e;
    process.stderr.write(`${u}\n`);
    return 2;
  }
  const header = [
    `pgferry bench — PostgreSQL ${opts.version} → ${opts.version}, fsync on, ${cpus().length} CPU(s), load average at start ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
    `  scenarios: ${opts.only.join(', ')}; load: ${opts.rows.toLocaleString('en-US')} rows + ${opts.smallTables} × ${opts.smallRows.toLocaleString('en-US')}; ` +
      `apply backlog: ${opts.applyTxns.toLocaleString('en-US')} txns; cutover: ${opts.runs} run(s) (${opts.noRollbackWindow ? 'without a rollback window: no cutback' : 'each with a rollback window and a cutback after it'}) + ${opts.baselineRuns} baseline at ${opts.shopRows.toLocaleString('en-US')} and ${(opts.shopRows * opts.shopScale).toLocaleString('en-US')} orders; rounds: ${opts.rounds}`,
  ];
  log(header.join('\n'));
  log('starting source and target clusters …');
  const [src, tgt] = await Promise.all([startBenchCluster(opts, 'source'), startBenchCluster(opts, 'target')]);
  const sections: string[] = [];
  const goals: GoalLine[] = [];
  let failures = 0;
  const serverLogs = () =>
    `source server log (last lines):\n  ${src.logs().slice(-10).join('\n  ')}\ntarget server log (last lines):\n  ${tgt.logs().slice(-10).join('\n  ')}`;

  if (opts.only.includes('load')) {
    const ds = defineDataset(opts.rows, opts.smallTables, opts.smallRows);
    log(`building the load dataset on the source (${ds.totalRows.toLocaleString('en-US')} rows) …`);
    const t0 = nowMs();
    const facts = await buildDataset(src.cluster, 'bench', ds);
    log(`  built in ${((nowMs() - t0) / 1000).toFixed(1)} s: ${(facts.totalBytes / 1024 / 1024).toFixed(0)} MB (heap + indexes)`);
    const runs = await runLoadScenario({ source: src.cluster, target: tgt.cluster, sourceDb: 'bench', ds, facts, rounds: opts.rounds, log });
    const r = loadReport(runs, ds, facts);
    sections.push(r.text);
    goals.push(...r.goals);
    failures += runs.filter((x) => x.error).length;
    await src.cluster.query('DROP DATABASE IF EXISTS bench WITH (FORCE)').catch(() => undefined);
  }
  if (opts.only.includes('apply')) {
    const runs = await runApplyScenario({
      source: src.cluster,
      target: tgt.cluster,
      txns: opts.applyTxns,
      rounds: opts.rounds,
      nativeBinary: opts.nativeBinary,
      log,
    });
    const r = applyReport(runs, opts.nativeBinary);
    sections.push(r.text);
    goals.push(...r.goals);
    failures += runs.filter((x) => x.error).length;
  }
  if (opts.only.includes('cutover')) {
    const result = await runCutoverScenario({
      source: src.cluster,
      target: tgt.cluster,
      shopRows: opts.shopRows,
      shopScale: opts.shopScale,
      runs: opts.runs,
      baselineRuns: opts.baselineRuns,
      cutback: !opts.noRollbackWindow,
      log,
    });
    const r = cutoverReport(result);
    sections.push(r.text);
    goals.push(...r.goals);
    failures += result.runs.filter((x) => x.error || x.cutback?.error).length;
  }
  if (failures) process.stderr.write(`${serverLogs()}\n`);

  const out = [
    '',
    ...header,
    `  total bench time ${((nowMs() - startedMs) / 1000).toFixed(0)} s; load average at end ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')} (other processes on this machine add noise to every figure)`,
    '',
    sections.join('\n\n'),
    '',
    summary(goals),
    '',
  ];
  process.stdout.write(out.join('\n'));
  return failures ? 1 : 0;
}

main()
  .then(async (code) => {
    await cleanupAll();
    process.exit(code);
  })
  .catch(async (e: unknown) => {
    process.stderr.write(`bench failed: ${(e as Error)?.stack ?? String(e)}\n`);
    await cleanupAll();
    process.exit(1);
  });
