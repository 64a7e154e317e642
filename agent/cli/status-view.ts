/**
 * status-view — what an operator reads: a migration's status, the list of
 * migrations, a preflight report and a cutover (or cutback) report, rendered as plain
 * lines that fit the terminal (80 columns unless told otherwise).
 *
 * Input: the agent's messages as the client returns them (api/client.ts).
 * Output: arrays of lines, each at most `width` columns (long messages wrap,
 * anything else that would not fit is cut with `…`), so callers can redraw
 * them in place (`pgferry status --watch`). No colour and no wide glyphs
 * beyond the block characters of the bars, which are one column each.
 */
import type {
  CutoverReportMessage,
  MigrationMessage,
  PreflightReportMessage,
  ReverseSyncStatusMessage,
  SchemaChangesStatusMessage,
  TableStatusMessage,
  TableValidationMessage,
  VerificationStatusMessage,
} from '../../api/client';

/** The width used when the output is not a terminal. */
export const DEFAULT_WIDTH = 80;

/** Phases in which per-table copy bars are shown by default. */
export const COPY_PHASES = ['created', 'preflight', 'schema', 'loading'] as const;

export interface ViewOptions {
  /** Columns available; lines never exceed it. Default: 80. */
  width?: number;
  /** Show every table, not just while copying. Default: false. */
  allTables?: boolean;
  /** Most table lines shown (the rest are summarised). Default: 20. */
  maxTables?: number;
  /** The time "ago" is counted from, ms since the epoch. Default: now. */
  now?: number;
}

const IEC = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** `1536` → `1.5 KiB`. */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) return '?';
  let v = n;
  let i = 0;
  while (v >= 1024 && i < IEC.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v < 10 ? v.toFixed(1) : Math.round(v)} ${IEC[i]}`;
}

/** `1234` → `1,234`; `1234567` → `1.2M`. */
export function formatCount(n: number): string {
  if (!Number.isFinite(n)) return '?';
  if (Math.abs(n) < 10_000) return Math.round(n).toLocaleString('en-US');
  const units: Array<[number, string]> = [
    [1e12, 'T'],
    [1e9, 'G'],
    [1e6, 'M'],
    [1e3, 'k'],
  ];
  for (const [d, u] of units)
    if (Math.abs(n) >= d) {
      const v = n / d;
      return `${v < 10 ? v.toFixed(1) : Math.round(v)}${u}`;
    }
  return String(n);
}

/** `200` → `3m 20s`; negative → `?`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  if (seconds < 10) return `${seconds.toFixed(1).replace(/\.0$/, '')}s`;
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** A bar of `width` columns (brackets included) for `ratio` in 0..1. */
export function bar(ratio: number, width: number): string {
  const inner = Math.max(1, width - 2);
  const r = Number.isFinite(ratio) ? Math.min(1, Math.max(0, ratio)) : 0;
  const full = Math.floor(r * inner);
  return `[${'█'.repeat(full)}${'░'.repeat(inner - full)}]`;
}

/** Cut `text` to `width` columns, ending with `…` when cut. */
export function fit(text: string, width: number): string {
  return text.length <= width ? text : `${text.slice(0, Math.max(0, width - 1))}…`;
}

/** Wrap `text` into lines of at most `width` columns; continuation lines get `indent`; a word longer than a line is cut across lines. */
export function wrap(text: string, width: number, first = '', indent = ''): string[] {
  const out: string[] = [];
  let line = first;
  let empty = true;
  for (const word of text.replace(/\s+/g, ' ').trim().split(' ')) {
    const sep = empty ? '' : ' ';
    if (line.length + sep.length + word.length <= width) {
      line += sep + word;
      empty = false;
      continue;
    }
    if (!empty) {
      out.push(line);
      line = indent;
    }
    let w = word;
    while (line.length + w.length > width) {
      const room = Math.max(1, width - line.length);
      out.push(line + w.slice(0, room));
      line = indent;
      w = w.slice(room);
    }
    line += w;
    empty = false;
  }
  out.push(line);
  return out;
}

const pct = (r: number) => `${Math.floor(Math.min(1, Math.max(0, r)) * 100)}%`;

function tableRatio(t: TableStatusMessage): number {
  if (t.phase === 'copied' || t.phase === 'synced') return 1;
  if (t.bytesEstimated > 0) return Math.min(0.99, t.bytesCopied / t.bytesEstimated);
  if (t.rowsEstimated > 0) return Math.min(0.99, t.rowsCopied / t.rowsEstimated);
  return 0;
}

const TABLE_ORDER: Record<string, number> = { copying: 0, queued: 1, copied: 2, synced: 3 };

function tableLines(m: MigrationMessage, width: number, max: number): string[] {
  const lines: string[] = [];
  const tables = [...m.tables].sort(
    (a, b) => (TABLE_ORDER[a.phase] ?? 9) - (TABLE_ORDER[b.phase] ?? 9) || `${a.schema}.${a.name}`.localeCompare(`${b.schema}.${b.name}`),
  );
  const barW = Math.min(20, Math.max(6, width - 60));
  const fixed = 2 + 1 + barW + 1 + 4 + 2 + 15 + 1 + 7;
  const nameW = Math.max(8, width - fixed);
  for (const t of tables.slice(0, max)) {
    const r = tableRatio(t);
    const rows = `${formatCount(t.rowsCopied)}/${formatCount(Math.max(t.rowsEstimated, t.rowsCopied))} rows`;
    lines.push(`  ${fit(`${t.schema}.${t.name}`, nameW).padEnd(nameW)} ${bar(r, barW)} ${pct(r).padStart(4)}  ${fit(rows, 15).padEnd(15)} ${t.phase}`);
  }
  if (tables.length > max) {
    const rest = tables.slice(max);
    const by = (p: string) => rest.filter((t) => t.phase === p).length;
    const parts = [
      ['copying', by('copying')],
      ['queued', by('queued')],
      ['copied', by('copied') + by('synced')],
    ]
      .filter(([, n]) => n)
      .map(([p, n]) => `${n} ${p}`);
    lines.push(`  … ${rest.length} more table(s): ${parts.join(', ')}`);
  }
  return lines;
}

/** The detailed view of one migration. */
export function renderMigration(m: MigrationMessage, opts: ViewOptions = {}): string[] {
  const width = opts.width ?? DEFAULT_WIDTH;
  const lines: string[] = [];
  const label = (l: string) => l.padEnd(9);
  const versions = m.sourceVersion || m.targetVersion ? `PG ${m.sourceVersion || '?'} → ${m.targetVersion || '?'}` : '';
  lines.push(
    [`Migration ${m.id}`, m.phase.toUpperCase() + (m.paused ? ' (PAUSED)' : ''), versions, `active: ${m.activeEndpoint || 'source'}`]
      .filter(Boolean)
      .join('  ·  '),
  );
  if (m.paused) lines.push(...wrap(`since ${m.pausedAt}; the slot keeps WAL meanwhile. Resume: pgferry resume ${m.id}`, width, label('Paused'), label('')));
  const loading = (COPY_PHASES as readonly string[]).includes(m.phase);
  const eta = m.etaSeconds > 0 ? `  ETA ${formatDuration(m.etaSeconds)}` : '';
  const barW = Math.min(32, Math.max(10, width - 30));
  lines.push(`${label('Load')}${bar(m.progress, barW)} ${pct(m.progress).padStart(4)}${eta}`);
  lines.push(
    `${label('')}${m.tablesCopied}/${m.tablesTotal} tables · ${formatCount(m.rowsCopied)} rows · ${formatBytes(m.bytesCopied)} of ${formatBytes(m.bytesEstimated)}`,
  );
  // While loading, the lag is the WAL written since the snapshot (the stream catches up after the load);
  // once completed (or cut back), lag means nothing: the reverse sync's own lag is in its block.
  const done = m.phase === 'completed' || m.phase === 'cut-back' || m.phase === 'deleted';
  if (!done && (!loading || m.lagBytes > 0)) lines.push(`${label('Lag')}${formatBytes(m.lagBytes)} · ${formatDuration(m.lagSeconds)} behind the source`);
  if (!done && (!loading || m.changesApplied > 0)) {
    lines.push(
      `${label('Apply')}${formatCount(Math.round(m.applyRate))} changes/s · ${formatCount(m.changesApplied)} applied${m.appliedLsn ? ` · at ${m.appliedLsn}` : ''}`,
    );
  }
  if (m.slotName) lines.push(`${label('Slot')}${m.slotName} retains ${formatBytes(m.retainedWalBytes)} of WAL`);
  if (m.verification?.state && !done) lines.push(...verificationLines(m.verification, width, label, opts.now ?? Date.now()));
  if (m.schemaChanges?.mode) lines.push(...schemaLines(m.schemaChanges, width, label, opts.now ?? Date.now()));
  if (m.errorCode || m.errorMessage) {
    lines.push(...wrap(`${m.errorCode}: ${m.errorMessage}`, width, label('Error'), label('')));
    if (m.errorRemedy) lines.push(...wrap(m.errorRemedy, width, label('Fix'), label('')));
  }
  if (m.cutover && m.cutover.state) lines.push(...cutoverSummary(m.cutover, width, label('Cutover'), label));
  if (m.reverse?.state) lines.push(...reverseLines(m, m.reverse, width, label, opts.now ?? Date.now()));
  if (m.cutback && m.cutback.state) lines.push(...cutoverSummary(m.cutback, width, label('Cutback'), label));
  lines.push(...fenceLines(m, width, label));
  if (m.tables.length && (loading || opts.allTables)) {
    lines.push('Tables');
    lines.push(...tableLines(m, width, opts.maxTables ?? 20));
  }
  return lines.map((l) => fit(l, width));
}

/** The fence on the source, when one is up: the operator must see a lift that is pending. */
function fenceLines(m: MigrationMessage, width: number, label: (l: string) => string): string[] {
  const f = m.fence;
  if (!f || !f.state || f.state === 'none') return [];
  if (f.state === 'up') return wrap(`UP on database '${f.database}' since ${f.since} (the running cutover's)`, width, label('Fence'), label(''));
  if (f.state === 'kept') {
    return wrap(
      `kept on database '${f.database}' since ${f.since}: the old source stays read-only after the cutover. To make it writable anyway: pgferry unfence ${m.id} --after-cutover`,
      width,
      label('Fence'),
      label(''),
    );
  }
  return [
    ...wrap(
      `LIFT PENDING on database '${f.database}' (raised ${f.since}): every new session there is read-only. The agent keeps retrying (${f.liftAttempts} attempt(s)${f.lastLiftError ? `, last: ${f.lastLiftError}` : ''}).`,
      width,
      label('Fence'),
      label(''),
    ),
    ...wrap(`pgferry unfence ${m.id}, or by hand: ${f.liftStatement}`, width, label('Fix'), label('')),
  ];
}

/**
 * The way back (a `rollbackWindow`): the reverse sync's state, its lag behind the target, when the window ends
 * (and the reverse slot and publication on the target are dropped) or when and why they were dropped, the last error.
 */
function reverseLines(m: MigrationMessage, r: ReverseSyncStatusMessage, width: number, label: (l: string) => string, now: number): string[] {
  const head = label('Reverse');
  const lag = `${formatBytes(r.lagBytes)} · ${formatDuration(r.lagSeconds)} behind the target`;
  const facts =
    r.state === 'dropped'
      ? [`sync dropped ${r.droppedAt}${r.dropReason ? ` (${r.dropReason})` : ''}: its slot and publication on the target are gone`]
      : r.state === 'prepared'
        ? [`sync prepared at the cutover's fence (from ${r.startLsn || '?'}); it streams once the cutover completed`]
        : [`sync ${r.state === 'failed' ? 'FAILED (retrying)' : 'streaming'}`, lag, `${formatCount(r.changesApplied)} change(s) applied`];
  const lines = wrap(facts.join(' · '), width, head, label(''));
  if (r.state !== 'dropped' && r.windowEndsAt) {
    const left = Date.parse(r.windowEndsAt) - now;
    const when = Number.isFinite(left) ? (left > 0 ? ` (in ${formatDuration(left / 1000)})` : ' (now)') : '';
    const back = m.phase === 'completed' ? `; cut back before: pgferry cutback ${m.id}` : '';
    lines.push(
      ...wrap(
        `window ends ${r.windowEndsAt}${when}: then ${r.slotName} and ${r.publicationName} are dropped on the target${back}`,
        width,
        label(''),
        label(''),
      ),
    );
  }
  if (r.lastError) lines.push(...wrap(`error (retrying): ${r.lastError}`, width, label(''), label('')));
  const f = r.fence;
  if (f && f.state !== 'none') {
    const said =
      f.state === 'kept'
        ? `target fence KEPT since ${f.since}: database ${f.database} starts every new session read-only (the application is on the source)`
        : f.state === 'up'
          ? `target fence UP since ${f.since} (the cutback runs)`
          : `target fence LIFT PENDING (${f.liftAttempts} attempt(s)${f.lastLiftError ? `, last: ${f.lastLiftError}` : ''}); the agent keeps retrying; by hand: ${f.liftStatement}`;
    lines.push(...wrap(said, width, label(''), label('')));
  }
  return lines;
}

/** `2026-…Z` → `12s ago` (from `now`); '' for no time. */
function ago(iso: string, now: number): string {
  const t = Date.parse(iso);
  return iso && Number.isFinite(t) ? `${formatDuration(Math.max(0, now - t) / 1000)} ago` : '';
}

/** The latest repairs shown in the status (the agent keeps more: pgferry status --json). */
const REPAIRS_SHOWN = 3;

/** The continuous verification: how much is verified and how recently, what changed since, repairs, the last error. */
function verificationLines(v: VerificationStatusMessage, width: number, label: (l: string) => string, now: number): string[] {
  const head = label('Verify');
  if (v.state === 'off') return wrap('off (verification.disabled): the cutover checks every row in full', width, head, label(''));
  const last = ago(v.lastVerifiedAt, now);
  const all = ago(v.oldestVerifiedAt, now);
  const facts = [
    `${v.state}: ${v.tablesVerified}/${v.tablesTotal} tables`,
    `${formatCount(v.rowsVerified)} of ~${formatCount(Math.max(v.rowsEstimated, v.rowsVerified))} rows`,
    last ? `last ${last}` : 'none yet',
    all ? `every table within ${all.replace(/ ago$/, '')}` : '',
  ];
  const lines = wrap(facts.filter(Boolean).join(' · '), width, head, label(''));
  if (v.keysChanged > 0 || v.tablesChanged > 0) {
    lines.push(
      ...wrap(
        `${formatCount(v.keysChanged)} row(s) in ${v.tablesChanged} table(s) changed since verified (checked again at the fence)`,
        width,
        label(''),
        label(''),
      ),
    );
  }
  if (v.rowsRepaired > 0 || v.rangesRepaired > 0) {
    lines.push(`${label('')}repaired ${formatCount(v.rowsRepaired)} row(s) in all (${v.rangesRepaired} repair(s) since the agent started)`);
    for (const r of v.repairs.slice(-REPAIRS_SHOWN)) lines.push(...wrap(r, width, `${label('')}  `, `${label('')}    `));
  }
  if (v.lastError) lines.push(...wrap(`error (retrying): ${v.lastError}`, width, label(''), label('')));
  return lines;
}

/** The latest schema changes shown in the status (the agent keeps 20: pgferry status --json). */
const SCHEMA_CHANGES_SHOWN = 3;

/** The source's schema changes followed: mode, how many and when, the latest ones, the tables kept, the last error. */
function schemaLines(c: SchemaChangesStatusMessage, width: number, label: (l: string) => string, now: number): string[] {
  const head = label('Schema');
  if (c.mode === 'stop' && c.applied === 0 && !c.keptTables.length) {
    return wrap('stop: a schema change on the source stops the sync (SCHEMA_DRIFT)', width, head, label(''));
  }
  const last = ago(c.lastAppliedAt, now);
  const reconciled = ago(c.lastReconciledAt, now);
  const facts = [c.mode, `${formatCount(c.applied)} change(s) applied`, last ? `last ${last}` : '', reconciled ? `reconciled ${reconciled}` : ''];
  const lines = wrap(facts.filter(Boolean).join(' · '), width, head, label(''));
  for (const e of c.recent.slice(-SCHEMA_CHANGES_SHOWN)) {
    const first = `${label('')}  ${e.at ? `${e.at.slice(11, 19)}Z` : '?'}  `;
    lines.push(...wrap(`${e.object}: ${e.change}`, width, first, ' '.repeat(first.length)));
  }
  if (c.keptTables.length) lines.push(...wrap(`kept on the target, dropped on the source: ${c.keptTables.join(', ')}`, width, label(''), label('')));
  if (c.lastError) lines.push(...wrap(`error (retrying): ${c.lastError}`, width, label(''), label('')));
  return lines;
}

/** `grace 120 · drain 40 · …`: the outage's parts. */
function outageParts(c: CutoverReportMessage): string {
  return (c.outageParts ?? []).map((p) => `${p.part} ${p.ms}`).join(' · ');
}

/** The outage of a cutover (the older report's write downtime when the agent gave no outage). */
const outageOf = (c: CutoverReportMessage): number => c.outageMs || c.writeDowntimeMs;

function cutoverSummary(c: CutoverReportMessage, width: number, head: string, label: (l: string) => string): string[] {
  const parts = [c.state];
  if (c.state === 'completed') parts.push(`application outage ${outageOf(c)} ms`);
  if (c.fenceLsn) parts.push(`fence ${c.fenceLsn}`);
  if (c.validation && c.validation !== 'none' && c.state === 'completed') parts.push(`${c.validation} ${c.validationOk ? 'match' : 'DIFFER'}`);
  const lines = wrap(parts.join(' · '), width, head, label(''));
  if (c.state === 'completed' && c.outageParts?.length) lines.push(...wrap(`${outageParts(c)} (ms)`, width, label(''), label('')));
  if (c.error) lines.push(...wrap(c.error, width, label(''), label('')));
  for (const w of c.warnings ?? []) lines.push(...wrap(`warning: ${w}`, width, label(''), label('')));
  return lines;
}

/** The list's lag: the sync's; after the cutover the reverse sync's (`back …`) while it runs, else none. */
function listLag(m: MigrationMessage): string {
  if (m.phase !== 'completed' && m.phase !== 'cut-back') return `${formatBytes(m.lagBytes)} / ${formatDuration(m.lagSeconds)}`;
  const r = m.reverse;
  return r && (r.state === 'streaming' || r.state === 'failed') ? `back ${formatBytes(r.lagBytes)}/${formatDuration(r.lagSeconds)}` : '-';
}

/** One line per migration, under a header. */
export function renderList(ms: MigrationMessage[], opts: ViewOptions = {}): string[] {
  const width = opts.width ?? DEFAULT_WIDTH;
  if (ms.length === 0) return ['No migrations on this agent. Start one with: pgferry start --spec FILE'];
  const idW = Math.max(8, Math.min(20, width - 62));
  const row = (id: string, phase: string, prog: string, lag: string, rate: string, wal: string) =>
    `${fit(id, idW).padEnd(idW)} ${fit(phase, 12).padEnd(12)} ${prog.padStart(5)}  ${fit(lag, 18).padEnd(18)} ${fit(rate, 9).padEnd(9)} ${wal}`;
  const lines = [row('ID', 'PHASE', 'LOAD', 'LAG', 'APPLY/S', 'WAL KEPT')];
  for (const m of ms) {
    const lag = m.phase === 'failed' ? m.errorCode : listLag(m);
    lines.push(
      row(
        m.id,
        m.fence?.state === 'lift-pending' ? 'FENCE-UP' : m.paused ? 'paused' : m.phase === 'cut-back' ? 'CUT-BACK' : m.phase,
        pct(m.progress),
        lag,
        formatCount(Math.round(m.applyRate)),
        formatBytes(m.retainedWalBytes),
      ),
    );
  }
  return lines.map((l) => fit(l, width));
}

/** A preflight report: verdict per check, with the fix under every one that is not a pass. */
export function renderPreflight(r: PreflightReportMessage, opts: ViewOptions = {}): string[] {
  const width = opts.width ?? DEFAULT_WIDTH;
  const lines = [
    fit(`Preflight ${r.ok ? 'passed' : 'FAILED'}: source PG ${r.sourceVersion || '?'}, target PG ${r.targetVersion || '?'}, ${r.tableCount} table(s)`, width),
  ];
  const nameW = Math.min(24, Math.max(10, ...r.checks.map((c) => c.name.length)));
  for (const c of r.checks) {
    const mark = c.verdict === 'pass' ? 'ok  ' : c.verdict === 'warn' ? 'WARN' : 'FAIL';
    const head = `  ${mark} ${fit(c.name, nameW).padEnd(nameW)} `;
    lines.push(...wrap(c.message || c.verdict, width, head, ' '.repeat(head.length)));
    if (c.verdict !== 'pass') {
      if (c.objects.length) lines.push(...wrap(c.objects.join(', '), width, `${' '.repeat(7)}objects: `, ' '.repeat(16)));
      if (c.remedy) lines.push(...wrap(c.remedy, width, `${' '.repeat(7)}fix: `, ' '.repeat(12)));
    }
  }
  return lines;
}

/** How a table was checked inside the fence; a report from before the verification has no mode. */
function checkMode(c: CutoverReportMessage, t: TableValidationMessage): string {
  return t.mode || (c.validation === 'counts' ? 'counts' : 'full');
}

/**
 * The rows' check inside the fence, per table: how (`unchanged`: verified
 * before the fence and not written since, nothing read; `changes`: only the
 * rows applied since; `full`; `counts`), the rows read on each side, the rows
 * found on each side (for `changes`, of the changed keys) and the verdict.
 */
function tableChecks(c: CutoverReportMessage, width: number): string[] {
  const num = (n: number, w: number) => String(n).padStart(w);
  const tW = Math.max(10, width - 2 - 10 - 11 - 12 - 12 - 7);
  const lines = [
    fit(
      `  ${'table'.padEnd(tW)} ${'checked'.padEnd(9)} ${'rows read'.padStart(10)} ${'source rows'.padStart(11)} ${'target rows'.padStart(11)} ${'result'}`,
      width,
    ),
  ];
  for (const t of c.tables) {
    const mode = checkMode(c, t);
    const rows = mode === 'unchanged' ? `${'-'.padStart(11)} ${'-'.padStart(11)}` : `${num(t.sourceRows, 11)} ${num(t.targetRows, 11)}`;
    lines.push(fit(`  ${fit(t.table, tW).padEnd(tW)} ${mode.padEnd(9)} ${num(t.rowsChecked, 10)} ${rows} ${t.match ? 'match' : 'DIFFER'}`, width));
  }
  const modes = new Set(c.tables.map((t) => checkMode(c, t)));
  if (modes.has('changes')) lines.push(fit('  (changes: source/target rows are the changed keys found on each side)', width));
  return lines;
}

/** The full cutover report (after `pgferry cutover`). */
export function renderCutover(m: MigrationMessage, opts: ViewOptions = {}): string[] {
  return renderSwitch(m, 'cutover', opts);
}

/** The full cutback report (after `pgferry cutback`): the cutover's shape, source and target swapped. */
export function renderCutback(m: MigrationMessage, opts: ViewOptions = {}): string[] {
  return renderSwitch(m, 'cutback', opts);
}

function renderSwitch(m: MigrationMessage, kind: 'cutover' | 'cutback', opts: ViewOptions): string[] {
  const width = opts.width ?? DEFAULT_WIDTH;
  const c = kind === 'cutover' ? m.cutover : m.cutback;
  if (!c) return [fit(`Migration ${m.id} has no ${kind} report (phase ${m.phase}).`, width)];
  const title = kind === 'cutover' ? 'Cutover' : 'Cutback';
  const lines = [
    fit(`${title} of ${m.id}: ${c.state.toUpperCase()}${c.attempts > 1 ? ` (attempt ${c.attempts})` : ''} · active endpoint: ${m.activeEndpoint}`, width),
  ];
  const clock = (iso: string) => (iso ? `${iso.slice(11, 23)}Z` : '?');
  if (c.state === 'completed') {
    lines.push(fit(`  application outage ${outageOf(c)} ms · fence LSN ${c.fenceLsn}`, width));
    if (c.outageParts?.length) lines.push(...wrap(outageParts(c), width, '    in ms: ', '           '));
    lines.push(
      fit(`  fenced ${c.fenceStartedAt.slice(0, 10)} ${clock(c.fenceStartedAt)} → ${clock(c.fenceEndedAt)} · completed ${clock(c.completedAt)}`, width),
    );
  }
  if (c.error) lines.push(...wrap(c.error, width, '  error: ', '         '));
  if (c.schemaCheck && c.schemaCheck.objects > 0) {
    const s = c.schemaCheck;
    lines.push(
      fit(`  schema: ${s.ok ? 'matches the source' : 'DIFFERS'} (${s.objects} objects compared, handover and check ${s.ms} ms inside the fence)`, width),
    );
    for (const d of s.differences.filter((x) => !x.startsWith('The target'))) lines.push(fit(`    ${d}`, width));
  }
  if (c.largeObjects && c.largeObjects.objects > 0) {
    const l = c.largeObjects;
    lines.push(
      fit(
        `  large objects: ${l.objects} (${l.created} new, ${l.updated} changed, ${l.unlinked} unlinked in the last pass, ${l.ms} ms inside the fence)`,
        width,
      ),
    );
  }
  if (c.tables.length) lines.push(...tableChecks(c, width));
  if (c.sequences.length) lines.push(fit(`  ${c.sequences.length} sequence(s) set on the ${kind === 'cutover' ? 'target' : 'source'}`, width));
  for (const w of c.warnings) lines.push(...wrap(w, width, '  warning: ', '           '));
  return lines;
}
