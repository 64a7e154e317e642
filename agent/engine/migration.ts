/**
 * migration — the supervisor of one migration: it walks the phases
 *
 *   created → schema → loading → indexing → syncing → cutting-over → completed
 *                                   (any) → failed      (delete) → deleted
 *
 * (an operator's pause stops the work in any phase before cutting-over and
 * keeps the phase; resume carries on from it)
 *
 * and keeps what each phase finished durable, so that a restarted agent picks
 * up where it stopped: the phase and source objects in the state file
 * (state.ts), the copied tables and the applied position in the target
 * (target-state.ts), in the same transactions as the data they describe.
 *
 * The work of each phase is in migration-phases.ts; its status (progress,
 * ETA, lag) is computed by migration-status.ts.
 */
import { connect } from './conn';
import { PgferryError, asPgferryError, isTransientDeep, type ErrorCode } from './errors';
import type { Lsn } from './lsn';
import { runPreflight, summarizeFailures } from './preflight';
import { dropSourceObjects } from './snapshot';
import type { TableCopyProgress } from './copy';
import type { SyncProgress } from './sync';
import { dropTargetState } from './target-state';
import { dropLargeObjectState } from './large-objects';
import type { CutoverReport, MigrationRecord, Phase, SchemaChangesStatus, StateStore, StoredError, VerificationStatus } from './state';
import type { SchemaKeeper } from './schema-follow';
import { FenceKeeper } from './fence';
import type { MigrationSpec } from './spec';
import type { LogFn } from './log-fn';
import { sleep } from './sleep';
import { StatusReporter, TERMINAL, type MigrationStatus } from './migration-status';
import { MigrationPhases } from './migration-phases';
import { verificationOff, type Verifier } from './verify';
import { dropGuards } from './verify-guard';
import { selectTables } from './catalog';
import { ReverseSync } from './reverse-sync';
import { runCutback } from './cutback';
import type { CutoverOptions } from './cutover';
import type { ReverseStatus } from './migration-status';

export type { MigrationStatus, TableStatus } from './migration-status';

/** Transient failures retried per phase before the migration is marked failed. */
const TRANSIENT_RETRIES = 8;

export class MigrationRunner {
  rec: MigrationRecord;
  readonly spec: MigrationSpec;
  private abort = new AbortController();
  private running: Promise<void> | null = null;
  sync: SyncProgress | null = null;
  /** The work of the phases (this supervisor changes the phase around it). */
  private readonly phases: MigrationPhases;
  private readonly statusReporter = new StatusReporter(this);
  /** Waiters for "applied past LSN X" (cutover drain). */
  private appliedWaiters: Array<{ lsn: Lsn; resolve: () => void }> = [];
  readonly logFn: LogFn;
  /** Logs with this migration's id. */
  private readonly migrationLog: LogFn = (l, m, f) => this.log(l, m, { migration: this.rec.id, ...f });
  /** The cutover in progress, if any, and how to cancel it. */
  cutoverRun: { promise: Promise<unknown>; abort: AbortController } | null = null;
  /** The one owner of the source's write fence. */
  readonly fence: FenceKeeper;
  /** The fence a cutback raises on the target (cutback.ts). */
  readonly targetFence: FenceKeeper;
  /** The way back (reverse-sync.ts): made by a cutover with a `rollbackWindow`. */
  readonly reverse: ReverseSync;
  /** The cutback in progress, if any. */
  cutbackRun: { promise: Promise<unknown>; abort: AbortController } | null = null;

  constructor(
    private store: StateStore,
    rec: MigrationRecord,
    log: LogFn,
  ) {
    this.logFn = log;
    this.rec = rec;
    this.spec = store.openSpec(rec.spec);
    upgradeFenceRecord(rec);
    this.phases = new MigrationPhases({
      rec,
      spec: this.spec,
      save: () => this.save(),
      log: this.migrationLog,
      onSyncProgress: (p) => this.onSyncProgress(p),
    });
    this.fence = new FenceKeeper({
      id: rec.id,
      record: rec,
      source: this.spec.source,
      save: () => this.save(),
      log: (level, msg, fields) => this.log(level, msg, { migration: rec.id, ...fields }),
      onLifted: (at) => {
        // The failed cutover's report said what was true when it failed; add what is true now.
        const rep = this.rec.cutover;
        if (rep?.state === 'failed') {
          rep.warnings = rep.warnings.filter((w) => !w.includes('is still read-only'));
          rep.warnings.push(`The fence was lifted and verified at ${at}.`);
        }
      },
    });
    // The target's fence lives in the reverse record (there is none without a rollback window: then nothing raises it).
    const targetFenceRecord = {
      get fence() {
        return rec.reverse?.fence;
      },
      set fence(f) {
        if (rec.reverse) rec.reverse.fence = f;
      },
    };
    this.targetFence = new FenceKeeper({
      id: rec.id,
      record: targetFenceRecord,
      source: this.spec.target,
      save: () => this.save(),
      log: (level, msg, fields) => this.log(level, `target: ${msg}`, { migration: rec.id, ...fields }),
    });
    this.reverse = new ReverseSync({ rec, spec: this.spec, save: () => this.save(), log: this.migrationLog });
  }

  /** A fence left up (a failed cutover whose lift did not verify, an agent killed mid-cutover): keep lifting it, whatever the phase. */
  resumeFenceLift(): void {
    if (this.fence.pending && !this.cutoverRun) this.fence.keepLifting();
    if (this.targetFence.pending && !this.cutbackRun) this.targetFence.keepLifting();
  }

  get phase(): Phase {
    return this.rec.phase;
  }
  get id(): string {
    return this.rec.id;
  }
  get lastError(): StoredError | undefined {
    return this.rec.error;
  }
  get previousCutover(): CutoverReport | undefined {
    return this.rec.cutover;
  }
  get previousCutback(): CutoverReport | undefined {
    return this.rec.cutback;
  }
  verificationStatus(): VerificationStatus | null {
    return this.phases.verifier?.status() ?? (this.spec.verification.disabled && this.rec.phase === 'syncing' ? verificationOff() : null);
  }
  schemaChangesStatus(): SchemaChangesStatus | null {
    const k = this.phases.schemaKeeper;
    if (k) return k.status();
    if (this.rec.phase !== 'syncing') return null;
    return { mode: this.spec.schemaChanges, applied: 0, lastAppliedAt: '', recent: [], keptTables: [], lastReconciledAt: '', lastError: '' };
  }
  /** The reverse sync (reverse-sync.ts), null without a rollback window or before the cutover made it. */
  async reverseStatus(): Promise<ReverseStatus | null> {
    const r = await this.reverse.status();
    return r && { ...r, fence: this.targetFence.status(this.cutbackRun !== null) };
  }
  /** The source's schema kept on the target (for the cutover; null with schemaChanges 'stop' or before the sync in this process). */
  get schemaKeeper(): SchemaKeeper | null {
    return this.phases.schemaKeeper;
  }
  /** The continuous verification, for the cutover (null when it does not run in this process). */
  get verifier(): Verifier | null {
    const v = this.phases.verifier;
    return v?.usable ? v : null;
  }
  get copyProgress(): ReadonlyMap<string, TableCopyProgress> {
    return this.phases.copyProgress;
  }
  /** When this process began the load (ms since the epoch), 0 if it did not. */
  get copyStartedAt(): number {
    return this.phases.copyStartedAt;
  }

  // The cutover's view of its supervisor (cutover.ts, CutoverHost): it
  // reports; only these change the phase.

  log(level: 'info' | 'warn' | 'error', msg: string, fields?: object): void {
    this.logFn(level, msg, fields);
  }

  beginCutover(report: CutoverReport): void {
    this.rec.cutover = report;
    this.setPhase('cutting-over');
  }

  recordCutover(report: CutoverReport): void {
    this.rec.cutover = report;
    this.save();
  }

  async completeCutover(report: CutoverReport): Promise<void> {
    if (!this.fence.markKept() && report.fenceStartedAt) {
      throw new PgferryError(
        'CUTOVER_FAILED',
        'The fence was lifted while the cutover ran (pgferry unfence or delete): writes after the lift would not reach the target, so it does not complete.',
        'Run the cutover again.',
      );
    }
    this.rec.cutover = report;
    this.setPhase('completed'); // phase, report, the kept fence and the reverse sync's start in one atomic write
    await this.stopSync();
    this.reverse.start();
  }

  // The cutback's view of its supervisor (cutback.ts, CutbackHost).

  recordCutback(report: CutoverReport): void {
    this.rec.cutback = report;
    this.save();
  }

  completeCutback(report: CutoverReport): void {
    this.rec.cutback = report;
    this.setPhase('cut-back'); // phase, report and the target's kept fence in one atomic write
  }

  /**
   * Cut back (idempotent): after a cutback completed it returns at once; a
   * cutback already running is joined. Rejects with the cutback's error.
   */
  async cutback(opts: CutoverOptions): Promise<void> {
    if (this.rec.phase === 'cut-back') return;
    if (!this.cutbackRun) {
      const abort = new AbortController();
      const promise = runCutback(this, opts, abort.signal).finally(() => {
        this.cutbackRun = null;
      });
      this.cutbackRun = { promise, abort };
    }
    await this.cutbackRun.promise;
  }

  /**
   * After an agent restart, a completed migration: a cutback the restart
   * interrupted did not complete (its fence on the target comes down), and
   * the reverse sync goes on while its window lasts.
   */
  private resumeAfterCutover(): void {
    const rep = this.rec.cutback;
    if (rep && !this.cutbackRun && rep.state !== 'completed' && rep.state !== 'failed') {
      rep.error = `Interrupted by an agent restart while ${rep.state}. ${
        this.targetFence.pending ? 'The restarted agent lifts the fence it raised on the target and verifies it.' : 'Nothing was fenced on the target.'
      } The application stays on the target.`;
      rep.state = 'failed';
      this.save();
      this.log('warn', 'A cutback was interrupted by an agent restart; the application stays on the target', { migration: this.rec.id });
    }
    this.resumeFenceLift();
    const r = this.rec.reverse;
    if (r && this.reverse.active && this.reverse.windowMs > 0 && r.startLsn && this.rec.cutover?.completedAt) {
      // The window as the spec says now (it may have been changed since the cutover).
      r.windowEndsAt = new Date(Date.parse(this.rec.cutover.completedAt) + this.reverse.windowMs).toISOString();
    }
    if (this.reverse.active && this.reverse.windowMs === 0) {
      void this.reverse
        .drop('`rollbackWindow` was removed from the spec')
        .catch((e) => this.log('warn', `dropping the reverse slot failed: ${(e as Error).message}`));
      return;
    }
    const ends = this.rec.reverse?.windowEndsAt ? Date.parse(this.rec.reverse.windowEndsAt) : NaN;
    if (this.reverse.active && ends <= Date.now()) {
      void this.reverse
        .drop(`the rollback window ended (${this.spec.rollbackWindow} after the cutover)`)
        .catch((e) => this.log('warn', `dropping the reverse slot failed: ${(e as Error).message}`));
      return;
    }
    this.reverse.start();
  }

  abandonCutover(report: CutoverReport): void {
    this.rec.cutover = report;
    if (this.rec.phase === 'cutting-over') this.rec.phase = 'syncing';
    this.save();
  }

  /** Start (or resume) driving the phases in the background; a paused migration stays idle until `resume()`. */
  start(): void {
    if (this.rec.phase === 'completed') this.resumeAfterCutover();
    if (this.running || TERMINAL.includes(this.rec.phase) || this.rec.pausedAt) return;
    if (this.rec.phase === 'failed') {
      this.setPhase(this.rec.resumePhase ?? 'created');
      delete this.rec.error;
      this.save();
    }
    this.abort = new AbortController();
    this.running = this.drive().finally(() => {
      this.running = null;
    });
  }

  /** Stop streaming changes (after a completed cutover); the slot stays. */
  async stopSync(): Promise<void> {
    this.abort.abort();
    await this.running?.catch(() => undefined);
  }

  get paused(): boolean {
    return this.rec.pausedAt !== undefined;
  }

  /**
   * Pause: record it durably, then stop the background work as a shutdown
   * does (the open target transaction rolls back, both connections close,
   * the slot becomes inactive and keeps the WAL from the last confirmed
   * position). Nothing runs until `resume()`, also after an agent restart.
   * A table being copied is copied again from its start on resume, as after
   * a restart; tables already copied are not.
   */
  async pause(): Promise<void> {
    if (!this.rec.pausedAt) {
      this.rec.pausedAt = new Date().toISOString();
      this.save();
      this.log('info', `paused in phase ${this.rec.phase}; the source keeps WAL for it until it is resumed`, { migration: this.rec.id, event: 'paused' });
    }
    await this.stop();
  }

  /** Resume a paused migration from where it stopped. */
  resume(): void {
    if (!this.rec.pausedAt) {
      // A failed migration is retried from where it stopped (the fix made, e.g. after SCHEMA_DRIFT).
      if (this.rec.phase !== 'failed' || this.running) return;
      this.log('info', `resumed after it failed (${this.rec.error?.code ?? 'unknown error'})`, { migration: this.rec.id, event: 'resumed' });
      this.start();
      return;
    }
    const since = this.rec.pausedAt;
    delete this.rec.pausedAt;
    this.save();
    this.log('info', `resumed in phase ${this.rec.phase} (paused since ${since})`, { migration: this.rec.id, event: 'resumed' });
    this.start();
  }

  /** Stop the background work (does not change the phase). */
  async stop(): Promise<void> {
    this.abort.abort();
    await this.running?.catch(() => undefined);
    await this.phases.verifier?.close();
    await this.statusReporter.close();
  }

  /** Stop everything, the fence's lift retries included (agent shutdown; the record keeps the fence for the next start). */
  async shutdown(): Promise<void> {
    await this.stop();
    await this.reverse.stop();
    await this.fence.stop();
    await this.targetFence.stop();
  }

  save(): void {
    this.store.put(this.rec);
  }

  private setPhase(p: Phase): void {
    this.rec.phase = p;
    this.save();
    this.log('info', `phase ${p}`, { migration: this.rec.id, phase: p });
  }

  fail(e: unknown): void {
    const err = asPgferryError(e);
    if (this.rec.phase !== 'failed') this.rec.resumePhase = this.rec.phase;
    this.rec.phase = 'failed';
    this.rec.error = { code: err.code, message: err.message, remedy: err.remedy, at: new Date().toISOString() };
    this.save();
    this.log('error', `migration failed: ${err.detail}`, { migration: this.rec.id, code: err.code });
  }

  private async drive(): Promise<void> {
    const signal = this.abort.signal;
    // Lost connections, a restarting server, deadlocks: the phase is retried
    // (every phase resumes from what it made durable) with backoff, and the
    // migration fails only when they persist.
    for (let attempt = 1; ; attempt++) {
      try {
        await this.drivePhases(signal);
        return;
      } catch (e) {
        if (signal.aborted) return;
        if (attempt <= TRANSIENT_RETRIES && isTransientDeep(e)) {
          const waitMs = Math.min(30_000, 1000 * 2 ** (attempt - 1));
          this.log(
            'warn',
            `phase ${this.rec.phase} hit a transient error, retrying in ${waitMs} ms (attempt ${attempt}/${TRANSIENT_RETRIES}): ${(e as Error).message}`,
            { migration: this.rec.id },
          );
          await sleep(waitMs, signal);
          if (signal.aborted) return;
          continue;
        }
        this.fail(e);
        return;
      }
    }
  }

  private async drivePhases(signal: AbortSignal): Promise<void> {
    if (this.rec.phase === 'cutting-over' && !this.cutoverRun) {
      // The agent stopped in the middle of a cutover: it did not complete, so
      // the fence comes down (verified, retried until it is) and sync resumes.
      const rep = this.rec.cutover;
      if (rep && rep.state !== 'completed') {
        rep.error =
          rep.error ||
          `Interrupted by an agent restart while ${rep.state}. ${
            this.fence.pending
              ? 'The restarted agent lifts the fence it raised and verifies it (the fence in the status shows when that is done).'
              : rep.fenceStartedAt
                ? 'Its fence had been lifted and verified before the restart; the sync continues.'
                : 'Nothing was fenced: the source accepted writes throughout, and the sync continues.'
          }`;
        rep.state = 'failed';
      }
      this.log('warn', `A cutover was interrupted by an agent restart; ${this.fence.pending ? 'lifting its fence, ' : ''}sync resumes`, {
        migration: this.rec.id,
      });
      this.setPhase('syncing');
      this.resumeFenceLift();
    }
    if (this.rec.phase === 'created' || this.rec.phase === 'schema') {
      this.setPhase('schema');
      await this.phases.schema();
      this.setPhase('loading');
    }
    if (signal.aborted) return;
    if (this.rec.phase === 'loading') {
      await this.phases.load(signal);
      if (!signal.aborted) this.setPhase('indexing');
    }
    if (signal.aborted) return;
    if (this.rec.phase === 'indexing') {
      await this.phases.indexes(signal);
      if (!signal.aborted) this.setPhase('syncing');
    }
    if (signal.aborted) return;
    if (this.rec.phase === 'syncing' || this.rec.phase === 'cutting-over') await this.phases.sync(signal);
  }

  private onSyncProgress(p: SyncProgress): void {
    this.sync = p;
    for (let i = this.appliedWaiters.length - 1; i >= 0; i--) {
      if (p.appliedLsn >= this.appliedWaiters[i].lsn) {
        this.appliedWaiters[i].resolve();
        this.appliedWaiters.splice(i, 1);
      }
    }
  }

  /** Resolves once the target has committed everything up to `lsn`. */
  waitApplied(lsn: Lsn, signal?: AbortSignal): Promise<void> {
    if (this.sync && this.sync.appliedLsn >= lsn) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w = { lsn, resolve };
      this.appliedWaiters.push(w);
      signal?.addEventListener(
        'abort',
        () => {
          this.appliedWaiters = this.appliedWaiters.filter((x) => x !== w);
          reject(new PgferryError('CUTOVER_CANCELLED', 'Stopped waiting for the target to apply.', ''));
        },
        { once: true },
      );
    });
  }

  /** The current status (queries the source at most once a second). */
  status(): Promise<MigrationStatus> {
    return this.statusReporter.status();
  }

  /** Stop, drop the slot and publication on the source, forget the migration. Target data stays. */
  async destroy(): Promise<string[]> {
    if (this.cutoverRun) {
      // Its fence must not be lifted under it: the cutover ends first (and lifts its own).
      this.cutoverRun.abort.abort('pgferry delete');
      await this.cutoverRun.promise.catch(() => undefined);
    }
    if (this.cutbackRun) {
      this.cutbackRun.abort.abort('pgferry delete');
      await this.cutbackRun.promise.catch(() => undefined);
    }
    await this.shutdown();
    const dropped: string[] = [];
    if (this.rec.reverse) {
      // The way back ends with the migration: its slot on the target would fill the target's disk with WAL.
      if (this.targetFence.pending) await this.targetFence.liftOnce();
      dropped.push(...(await this.reverse.destroy()).map((d) => `${d} (on the target)`));
    }
    if (this.fence.pending) {
      // A fence that a cutover left up must not outlive the migration that knows about it.
      const lift = await this.fence.liftOnce();
      if (!lift.lifted) {
        this.resumeFenceLift();
        throw new PgferryError(
          'SOURCE_UNREACHABLE',
          `Migration '${this.rec.id}' was not deleted: the fence its cutover raised on database '${this.fence.record?.database}' could not be lifted (${lift.error}), and the agent would forget it.`,
          `Let the agent lift it when the source is reachable (pgferry status ${this.rec.id}), or lift it by hand (${this.fence.status(false).liftStatement}), then delete again.`,
        );
      }
    }
    // A completed cutover leaves the source database read-only by default;
    // this session must still be able to drop what pgferry created.
    const src = await connect('source', this.spec.source, {
      applicationName: `pgferry delete ${this.rec.id}`,
      extraOptions: '-c default_transaction_read_only=off',
    });
    try {
      const r = await dropSourceObjects(src, this.rec.id, this.rec.slotName, this.rec.publicationName);
      dropped.push(...r.dropped);
    } finally {
      await src.end().catch(() => undefined);
    }
    try {
      const tgt = await connect('target', this.spec.target, { applicationName: `pgferry delete ${this.rec.id}` });
      try {
        // The write guards the verification put on the target's tables (the target's own catalog names them).
        await dropGuards(tgt, (await selectTables(tgt, this.spec.tables)).tables);
        await dropTargetState(tgt, this.rec.id);
        await dropLargeObjectState(tgt, this.rec.id);
      } finally {
        await tgt.end().catch(() => undefined);
      }
    } catch (e) {
      this.log('warn', `could not remove pgferry bookkeeping rows from the target: ${(e as Error).message}`, { migration: this.rec.id });
    }
    this.rec.phase = 'deleted';
    this.store.remove(this.rec.id);
    return dropped;
  }
}

/**
 * State files written before fence.ts kept the fence in the cutover report
 * (`cutover.fence.active`): carry such a fence over, so it is lifted (or,
 * after a completed cutover, kept) like any other.
 */
function upgradeFenceRecord(rec: MigrationRecord): void {
  const old = rec.cutover as unknown as { fence?: { active?: boolean; database?: string; previous?: string | null }; fenceStartedAt?: string } | undefined;
  if (!old?.fence) return;
  if (old.fence.active && !rec.fence && old.fence.database) {
    const at = old.fenceStartedAt || rec.updatedAt;
    rec.fence = {
      id: 'legacy',
      database: old.fence.database,
      previous: old.fence.previous ?? null,
      raisedAt: at,
      serverRaisedAt: at,
      kept: rec.phase === 'completed',
    };
  }
  delete old.fence;
}

/** Errors that say the migration cannot start at all (nothing is created). */
export async function preflightOrThrow(
  spec: MigrationSpec,
  ctx: Parameters<typeof runPreflight>[1] = {},
): Promise<{ sourceVersion: string; targetVersion: string }> {
  const { report } = await runPreflight(spec, ctx);
  if (!report.ok) {
    const failed = report.checks.filter((c) => c.verdict === 'fail');
    const code: ErrorCode =
      failed.find((c) => c.code)?.code ??
      (failed.some((c) => c.name === 'slot_name' || c.name === 'publication_name')
        ? 'SLOT_NAME_TAKEN'
        : failed.some((c) => c.name.endsWith('privilege') || c.name === 'table_ownership')
          ? 'INSUFFICIENT_PRIVILEGE'
          : 'PREFLIGHT_FAILED');
    throw new PgferryError(
      code,
      `Preflight failed:\n${summarizeFailures(report)}`,
      failed
        .map((c) => c.remedy)
        .filter(Boolean)
        .join(' '),
    );
  }
  return { sourceVersion: report.sourceVersion, targetVersion: report.targetVersion };
}
