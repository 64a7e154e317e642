/**
 * cutover — the short, fenced, verified switch from source to target.
 *
 *   waiting-for-lag → waiting-for-verification → fencing → draining →
 *   sequences → large-objects → schema → validating → completed
 *
 * Input: a migration in phase `syncing`, through its supervisor
 * (`CutoverHost`), and the caller's options.
 * Output: the migration in phase `completed` with its report (fence times,
 * write downtime, fence LSN, per-table counts/checksums, sequences set), or —
 * on any failure before completion — the fence lifted (fence.ts), the source
 * writable, sync still running, and an error saying what failed and what to do.
 *
 * The protocol, step by step with what happens on failure, the fence's rules
 * and what the report measures: docs/architecture.md, "The cutover protocol
 * and the fence".
 */
import type pg from 'pg';
import { closeQuietly, connect, ql, qn, resolveEndpoint } from './conn';
import { PgferryError, asPgferryError, isPgferryError } from './errors';
import { formatLsn, parseLsn, type Lsn } from './lsn';
import { selectTables, type TableInfo } from './catalog';
import { migratableTables } from './preflight';
import { listSequences } from './schema';
import { selectSchemas } from './schema-objects-read';
import { checkRowsAtFence } from './cutover-verify';
import { dropGuards } from './verify-guard';
import type { Verifier } from './verify';
import { getMarker, setMarker } from './target-state';
import { failpoint } from './failpoints';
import { checkFencePrivileges, endClientSessions, liftStatement, waitForWriters, writersInFlight, type FenceKeeper, type LiftResult } from './fence';
import type { CutoverReport, OutagePart, Phase, StoredError, Validation } from './state';
import type { MigrationSpec } from './spec';
import type { SyncProgress } from './sync';
import { sleep } from './sleep';
import type { SchemaKeeper } from './schema-follow';
import { catalogSignature, handOver, largeObjectPass, prepareHandover, refreshAfterHandover, undoHandover, type PreparedHandover } from './cutover-schema';
import type { SchemaPlan } from './schema';
import type { ReverseSync } from './reverse-sync';
import { rollbackWindowMs } from './spec';

export { VALIDATIONS, type CutoverReport, type TableValidation, type Validation } from './state';

export const FENCE_METHODS = ['default_transaction_read_only'] as const;
export type FenceMethod = (typeof FENCE_METHODS)[number];
export interface CutoverOptions {
  /** Wait until lag is at most this many bytes before fencing (default 1 MiB). */
  maxLagBytes?: number;
  /** …and at most this many seconds (default 5). */
  maxLagSeconds?: number;
  /** The whole cutover, in ms (default 300 000). */
  timeoutMs?: number;
  fenceMethod?: FenceMethod;
  /** Grace for transactions in flight at the fence, in ms (default 500). */
  graceMs?: number;
  skipSequences?: boolean;
  /** Default `changes`: the rows applied since the continuous verification (cutover-verify.ts). */
  validation?: Validation;
  /** Schema differences the user accepts (objects as `pgferry schema diff` names them): they do not fail the cutover. */
  acceptSchemaDifferences?: string[];
}

/**
 * What the cutover needs of its migration's supervisor (MigrationRunner):
 * it reads the sync's progress and reports its own; the supervisor alone
 * changes the phase and keeps the report.
 */
export interface CutoverHost {
  readonly id: string;
  readonly spec: MigrationSpec;
  /** The migration's phase and, when it failed, why. */
  readonly phase: Phase;
  readonly lastError: StoredError | undefined;
  readonly sync: SyncProgress | null;
  readonly fence: FenceKeeper;
  /** The report of the cutover before this one, if any. */
  readonly previousCutover: CutoverReport | undefined;
  /** The continuous verification (verify.ts), when it runs in this process. */
  readonly verifier: Verifier | null;
  /** The source's schema kept on the target (schema-follow.ts), with schemaChanges 'follow' once the sync ran in this process. */
  readonly schemaKeeper: SchemaKeeper | null;
  /** The way back (reverse-sync.ts): prepared before the fence when the spec has a `rollbackWindow`. */
  readonly reverse: ReverseSync;
  status(): Promise<{ lagBytes: number; lagSeconds: number }>;
  log(level: 'info' | 'warn' | 'error', msg: string, fields?: object): void;
  /** Phase `cutting-over`, the report kept. */
  beginCutover(report: CutoverReport): void;
  /** The report kept (a step began). */
  recordCutover(report: CutoverReport): void;
  /** Phase `completed`, the report and the kept fence in one atomic write; streaming stops. */
  completeCutover(report: CutoverReport): Promise<void>;
  /** Back to `syncing` (unless the sync failed meanwhile), the failed report kept. */
  abandonCutover(report: CutoverReport): void;
}

export function newReport(prev: CutoverReport | undefined, validation: Validation): CutoverReport {
  return {
    state: 'waiting-for-lag',
    startedAt: new Date().toISOString(),
    fenceStartedAt: '',
    fenceEndedAt: '',
    writeDowntimeMs: 0,
    validationMs: 0,
    fenceLsn: '',
    tables: [],
    sequences: [],
    warnings: [],
    validation,
    validationOk: false,
    completedAt: '',
    error: '',
    attempts: (prev?.attempts ?? 0) + 1,
  };
}

/** How much longer than the whole cutover one of its queries may take before it is abandoned. */
const QUERY_TIMEOUT_MARGIN_MS = 2000;

/** One cutover in progress: its runner, connections, options, report and clock. */
interface Cut {
  runner: CutoverHost;
  src: pg.Client;
  tgt: pg.Client;
  database: string;
  report: CutoverReport;
  signal: AbortSignal;
  deadline: number;
  timeoutMs: number;
  log: (level: 'info' | 'warn' | 'error', msg: string) => void;
  /** The outage's parts so far, and when the last one ended. */
  parts: OutagePart[];
  partEnd: number;
}

/** The part of the outage that ends now. */
function endPart(c: Cut, part: OutagePart['part']): void {
  const now = Date.now();
  c.parts.push({ part, ms: now - c.partEnd });
  c.partEnd = now;
}

const remaining = (c: Cut) => c.deadline - Date.now();

function timedOut(c: Cut, what: string): PgferryError {
  return new PgferryError(
    'CUTOVER_TIMEOUT',
    `The cutover timed out after ${c.timeoutMs} ms while ${what}.`,
    'Retry when the write load is lower, or raise `cutoverOptions.timeoutMs` / `maxLagBytes`.',
  );
}

function cancelled(c: Cut): PgferryError {
  const fenced = !!c.runner.fence.record;
  const why = typeof c.signal.reason === 'string' ? c.signal.reason : 'cancel-cutover';
  return new PgferryError(
    'CUTOVER_CANCELLED',
    `The cutover was cancelled (${why}) while ${c.report.state}${fenced ? '' : '; nothing was fenced'}.`,
    'Start the cutover again when ready.',
  );
}

/** Enter a step: record it, stop if cancelled, pass its failpoint. */
async function step(c: Cut, s: CutoverReport['state'] | 'completing'): Promise<void> {
  if (s !== 'completing') {
    c.report.state = s;
    c.runner.recordCutover(c.report);
    c.log('info', `cutover: ${s}`);
  }
  if (c.signal.aborted) throw cancelled(c);
  await failpoint(`cutover.${s}`);
  if (c.signal.aborted) throw cancelled(c);
}

function syncFailed(c: Cut, during: string): PgferryError | null {
  if (c.runner.phase !== 'failed') return null;
  return new PgferryError('CUTOVER_FAILED', `Sync failed ${during}: ${c.runner.lastError?.message}`, c.runner.lastError?.remedy ?? '');
}

/** 1. Lag under the thresholds, without fencing (cancellable). */
async function waitForLag(c: Cut, maxLagBytes: number, maxLagSeconds: number): Promise<void> {
  await step(c, 'waiting-for-lag');
  for (;;) {
    if (c.signal.aborted) throw cancelled(c);
    const failed = syncFailed(c, 'while waiting for lag');
    if (failed) throw failed;
    const s = await c.runner.status();
    if (c.runner.sync && s.lagBytes <= maxLagBytes && s.lagSeconds <= maxLagSeconds) return;
    if (remaining(c) <= 0) throw timedOut(c, `waiting for lag (now ${s.lagBytes} bytes, ${s.lagSeconds.toFixed(1)} s)`);
    await sleep(100);
  }
}

/** 2. Fence: new sessions read-only, a grace for writers, the rest ended; returns the fence LSN. */
async function fenceWriters(c: Cut, graceMs: number): Promise<{ fenceStart: number; fenceLsn: Lsn }> {
  await step(c, 'fencing');
  const fenceStart = Date.now();
  c.partEnd = fenceStart;
  await c.runner.fence.raise(c.src, c.database);
  c.report.fenceStartedAt = new Date(fenceStart).toISOString();
  const inFlight = await writersInFlight(c.src);
  await failpoint('cutover.fenced');
  if (c.signal.aborted) throw cancelled(c);
  await waitForWriters(c.src, inFlight, graceMs);
  endPart(c, 'grace');
  const pids = await endClientSessions(c.src, () => {
    if (remaining(c) <= 0) throw timedOut(c, 'waiting for terminated sessions to exit');
  });
  // The INSERT position, not pg_current_wal_lsn() (the write position): with
  // synchronous_commit=off an acknowledged commit can sit above the latter.
  const fenceLsn: Lsn = parseLsn((await c.src.query('SELECT pg_current_wal_insert_lsn()::text AS l')).rows[0].l);
  c.report.fenceLsn = formatLsn(fenceLsn);
  endPart(c, 'terminate');
  c.log('info', `cutover: fenced at ${c.report.fenceLsn}; ended ${pids.length} session(s)`);
  return { fenceStart, fenceLsn };
}

/** 3. Drain: the target has committed everything below the fence, durably. */
async function drainToFence(c: Cut, fenceLsn: Lsn): Promise<void> {
  await step(c, 'draining');
  for (;;) {
    if (c.signal.aborted) throw cancelled(c);
    const failed = syncFailed(c, 'during the drain');
    if (failed) throw failed;
    const s = c.runner.sync;
    // Everything below the fence committed on the target: either applied
    // past it, or decoded past it (at a transaction boundary) with nothing
    // pending — a batch that failed stays pending, and a new session
    // reports only what it decoded itself (sync.ts).
    if (s && s.pendingChanges === 0 && (s.appliedLsn >= fenceLsn || s.decodedLsn >= fenceLsn)) break;
    if (remaining(c) <= 0) throw timedOut(c, `draining to the fence LSN ${c.report.fenceLsn} (applied ${s ? formatLsn(s.appliedLsn) : 'nothing yet'})`);
    await sleep(5);
  }
  // The apply commits asynchronously; make everything it committed durable
  // before the target takes over (a synchronous commit flushes all WAL before it).
  await c.tgt.query('SET synchronous_commit = on');
  await setMarker(c.tgt, c.runner.id, 'cutover-drained', c.report.fenceLsn);
  endPart(c, 'drain');
}

/** 4. Sequences: after the last change, so the first insert on the target cannot collide. */
async function syncSequences(c: Cut, sequences: Array<{ schema: string; name: string }>): Promise<void> {
  await step(c, 'sequences');
  c.report.sequences.push(...(await copySequences(c.src, c.tgt, sequences)));
}

/** Every sequence's position from `from` set on `to`: all read in one query, all set in one. */
export async function copySequences(
  from: pg.Client,
  to: pg.Client,
  sequences: Array<{ schema: string; name: string }>,
): Promise<Array<{ sequence: string; value: number }>> {
  if (!sequences.length) return [];
  const names = sequences.map((sq) => qn(sq.schema, sq.name));
  const read = names.map((n, i) => `SELECT ${i} AS i, last_value::text AS v, is_called FROM ${n}`).join(' UNION ALL ');
  const rows = (await from.query(read)).rows.sort((a, b) => a.i - b.i);
  const set = rows.map((r) => `SELECT setval(${ql(names[r.i])}::regclass, ${ql(r.v)}::bigint, ${r.is_called ? 'true' : 'false'})`).join('; ');
  await to.query(set);
  return rows.map((r) => ({ sequence: names[r.i], value: Number(r.v) }));
}

/** 5. The rows' check (source still fenced, so both sides are still): cutover-verify.ts. */
async function validateTables(c: Cut, tables: TableInfo[], validation: Validation): Promise<void> {
  await step(c, 'validating');
  const v0 = Date.now();
  const check = await checkRowsAtFence(c.src, c.tgt, tables, validation, c.runner.verifier);
  c.report.tables.push(...check.tables);
  c.report.warnings.push(...check.warnings);
  c.report.validationOk = true;
  const bad = c.report.tables.filter((x) => !x.match);
  if (bad.length) {
    c.report.validationOk = false;
    const what = (x: (typeof bad)[number]) => check.details.get(x.table) ?? `source ${x.sourceRows} rows, target ${x.targetRows}`;
    throw new PgferryError(
      'CUTOVER_FAILED',
      `Validation found ${bad.length} table(s) that differ between source and target: ${bad.map((x) => `${x.table} (${what(x)})`).join(', ')}.`,
      "Something changed the target behind pgferry's back, or rows were lost. Inspect those tables (pgferry status shows what the verification repaired); re-create the migration to reload them.",
    );
  }
  c.report.validationMs = Date.now() - v0;
  endPart(c, 'verification');
}

/**
 * 1b. The continuous verification has checked every table at least once
 * (nothing fenced yet, cancellable, like the wait for lag); then its rounds
 * stop, so that nothing pauses the apply while it drains.
 */
async function waitForVerification(c: Cut, validation: Validation, maxLagBytes: number, maxLagSeconds: number): Promise<void> {
  const v = c.runner.verifier;
  if (!v) return;
  if (validation !== 'changes') {
    await v.halt();
    return;
  }
  await step(c, 'waiting-for-verification');
  v.wantFence();
  let said = '';
  for (;;) {
    if (c.signal.aborted) throw cancelled(c);
    const failed = syncFailed(c, 'while waiting for the verification');
    if (failed) throw failed;
    const r = v.readiness();
    if (r.ready) {
      // The lag may have grown while the verification ran: what the fence would have to drain.
      const s = await c.runner.status();
      if (s.lagBytes <= maxLagBytes && s.lagSeconds <= maxLagSeconds) {
        // Stopped, then asked again: a round that ended meanwhile (a pass completing brings its table's
        // changes since its start) must not slip in between the answer and the fence.
        await v.halt();
        if (v.readiness().ready) break;
        v.resume();
        v.wantFence();
        continue;
      }
      r.waitingFor = `the lag to come down again (now ${s.lagBytes} bytes, ${s.lagSeconds.toFixed(1)} s)`;
    }
    if (r.waitingFor !== said) {
      said = r.waitingFor;
      c.log('info', `cutover: waiting for the verification: ${said}`);
    }
    if (remaining(c) <= 0)
      throw new PgferryError(
        'CUTOVER_TIMEOUT',
        `The cutover timed out after ${c.timeoutMs} ms waiting for the continuous verification (nothing was fenced): ${r.waitingFor}.`,
        'Run the cutover again later (pgferry status shows how much is verified), raise `cutoverOptions.timeoutMs` or `verification.rowsPerSecond`, or use `validation: "full"` to check every row inside the fence instead.',
      );
    await sleep(200);
  }
  c.log('info', `cutover: verified; rows to re-check inside the fence: ${v.tracker.summary().keys}`);
}

/**
 * 4b. The schema handover and its check (cutover-schema.ts), when pgferry
 * created the schema; returns the plan handed over (a later failure switches
 * it off again).
 */
async function handOverSchema(c: Cut, tables: TableInfo[], accept: string[], pre: BeforeFence): Promise<SchemaPlan | undefined> {
  const spec = c.runner.spec;
  if (spec.schemaMode !== 'create') return undefined;
  if (!pre.finished) {
    // Started by an agent older than the whole-database schema stage: its target has the tables only,
    // so there is nothing to hand over, and comparing would fail on what was never created.
    c.report.warnings.push(
      'This migration was started before pgferry carried the whole schema (views, functions, triggers, grants…): the target has its tables only, and the schema was not compared. Recreate the rest on the target, or start the migration again to have it carried.',
    );
    return undefined;
  }
  await step(c, 'schema');
  const h = await handOver(c.src, c.tgt, spec, tables, accept, pre.handover);
  c.report.schemaCheck = h.check;
  return h.plan;
}

/**
 * 4a. The source's schema changes the stream did not bring (columns of a
 * table no row changed since, NOT NULL, defaults) and the objects changed
 * since the read before the fence: catalog queries, and DDL only for what
 * changed. Counted in the outage's `schema` part.
 */
async function followAtFence(c: Cut, tables: TableInfo[], signature: string): Promise<void> {
  const keeper = c.runner.schemaKeeper;
  if (!keeper) return;
  const made = await keeper.atFence(c.src, c.tgt, tables, signature);
  if (made) c.log('info', `cutover: ${made} schema change(s) of the source followed on the target inside the fence`);
}

/** What the cutover reads before the fence, so that the fence does not wait for it. */
interface BeforeFence {
  tables: TableInfo[];
  /** The schema stage's finish marker is on the target (the handover has something to switch on). */
  finished: boolean;
  /** The source's side of the handover (cutover-schema.ts), when there is one. */
  handover?: PreparedHandover;
  /** The sequences to set at the fence: with the schema pgferry created, every one of the migrated schemas; with the user's, those the tables use. */
  sequences: Array<{ schema: string; name: string }>;
  signature: string;
}

/** 1a. The source's tables, and its side of the schema handover, read before the fence (nothing is fenced yet). */
async function readBeforeFence(c: Cut): Promise<BeforeFence> {
  const spec = c.runner.spec;
  // The source's schema changes followed once more, so that the reconciliation inside the fence finds (nearly) nothing.
  const followed = await c.runner.schemaKeeper?.beforeFence(10_000);
  if (followed) c.log('info', `cutover: ${followed} schema change(s) of the source followed on the target before the fence`);
  const signature = await catalogSignature(c.src);
  const tables = migratableTables((await selectTables(c.src, spec.tables)).tables);
  const finished = spec.schemaMode === 'create' && (await getMarker(c.tgt, c.runner.id, 'finish')) !== undefined;
  const handover = finished ? await prepareHandover(c.src, spec, tables) : undefined;
  return { tables, finished, handover, signature, sequences: await sequencesOf(c, tables) };
}

async function sequencesOf(c: Cut, tables: TableInfo[]): Promise<Array<{ schema: string; name: string }>> {
  const schemas = c.runner.spec.schemaMode === 'create' ? await selectSchemas(c.src, c.runner.spec.tables) : [];
  return listSequences(c.src, tables, schemas);
}

/**
 * Inside the fence: what was read before it still holds when the source's
 * catalog did not change since (DDL then is refused); else read again.
 */
async function stillBeforeFence(c: Cut, pre: BeforeFence): Promise<BeforeFence> {
  if ((await catalogSignature(c.src)) === pre.signature) return pre;
  c.log('info', "cutover: the source's catalog changed before the fence; reading its tables and schema again");
  const tables = migratableTables((await selectTables(c.src, c.runner.spec.tables)).tables);
  return { tables, finished: pre.finished, handover: undefined, signature: '', sequences: await sequencesOf(c, tables) };
}

/** What the failed cutover's message says about the fence: only what was verified. */
function fenceOutcome(runner: CutoverHost, database: string, lift: LiftResult, fenceStartedAt: string): string {
  if (!lift.wasUp && fenceStartedAt)
    return 'The fence had already been lifted (verified) while the cutover ran; the source accepts writes, and the sync continues.';
  if (!lift.wasUp) return 'Nothing was fenced: the source accepted writes throughout, and the sync continues.';
  if (lift.lifted) {
    return `The fence was lifted and verified: database '${database}' accepts writes again${lift.sessionsEnded ? ` (${lift.sessionsEnded} session(s) opened read-only during the fence were ended so that they reconnect writable)` : ''}, and the sync continues.`;
  }
  const f = runner.fence.record;
  return (
    `The fence could NOT be lifted yet (${lift.error}): database '${database}' still starts every new session read-only. ` +
    `The agent keeps retrying every few seconds (pgferry status ${runner.id} shows the fence as 'lift-pending'); to lift it by hand now: ` +
    `${f ? liftStatement(f.database, f.previous) : liftStatement(database, null)} (or pgferry unfence ${runner.id}).`
  );
}

/**
 * Run the cutover. Resolves with the completed report; rejects with
 * CUTOVER_FAILED / CUTOVER_TIMEOUT / CUTOVER_CANCELLED after lifting the
 * fence (verified, or left to the background retry and said so).
 */
export async function runCutover(runner: CutoverHost, opts: CutoverOptions, signal: AbortSignal): Promise<CutoverReport> {
  const database = resolveEndpoint(runner.spec.source).database;
  if (runner.fence.pending) {
    // An earlier cutover's fence is not verified lifted: lift it first (its
    // `previous` setting is the one to restore, not today's 'on').
    const lift = await runner.fence.liftOnce();
    if (!lift.lifted) {
      runner.fence.keepLifting();
      throw new PgferryError(
        'CUTOVER_FAILED',
        `An earlier cutover's fence on database '${database}' is not lifted yet (${lift.error}); nothing new was fenced.`,
        `Wait until the agent lifts it (pgferry status ${runner.id}), or lift it by hand: ${runner.fence.status(false).liftStatement}`,
      );
    }
  }
  const validation = opts.validation ?? 'changes';
  const timeoutMs = opts.timeoutMs ?? 300_000;
  const report = newReport(runner.previousCutover, validation);
  const c: Cut = {
    runner,
    database,
    report,
    signal,
    timeoutMs,
    deadline: Date.now() + timeoutMs,
    src: undefined as unknown as pg.Client,
    tgt: undefined as unknown as pg.Client,
    log: (level, msg) => runner.log(level, msg, { migration: runner.id, step: report.state }),
    parts: [],
    partEnd: 0,
  };
  runner.beginCutover(report);
  let connected = false;
  /** Set once the handover committed: a later failure switches it off again. */
  let handedOver: SchemaPlan | undefined;
  /** Set once the write guards may be gone: a later failure has the verification start over. */
  let guardsDropped = false;
  try {
    // No query may outlive the cutover: a path that drops packets (rather than
    // resetting the connection) would otherwise hold the fence up until TCP
    // gives up, minutes later. The catch below then lifts it on a fresh connection.
    const queryTimeoutMs = timeoutMs + QUERY_TIMEOUT_MARGIN_MS;
    c.src = await connect('source', runner.spec.source, {
      applicationName: `pgferry cutover ${runner.id}`,
      extraOptions: '-c default_transaction_read_only=off',
      queryTimeoutMs,
    });
    c.tgt = await connect('target', runner.spec.target, { applicationName: `pgferry cutover ${runner.id}`, queryTimeoutMs }).catch(async (e) => {
      await closeQuietly(c.src);
      throw e;
    });
    connected = true;
    await checkFencePrivileges(c.src, database);
    const prepared = await c.src.query('SELECT gid FROM pg_prepared_xacts WHERE database = current_database()');
    if (prepared.rows.length) {
      throw new PgferryError(
        'CUTOVER_FAILED',
        `The source database has ${prepared.rows.length} prepared transaction(s) (${prepared.rows.map((r) => r.gid).join(', ')}) that could commit after the fence.`,
        'COMMIT PREPARED or ROLLBACK PREPARED them, then retry the cutover.',
      );
    }
    const maxLagBytes = opts.maxLagBytes ?? 1024 * 1024;
    const maxLagSeconds = opts.maxLagSeconds ?? 5;
    await waitForLag(c, maxLagBytes, maxLagSeconds);
    const before = await readBeforeFence(c);
    if (rollbackWindowMs(runner.spec) > 0) {
      // The way back, made before the fence so that it sees every change the target commits from there on.
      await runner.reverse.prepare(c.tgt, before.tables);
    }
    await waitForVerification(c, validation, maxLagBytes, maxLagSeconds);
    const { fenceStart, fenceLsn } = await fenceWriters(c, opts.graceMs ?? 500);
    await drainToFence(c, fenceLsn);
    const pre = await stillBeforeFence(c, before);
    const tables = pre.tables;
    if (!opts.skipSequences) await syncSequences(c, pre.sequences);
    else await step(c, 'sequences');
    endPart(c, 'sequences');
    await step(c, 'large-objects');
    report.largeObjects = await largeObjectPass(c.src, c.tgt, runner.id, runner.spec);
    endPart(c, 'large-objects');
    await followAtFence(c, tables, pre.signature);
    handedOver = await handOverSchema(c, tables, opts.acceptSchemaDifferences ?? [], pre);
    endPart(c, 'schema');
    await validateTables(c, tables, validation);

    // 6. Completed: the write guards off the target's tables, the fence kept, streaming stopped; the slot stays until the migration is deleted.
    await step(c, 'completing');
    guardsDropped = true;
    await dropGuards(c.tgt, tables);
    report.state = 'completed';
    const completedAt = new Date();
    // After pgferry's last write to the target's tables: where the target's own changes begin.
    await runner.reverse.markStart(c.tgt, completedAt);
    report.completedAt = completedAt.toISOString();
    report.fenceEndedAt = report.completedAt;
    await runner.completeCutover(report);
    // The application's outage ends here: the completed cutover is recorded, `activeConnection` says target.
    endPart(c, 'completing');
    report.outageParts = c.parts;
    report.outageMs = c.partEnd - fenceStart;
    report.writeDowntimeMs = report.outageMs;
    runner.recordCutover(report);
    c.log(
      'info',
      `cutover completed: application outage ${report.outageMs} ms (${c.parts.map((p) => `${p.part} ${p.ms}`).join(', ')}), fence LSN ${report.fenceLsn}`,
    );
    if (handedOver) void refreshAfterHandover(runner.spec, handedOver.matviews, (level, msg) => c.log(level, msg));
    return report;
  } catch (e) {
    throw await failCutover(c, e, handedOver, guardsDropped);
  } finally {
    if (connected) {
      await closeQuietly(c.src);
      await closeQuietly(c.tgt);
    }
  }
}

/**
 * A cutover that failed: the handover switched off again, the fence lifted
 * (verified, or left to the background retry and said so), the sync and its
 * verification going on; returns the error to throw.
 */
async function failCutover(c: Cut, e: unknown, handedOver: SchemaPlan | undefined, guardsDropped: boolean): Promise<PgferryError> {
  const { runner, report, database } = c;
  const err = isPgferryError(e) ? e : asPgferryError(e, 'CUTOVER_FAILED', `cutover step '${report.state}'`);
  const failedStep = report.state;
  report.state = 'failed';
  if (handedOver) {
    const undo = await undoHandover(runner.spec, handedOver);
    if (undo)
      report.warnings.push(
        `The target's triggers, rules and row security were switched on and could not be switched off again (${undo}): they may act on the rows the sync applies.`,
      );
  }
  // Never the connection that may have failed: a fresh one, verified (fence.ts).
  const lift = await runner.fence.liftOnce();
  if (!lift.lifted) {
    runner.fence.keepLifting();
    report.warnings.push(
      `The source database '${database}' is still read-only: the agent keeps trying to lift the fence; by hand: ${runner.fence.status(false).liftStatement}`,
    );
  }
  const outcome = fenceOutcome(runner, database, lift, report.fenceStartedAt);
  // The sync goes on: so does its verification.
  runner.verifier?.resume(guardsDropped);
  if (runner.reverse.active) {
    // Made for this cutover: a slot nobody reads would keep the target's WAL (the next cutover makes a new one).
    await runner.reverse
      .drop('the cutover did not complete')
      .catch((x) => c.log('warn', `the reverse slot on the target is left (dropped at the next cutover or at delete): ${(x as Error).message}`));
  }
  report.error = `${err.detail} ${outcome}`;
  runner.abandonCutover(report);
  c.log(lift.lifted ? 'warn' : 'error', `cutover failed while ${failedStep}: ${err.message} ${outcome}`);
  const code = err.code === 'CUTOVER_TIMEOUT' || err.code === 'CUTOVER_CANCELLED' ? err.code : 'CUTOVER_FAILED';
  const message = code === 'CUTOVER_FAILED' && err.code !== 'CUTOVER_FAILED' ? `The cutover failed while ${failedStep}: ${err.message}` : err.message;
  return new PgferryError(code, `${message} ${outcome}`, err.remedy || 'Fix the cause and run the cutover again.', { cause: e });
}
