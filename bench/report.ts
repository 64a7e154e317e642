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
import type { CutoverRun } from './cutover';
import { median, percentile } from './measure';

export const GOALS = {
  loadSpeedupVsNative: 1.5,
  loadRatioVsRawPipe: 0.8,
  loadPeakRssMb: 300,
  applyRatioVsNative: 1.0,
  cutoverP50Ms: 1000,
  cutoverMaxMs: 3000,
} as const;

export interface GoalLine {
  goal: string;
  measured: string;
  verdict: 'MET' | 'NOT MET' | 'NOT MEASURED';
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

function verdict(ok: boolean | undefined): GoalLine['verdict'] {
  return ok === undefined ? 'NOT MEASURED' : ok ? 'MET' : 'NOT MET';
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
        `    pgferry status when caught up (round ${r.round}): appliedLsn ${r.status!.appliedLsn || '–'} (backlog ended at ${r.status!.backlogEndLsn}), lagBytes ${fmt(r.status!.lagBytes)}, changesApplied ${fmt(r.status!.changesApplied)}`,
    );
  const lines = [
    '(b) Change apply — committed backlog of T transactions × (10 UPDATE + 10 INSERT), consumer stopped while written, timed until the last row is on the target; data then compared (count + checksum) ✓',
    `    native${nativeBinary ? " WITH (binary = true), not the goal's baseline" : ''}: from ALTER SUBSCRIPTION … ENABLE (after DISABLE);  pgferry: from ResumeMigration (after PauseMigration) in the running agent;`,
    '    pgferry after a restart: from spawning a new agent process (its start-up included; not the goal\'s measure);  "first change": when the first backlog row was visible',
    renderTable(['contender', 'round', 'txns / changes / WAL', 'elapsed s', 'changes/s', 'txns/s', 'peak RSS MB', 'note'], rows),
    `    pgferry / native changes/s: ${ratio ? `${fmt(ratio, 2)}×` : '–'}   (goal ≥ ${GOALS.applyRatioVsNative}×);  after an agent restart: ${restartRatio ? `${fmt(restartRatio, 2)}×` : '–'}`,
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

export function cutoverReport(runs: CutoverRun[]): { text: string; goals: GoalLine[] } {
  const rows = runs.map((r) => [
    String(r.run),
    r.error ? 'FAILED' : fmt(r.writeDowntimeMs),
    fmt(r.cutoverRpcMs),
    fmt(r.clientGapMs),
    fmt(r.writerCommitsPerSec),
    r.validationOk === undefined ? '–' : r.validationOk ? 'ok' : 'MISMATCH',
    r.error ? 'cutover failed' : r.notes.length ? `${r.notes.length} note(s)` : '',
  ]);
  const ok = runs.filter((r) => r.writeDowntimeMs !== undefined && !r.error).map((r) => r.writeDowntimeMs!);
  const p50 = ok.length ? percentile(ok, 50) : undefined;
  const max = ok.length ? Math.max(...ok) : undefined;
  const failed = runs.filter((r) => r.error);
  const lines = [
    "(c) Cutover under write load — no native baseline (PostgreSQL has no cutover); writeDowntimeMs from the agent's report (fence start → target ready)",
    "    client gap = the tight writer's last commit on the source → first commit on the target after the RPC returned (includes validation while fenced);",
    "    it can be shorter than writeDowntimeMs: sessions already open keep committing during the fence's grace period after the ALTER DATABASE",
    renderTable(['run', 'writeDowntimeMs', 'Cutover RPC ms', 'client gap ms', 'writer commits/s', 'validation', 'after'], rows),
    `    write downtime p50 ${fmt(p50)} ms, max ${fmt(max)} ms over ${ok.length} completed run(s)${failed.length ? `; ${failed.length} failed` : ''}`,
    ...failed.map((r) => `    run ${r.run} error: ${r.error}`),
    ...[...new Set(runs.flatMap((r) => r.notes))].map((n) => `    note (${runs.filter((r) => r.notes.includes(n)).length} run(s)): ${n}`),
  ];
  // A failed cutover counts against "max": its downtime is not bounded by anything measured.
  const allOk = failed.length === 0;
  return {
    text: lines.join('\n'),
    goals: [
      {
        goal: `cutover: write downtime p50 < ${GOALS.cutoverP50Ms} ms`,
        measured: p50 !== undefined ? `${fmt(p50)} ms` : '–',
        verdict: verdict(p50 === undefined ? undefined : p50 < GOALS.cutoverP50Ms),
      },
      {
        goal: `cutover: write downtime max < ${GOALS.cutoverMaxMs} ms`,
        measured: max !== undefined ? `${fmt(max)} ms${allOk ? '' : ` (${failed.length} run(s) failed)`}` : '–',
        verdict: verdict(max === undefined ? undefined : max < GOALS.cutoverMaxMs && allOk),
      },
    ],
  };
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
