/**
 * cutback — the way back: the cutover's fenced, verified switch in the other
 * direction, after a completed cutover with a `rollbackWindow` whose reverse
 * sync (reverse-sync.ts) has kept the old source in step with the target.
 *
 *   waiting-for-lag → fencing (the target) → draining (into the old source)
 *   → sequences (target → old source) → validating → completed
 *   (the old source's fence lifted, verified; the migration `cut-back`)
 *
 * Input: a migration in phase `completed` whose reverse sync streams,
 * through its supervisor (`CutbackHost`). Output: the migration in phase
 * `cut-back`, `activeEndpoint` the source again, the report (outage and its
 * parts, verification), the target fenced and kept read-only, the reverse
 * slot and publication dropped — or, on any failure, the target's fence
 * lifted (verified, or retried and said so), the reverse sync still running,
 * the application still on the target, and an error saying what failed.
 *
 * Verification: there is no continuous verification in this direction, so
 * `changes` (the cutover's default) is taken as `full`: every row of every
 * table compared inside the fence (the outage grows with the database; the
 * report's `verification` part says how much). `counts` and `none` stay.
 */
import type pg from 'pg';
import { closeQuietly, connect, resolveEndpoint } from './conn';
import { PgferryError, asPgferryError, isPgferryError } from './errors';
import { formatLsn, parseLsn, type Lsn } from './lsn';
import { selectTables, type TableInfo } from './catalog';
import { migratableTables } from './preflight';
import { listSequences } from './schema';
import { selectSchemas } from './schema-objects-read';
import { checkRowsAtFence } from './cutover-verify';
import { setMarker } from './target-state';
import { failpoint } from './failpoints';
import { checkFencePrivileges, endClientSessions, liftStatement, waitForWriters, writersInFlight, type FenceKeeper } from './fence';
import { OLD_SOURCE_OPTIONS, type ReverseSync } from './reverse-sync';
import type { CutoverReport, OutagePart, Phase, Validation } from './state';
import type { MigrationSpec } from './spec';
import { sleep } from './sleep';
import { copySequences, newReport, type CutoverOptions } from './cutover';

/** What the cutback needs of its migration's supervisor (MigrationRunner). */
export interface CutbackHost {
  readonly id: string;
  readonly spec: MigrationSpec;
  readonly phase: Phase;
  readonly reverse: ReverseSync | null;
  /** The old source's fence, kept since the cutover: lifted at the end. */
  readonly fence: FenceKeeper;
  /** The fence the cutback raises on the target. */
  readonly targetFence: FenceKeeper;
  readonly previousCutback: CutoverReport | undefined;
  log(level: 'info' | 'warn' | 'error', msg: string, fields?: object): void;
  /** The report kept (a step began). */
  recordCutback(report: CutoverReport): void;
  /** Phase `cut-back`, the report and the target's kept fence in one atomic write. */
  completeCutback(report: CutoverReport): void;
}

interface Back {
  host: CutbackHost;
  reverse: ReverseSync;
  /** The target: fenced now, read from. */
  tgt: pg.Client;
  /** The old source: written to, its fence lifted at the end. */
  old: pg.Client;
  database: string;
  report: CutoverReport;
  signal: AbortSignal;
  deadline: number;
  timeoutMs: number;
  parts: OutagePart[];
  partEnd: number;
  log: (level: 'info' | 'warn' | 'error', msg: string) => void;
}

function endPart(b: Back, part: OutagePart['part']): void {
  const now = Date.now();
  b.parts.push({ part, ms: now - b.partEnd });
  b.partEnd = now;
}

async function step(b: Back, s: CutoverReport['state'] | 'completing'): Promise<void> {
  if (s !== 'completing') {
    b.report.state = s;
    b.host.recordCutback(b.report);
    b.log('info', `cutback: ${s}`);
  }
  if (b.signal.aborted) throw new PgferryError('CUTOVER_CANCELLED', `The cutback was cancelled while ${b.report.state}.`, 'Run the cutback again when ready.');
  await failpoint(`cutback.${s}`);
}

function timedOut(b: Back, what: string): PgferryError {
  return new PgferryError(
    'CUTOVER_TIMEOUT',
    `The cutback timed out after ${b.timeoutMs} ms while ${what}.`,
    'Retry when the write load on the target is lower, or raise `cutoverOptions.timeoutMs` / `maxLagBytes`.',
  );
}

/** Why a cutback cannot start at all (nothing is fenced), or null. */
export function cutbackRefusal(host: Pick<CutbackHost, 'id' | 'phase' | 'reverse' | 'spec'>): PgferryError | null {
  if (host.phase !== 'completed') {
    return new PgferryError(
      'CUTOVER_FAILED',
      `Migration '${host.id}' is in phase '${host.phase}': a cutback returns to the source only after a completed cutover.`,
      'Cut over first (`cutover: true`), with a `rollbackWindow` set.',
    );
  }
  const r = host.reverse?.record;
  if (!r) {
    return new PgferryError(
      'CUTOVER_FAILED',
      `Migration '${host.id}' was cut over without a rollback window: the old source did not follow the target, so going back would lose every write made since.`,
      'A cutback needs `rollbackWindow` set before the cutover. To move back now, declare a new migration from the target to the source.',
    );
  }
  if (r.state === 'dropped') {
    return new PgferryError(
      'CUTOVER_FAILED',
      `The rollback window of migration '${host.id}' is over (${r.dropReason}, at ${r.droppedAt}): the old source no longer follows the target.`,
      'To move back now, declare a new migration from the target to the source.',
    );
  }
  return null;
}

/**
 * Run the cutback. Resolves with the completed report; rejects after lifting
 * the target's fence (verified, or left to the background retry and said so)
 * with the reverse sync still running.
 */
export async function runCutback(host: CutbackHost, opts: CutoverOptions, signal: AbortSignal): Promise<CutoverReport> {
  const refused = cutbackRefusal(host);
  if (refused) throw refused;
  const reverse = host.reverse!;
  const validation: Validation = !opts.validation || opts.validation === 'changes' ? 'full' : opts.validation;
  const timeoutMs = opts.timeoutMs ?? 300_000;
  const b: Back = {
    host,
    reverse,
    tgt: undefined as unknown as pg.Client,
    old: undefined as unknown as pg.Client,
    database: resolveEndpoint(host.spec.target).database,
    report: newReport(host.previousCutback, validation),
    signal,
    deadline: Date.now() + timeoutMs,
    timeoutMs,
    parts: [],
    partEnd: 0,
    log: (level, msg) => host.log(level, msg, { migration: host.id }),
  };
  host.recordCutback(b.report);
  let connected = false;
  try {
    const queryTimeoutMs = timeoutMs + 2000;
    b.tgt = await connect('target', host.spec.target, { applicationName: `pgferry cutback ${host.id}`, extraOptions: OLD_SOURCE_OPTIONS, queryTimeoutMs });
    b.old = await connect('source', host.spec.source, {
      applicationName: `pgferry cutback ${host.id}`,
      extraOptions: OLD_SOURCE_OPTIONS,
      queryTimeoutMs,
    }).catch(async (e) => {
      await closeQuietly(b.tgt);
      throw e;
    });
    connected = true;
    await checkFencePrivileges(b.tgt, b.database, 'target');
    await waitForLag(b, opts.maxLagBytes ?? 1024 * 1024, opts.maxLagSeconds ?? 5);
    const tables = migratableTables((await selectTables(b.tgt, host.spec.tables)).tables);
    const schemas = host.spec.schemaMode === 'create' ? await selectSchemas(b.tgt, host.spec.tables) : [];
    const sequences = await listSequences(b.tgt, tables, schemas);
    const { fenceStart, fenceLsn } = await fenceTarget(b, opts.graceMs ?? 500);
    await drain(b, fenceLsn);
    await step(b, 'sequences');
    if (!opts.skipSequences) b.report.sequences.push(...(await copySequences(b.tgt, b.old, sequences)));
    endPart(b, 'sequences');
    await validate(b, tables, validation);
    await step(b, 'completing');
    await reverse.stop();
    // The old source takes the application again: its fence (kept since the cutover) lifted, verified.
    const lift = await host.fence.liftOnce({ includeKept: true });
    if (!lift.lifted) {
      throw new PgferryError(
        'CUTOVER_FAILED',
        `The old source's fence on database '${resolveEndpoint(host.spec.source).database}' could not be lifted (${lift.error}), so it cannot take the application back.`,
        'Make the source reachable and run the cutback again.',
      );
    }
    b.report.state = 'completed';
    b.report.completedAt = new Date().toISOString();
    b.report.fenceEndedAt = b.report.completedAt;
    host.targetFence.markKept();
    host.completeCutback(b.report);
    endPart(b, 'completing');
    b.report.outageParts = b.parts;
    b.report.outageMs = b.partEnd - fenceStart;
    b.report.writeDowntimeMs = b.report.outageMs;
    host.recordCutback(b.report);
    b.log(
      'info',
      `cutback completed: application outage ${b.report.outageMs} ms (${b.parts.map((p) => `${p.part} ${p.ms}`).join(', ')}); the source is active again`,
    );
    await reverse
      .drop('the cutback completed')
      .catch((e) => b.log('warn', `the reverse slot on the target is left, dropped at delete: ${(e as Error).message}`));
    return b.report;
  } catch (e) {
    throw await failCutback(b, e);
  } finally {
    if (connected) {
      await closeQuietly(b.tgt);
      await closeQuietly(b.old);
    }
  }
}

async function waitForLag(b: Back, maxLagBytes: number, maxLagSeconds: number): Promise<void> {
  await step(b, 'waiting-for-lag');
  for (;;) {
    if (b.signal.aborted) throw new PgferryError('CUTOVER_CANCELLED', 'The cutback was cancelled while waiting for lag; nothing was fenced.', '');
    const lag = await b.reverse.lag();
    if (b.reverse.progress && b.reverse.record?.state === 'streaming' && lag.lagBytes <= maxLagBytes && lag.lagSeconds <= maxLagSeconds) return;
    if (Date.now() > b.deadline)
      throw timedOut(b, `waiting for the reverse sync's lag (now ${lag.lagBytes} bytes${b.reverse.lastError ? `; ${b.reverse.lastError}` : ''})`);
    await sleep(100);
  }
}

/** Fence the target as the cutover fences the source: new sessions read-only, a grace for writers in flight, the rest ended. */
async function fenceTarget(b: Back, graceMs: number): Promise<{ fenceStart: number; fenceLsn: Lsn }> {
  await step(b, 'fencing');
  const fenceStart = Date.now();
  b.partEnd = fenceStart;
  await b.host.targetFence.raise(b.tgt, b.database);
  b.report.fenceStartedAt = new Date(fenceStart).toISOString();
  const inFlight = await writersInFlight(b.tgt);
  await failpoint('cutback.fenced');
  await waitForWriters(b.tgt, inFlight, graceMs);
  endPart(b, 'grace');
  const pids = await endClientSessions(b.tgt, () => {
    if (Date.now() > b.deadline) throw timedOut(b, 'waiting for terminated sessions to exit');
  });
  const fenceLsn = parseLsn((await b.tgt.query('SELECT pg_current_wal_insert_lsn()::text AS l')).rows[0].l);
  b.report.fenceLsn = formatLsn(fenceLsn);
  endPart(b, 'terminate');
  b.log('info', `cutback: target fenced at ${b.report.fenceLsn}; ended ${pids.length} session(s)`);
  return { fenceStart, fenceLsn };
}

/** The old source has committed everything the target committed below the fence, durably. */
async function drain(b: Back, fenceLsn: Lsn): Promise<void> {
  await step(b, 'draining');
  for (;;) {
    if (b.signal.aborted) throw new PgferryError('CUTOVER_CANCELLED', 'The cutback was cancelled while draining.', 'Run the cutback again when ready.');
    const p = b.reverse.progress;
    if (p && p.pendingChanges === 0 && (p.appliedLsn >= fenceLsn || p.decodedLsn >= fenceLsn)) break;
    if (Date.now() > b.deadline)
      throw timedOut(b, `draining to the target's fence LSN ${b.report.fenceLsn} (applied ${p ? formatLsn(p.appliedLsn) : 'nothing yet'})`);
    await sleep(5);
  }
  await b.old.query('SET synchronous_commit = on');
  await setMarker(b.old, b.host.id, 'cutback-drained', b.report.fenceLsn);
  endPart(b, 'drain');
}

async function validate(b: Back, tables: TableInfo[], validation: Validation): Promise<void> {
  await step(b, 'validating');
  const v0 = Date.now();
  // The target is the side the application wrote: it plays the source here.
  const check = await checkRowsAtFence(b.tgt, b.old, tables, validation, null);
  b.report.tables.push(...check.tables);
  b.report.warnings.push(...check.warnings);
  const bad = b.report.tables.filter((x) => !x.match);
  b.report.validationOk = bad.length === 0;
  if (bad.length) {
    const what = (x: (typeof bad)[number]) => check.details.get(x.table) ?? `target ${x.sourceRows} rows, old source ${x.targetRows}`;
    throw new PgferryError(
      'CUTOVER_FAILED',
      `Validation found ${bad.length} table(s) that differ between the target and the old source: ${bad.map((x) => `${x.table} (${what(x)})`).join(', ')}.`,
      "Something wrote to the old source behind pgferry's back (its fence binds new sessions only), or rows were lost. Inspect those tables; the application stays on the target.",
    );
  }
  b.report.validationMs = Date.now() - v0;
  endPart(b, 'verification');
}

/** A cutback that failed: the target's fence lifted (verified, or retried and said so), the reverse sync going on. */
async function failCutback(b: Back, e: unknown): Promise<PgferryError> {
  const err = isPgferryError(e) ? e : asPgferryError(e, 'CUTOVER_FAILED', `cutback step '${b.report.state}'`);
  const failedStep = b.report.state;
  b.report.state = 'failed';
  const lift = await b.host.targetFence.liftOnce();
  let outcome: string;
  if (!lift.wasUp) outcome = 'Nothing was fenced on the target: the application kept writing there.';
  else if (lift.lifted)
    outcome = `The target's fence was lifted and verified: database '${b.database}' accepts writes again, and the application stays on the target.`;
  else {
    b.host.targetFence.keepLifting();
    const f = b.host.targetFence.record;
    outcome =
      `The target's fence could NOT be lifted yet (${lift.error}): database '${b.database}' still starts every new session read-only. ` +
      `The agent keeps retrying; by hand: ${f ? liftStatement(f.database, f.previous) : liftStatement(b.database, null)}`;
  }
  // The reverse sync goes on (a stop in the last step is undone).
  b.reverse.start();
  b.report.error = `${err.detail} ${outcome}`;
  b.host.recordCutback(b.report);
  b.log(lift.lifted ? 'warn' : 'error', `cutback failed while ${failedStep}: ${err.message} ${outcome}`);
  const code = err.code === 'CUTOVER_TIMEOUT' || err.code === 'CUTOVER_CANCELLED' ? err.code : 'CUTOVER_FAILED';
  return new PgferryError(code, `The cutback failed while ${failedStep}: ${err.message} ${outcome}`, err.remedy || 'Fix the cause and run the cutback again.', {
    cause: e,
  });
}
