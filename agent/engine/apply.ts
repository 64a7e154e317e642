/**
 * apply — write decoded source changes into the target, exactly once.
 * Stage: receive → transform → **apply**.
 *
 * Input: pgoutput messages in stream order (Begin, row changes, Truncate,
 * Commit) and keepalive boundaries, fed by sync.ts. Output: target
 * transactions, each holding the changes of many whole source transactions
 * plus `pgferry.apply_state.applied_lsn` = the end LSN of the last of them,
 * written in the same transaction (target-state.ts). `appliedLsn` is the
 * position the source may be told to forget.
 *
 * Here: batching, pipelining batches to the target, exactly-once
 * bookkeeping. The rest of the stage: apply-plan.ts (a batch's steps),
 * apply-statements.ts and apply-shapes.ts (their SQL), apply-buffers.ts
 * (their data), apply-batch.ts (a batch sent, committed or rolled back),
 * apply-target.ts (the target's tables), apply-session.ts (its connection),
 * apply-durable.ts (what it has flushed), apply-diagnosis.ts (failures).
 * Design, ordering and guards: docs/architecture.md.
 */
import { connect, qn } from './conn';
import { PgferryError } from './errors';
import { formatLsn, maxLsn, parseLsn, pgMicrosToUnixMs, type Lsn } from './lsn';
import { BufferPool, Plan, rowChange, singleOf, type RelMap, type Step } from './apply-plan';
import { ApplySession, logApplyMode, prepareSession, type ApplyMode } from './apply-session';
import { BatchWriter, type Batch, type FailedAt } from './apply-batch';
import { DurablePosition } from './apply-durable';
import { binaryBlocker, readTargets, type PublishedColumn } from './apply-target';
import type { BeginMessage, CommitMessage, DeleteMessage, InsertMessage, RelationMessage, TruncateMessage, UpdateMessage } from './pgoutput';
import type { Endpoint } from './spec';
import { ensureTargetState, readAppliedLsn } from './target-state';
import { PipelineSkipped } from './pipeline';

import type { LogFn } from './log-fn';
import type { ChangeTracker } from './verify-changes';
import type { ShapeChange } from './schema-follow-columns';
import { TableMapper, type DdlTransaction, type GateLookup } from './apply-mapping';

export interface ApplierOptions {
  migrationId: string;
  /** Changes per target transaction (committed at the next source transaction boundary). */
  batchChanges: number;
  /** Longest a batch stays open, in ms. */
  batchMs: number;
  /** Per-table start: changes to `qn(schema, name)` apply only from source transactions committed at or after it. */
  tableSyncLsn: Map<string, Lsn>;
  /** Re-apply source transactions committed at or before this LSN one change per statement. Default: none. */
  safeThroughLsn?: Lsn | null;
  /** Told of each row change before it is batched (verify-changes.ts); may ask to wait for its flag. */
  tracker?: ChangeTracker;
  /**
   * Follow the source's column changes in stream order (schemaChanges 'follow', schema-follow-columns.ts):
   * `onChanges` hears of those a committed batch made. Absent: a column the target lacks stops the sync (SCHEMA_DRIFT).
   */
  follow?: { source: Endpoint; typesFromTarget: boolean; onChanges: (changes: ShapeChange[]) => void };
  /** Tables being added (their copy in progress): a change before the copy's point is skipped, one after it waits for the copy. */
  gates?: GateLookup;
  /** Extra `-c` settings for the target session (the reverse sync's old source is fenced read-only: it sets that off). */
  targetOptions?: string;
  log?: LogFn;
}

/** A batch commits at the next source transaction boundary once its row data reaches this size, whatever its change count. */
const BATCH_BYTES = 8 * 1024 * 1024;
/** The first batch after a (re)start closes at this many changes (see `batchLimit`). */
const FIRST_BATCH_CHANGES = 256;

/** A batch committing on the target. */
interface Inflight {
  done: Promise<void>;
  /**
   * Its COMMIT has been sent (or it failed): a batch whose row counts are
   * checked here holds its transaction open until then, so nothing may be
   * queued behind it before.
   */
  sent: Promise<void>;
  changes: number;
  /** An idle position seen while this was the newest batch in flight: covered once it commits. */
  idleAfter: Lsn;
}

/**
 * Batches on their way to the target before the oldest one's answer is in:
 * one executing and one queued right behind it, so the target starts the
 * next batch without waiting a round trip for the agent (pipeline.ts).
 */
const MAX_INFLIGHT = 2;

interface SourceTxn {
  finalLsn: Lsn;
  commitTimeMicros: bigint;
  skip: boolean;
  changes: number;
}

/**
 * Applies one stream of source changes to the target. Not reentrant: await
 * each call before the next (sync.ts drives it from one loop).
 */
export class Applier {
  /** Everything the source committed before this position is committed (visible) on the target. */
  appliedLsn: Lsn;
  /** How far the applied position is flushed on the target (`durableLsn`). */
  private readonly durable: DurablePosition;
  /** Sends batches and chunks to the target, and rolls back and classifies their failures. */
  private readonly writer: BatchWriter;
  /** Batches committing on the target, oldest first (at most MAX_INFLIGHT), while the next one gathers. */
  private inflight: Inflight[] = [];
  private inflightFailure: { e: unknown } | null = null;
  /** Called after each batch commits (sync.ts reports progress and confirms). */
  onCommitted: (() => void) | null = null;
  appliedCommitTime: Date | null = null;
  changesApplied = 0;
  transactionsApplied = 0;
  lastBatchAt: Date | null = null;
  safeThroughLsn: Lsn | null;
  /**
   * The stream sends values in binary form (set by sync.ts before the first
   * change, after `binaryBlocker` found nothing against it): every table's
   * RelMap is binary, and a table that cannot be throws TextModeNeeded.
   */
  binary = false;

  private txn: SourceTxn | null = null;
  private batch: Batch | null = null;
  private plan: Plan;
  /** Statement buffers lent from one batch to the next (see BufferPool). */
  private readonly pool = new BufferPool(2 * BATCH_BYTES);
  /**
   * Changes that close a batch: starts small and doubles with every commit
   * up to `batchChanges`, so after a (re)start the target gets its first
   * batch while the rest of the backlog is still being decoded (slow start).
   */
  private batchLimit: number;
  private readonly log: LogFn;
  /** Source relations mapped onto target tables, and the column changes followed on the way. */
  private readonly mapper: TableMapper;

  private constructor(
    private readonly session: ApplySession,
    readonly mode: ApplyMode,
    private readonly opts: ApplierOptions,
    durableLsn: Lsn,
  ) {
    this.appliedLsn = durableLsn;
    this.durable = new DurablePosition(durableLsn);
    this.safeThroughLsn = opts.safeThroughLsn ?? null;
    this.log = opts.log ?? (() => undefined);
    this.writer = new BatchWriter(session, opts.migrationId, this.durable, this, this.log);
    this.plan = this.newPlan();
    this.batchLimit = Math.min(opts.batchChanges, FIRST_BATCH_CHANGES);
    this.mapper = new TableMapper(session, mode, opts);
  }

  /** Connect to the target, prepare the session and read the applied position. */
  static async open(target: Endpoint, opts: ApplierOptions): Promise<Applier> {
    const client = await connect('target', target, { applicationName: 'pgferry-apply', extraOptions: opts.targetOptions });
    try {
      const mode = await prepareSession(client);
      await ensureTargetState(client);
      const durable = await readAppliedLsn(client, opts.migrationId);
      const a = new Applier(new ApplySession(client), mode, opts, durable ?? 0n);
      // Every table's target columns in one catalog read, now, while the
      // replication connection is still being set up: otherwise each table's
      // first change waits for a read of its own (a round trip per table
      // after every start, resume or reconnect).
      const known = await readTargets(a.session, [...opts.tableSyncLsn.keys()], mode);
      await a.mapper.init(known);
      a.log('info', `read the target's columns of ${known.size} of ${opts.tableSyncLsn.size} table(s)`, {
        event: 'target-tables',
        found: known.size,
        expected: opts.tableSyncLsn.size,
      });
      logApplyMode(a.log, mode);
      return a;
    } catch (e) {
      await client.end().catch(() => undefined);
      throw e;
    }
  }

  /** Inside a source transaction (between Begin and Commit). */
  get inSourceTransaction(): boolean {
    return this.txn !== null;
  }
  /** The final LSN of the source transaction open in the stream (0 when none). */
  get openTxnLsn(): Lsn {
    return this.txn?.finalLsn ?? 0n;
  }
  /** Changes gathered in the open batch, not yet committed. */
  get pendingChanges(): number {
    return (this.batch?.changes ?? 0) + this.inflight.reduce((n, f) => n + f.changes, 0);
  }
  /** ms the open batch has been open; null when none. */
  batchAgeMs(nowMs = Date.now()): number | null {
    return this.batch ? nowMs - this.batch.openedAtMs : null;
  }

  /**
   * What keeps the stream from sending binary values, given the source's
   * published columns (null: nothing); see apply-target.ts, `binaryBlocker`.
   * Reads the target tables not read yet.
   */
  async binaryBlocker(columns: PublishedColumn[]): Promise<string | null> {
    const targets = this.mapper.targets;
    const unread = [...new Set(columns.map((c) => qn(c.schema, c.table)))].filter((k) => !targets.has(k));
    if (unread.length) for (const [key, t] of await readTargets(this.session, unread, this.mode)) targets.set(key, t);
    return binaryBlocker(targets, columns);
  }

  /** A Relation message: forget the mapping for that OID (the source table may have changed). */
  relation(m: RelationMessage): void {
    this.mapper.forget(m.relationOid);
  }

  begin(m: BeginMessage): void {
    if (this.txn)
      throw new PgferryError(
        'INTERNAL',
        `Begin of a source transaction at ${formatLsn(m.finalLsn)} inside the one at ${formatLsn(this.txn.finalLsn)}.`,
        'Restart the agent; report this if it repeats.',
      );
    // Guard 1 (replay after restart): a transaction whose commit record starts
    // before the applied position ended at or before it, so it is already on
    // the target. Without this, a resend would apply it twice.
    this.txn = { finalLsn: m.finalLsn, commitTimeMicros: m.commitTimeMicros, skip: m.finalLsn < this.appliedLsn, changes: 0 };
    if (this.batch) this.batch.maxFinalLsn = maxLsn(this.batch.maxFinalLsn, m.finalLsn);
  }

  /**
   * A row change or TRUNCATE of the open source transaction. Synchronous in
   * the common case (the table's mapping is known and no chunk is due);
   * returns a promise, which the caller must await before the next call,
   * when it has to read the target's catalog or execute a chunk.
   */
  change(m: InsertMessage | UpdateMessage | DeleteMessage | TruncateMessage): Promise<void> | undefined {
    const txn = this.txn;
    if (!txn) throw new PgferryError('INTERNAL', `A ${m.tag} arrived outside a source transaction.`, 'Restart the agent; report this if it repeats.');
    if (txn.skip) return undefined;
    if (m.tag === 'truncate') return this.truncate(m, txn);
    const map = this.mapper.known(m.relation);
    if (!map) return this.mapInTxn(m.relation, txn).then((mapped) => (mapped ? this.change(m) : undefined));
    const lsn = txn.finalLsn;
    if (lsn < map.syncLsn) return undefined; // Guard 2 (per-table start): the table's copy already holds what committed before its snapshot.
    const noted = this.opts.tracker?.note(map.target.quoted, map, m);
    if (noted) return noted.then(() => this.batchChange(m, map, txn));
    return this.batchChange(m, map, txn);
  }

  /** The change into the open batch's plan (its table mapped, its key noted). */
  private batchChange(m: InsertMessage | UpdateMessage | DeleteMessage, map: RelMap, txn: SourceTxn): Promise<void> | undefined {
    const lsn = txn.finalLsn;
    const batch = this.openBatch(txn);
    const plan = this.plan;
    if (this.inReplay(lsn)) {
      // One change per statement, in source order (a barrier each).
      plan.addBarrier(singleOf(rowChange(m, map, lsn), true));
      batch.safe = true;
    } else if (m.tag === 'insert') {
      plan.insert(map, m.newTuple, lsn);
    } else if (map.full || (m.tag === 'update' && m.oldTuple)) {
      // REPLICA IDENTITY FULL rows and UPDATEs that move the key: one statement each.
      plan.addSingle(singleOf(rowChange(m, map, lsn), false), map.target);
    } else if (m.tag === 'update') {
      plan.update(map, m.newTuple, lsn);
    } else {
      plan.delete(map, m.oldTuple, lsn);
    }
    return this.added(batch, txn);
  }

  private async truncate(m: TruncateMessage, txn: SourceTxn): Promise<void> {
    const maps: RelMap[] = [];
    for (const rel of m.relations) {
      if (!(await this.mapInTxn(rel, txn))) continue;
      const map = this.mapper.known(rel)!;
      // Guard 2 (per-table start), as above.
      if (txn.finalLsn >= map.syncLsn && !maps.some((x) => x.target === map.target)) maps.push(map);
    }
    if (maps.length === 0) return;
    for (const map of maps) await this.opts.tracker?.noteWhole(map.target.quoted);
    const batch = this.openBatch(txn);
    const safe = this.inReplay(txn.finalLsn);
    this.plan.addBarrier(singleOf({ op: 'TRUNCATE', maps, restartIdentity: m.restartIdentity, lsn: txn.finalLsn }, safe));
    if (safe) batch.safe = true;
    await this.added(batch, txn);
  }

  /** The source transaction committed at `lsn` is part of a one-change-per-statement replay. */
  private inReplay(lsn: Lsn): boolean {
    return this.safeThroughLsn !== null && lsn <= this.safeThroughLsn;
  }

  private newPlan(): Plan {
    return new Plan(this.mode === 'replica', this.pool);
  }

  private openBatch(txn: SourceTxn): Batch {
    if (!this.batch) {
      this.batch = {
        openedAtMs: Date.now(),
        changes: 0,
        txns: 0,
        lastEndLsn: null,
        lastCommitTime: null,
        boundaryLsn: 0n,
        maxFinalLsn: txn.finalLsn,
        bytes: 0,
        targetTxnOpen: false,
        safe: false,
      };
    }
    return this.batch;
  }

  private added(batch: Batch, txn: SourceTxn): Promise<void> | undefined {
    batch.changes++;
    txn.changes++;
    // Guard 3 (bounded memory): a transaction larger than a batch is executed
    // in chunks inside the open target transaction; it commits with its Commit.
    // (Twice the batch size: an ordinary batch that reaches batchChanges at
    // its last change commits through flush() — overlapped with decoding —
    // instead of being executed here while decoding waits.)
    if (this.plan.changes >= 2 * this.opts.batchChanges || this.plan.bytes >= 2 * BATCH_BYTES) return this.executeChunk(batch);
    return undefined;
  }

  private async executeChunk(batch: Batch): Promise<void> {
    await this.settle();
    const plan = this.plan;
    this.plan = this.newPlan();
    batch.bytes += plan.bytes;
    await this.writer.execute(batch, plan);
  }

  /** Commit of a source transaction. Returns true when a target transaction was committed. */
  commit(m: CommitMessage): boolean | Promise<boolean> {
    const txn = this.txn;
    if (!txn) throw new PgferryError('INTERNAL', `Commit at ${formatLsn(m.commitLsn)} without Begin.`, 'Restart the agent; report this if it repeats.');
    if (m.commitLsn !== txn.finalLsn)
      throw new PgferryError(
        'INTERNAL',
        `Commit at ${formatLsn(m.commitLsn)} does not match its Begin (${formatLsn(txn.finalLsn)}).`,
        'Restart the agent; report this if it repeats.',
      );
    this.txn = null;
    if (txn.skip) return false;
    const commitTime = new Date(pgMicrosToUnixMs(m.commitTimeMicros));
    if (!this.batch) {
      // Nothing of ours in it and nothing open: the target already reflects
      // everything before its end (PG < 15 sends empty transactions too).
      this.idle(m.endLsn);
      return false;
    }
    this.batch.lastEndLsn = m.endLsn;
    if (txn.changes > 0) {
      this.batch.txns++;
      this.batch.lastCommitTime = commitTime;
    }
    // Guard 4 (exactly once): a batch commits only here, at a source
    // transaction boundary, with the end LSN of that transaction.
    // A one-change-per-statement replay ends its batch at its last
    // transaction: the transactions after it are grouped again, and must
    // not share a batch with the replay (see `BatchWriter.failed`).
    const replayDone = this.batch.safe && this.safeThroughLsn !== null && txn.finalLsn >= this.safeThroughLsn;
    if (
      replayDone ||
      this.batch.changes >= this.batchLimit ||
      this.batch.bytes + this.plan.bytes >= BATCH_BYTES ||
      Date.now() - this.batch.openedAtMs >= this.opts.batchMs
    ) {
      return this.flush().then(() => true);
    }
    return false;
  }

  /**
   * A keepalive's walEnd seen between source transactions: everything the
   * source committed before it has been received. It is covered at once when
   * no batch is open, else when the open batch commits.
   */
  boundary(walEnd: Lsn): void {
    if (this.txn) return;
    if (this.batch) this.batch.boundaryLsn = maxLsn(this.batch.boundaryLsn, walEnd);
    else this.idle(walEnd);
  }

  /**
   * A position with no change of ours before it since the last batch: applied
   * now when no batch is in flight, else once the newest one commits.
   */
  private idle(lsn: Lsn): void {
    const last = this.inflight[this.inflight.length - 1];
    if (last) last.idleAfter = maxLsn(last.idleAfter, lsn);
    else {
      this.appliedLsn = maxLsn(this.appliedLsn, lsn);
      this.durable.coverIdle(lsn);
    }
  }

  /** Wait for the batches sent before `entry` (all in flight when it is not yet listed); throws the first one's failure. */
  private async afterEarlier(entry: Inflight): Promise<void> {
    for (const f of [...this.inflight]) {
      if (f === entry) break;
      await f.done;
    }
  }

  /**
   * Everything the source committed before this position is committed AND
   * flushed on the target: the only position ever confirmed to the source.
   */
  get durableLsn(): Lsn {
    return this.durable.lsn;
  }
  set durableLsn(lsn: Lsn) {
    this.durable.lsn = lsn;
  }

  /** Commits not yet known to be flushed on the target. */
  get undurableBatches(): number {
    return this.durable.pending;
  }

  /**
   * Ask the target how far its WAL is flushed (cheap; safe inside an open
   * transaction). Not while batches are in flight: their commits report it.
   */
  async refreshDurable(): Promise<void> {
    if (this.durable.pending === 0 || this.inflight.length > 0) return;
    const r = await this.session.query('SELECT pg_current_wal_flush_lsn()::text AS l');
    this.durable.advance(parseLsn(r.rows[0].l));
  }

  /**
   * Commit the open batch (call between source transactions). No-op when none
   * is open. The batch's statements and COMMIT are sent to the target at once,
   * behind the batch before it if that one is still executing, while the
   * caller goes on decoding the next batch: decode and target execution
   * overlap, and the target goes from one batch straight to the next. Waits
   * only when MAX_INFLIGHT batches are in flight already. A failure surfaces
   * from `settle` / `throwIfFailed`, or from the next flush.
   */
  async flush(): Promise<void> {
    const batch = this.batch;
    if (!batch) return;
    if (this.txn) throw new PgferryError('INTERNAL', 'flush inside a source transaction', 'Restart the agent; report this if it repeats.');
    this.throwIfFailed();
    while (this.inflight.length >= MAX_INFLIGHT) await this.inflight[0].done;
    await this.inflight[this.inflight.length - 1]?.sent;
    this.throwIfFailed(); // the batch waited for may have failed before it was sent
    const plan = this.plan;
    this.plan = this.newPlan();
    this.batch = null;
    let markSent!: () => void;
    const entry: Inflight = {
      done: Promise.resolve(),
      sent: new Promise<void>((resolve) => {
        markSent = resolve;
      }),
      changes: batch.changes,
      idleAfter: 0n,
    };
    // A failed batch stays counted as pending: its changes are not on the
    // target, and nobody (the cutover's drain) may read "nothing pending".
    entry.done = this.commitBatch(batch, plan, entry, markSent).then(() => this.forgetInflight(entry));
    entry.done.catch((e) => {
      this.inflightFailure ??= { e };
    }); // surfaced by settle() / throwIfFailed()
    this.inflight.push(entry);
  }

  /** Wait for every batch in flight; rethrows the first failure. */
  async settle(): Promise<void> {
    while (this.inflight.length) await this.inflight[0].done;
    this.throwIfFailed();
  }

  /** A batch is committing on the target. */
  get hasInflight(): boolean {
    return this.inflight.length > 0;
  }

  /** Rethrow the failure of a batch in flight as soon as it is known. */
  throwIfFailed(): void {
    const f = this.inflightFailure;
    if (f) throw f.e;
  }

  private async commitBatch(batch: Batch, plan: Plan, entry: Inflight, markSent: () => void): Promise<void> {
    const endLsn = maxLsn(batch.lastEndLsn ?? 0n, batch.boundaryLsn);
    const at: FailedAt = { step: null };
    try {
      if (!(await this.writer.commit(batch, plan, endLsn, markSent, at))) {
        // Nothing to write: no target transaction. Its position counts only
        // once the batches before it have committed (their answers keep the
        // order of the others).
        await this.afterEarlier(entry);
        this.durable.coverIdle(endLsn);
      }
    } catch (e) {
      const err = await this.failedBatch(e, at.step, batch, entry);
      // Known before `sent` settles, so a flush waiting on it sends nothing after this batch.
      this.inflightFailure ??= { e: err };
      throw err;
    } finally {
      markSent();
    }
    plan.release(); // answered: the server has read every byte of it
    if (batch.followed) this.opts.follow?.onChanges(batch.followed);
    this.appliedLsn = maxLsn(this.appliedLsn, endLsn);
    if (batch.lastCommitTime) this.appliedCommitTime = batch.lastCommitTime;
    this.changesApplied += batch.changes;
    this.batchLimit = Math.min(this.opts.batchChanges, this.batchLimit * 2);
    this.transactionsApplied += batch.txns;
    this.lastBatchAt = new Date();
    // Positions that arrived (idle keepalives) while this was the newest batch in flight.
    if (entry.idleAfter > 0n) {
      this.appliedLsn = maxLsn(this.appliedLsn, entry.idleAfter);
      this.durable.coverIdle(entry.idleAfter);
    }
    if (this.safeThroughLsn !== null && this.appliedLsn > this.safeThroughLsn) {
      this.log('info', `one-change-per-statement replay done through ${formatLsn(this.safeThroughLsn)}; back to set-based apply`, {
        event: 'safe-replay-done',
      });
      this.safeThroughLsn = null;
    }
    // Not pending any more before anyone hears of the commit: the report that
    // onCommitted triggers is the one the cutover's drain waits for (it would
    // otherwise see this batch pending until the stream's next event, up to
    // STATUS_INTERVAL_MS later, with the source fenced all along).
    this.forgetInflight(entry);
    this.onCommitted?.();
  }

  private forgetInflight(entry: Inflight): void {
    const i = this.inflight.indexOf(entry);
    if (i >= 0) this.inflight.splice(i, 1);
  }

  /**
   * A batch failed. A batch that did not run because one sent before it
   * failed (PipelineSkipped) fails with that one's error.
   */
  private async failedBatch(e: unknown, step: Step | null, batch: Batch, entry: Inflight): Promise<unknown> {
    if (e instanceof PipelineSkipped) {
      try {
        await this.afterEarlier(entry);
      } catch (earlier) {
        return earlier;
      }
    }
    return this.writer.failed(e, step, batch);
  }

  /** Roll back whatever is open and disconnect. Uncommitted changes are re-sent after a restart. */
  async close(): Promise<void> {
    for (const f of [...this.inflight]) await f.done.catch(() => undefined);
    this.inflight = [];
    if (this.batch?.targetTxnOpen) await this.session.query('ROLLBACK').catch(() => undefined);
    this.batch = null;
    this.plan = this.newPlan();
    this.txn = null;
    await this.mapper.close();
    await this.session.end();
  }

  // ---- mapping (apply-mapping.ts) ---------------------------------------------

  /** Map `rel` for a change of `txn`; false: the change is skipped (see `TableMapper.map`). */
  private mapInTxn(rel: RelationMessage, txn: SourceTxn): Promise<boolean> {
    return this.mapper.map(rel, txn.finalLsn, this.binary, () => this.ddlTransaction(txn));
  }

  /**
   * The batch's target transaction, open, with everything before this point
   * of the stream in it: a column change followed there commits with the
   * position it belongs to (a restart replays both).
   */
  private async ddlTransaction(txn: SourceTxn): Promise<DdlTransaction> {
    const batch = this.openBatch(txn);
    await this.executeChunk(batch);
    if (!batch.targetTxnOpen) {
      await this.session.query('BEGIN');
      batch.targetTxnOpen = true;
    }
    return {
      run: (text, values) => this.session.query(text, values),
      followed: (changes) => (batch.followed ??= []).push(...changes),
      rollback: async () => {
        await this.session.query('ROLLBACK').catch(() => undefined);
        batch.targetTxnOpen = false;
      },
    };
  }
}
