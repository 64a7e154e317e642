/**
 * migration-status — what the status of one migration says: per-table copy
 * progress, overall progress and ETA, lag in bytes and seconds for this
 * database, WAL retained by the slot, and the apply rate.
 *
 * Input: the supervisor's state (`StatusHost`: MigrationRunner) and the
 * source's WAL and slot positions, read on a connection of its own at most
 * once a second.
 * Output: a `MigrationStatus`.
 */
import type pg from 'pg';
import { closeQuietly, connect } from './conn';
import type { TableCopyProgress } from './copy';
import type { FenceKeeper, FenceStatus } from './fence';
import { formatLsn, parseLsn, type Lsn } from './lsn';
import type { MigrationSpec } from './spec';
import type { CutoverReport, MigrationRecord, Phase, SchemaChangesStatus, VerificationStatus } from './state';
import type { SyncProgress } from './sync';

/** How long status waits for the source, and how long it then leaves it alone. */
const MONITOR_TIMEOUT_MS = 3000;
const MONITOR_RETRY_MS = 5000;

export interface TableStatus {
  schema: string;
  name: string;
  phase: 'queued' | 'copying' | 'copied' | 'synced';
  rowsCopied: number;
  bytesCopied: number;
  rowsEstimated: number;
  bytesEstimated: number;
}

export interface MigrationStatus {
  id: string;
  phase: Phase;
  errorCode: string;
  errorMessage: string;
  errorRemedy: string;
  createdAt: string;
  updatedAt: string;
  tables: TableStatus[];
  tablesTotal: number;
  tablesCopied: number;
  rowsCopied: number;
  bytesCopied: number;
  bytesEstimated: number;
  progress: number;
  etaSeconds: number;
  lagBytes: number;
  lagSeconds: number;
  retainedWalBytes: number;
  applyRate: number;
  appliedLsn: string;
  changesApplied: number;
  slotName: string;
  publicationName: string;
  specFingerprint: string;
  activeEndpoint: 'source' | 'target';
  sourceVersion: string;
  targetVersion: string;
  cutover?: CutoverReport;
  /** An operator paused it (pgferry pause); `pausedAt` says since when. */
  paused: boolean;
  pausedAt: string;
  /** The write fence on the source (fence.ts). */
  fence: FenceStatus;
  /** The continuous verification (verify.ts); null before the sync (or by an agent without it). */
  verification: VerificationStatus | null;
  schemaChanges: SchemaChangesStatus | null;
  /** The way back (reverse-sync.ts): null without a `rollbackWindow` or before the cutover made it. */
  reverse: ReverseStatus | null;
  /** The last cutback's report (cutback.ts), if any. */
  cutback?: CutoverReport;
}

/** The reverse sync: the target's changes streamed back into the old source during the rollback window. */
export interface ReverseStatus {
  /** `prepared` (made at the cutover, not streaming yet) · `streaming` · `dropped` (window ended, removed, cut back or deleted) · `failed` (retried; `lastError` says why). */
  state: 'prepared' | 'streaming' | 'dropped' | 'failed';
  slotName: string;
  publicationName: string;
  /** The target position its changes are streamed back from. */
  startLsn: string;
  /** Everything the target committed before this is committed on the old source. */
  appliedLsn: string;
  lagBytes: number;
  lagSeconds: number;
  changesApplied: number;
  /** When the window ends and the slot and publication on the target are dropped. */
  windowEndsAt: string;
  droppedAt: string;
  dropReason: string;
  lastError: string;
  /** The write fence a cutback raises on the target (up, lift-pending, kept after a completed cutback). */
  fence?: FenceStatus;
}

/** Phases a migration does not leave (a completed one may still cut back: that is an operator's act, not the driver's). */
export const TERMINAL: Phase[] = ['completed', 'cut-back', 'deleted'];

/** What the status reads of its supervisor (MigrationRunner). */
export interface StatusHost {
  readonly rec: MigrationRecord;
  readonly spec: MigrationSpec;
  readonly copyProgress: ReadonlyMap<string, TableCopyProgress>;
  readonly sync: SyncProgress | null;
  /** When this process began the load (ms since the epoch), 0 if it did not. */
  readonly copyStartedAt: number;
  readonly paused: boolean;
  readonly fence: FenceKeeper;
  /** The cutover in progress, if any. */
  readonly cutoverRun: object | null;
  /** The continuous verification's progress, when it runs in this process. */
  verificationStatus(): VerificationStatus | null;
  /** The schema changes followed (schema-follow.ts); null before the sync. */
  schemaChangesStatus(): SchemaChangesStatus | null;
  /** The reverse sync (reverse-sync.ts); null without one. */
  reverseStatus(): Promise<ReverseStatus | null>;
}

/** The source's WAL insert position, and its slot's restart and confirmed positions. */
interface SourcePositions {
  currentLsn: Lsn;
  restartLsn: Lsn | null;
  confirmedLsn: Lsn | null;
}

/** The status of one migration, kept with what it must remember between calls. */
export class StatusReporter {
  private monitor: pg.Client | null = null;
  private monitorCache: (SourcePositions & { at: number }) | null = null;
  private monitorDownUntil = 0;
  /** The sync has caught up in this process: the copied tables show as synced. */
  private syncCaughtUp = false;
  private lastCaughtUpAt = 0;
  private lastLag: { lagBytes: number; retainedWalBytes: number } | null = null;

  constructor(private readonly host: StatusHost) {}

  /** The current status (queries the source at most once a second). */
  async status(): Promise<MigrationStatus> {
    const rec = this.host.rec;
    const live = !TERMINAL.includes(rec.phase) && rec.slotState === 'created';
    const mon = live ? await this.sourcePositions() : null;
    const { sync, fence } = this.host;
    const tables = this.tables();
    const bytesCopied = tables.reduce((a, t) => a + t.bytesCopied, 0);
    const bytesEstimated = tables.reduce((a, t) => a + t.bytesEstimated, 0);
    const tablesCopied = tables.filter((t) => t.phase === 'copied' || t.phase === 'synced').length;
    const { progress, etaSeconds } = this.progress(bytesCopied, bytesEstimated);
    const { lagBytes, lagSeconds, retainedWalBytes } = this.lag(mon, live);
    return {
      id: rec.id,
      phase: rec.phase,
      errorCode: rec.error?.code ?? '',
      errorMessage: rec.error?.message ?? '',
      errorRemedy: rec.error?.remedy ?? '',
      createdAt: rec.createdAt,
      updatedAt: rec.updatedAt,
      tables,
      tablesTotal: tables.length,
      tablesCopied,
      rowsCopied: tables.reduce((a, t) => a + t.rowsCopied, 0),
      bytesCopied,
      bytesEstimated,
      progress,
      etaSeconds,
      lagBytes,
      lagSeconds,
      retainedWalBytes,
      applyRate: this.host.paused ? 0 : (sync?.applyRatePerSec ?? 0),
      appliedLsn: sync ? formatLsn(sync.appliedLsn) : '',
      changesApplied: sync?.changesApplied ?? 0,
      slotName: rec.slotName,
      publicationName: rec.publicationName,
      specFingerprint: rec.fingerprint,
      activeEndpoint: rec.phase === 'completed' ? 'target' : 'source',
      sourceVersion: rec.sourceVersion ?? '',
      targetVersion: rec.targetVersion ?? '',
      cutover: rec.cutover,
      paused: this.host.paused,
      pausedAt: rec.pausedAt ?? '',
      fence: fence.status(this.host.cutoverRun !== null),
      verification: this.host.verificationStatus(),
      schemaChanges: this.host.schemaChangesStatus(),
      reverse: await this.host.reverseStatus(),
      cutback: rec.cutback,
    };
  }

  /** Close the connection to the source (the next status opens another). */
  async close(): Promise<void> {
    const m = this.monitor;
    this.monitor = null;
    await closeQuietly(m);
  }

  private tables(): TableStatus[] {
    const rec = this.host.rec;
    return [...this.host.copyProgress.values()].map((p) => ({
      schema: p.schema,
      name: p.name,
      phase:
        p.phase === 'copied' &&
        (rec.phase === 'syncing' || rec.phase === 'cutting-over' || rec.phase === 'completed') &&
        (this.syncCaughtUp || rec.phase === 'completed')
          ? 'synced'
          : p.phase,
      rowsCopied: p.rowsCopied,
      bytesCopied: p.bytesCopied,
      rowsEstimated: Math.max(p.rowsEstimated, p.rowsCopied),
      bytesEstimated: Math.max(p.bytesEstimated, p.bytesCopied),
    }));
  }

  /** The load's progress (0 to 1) and its ETA in seconds (-1: unknown). */
  private progress(bytesCopied: number, bytesEstimated: number): { progress: number; etaSeconds: number } {
    const { rec, copyStartedAt } = this.host;
    const loadDone = ['indexing', 'syncing', 'cutting-over', 'completed'].includes(rec.phase);
    const progress = loadDone ? 1 : bytesEstimated > 0 ? Math.min(0.99, bytesCopied / bytesEstimated) : 0;
    let etaSeconds = -1;
    if (loadDone) etaSeconds = 0;
    else if (rec.phase === 'loading' && copyStartedAt && bytesCopied > 0) {
      const rate = bytesCopied / ((Date.now() - copyStartedAt) / 1000);
      etaSeconds = Math.max(0, Math.round((bytesEstimated - bytesCopied) / rate));
    }
    return { progress, etaSeconds };
  }

  /**
   * Lag for THIS database: WAL the decoder has not reached yet, plus what
   * it received but the target has not committed. WAL of other databases
   * that the decoder already passed does not count (it held nothing of ours).
   */
  private lag(mon: SourcePositions | null, live: boolean): { lagBytes: number; lagSeconds: number; retainedWalBytes: number } {
    const { rec, sync: s } = this.host;
    let lagBytes = 0;
    let lagSeconds = 0;
    let retainedWalBytes = 0;
    if (mon) {
      if (mon.restartLsn !== null) retainedWalBytes = Number(mon.currentLsn - mon.restartLsn);
      if (s) {
        const reached = s.decodedLsn > s.appliedLsn ? s.decodedLsn : s.appliedLsn;
        const undecoded = mon.currentLsn > reached ? mon.currentLsn - reached : 0n;
        const pending = s.pendingChanges > 0 && s.receivedLsn > s.appliedLsn ? s.receivedLsn - s.appliedLsn : 0n;
        lagBytes = Number(undecoded + pending);
      } else {
        const from = mon.confirmedLsn ?? (rec.snapshotLsn ? parseLsn(rec.snapshotLsn) : mon.currentLsn);
        lagBytes = Number(mon.currentLsn > from ? mon.currentLsn - from : 0n);
      }
      const now = Date.now();
      if (lagBytes === 0 || (s && s.pendingChanges === 0 && lagBytes < 64 * 1024 && s.decodedLsn >= mon.currentLsn)) {
        this.lastCaughtUpAt = now;
        this.syncCaughtUp = s !== null;
      } else {
        lagSeconds = this.secondsBehind(now);
      }
      this.lastLag = { lagBytes, retainedWalBytes };
    } else if (live && this.lastLag) {
      // The source does not answer: never report a reassuring 0. Keep the
      // last measured bytes, and let the seconds grow since the last time
      // we knew we were caught up.
      ({ lagBytes, retainedWalBytes } = this.lastLag);
      lagSeconds = this.secondsBehind(Date.now());
    }
    return { lagBytes, lagSeconds, retainedWalBytes };
  }

  /** Seconds since the target was last known to be caught up. */
  private secondsBehind(now: number): number {
    const since = Math.max(this.lastCaughtUpAt, this.host.sync?.appliedCommitTime?.getTime() ?? 0, this.host.copyStartedAt);
    return since ? Math.max(0, (now - since) / 1000) : 0;
  }

  private async sourcePositions(): Promise<SourcePositions | null> {
    const { rec, spec } = this.host;
    if (this.monitorCache && Date.now() - this.monitorCache.at < 1000) return this.monitorCache;
    // A source that did not answer is asked again only after a while: status
    // must answer promptly (the lag it reports then is the last one known).
    if (Date.now() < this.monitorDownUntil) return null;
    try {
      if (!this.monitor) {
        this.monitor = await connect('source', spec.source, {
          applicationName: `pgferry monitor ${rec.id}`,
          connectTimeoutMs: MONITOR_TIMEOUT_MS,
          queryTimeoutMs: MONITOR_TIMEOUT_MS,
        });
      }
      const r = await this.monitor.query(
        `SELECT pg_current_wal_insert_lsn()::text AS cur, s.restart_lsn::text AS restart, s.confirmed_flush_lsn::text AS confirmed
        FROM (SELECT 1) x LEFT JOIN pg_replication_slots s ON s.slot_name = $1`,
        [rec.slotName],
      );
      const row = r.rows[0];
      this.monitorCache = {
        at: Date.now(),
        currentLsn: parseLsn(row.cur),
        restartLsn: row.restart ? parseLsn(row.restart) : null,
        confirmedLsn: row.confirmed ? parseLsn(row.confirmed) : null,
      };
      return this.monitorCache;
    } catch {
      this.monitorDownUntil = Date.now() + MONITOR_RETRY_MS;
      await this.close();
      return null;
    }
  }
}
