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
 * Its status (progress, ETA, lag) is computed by migration-status.ts.
 */
import type pg from 'pg';
import { connect } from './conn';
import { dataTables, selectTables, tableKey, type TableInfo } from './catalog';
import { PgferryError, asPgferryError, isTransientDeep, type ErrorCode } from './errors';
import { formatLsn, type Lsn } from './lsn';
import { migratableTables, runPreflight, summarizeFailures } from './preflight';
import { createPublication, createSlotWithSnapshot, dropSlot, dropSourceObjects, slotExists, type ExportedSnapshot } from './snapshot';
import { planLoad, planTasks, resetTables, runLoad, type TableCopyProgress } from './copy';
import { analyzeTables, runPostData } from './indexes';
import { applyPreData, planSchema, verifyExistingSchema } from './schema';
import { runSync, type SyncProgress } from './sync';
import { ensureTargetState, getMarker, setMarker, dropTargetState, readCopyState, type CopiedTable } from './target-state';
import type { CutoverReport, MigrationRecord, Phase, StateStore, StoredError } from './state';
import { FenceKeeper } from './fence';
import type { MigrationSpec } from './spec';
import type { LogFn } from './log-fn';
import { sleep } from './sleep';
import { StatusReporter, TERMINAL, type MigrationStatus } from './migration-status';

export type { MigrationStatus, TableStatus } from './migration-status';

/** Transient failures retried per phase before the migration is marked failed. */
const TRANSIENT_RETRIES = 8;

/** The connections and settings one run of the load works with. */
interface LoadContext {
  src: pg.Client;
  tgt: pg.Client;
  sourceMajor: number;
  signal: AbortSignal;
}

export class MigrationRunner {
  rec: MigrationRecord;
  readonly spec: MigrationSpec;
  private abort = new AbortController();
  private running: Promise<void> | null = null;
  private tables: TableInfo[] = [];
  readonly copyProgress = new Map<string, TableCopyProgress>();
  sync: SyncProgress | null = null;
  /**
   * Per table, the source position its copy is valid from: read from the
   * target once per process when the sync first starts (it is fixed once the
   * load finished), so a resume goes straight to the stream.
   */
  private syncStart: Map<string, Lsn> | null = null;
  private analyzed = false;
  /** When this process began the load (ms since the epoch), 0 if it did not. */
  copyStartedAt = 0;
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

  constructor(
    private store: StateStore,
    rec: MigrationRecord,
    log: LogFn,
  ) {
    this.logFn = log;
    this.rec = rec;
    this.spec = store.openSpec(rec.spec);
    upgradeFenceRecord(rec);
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
  }

  /** A fence left up (a failed cutover whose lift did not verify, an agent killed mid-cutover): keep lifting it, whatever the phase. */
  resumeFenceLift(): void {
    if (this.fence.pending && !this.cutoverRun) this.fence.keepLifting();
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
    this.setPhase('completed'); // phase, report and the kept fence in one atomic write
    await this.stopSync();
  }

  abandonCutover(report: CutoverReport): void {
    this.rec.cutover = report;
    if (this.rec.phase === 'cutting-over') this.rec.phase = 'syncing';
    this.save();
  }

  /** Start (or resume) driving the phases in the background; a paused migration stays idle until `resume()`. */
  start(): void {
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
    if (!this.rec.pausedAt) return;
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
    await this.statusReporter.close();
  }

  /** Stop everything, the fence's lift retries included (agent shutdown; the record keeps the fence for the next start). */
  async shutdown(): Promise<void> {
    await this.stop();
    await this.fence.stop();
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
    if (this.rec.phase === 'created' || this.rec.phase === 'schema') await this.phaseSchema();
    if (signal.aborted) return;
    if (this.rec.phase === 'loading') await this.phaseLoad();
    if (signal.aborted) return;
    if (this.rec.phase === 'indexing') await this.phaseIndexes();
    if (signal.aborted) return;
    if (this.rec.phase === 'syncing' || this.rec.phase === 'cutting-over') await this.phaseSync();
  }

  private async loadTables(src: pg.Client): Promise<TableInfo[]> {
    const sel = await selectTables(src, this.spec.tables);
    this.tables = migratableTables(sel.tables);
    for (const t of dataTables(this.tables)) {
      const key = tableKey(t);
      if (!this.copyProgress.has(key)) {
        this.copyProgress.set(key, {
          schema: t.schema,
          name: t.name,
          phase: 'queued',
          partsDone: 0,
          parts: 1,
          rowsCopied: 0,
          bytesCopied: 0,
          rowsEstimated: Math.round(t.estimatedRows),
          bytesEstimated: t.bytes,
        });
      }
    }
    return this.tables;
  }

  private async withClients<T>(fn: (src: pg.Client, tgt: pg.Client) => Promise<T>): Promise<T> {
    // Both at once (a resume starts that much sooner); a source error wins, as it would one after the other.
    const [s, t] = await Promise.allSettled([
      connect('source', this.spec.source, { applicationName: `pgferry ${this.rec.id}` }),
      connect('target', this.spec.target, { applicationName: `pgferry ${this.rec.id}` }),
    ]);
    try {
      if (s.status === 'rejected') throw s.reason;
      if (t.status === 'rejected') throw t.reason;
      return await fn(s.value, t.value);
    } finally {
      if (s.status === 'fulfilled') await s.value.end().catch(() => undefined);
      if (t.status === 'fulfilled') await t.value.end().catch(() => undefined);
    }
  }

  private async phaseSchema(): Promise<void> {
    this.setPhase('schema');
    await this.withClients(async (src, tgt) => {
      const tables = await this.loadTables(src);
      await ensureTargetState(tgt);
      if ((await getMarker(tgt, this.rec.id, 'pre-data')) !== undefined) {
        this.log('info', 'Skipping the schema, already created on a previous run', { migration: this.rec.id });
      } else if (this.spec.schemaMode === 'existing') {
        await verifyExistingSchema(tgt, tables);
        if (this.spec.overwriteTarget) {
          for (const t of dataTables(tables)) await tgt.query(`TRUNCATE ONLY ${tableKey(t)}`);
        }
        await setMarker(tgt, this.rec.id, 'pre-data', 'existing');
      } else {
        const plan = await planSchema(src, tables);
        for (const w of plan.warnings) this.log('warn', w, { migration: this.rec.id });
        await applyPreData(tgt, plan, { beforeCommit: (c) => setMarker(c, this.rec.id, 'pre-data', 'created') });
      }
    });
    this.setPhase('loading');
  }

  private async phaseLoad(): Promise<void> {
    const signal = this.abort.signal;
    await this.withClients(async (src, tgt) => {
      const tables = await this.loadTables(src);
      const sourceMajor = Math.floor(Number((await src.query("SELECT current_setting('server_version_num') AS v")).rows[0].v) / 10000);
      await ensureTargetState(tgt);
      if (this.rec.slotState === 'creating' && (await slotExists(src, this.rec.slotName))) {
        // We died between creating the slot and recording it: nothing was
        // copied with its snapshot (that is recorded first), so start afresh.
        await dropSlot(src, this.rec.slotName);
        this.rec.slotState = 'none';
        this.save();
      }
      this.copyStartedAt = Date.now();
      const load: LoadContext = { src, tgt, sourceMajor, signal };
      if (this.rec.slotState !== 'created') await this.loadInNewSlot(load, tables);
      else await this.resumeLoad(load, dataTables(tables));
    });
    if (!signal.aborted) this.setPhase('indexing');
  }

  /** Create the publication and the slot, and copy the tables in the slot's snapshot. */
  private async loadInNewSlot(load: LoadContext, tables: TableInfo[]): Promise<void> {
    await createPublication(load.src, this.rec.id, this.rec.publicationName, tables, load.sourceMajor);
    this.rec.publicationCreated = true;
    this.rec.slotState = 'creating';
    this.save();
    const snap = await createSlotWithSnapshot(this.spec.source, this.rec.slotName);
    this.rec.slotState = 'created';
    this.rec.snapshotLsn = formatLsn(snap.lsn);
    this.save();
    this.migrationLog('info', `Created slot ${this.rec.slotName} at ${formatLsn(snap.lsn)} with snapshot ${snap.snapshotName}`);
    try {
      const plan = await planLoad(load.tgt, this.rec.id, dataTables(tables), this.migrationLog);
      await this.copyInSnapshot(load, plan.todo, snap, snap.release);
    } finally {
      await snap.release();
    }
  }

  /**
   * After a restart: copy the tables the previous runs did not finish. Their
   * exported snapshot died with the previous run: a temporary slot gives a
   * new one, and those tables record its LSN.
   */
  private async resumeLoad(load: LoadContext, data: TableInfo[]): Promise<void> {
    const plan = await planLoad(load.tgt, this.rec.id, data, this.migrationLog);
    await this.restoreCopyProgress(load.tgt);
    const todo = this.widenToWholePartitionTrees(plan.todo, data, plan.done);
    if (!todo.length) return;
    const siblings = todo.filter((t) => !plan.todo.includes(t));
    if (siblings.length) {
      // Finished partitions of a tree that also has unfinished ones are
      // copied again with them: one tree, one snapshot.
      this.migrationLog(
        'warn',
        `Copying again ${siblings.length} finished partition(s) whose partitioned table was not finished: ${siblings.map(tableKey).join(', ')}`,
      );
      await resetTables(load.tgt, this.rec.id, siblings);
    }
    const tmpName = `${this.rec.slotName.slice(0, 50)}_r${Date.now().toString(36)}`;
    const snap = await createSlotWithSnapshot(this.spec.source, tmpName, true);
    this.migrationLog('info', `Resuming the load of ${todo.length} table(s) with a fresh snapshot at ${formatLsn(snap.lsn)}`);
    try {
      await this.copyInSnapshot(load, todo, snap, async () => undefined);
    } finally {
      await snap.release();
    }
  }

  /** Split `tables` into copy tasks and run them in the snapshot `snap`. */
  private async copyInSnapshot(load: LoadContext, tables: TableInfo[], snap: ExportedSnapshot, onSnapshotImported: () => Promise<void>): Promise<void> {
    const { workers, splitBytes } = this.spec.copy;
    const tasks = await planTasks(load.src, tables, workers, splitBytes, load.sourceMajor);
    this.noteParts(tasks);
    await runLoad(
      {
        migrationId: this.rec.id,
        source: this.spec.source,
        target: this.spec.target,
        tables,
        snapshotName: snap.snapshotName,
        snapshotLsn: snap.lsn,
        onSnapshotImported,
        workers,
        splitBytes,
        sourceMajor: load.sourceMajor,
        progress: this.copyProgress,
        signal: load.signal,
        log: this.migrationLog,
      },
      tasks,
    );
  }

  /** Partitions of one root must share one snapshot (changes arrive as the root). */
  private widenToWholePartitionTrees(todo: TableInfo[], data: TableInfo[], done: Map<string, Lsn>): TableInfo[] {
    const roots = new Set(todo.filter((t) => t.root).map((t) => tableKey(t.root!)));
    const out = [...todo];
    for (const t of data) {
      if (t.root && roots.has(tableKey(t.root)) && !out.includes(t)) {
        out.push(t);
        done.delete(tableKey(t));
        const p = this.copyProgress.get(tableKey(t));
        if (p) {
          p.phase = 'queued';
          p.rowsCopied = 0;
          p.bytesCopied = 0;
          p.partsDone = 0;
        }
      }
    }
    return out;
  }

  private noteParts(tasks: Array<{ table: TableInfo; parts: number }>): void {
    for (const t of tasks) {
      const p = this.copyProgress.get(tableKey(t.table));
      if (p) p.parts = t.parts;
    }
  }

  private async phaseIndexes(): Promise<void> {
    const signal = this.abort.signal;
    await this.withClients(async (src, tgt) => {
      const tables = await this.loadTables(src);
      await this.restoreCopyProgress(tgt);
      if ((await getMarker(tgt, this.rec.id, 'post-data')) !== undefined) return;
      if (this.spec.schemaMode === 'create') {
        const plan = await planSchema(src, tables);
        await runPostData({
          target: this.spec.target,
          statements: plan.postData,
          tables,
          jobs: this.spec.copy.indexJobs,
          signal,
          log: this.migrationLog,
        });
      }
      if (!signal.aborted) await setMarker(tgt, this.rec.id, 'post-data', new Date().toISOString());
    });
    if (!signal.aborted) this.setPhase('syncing');
  }

  /** Restore per-table copy figures from the target's records (after a restart); returns those records. */
  private async restoreCopyProgress(tgt: pg.Client): Promise<Map<string, CopiedTable>> {
    const copied = await readCopyState(tgt, this.rec.id);
    for (const [table, c] of copied) {
      const p = this.copyProgress.get(table);
      if (!p) continue;
      p.rowsCopied = c.rows;
      p.bytesCopied = c.bytes;
      p.partsDone = c.partsDone;
      p.parts = c.parts;
      if (c.partsDone === c.parts) p.phase = 'copied';
    }
    return copied;
  }

  /** Which source LSN each table's copy is valid from (root name for partitions). */
  private tableSyncLsn(copied: Map<string, CopiedTable>): Map<string, Lsn> {
    const out = new Map<string, Lsn>();
    for (const t of dataTables(this.tables)) {
      const lsn = copied.get(tableKey(t))?.lastSnapshotLsn;
      if (lsn === undefined) continue;
      const key = t.root ? tableKey(t.root) : tableKey(t);
      const prev = out.get(key);
      out.set(key, prev === undefined || lsn > prev ? lsn : prev);
    }
    return out;
  }

  private async phaseSync(): Promise<void> {
    const signal = this.abort.signal;
    const map = (this.syncStart ??= await this.withClients(async (src, tgt) => {
      await this.loadTables(src);
      const copied = await this.restoreCopyProgress(tgt);
      for (const p of this.copyProgress.values()) if (p.phase !== 'copied') p.phase = 'copied';
      return this.tableSyncLsn(copied);
    }));
    if (!this.analyzed) void this.analyzeOnce(signal);
    await runSync({
      migrationId: this.rec.id,
      source: this.spec.source,
      target: this.spec.target,
      slotName: this.rec.slotName,
      publicationName: this.rec.publicationName,
      tableSyncLsn: map,
      batchChanges: this.spec.apply.batchChanges,
      batchMs: this.spec.apply.batchMs,
      signal,
      onProgress: (p) => this.onSyncProgress(p),
      log: this.migrationLog,
    });
  }

  /** Fresh planner statistics for the loaded tables, once, in the background. */
  private async analyzeOnce(signal: AbortSignal): Promise<void> {
    try {
      const done = await this.withTarget((tgt) => getMarker(tgt, this.rec.id, 'analyzed'));
      if (done !== undefined) {
        this.analyzed = true;
        return;
      }
      const ok = await analyzeTables(this.spec.target, this.tables, signal, this.migrationLog);
      if (ok) {
        await this.withTarget((tgt) => setMarker(tgt, this.rec.id, 'analyzed', new Date().toISOString()));
        this.analyzed = true;
      }
    } catch (e) {
      if (!signal.aborted)
        this.log('warn', `ANALYZE of the loaded tables failed (statistics will come from autovacuum): ${(e as Error).message}`, { migration: this.rec.id });
    }
  }

  private async withTarget<T>(fn: (tgt: pg.Client) => Promise<T>): Promise<T> {
    const tgt = await connect('target', this.spec.target, { applicationName: `pgferry ${this.rec.id}` });
    try {
      return await fn(tgt);
    } finally {
      await tgt.end().catch(() => undefined);
    }
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
    await this.shutdown();
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
    const dropped: string[] = [];
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
        await dropTargetState(tgt, this.rec.id);
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
