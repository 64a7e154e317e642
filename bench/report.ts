/**
 * report — turns the scenarios' runs into plain-text tables (one per
 * scenario, the baseline named in each row) and the final summary: every
 * performance goal of the brief, the figure measured, and whether it was met.
 *
 * Ratios use each contender's median over its successful rounds; a
 * contender that failed or did not run leaves its goals "not measured",
 * never met.
 */
import type { LoadDataset, SourceFacts } from './dataset';
import type { LoadRun } from './load';
import type { ApplyRun } from './apply';
import type { CutoverResult, CutoverRun } from './cutover';
import type { SwitchFigures } from './switch';
import { median } from './measure';

export const GOALS = {
  loadSpeedupVsNative: 1.5,
  loadRatioVsRawPipe: 0.8,
  loadPeakRssMb: 300,
  applyRatioVsNative: 1.0,
  cutoverP50Ms: 1000,
  cutoverMaxMs: 3000,
  /** The cutover's outage p50 at the larger size, at most this many times the smaller's. */
  cutoverGrowthMax: 1.5,
} as const;

export interface GoalLine {
  goal: string;
  measured: string;
  verdict: 'MET' | 'MISSED' | 'NOT MEASURED';
}

const MB = 1024 * 1024;

function fmt(n: number | undefined, digits = 0): string {
  if (n === undefined || !Number.isFinite(n)) return '–';
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** Left-aligned first column, right-aligned numbers. */
export function renderTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

function medianOf<T>(runs: T[], pick: (r: T) => number | undefined): number | undefined {
  const xs = runs.map(pick).filter((x): x is number => x !== undefined && Number.isFinite(x));
  return xs.length ? median(xs) : undefined;
}

const ratio = (a: number | undefined, b: number | undefined) => (a !== undefined && b ? a / b : undefined);

function verdict(ok: boolean | undefined): GoalLine['verdict'] {
  return ok === undefined ? 'NOT MEASURED' : ok ? 'MET' : 'MISSED';
}

export function loadReport(runs: LoadRun[], ds: LoadDataset, facts: SourceFacts): { text: string; goals: GoalLine[] } {
  const rows = runs.map((r) => {
    const s = r.elapsedMs !== undefined ? r.elapsedMs / 1000 : undefined;
    return [
      r.contender === 'native'
        ? 'native CREATE SUBSCRIPTION (baseline)'
        : r.contender === 'raw pipe'
          ? 'raw pipe COPY|COPY + indexes (limit)'
          : 'pgferry agent',
      String(r.round),
      r.error ? 'FAILED' : fmt(s, 1),
      s ? fmt(ds.totalRows / s) : '–',
      s ? fmt(facts.totalBytes / MB / s, 1) : '–',
      r.peakRssMb !== undefined ? `${fmt(r.peakRssMb)} (HWM ${fmt(r.hwmRssMb)})` : '–',
      r.error ? 'see below' : r.rowsVerified !== undefined ? `${fmt(r.rowsVerified)} rows ✓` : '–',
    ];
  });
  const med = (c: LoadRun['contender']) =>
    medianOf(
      runs.filter((r) => r.contender === c),
      (r) => r.elapsedMs,
    );
  const native = med('native');
  const raw = med('raw pipe');
  const ferry = med('pgferry');
  const rss = runs.filter((r) => r.contender === 'pgferry' && r.peakRssMb !== undefined).map((r) => Math.max(r.peakRssMb!, r.hwmRssMb ?? 0));
  const peakRss = rss.length ? Math.max(...rss) : undefined;
  const speedup = native && ferry ? native / ferry : undefined;
  const vsRaw = raw && ferry ? raw / ferry : undefined;
  const copyBytes = runs.find((r) => r.copyBytes)?.copyBytes;
  const lines = [
    `(a) Initial load — ${fmt(ds.totalRows)} rows in ${ds.tables.length} tables; source size ${fmt(facts.totalBytes / MB)} MB (pg_total_relation_size: heap + indexes; heap only ${fmt(facts.heapBytes / MB)} MB)`,
    '    time = first DDL/call → target loaded and fully indexed; MB/s = source pg_total_relation_size / time',
    renderTable(['contender', 'round', 'elapsed s', 'rows/s', 'MB/s', 'peak RSS MB', 'check'], rows),
    `    median elapsed: native ${fmt(native && native / 1000, 1)} s, raw pipe ${fmt(raw && raw / 1000, 1)} s, pgferry ${fmt(ferry && ferry / 1000, 1)} s` +
      (copyBytes ? `; raw pipe moved ${fmt(copyBytes / MB)} MB of binary COPY data` : ''),
    `    pgferry vs native:   ${speedup ? `${fmt(speedup, 2)}× (native time / pgferry time)` : '–'}   (goal ≥ ${GOALS.loadSpeedupVsNative}×)`,
    `    pgferry vs raw pipe: ${vsRaw ? `${fmt(vsRaw, 2)}× (raw-pipe time / pgferry time)` : '–'}   (goal ≥ ${GOALS.loadRatioVsRawPipe}×)`,
    ...runs.filter((r) => r.error).map((r) => `    ${r.contender} round ${r.round} error: ${r.error}`),
  ];
  return {
    text: lines.join('\n'),
    goals: [
      {
        goal: `load: pgferry ≥ ${GOALS.loadSpeedupVsNative}× native CREATE SUBSCRIPTION`,
        measured: speedup ? `${fmt(speedup, 2)}×` : '–',
        verdict: verdict(speedup === undefined ? undefined : speedup >= GOALS.loadSpeedupVsNative),
      },
      {
        goal: `load: pgferry ≥ ${GOALS.loadRatioVsRawPipe}× the raw pipe`,
        measured: vsRaw ? `${fmt(vsRaw, 2)}×` : '–',
        verdict: verdict(vsRaw === undefined ? undefined : vsRaw >= GOALS.loadRatioVsRawPipe),
      },
      {
        goal: `load: agent peak RSS < ${GOALS.loadPeakRssMb} MB`,
        measured: peakRss !== undefined ? `${fmt(peakRss)} MB` : '–',
        verdict: verdict(peakRss === undefined ? undefined : peakRss < GOALS.loadPeakRssMb),
      },
    ],
  };
}

const APPLY_LABELS: Record<ApplyRun['contender'], string> = {
  native: 'native subscriber (baseline)',
  pgferry: 'pgferry agent (resume)',
  'pgferry-stop': "pgferry agent (resume, schemaChanges 'stop')",
  'pgferry-restart': 'pgferry agent (restart)',
};

export function applyReport(runs: ApplyRun[], nativeBinary = false): { text: string; goals: GoalLine[] } {
  const rows = runs.map((r) => {
    const s = r.elapsedMs !== undefined ? r.elapsedMs / 1000 : undefined;
    return [
      APPLY_LABELS[r.contender],
      String(r.round),
      `${fmt(r.txns)} / ${fmt(r.changes)} / ${fmt(r.backlogWalBytes && r.backlogWalBytes / MB, 1)} MB`,
      r.error ? 'FAILED' : fmt(s, 2),
      s ? fmt(r.changes / s) : '–',
      s ? fmt(r.txns / s) : '–',
      r.peakRssMb !== undefined ? `${fmt(r.peakRssMb)} (HWM ${fmt(r.hwmRssMb)})` : '–',
      r.firstChangeMs !== undefined && r.elapsedMs !== undefined
        ? `${r.agentStartMs !== undefined ? `agent up in ${fmt(r.agentStartMs)} ms, ` : ''}first change at ${fmt(r.firstChangeMs)} ms; ${fmt(r.changes / ((r.elapsedMs - r.firstChangeMs) / 1000))} changes/s after it`
        : '',
    ];
  });
  const rate = (c: ApplyRun['contender']) =>
    medianOf(
      runs.filter((r) => r.contender === c),
      (r) => (r.elapsedMs === undefined ? undefined : r.changes / (r.elapsedMs / 1000)),
    );
  const native = rate('native');
  const ferry = rate('pgferry');
  const ratio = native && ferry ? ferry / native : undefined;
  const restart = rate('pgferry-restart');
  const restartRatio = native && restart ? restart / native : undefined;
  const stop = rate('pgferry-stop');
  const followRatio = ferry && stop ? ferry / stop : undefined;
  const followPerRound = [...new Set(runs.map((r) => r.round))].map((round) => {
    const [f, s] = (['pgferry', 'pgferry-stop'] as const).map((c) => runs.find((r) => r.round === round && r.contender === c)?.elapsedMs);
    return f && s ? `${fmt(s / f, 2)}×` : '–';
  });
  const cpuLines = runs
    .filter((r) => r.cpu?.length)
    .map(
      (r) =>
        `    CPU s, ${r.contender} round ${r.round}: ${r.cpu!.map((c) => `${c.label} ${fmt(c.seconds, 2)}`).join(' + ')} = ${fmt(
          r.cpu!.reduce((a, c) => a + c.seconds, 0),
          2,
        )}`,
    );
  const statusLines = runs
    .filter((r) => r.status)
    .map(
      (r) =>
        `    ${r.contender} status when caught up (round ${r.round}): schemaChanges ${r.status!.schemaChanges || 'not reported'}, appliedLsn ${r.status!.appliedLsn || '–'} (backlog ended at ${r.status!.backlogEndLsn}), lagBytes ${fmt(r.status!.lagBytes)}, changesApplied ${fmt(r.status!.changesApplied)}`,
    );
  const lines = [
    '(b) Change apply — committed backlog of T transactions × (10 UPDATE + 10 INSERT), consumer stopped while written, timed until the last row is on the target; data then compared (count + checksum) ✓',
    `    native${nativeBinary ? " WITH (binary = true), not the goal's baseline" : ''}: from ALTER SUBSCRIPTION … ENABLE (after DISABLE);  pgferry: from ResumeMigration (after PauseMigration) in the running agent;`,
    '    pgferry after a restart: from spawning a new agent process (its start-up included; not the goal\'s measure);  "first change": when the first backlog row was visible',
    "    pgferry (schemaChanges 'stop'): the same as pgferry (the default, 'follow'), but its migration started with schemaChanges 'stop'",
    renderTable(['contender', 'round', 'txns / changes / WAL', 'elapsed s', 'changes/s', 'txns/s', 'peak RSS MB', 'note'], rows),
    `    pgferry / native changes/s: ${ratio ? `${fmt(ratio, 2)}×` : '–'}   (goal ≥ ${GOALS.applyRatioVsNative}×);  after an agent restart: ${restartRatio ? `${fmt(restartRatio, 2)}×` : '–'}`,
    `    pgferry (follow) / pgferry (schemaChanges stop) changes/s: ${followRatio ? `${fmt(followRatio, 2)}×` : '–'}` +
      `${followPerRound.length > 1 ? ` (per round ${followPerRound.join(', ')})` : ''}` +
      "   (below 1.00×: what following the source's schema costs the apply — Relation checks, gated tables, the catalog watch)",
    ...cpuLines,
    ...statusLines,
    ...runs.filter((r) => r.error).map((r) => `    ${r.contender} round ${r.round} error: ${r.error}`),
  ];
  return {
    text: lines.join('\n'),
    goals: [
      {
        goal: `apply: pgferry ≥ ${GOALS.applyRatioVsNative}× native${nativeBinary ? ' (binary = true)' : ''} changes/s`,
        measured: ratio ? `${fmt(ratio, 2)}× (${fmt(ferry)} vs ${fmt(native)} changes/s)` : '–',
        verdict: verdict(ratio === undefined ? undefined : ratio >= GOALS.applyRatioVsNative),
      },
    ],
  };
}

/** What a switch (a cutover, or a cutback) is judged on: the larger of the report's outage and the writer's own gap. */
export function judgedOutageMs(r: SwitchFigures): number | undefined {
  if (r.error || r.outageMs === undefined) return undefined;
  return Math.max(r.outageMs, r.clientGapMs ?? 0);
}

const CONTENDER_LABELS: Record<CutoverRun['contender'], string> = { pgferry: 'pgferry (default)', full: "baseline 'full'" };
const CUTBACK_LABEL = '  ↳ its cutback';

function switchRow(size: number, label: string, run: number, r: SwitchFigures, after: string): string[] {
  return [
    fmt(size),
    label,
    String(run),
    r.error ? 'FAILED' : fmt(r.outageMs),
    fmt(r.clientGapMs),
    fmt(judgedOutageMs(r)),
    fmt(r.beforeFenceMs && r.beforeFenceMs / 1000, 1),
    fmt(r.rpcMs),
    r.modes ? ['unchanged', 'changes', 'full', 'counts'].map((m) => String(r.modes![m] ?? 0)).join(' / ') : '–',
    fmt(r.rowsChecked),
    fmt(r.writerCommitsPerSec),
    fmt(r.loadAvg, 1),
    r.validationOk === undefined ? '–' : r.validationOk ? 'ok' : 'MISMATCH',
    after,
  ];
}

/** One row per cutover, and for pgferry's runs its cutback's row right below it. */
function cutoverRows(runs: CutoverRun[]): string[][] {
  return runs.flatMap((r) => [
    switchRow(r.size, CONTENDER_LABELS[r.contender], r.run, r, r.error ? 'cutover failed' : r.notes.length ? `${r.notes.length} note(s)` : ''),
    ...(r.cutback ? [switchRow(r.size, CUTBACK_LABEL, r.run, r.cutback, r.cutback.error ? 'cutback failed' : cutbackVsCutover(r))] : []),
  ]);
}

/** "1.83× the cutover": the run's cutback judged outage over its cutover's. */
function cutbackVsCutover(r: CutoverRun): string {
  const x = ratio(r.cutback && judgedOutageMs(r.cutback), judgedOutageMs(r));
  return x !== undefined ? `${fmt(x, 2)}× the cutover` : '';
}

/** Median and max of the judged outage of one contender at one size; failed runs counted apart. */
function cutoverStats(runs: CutoverRun[], size: number, contender: CutoverRun['contender']) {
  const mine = runs.filter((r) => r.size === size && r.contender === contender);
  const judged = mine.map(judgedOutageMs).filter((x): x is number => x !== undefined);
  const pick = (f: (r: CutoverRun) => number | undefined) =>
    medianOf(
      mine.filter((r) => !r.error),
      f,
    );
  return {
    runs: mine.length,
    failed: mine.filter((r) => r.error).length,
    p50: judged.length ? median(judged) : undefined,
    max: judged.length ? Math.max(...judged) : undefined,
    outageP50: pick((r) => r.outageMs),
    gapP50: pick((r) => r.clientGapMs),
  };
}

function cutoverGoals(sizes: number[], stat: (size: number) => ReturnType<typeof cutoverStats>, growth: number | undefined): GoalLine[] {
  const goals: GoalLine[] = [];
  for (const size of sizes) {
    const s = stat(size);
    goals.push(
      {
        goal: `cutover at ${fmt(size)} orders: application outage p50 < ${GOALS.cutoverP50Ms} ms`,
        measured: s.p50 !== undefined ? `${fmt(s.p50)} ms` : '–',
        verdict: verdict(s.p50 === undefined ? undefined : s.p50 < GOALS.cutoverP50Ms),
      },
      {
        // A failed cutover counts against "max": its outage is not bounded by anything measured.
        goal: `cutover at ${fmt(size)} orders: application outage max < ${GOALS.cutoverMaxMs} ms`,
        measured: s.max !== undefined ? `${fmt(s.max)} ms${s.failed ? ` (${s.failed} run(s) failed)` : ''}` : '–',
        verdict: verdict(s.max === undefined ? undefined : s.max < GOALS.cutoverMaxMs && s.failed === 0),
      },
    );
  }
  const [small, large] = sizes;
  goals.push({
    goal: `cutover: outage p50 at ${fmt(large)} orders ≤ ${GOALS.cutoverGrowthMax}× at ${fmt(small)}`,
    measured: growth !== undefined ? `${fmt(growth, 2)}×` : '–',
    verdict: verdict(growth === undefined ? undefined : growth <= GOALS.cutoverGrowthMax),
  });
  return goals;
}

export function cutoverReport(result: CutoverResult): { text: string; goals: GoalLine[] } {
  const { runs } = result;
  const sizes = result.sizes.map((s) => s.orders);
  const stat = (size: number, c: CutoverRun['contender'] = 'pgferry') => cutoverStats(runs, size, c);
  const [small, large] = sizes;
  const growth = small !== undefined && large !== undefined ? ratio(stat(large).p50, stat(small).p50) : undefined;
  const perSize = sizes.map((size) => {
    const p = stat(size);
    const f = stat(size, 'full');
    const vs = ratio(p.p50, f.p50);
    return (
      `    ${fmt(size)} orders: pgferry p50 ${fmt(p.p50)} ms, max ${fmt(p.max)} ms over ${p.runs - p.failed} completed run(s)${p.failed ? ` (${p.failed} failed)` : ''} ` +
      `(outage p50 ${fmt(p.outageP50)} ms, writer gap p50 ${fmt(p.gapP50)} ms); baseline 'full' p50 ${fmt(f.p50)} ms over ${f.runs - f.failed} run(s)${f.failed ? ` (${f.failed} failed)` : ''}; ` +
      `pgferry / baseline ${vs !== undefined ? `${fmt(vs, 2)}×` : '–'}`
    );
  });
  const lines = [
    "(c) Cutover (and pgferry's cutback) under write load — pgferry's default validation ('changes': inside the fence, only the rows applied since the continuous verification) against the baseline",
    "    validation 'full' (every row of every table read inside the fence: the cutover before issue 19), in the same bench run, at two sizes, each run a fresh migration:",
    ...result.sizes.map(
      (s) =>
        `      ${fmt(s.orders)} orders: source ${fmt(s.sourceBytes / MB)} MB, seeded in ${fmt(s.seedMs / 1000, 1)} s${s.seedMs > 120_000 ? ' (minutes)' : ''}`,
    ),
    "    outage = the agent's report (outageMs): fence raised → completed cutover recorded, every step inside counted (its parts below);",
    "    writer gap = the tight writer's last commit on the source → its first on the target: adds the RPC's return to the client and the reconnect;",
    '    judged = the larger of the two, per run. Left out of both: the wait before the fence (lag, and with the default the continuous verification: nothing is fenced then),',
    "    shown as 'before fence s'; and an application's own reconnect pool, DNS or configuration change. load = the machine's 1-minute load average at the cutover.",
    ...cutbackIntro(runs),
    renderTable(
      [
        'orders',
        'validation',
        'run',
        'outage ms',
        'writer gap ms',
        'judged ms',
        'before fence s',
        'RPC ms',
        'tables unchanged / changes / full / counts',
        'rows read',
        'commits/s',
        'load',
        'check',
        'after',
      ],
      cutoverRows(runs),
    ),
    '    the outage by part (ms); for the default, the tables it read inside the fence (mode, rows read on each side):',
    ...runs
      .filter((r) => r.outageParts)
      .map(
        (r) =>
          `    ${fmt(r.size)} ${CONTENDER_LABELS[r.contender]} run ${r.run}: ${r.outageParts!.map((p) => `${p.part} ${fmt(p.ms)}`).join(' · ')}` +
          (r.contender === 'pgferry' && r.checkedTables?.length ? `\n      read: ${r.checkedTables.join('; ')}` : '') +
          (r.cutback?.outageParts
            ? `\n      its cutback: ${r.cutback.outageParts.map((p) => `${p.part} ${fmt(p.ms)}`).join(' · ')}${cutbackContext(r.cutback)}`
            : ''),
      ),
    '    judged outage (median over completed runs):',
    ...perSize,
    `    growth: pgferry p50 at ${fmt(large)} / at ${fmt(small)} orders = ${growth !== undefined ? `${fmt(growth, 2)}×` : '–'} (goal ≤ ${GOALS.cutoverGrowthMax}×)`,
    ...cutbackSummary(runs, sizes),
    ...runs.filter((r) => r.error).map((r) => `    ${fmt(r.size)} ${CONTENDER_LABELS[r.contender]} run ${r.run} error: ${r.error}`),
    ...runs.filter((r) => r.cutback?.error).map((r) => `    ${fmt(r.size)} ${CONTENDER_LABELS[r.contender]} run ${r.run} cutback error: ${r.cutback!.error}`),
    ...[...new Set(runs.flatMap((r) => r.notes))].map((n) => `    note (${runs.filter((r) => r.notes.includes(n)).length} run(s)): ${n}`),
  ];
  return { text: lines.join('\n'), goals: cutoverGoals(sizes, stat, growth) };
}

/** What preceded the cutback: the reverse sync when it was sent, and the tight writer's acknowledged commits on each side. */
function cutbackContext(b: NonNullable<CutoverRun['cutback']>): string {
  return (
    `\n        (when sent: reverse lag ${fmt(b.reverseLagBytes)} bytes, ${fmt(b.reverseChangesApplied)} changes applied back; ` +
    `tight writer: ${fmt(b.targetCommits)} commits on the target, ${fmt(b.backCommits)} on the source after the cutback${b.sourceChecked ? '; the source checked: every one there, equal to the frozen target' : '; the source NOT checked or different: see the notes'})`
  );
}

/** How the cutback rows were measured (only when some run had a rollback window). */
function cutbackIntro(runs: CutoverRun[]): string[] {
  const windows = [...new Set(runs.map((r) => r.rollbackWindow).filter(Boolean))];
  if (!windows.length) {
    return runs.some((r) => r.contender === 'pgferry')
      ? ["    pgferry's runs had no rollback window (--no-rollback-window): no reverse slot made before the fence, no cutback measured."]
      : [];
  }
  return [
    `    pgferry's runs had \`rollbackWindow: '${windows.join("', '")}'\` (issue 21): their cutover also made the reverse slot and publication on the target before its fence`,
    "    (in 'before fence s', not in the outage), and after it the writers wrote on the target ≥ 3 s while the reverse sync streamed back, then the cutback was",
    "    measured the same way ('↳ its cutback': the agent's outage and parts; writer gap = the tight writer's last commit on the target → its first on the source,",
    "    after following activeEndpoint back; commits/s on the target). Left out as for the cutover: the wait for the reverse sync's lag before the fence ('before",
    "    fence s'). There is no continuous verification in this direction: the cutback reads every row inside its fence ('verification' part), so its outage grows",
    '    with the database. Checked after: the source holds every write acknowledged on the target and equals the frozen target. No goal is set for it (the issue gives none).',
  ];
}

/** Per size: the cutback's judged outage beside its cutover's (the same runs), their ratio, and its growth with the database; no verdict. */
function cutbackSummary(runs: CutoverRun[], sizes: number[]): string[] {
  const withBack = runs.filter((r) => r.cutback);
  if (!withBack.length) return [];
  const judgedAt = (size: number) => {
    const done = withBack.filter((r) => r.size === size && judgedOutageMs(r.cutback!) !== undefined);
    const back = done.map((r) => judgedOutageMs(r.cutback!)!);
    const part = (name: string) => medianOf(done, (r) => r.cutback!.outageParts?.find((p) => p.part === name)?.ms);
    return {
      done,
      failed: withBack.filter((r) => r.size === size && r.cutback!.error).length,
      p50: back.length ? median(back) : undefined,
      max: back.length ? Math.max(...back) : undefined,
      outageP50: medianOf(done, (r) => r.cutback!.outageMs),
      gapP50: medianOf(done, (r) => r.cutback!.clientGapMs),
      verificationP50: part('verification'),
      drainP50: part('drain'),
      beforeFenceP50: medianOf(done, (r) => r.cutback!.beforeFenceMs),
      cutoverP50: medianOf(done, (r) => judgedOutageMs(r)),
    };
  };
  const lines = ['    the cutback beside the cutover (pgferry, judged, median over the runs whose cutback completed; measured, no goal):'];
  for (const size of sizes) {
    const b = judgedAt(size);
    const vs = ratio(b.p50, b.cutoverP50);
    lines.push(
      `    ${fmt(size)} orders: cutback p50 ${fmt(b.p50)} ms, max ${fmt(b.max)} ms over ${b.done.length} run(s)${b.failed ? ` (${b.failed} failed)` : ''} ` +
        `(outage p50 ${fmt(b.outageP50)} ms, of which verification ${fmt(b.verificationP50)} ms and drain ${fmt(b.drainP50)} ms; writer gap p50 ${fmt(b.gapP50)} ms; ` +
        `before the fence ${fmt(b.beforeFenceP50 && b.beforeFenceP50 / 1000, 1)} s); cutover p50 ${fmt(b.cutoverP50)} ms; cutback / cutover ${vs !== undefined ? `${fmt(vs, 2)}×` : '–'}`,
    );
  }
  const [small, large] = sizes;
  if (small !== undefined && large !== undefined) {
    const g = ratio(judgedAt(large).p50, judgedAt(small).p50);
    lines.push(
      `    cutback growth: p50 at ${fmt(large)} / at ${fmt(small)} orders = ${g !== undefined ? `${fmt(g, 2)}×` : '–'} (every row is read inside its fence)`,
    );
  }
  return lines;
}

export function summary(goals: GoalLine[]): string {
  return [
    'Summary',
    renderTable(
      ['goal', 'measured', 'verdict'],
      goals.map((g) => [g.goal, g.measured, g.verdict]),
    ),
  ].join('\n');
}
