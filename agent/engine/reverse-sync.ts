/**
 * reverse-sync — the way back: after a cutover with a `rollbackWindow`, the
 * target's changes are streamed back into the old source with the same
 * engine (sync.ts: exactly-once, restartable), so that a cutback (cutback.ts)
 * loses no write made on the target.
 *
 *   prepare (before the cutover's fence: publication and slot on the target)
 *   → markStart (inside the fence, after pgferry's last write to the target's
 *     tables: the position the target's changes go back from)
 *   → stream (after the cutover completed: target → old source)
 *   → drop (the window ended, `rollbackWindow` removed, the cutback done,
 *     the migration deleted, or the cutover failed)
 *
 * No loop: the slot is made before the fence, so it sees the forward apply's
 * last changes too; the stream applies only transactions committed at or
 * after the start position (the forward apply has drained below it), and
 * the forward stream is stopped for good at the cutover (its slot on the old
 * source is dropped when the reverse sync starts, so the changes applied
 * there are never streamed forward again).
 *
 * The old source stays fenced for everyone: the reverse apply's session sets
 * `default_transaction_read_only = off` for itself only. Its applied
 * position lives on the old source (`pgferry.apply_state`), written in the
 * same transactions as the rows, as the forward one lives on the target.
 */
import type pg from 'pg';
import { closeQuietly, connect } from './conn';
import { tableKey, type TableInfo } from './catalog';
import { formatLsn, parseLsn, type Lsn } from './lsn';
import { createPublication, createSlotWithSnapshot, dropSourceObjects } from './snapshot';
import { runSync, type SyncProgress } from './sync';
import { dropTargetState } from './target-state';
import { rollbackWindowMs, type MigrationSpec } from './spec';
import type { MigrationRecord, ReverseRecord } from './state';
import type { ReverseStatus } from './migration-status';
import type { LogFn } from './log-fn';
import { sleep } from './sleep';

/** The old source's session of the reverse apply: the database is fenced read-only for everyone else. */
export const OLD_SOURCE_OPTIONS = '-c default_transaction_read_only=off';
/** Transient failures are retried with this backoff (the stream's own reconnects come first). */
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30_000;

/** What the reverse sync needs of its migration's supervisor (MigrationRunner). */
export interface ReverseHost {
  readonly rec: MigrationRecord;
  readonly spec: MigrationSpec;
  save(): void;
  readonly log: LogFn;
}

/** The slot and publication names of the reverse direction (on the target). */
export function reverseNames(rec: Pick<MigrationRecord, 'slotName' | 'publicationName'>): { slotName: string; publicationName: string } {
  return { slotName: `${rec.slotName.slice(0, 58)}_back`, publicationName: `${rec.publicationName.slice(0, 58)}_back` };
}

export class ReverseSync {
  /** The stream's progress in this process (null before it ran). */
  progress: SyncProgress | null = null;
  private abort: AbortController | null = null;
  private running: Promise<void> | null = null;
  private windowTimer: NodeJS.Timeout | null = null;
  /** The last failure of the stream, '' once it applies again. */
  lastError = '';
  private lagCache: { at: number; lagBytes: number; lagSeconds: number } | null = null;
  private waiters: Array<{ lsn: Lsn; resolve: () => void }> = [];

  constructor(private readonly host: ReverseHost) {}

  get record(): ReverseRecord | undefined {
    return this.host.rec.reverse;
  }

  /** The window's length in ms (0: no rollback window). */
  get windowMs(): number {
    return rollbackWindowMs(this.host.spec);
  }

  /** Streams, or will once the cutover completed. */
  get active(): boolean {
    const r = this.record;
    return !!r && (r.state === 'prepared' || r.state === 'streaming');
  }

  /**
   * Before the cutover's fence: the publication and the slot on the target
   * (recorded before they are made, so a restart drops half-made ones).
   * Idempotent: an earlier cutover's that failed were dropped with it.
   */
  async prepare(tgt: pg.Client, tables: TableInfo[]): Promise<void> {
    const names = reverseNames(this.host.rec);
    if (this.record && this.record.state !== 'dropped' && this.record.state !== 'creating') return;
    this.host.rec.reverse = { state: 'creating', ...names, createdAt: new Date().toISOString() };
    this.host.save();
    // A half-made slot or publication of an earlier attempt (ours by name and comment) goes first.
    await dropSourceObjects(tgt, reverseId(this.host.rec.id), names.slotName, names.publicationName);
    const major = Math.floor(Number((await tgt.query("SELECT current_setting('server_version_num') AS v")).rows[0].v) / 10000);
    await createPublication(tgt, reverseId(this.host.rec.id), names.publicationName, tables, major);
    const snap = await createSlotWithSnapshot(this.host.spec.target, names.slotName);
    await snap.release();
    this.host.rec.reverse = { ...this.record!, state: 'prepared' };
    this.host.save();
    this.host.log('info', `reverse sync: made slot ${names.slotName} and publication ${names.publicationName} on the target`, { event: 'reverse-prepared' });
  }

  /** Inside the fence, after pgferry's last write to the target's tables: the position the target's changes go back from (saved with the completed cutover). */
  async markStart(tgt: pg.Client, completedAt: Date): Promise<void> {
    const r = this.record;
    if (!r || r.state !== 'prepared') return;
    r.startLsn = (await tgt.query('SELECT pg_current_wal_insert_lsn()::text AS l')).rows[0].l;
    r.windowEndsAt = new Date(completedAt.getTime() + this.windowMs).toISOString();
  }

  /** Start streaming (after the completed cutover, and at every agent start while the window lasts). */
  start(): void {
    const r = this.record;
    if (!r || !this.active || this.running || this.host.rec.phase !== 'completed') return;
    if (!r.startLsn) {
      void this.drop('the cutover did not record where the target took over');
      return;
    }
    this.armWindow();
    const abort = (this.abort = new AbortController());
    this.running = this.loop(abort.signal).finally(() => {
      this.running = null;
    });
  }

  /** Stop streaming (agent shutdown, or the cutback's last step); the slot stays. */
  async stop(): Promise<void> {
    if (this.windowTimer) clearTimeout(this.windowTimer);
    this.windowTimer = null;
    this.abort?.abort();
    await this.running?.catch(() => undefined);
  }

  private armWindow(): void {
    if (this.windowTimer) clearTimeout(this.windowTimer);
    const endsAt = this.record?.windowEndsAt ? Date.parse(this.record.windowEndsAt) : NaN;
    if (!Number.isFinite(endsAt)) return;
    // setTimeout holds at most ~24.8 days: wake up at most daily and look again.
    const wait = Math.min(Math.max(0, endsAt - Date.now()), 86_400_000);
    this.windowTimer = setTimeout(() => {
      if (Date.now() >= endsAt) void this.drop(`the rollback window ended (${this.host.spec.rollbackWindow} after the cutover)`);
      else this.armWindow();
    }, wait);
    this.windowTimer.unref();
  }

  /** Streams until aborted; transient failures are retried, the error shown in the status meanwhile. */
  private async loop(signal: AbortSignal): Promise<void> {
    const r = this.record!;
    for (let attempt = 1; !signal.aborted; attempt++) {
      try {
        if (r.state === 'prepared') await this.retireForwardSlot();
        r.state = 'streaming';
        this.host.save();
        const start = parseLsn(r.startLsn!);
        const tables = await this.tablesOnTarget();
        this.host.log('info', `reverse sync: streaming the target's changes from ${r.startLsn} back into the old source`, { event: 'reverse-streaming' });
        await runSync({
          migrationId: this.host.rec.id,
          source: this.host.spec.target,
          target: this.host.spec.source,
          targetOptions: OLD_SOURCE_OPTIONS,
          slotName: r.slotName,
          publicationName: r.publicationName,
          tableSyncLsn: new Map(tables.map((t) => [t, start])),
          batchChanges: this.host.spec.apply.batchChanges,
          batchMs: this.host.spec.apply.batchMs,
          signal,
          onProgress: (p) => this.onProgress(p),
          log: (level, msg, fields) => this.host.log(level, `reverse sync: ${msg}`, fields),
        });
        return;
      } catch (e) {
        if (signal.aborted) return;
        this.lastError = (e as Error).message;
        const wait = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** Math.min(attempt - 1, 5));
        this.host.log('warn', `reverse sync failed (retried in ${wait} ms): ${this.lastError}`, { event: 'reverse-failed' });
        await sleep(wait, signal).catch(() => undefined);
      }
    }
  }

  /**
   * The forward slot on the old source has nothing left to stream (the
   * cutover drained it) and nobody reads it: left, it would keep every WAL
   * segment the reverse apply writes there. Dropped before the first
   * reverse change lands, so that nothing applied back is ever streamed forward.
   */
  private async retireForwardSlot(): Promise<void> {
    const rec = this.host.rec;
    const src = await connect('source', this.host.spec.source, { applicationName: `pgferry ${rec.id}`, extraOptions: OLD_SOURCE_OPTIONS });
    try {
      const r = await dropSourceObjects(src, rec.id, rec.slotName, rec.publicationName);
      if (r.dropped.length) this.host.log('info', `reverse sync: dropped the forward ${r.dropped.join(' and ')} on the old source (nothing left to stream)`);
      rec.slotState = 'none';
      rec.publicationCreated = false;
    } finally {
      await closeQuietly(src);
    }
  }

  /** The published tables, as the stream names them (a partitioned table by its root). */
  private async tablesOnTarget(): Promise<string[]> {
    const tgt = await connect('target', this.host.spec.target, { applicationName: `pgferry ${this.host.rec.id}` });
    try {
      const r = await tgt.query('SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1', [this.record!.publicationName]);
      return r.rows.map((x) => tableKey({ schema: x.schemaname, name: x.tablename }));
    } finally {
      await closeQuietly(tgt);
    }
  }

  private onProgress(p: SyncProgress): void {
    this.progress = p;
    this.lastError = '';
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      if (p.appliedLsn >= this.waiters[i].lsn) {
        this.waiters[i].resolve();
        this.waiters.splice(i, 1);
      }
    }
  }

  /**
   * Drop the slot and the publication on the target (a slot nobody reads
   * would fill its disk with WAL), after stopping the stream; logged, and
   * kept in the record with the reason. A target that cannot be reached
   * leaves the record as it was, and the error is thrown.
   */
  async drop(reason: string): Promise<string[]> {
    const r = this.record;
    if (!r || r.state === 'dropped') return [];
    await this.stop();
    // After a cutback the target is fenced read-only by default: this session is pgferry's own.
    const tgt = await connect('target', this.host.spec.target, { applicationName: `pgferry ${this.host.rec.id}`, extraOptions: OLD_SOURCE_OPTIONS });
    let dropped: string[];
    try {
      dropped = (await dropSourceObjects(tgt, reverseId(this.host.rec.id), r.slotName, r.publicationName)).dropped;
    } finally {
      await closeQuietly(tgt);
    }
    r.state = 'dropped';
    r.droppedAt = new Date().toISOString();
    r.dropReason = reason;
    this.host.save();
    this.host.log('info', `reverse sync ended: ${reason}; dropped ${dropped.length ? dropped.join(' and ') : 'nothing (already gone)'} on the target`, {
      event: 'reverse-dropped',
    });
    return dropped;
  }

  /** At delete: the reverse slot and publication on the target, and the reverse apply's bookkeeping on the old source. */
  async destroy(): Promise<string[]> {
    const dropped = await this.drop('the migration was deleted');
    const src = await connect('source', this.host.spec.source, { applicationName: `pgferry delete ${this.host.rec.id}`, extraOptions: OLD_SOURCE_OPTIONS });
    try {
      await dropTargetState(src, this.host.rec.id);
      await dropEmptyStateSchema(src);
    } finally {
      await closeQuietly(src);
    }
    return dropped;
  }

  /** Resolves once the old source has committed everything the target committed before `lsn` (the cutback's drain). */
  waitApplied(lsn: Lsn, signal: AbortSignal): Promise<void> {
    if (this.progress && this.progress.appliedLsn >= lsn) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w = { lsn, resolve };
      this.waiters.push(w);
      signal.addEventListener(
        'abort',
        () => {
          this.waiters = this.waiters.filter((x) => x !== w);
          reject(new Error('stopped waiting for the reverse sync'));
        },
        { once: true },
      );
    });
  }

  /** Lag of the old source behind the target, from the slot on the target (read at most once a second). */
  async lag(): Promise<{ lagBytes: number; lagSeconds: number }> {
    const r = this.record;
    if (!r || r.state !== 'streaming') return { lagBytes: 0, lagSeconds: 0 };
    if (this.lagCache && Date.now() - this.lagCache.at < 1000) return this.lagCache;
    let lagBytes: number;
    try {
      const tgt = await connect('target', this.host.spec.target, { applicationName: `pgferry ${this.host.rec.id}`, connectTimeoutMs: 3000 });
      try {
        const q = await tgt.query(
          `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8 AS lag FROM pg_replication_slots WHERE slot_name = $1`,
          [r.slotName],
        );
        lagBytes = Math.max(0, Math.round(q.rows[0]?.lag ?? 0));
      } finally {
        await closeQuietly(tgt);
      }
    } catch {
      lagBytes = this.lagCache?.lagBytes ?? 0;
    }
    const t = this.progress?.appliedCommitTime;
    const lagSeconds = lagBytes > 0 && t ? Math.max(0, (Date.now() - t.getTime()) / 1000) : 0;
    this.lagCache = { at: Date.now(), lagBytes, lagSeconds };
    return this.lagCache;
  }

  async status(): Promise<ReverseStatus | null> {
    const r = this.record;
    if (!r || r.state === 'creating') return null;
    const { lagBytes, lagSeconds } = await this.lag();
    return {
      state: this.lastError && r.state === 'streaming' ? 'failed' : r.state,
      slotName: r.slotName,
      publicationName: r.publicationName,
      startLsn: r.startLsn ?? '',
      appliedLsn: this.progress ? formatLsn(this.progress.appliedLsn) : '',
      lagBytes,
      lagSeconds,
      changesApplied: this.progress?.changesApplied ?? 0,
      windowEndsAt: r.windowEndsAt ?? '',
      droppedAt: r.droppedAt ?? '',
      dropReason: r.dropReason ?? '',
      lastError: this.lastError,
    };
  }
}

/**
 * The `pgferry` schema the reverse apply made on the old source, once no
 * migration keeps anything in it (its tables all empty): the user's
 * database is left as pgferry found it.
 */
async function dropEmptyStateSchema(src: pg.Client): Promise<void> {
  const tables = await src.query(
    "SELECT format('%I.%I', n.nspname, c.relname) AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'pgferry' AND c.relkind = 'r'",
  );
  for (const t of tables.rows) if ((await src.query(`SELECT EXISTS (SELECT FROM ${t.t}) AS e`)).rows[0].e) return;
  await src.query('DROP SCHEMA IF EXISTS pgferry CASCADE');
}

/** The reverse objects' owner tag (publication comment): told apart from the forward ones'. */
function reverseId(id: string): string {
  return `${id} (reverse)`;
}
