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
 * Batching: a batch (one target transaction) commits at a source transaction
 * boundary once `batchChanges` changes (or 8 MiB of row data) have gathered
 * or `batchMs` has passed since it opened (sync.ts also flushes it when the
 * stream goes idle); after a restart the first batches are smaller (slow
 * start). A source transaction larger than twice that is executed in chunks
 * inside the still-open target transaction, so memory is bounded by a chunk.
 * A batch goes to the target as one pipeline part — BEGIN, its statements,
 * the applied position, COMMIT — sent behind the batch still executing
 * there (at most MAX_INFLIGHT in flight), while the next one is gathered:
 * the target goes from one batch to the next without waiting for the agent.
 * The row counts that must hold (an UPDATE finds every row) are checked by
 * the server inside each statement, so a failed check aborts the batch
 * before its COMMIT, and nothing sent behind a failure runs (pipeline.ts).
 * Tables whose counts the server cannot check (a trigger that may skip a
 * COPY row, rules) and one-change-per-statement replays take a second round
 * trip: statements, counts checked here, then COMMIT.
 *
 * Statements are set-based and built as the changes arrive (apply-plan.ts):
 * a run of INSERTs into one table is one COPY (or, for a few rows, one
 * `INSERT … SELECT … FROM unnest($1::text[], …)`), UPDATEs and DELETEs join
 * on the replica identity through `unnest` of binary array parameters.
 * Values travel in one of two forms, chosen per stream (sync.ts): the
 * source's text, cast to the target column's type (I/O conversion works for
 * every type: enums, domains, arrays, ranges); or, when every published
 * column has the same built-in type on both sides (`binaryBlocker`), the
 * types' binary form — binary COPY and typed arrays, parsed by no one. Types
 * are cast without their modifier, so storing into a narrower target column
 * fails instead of truncating silently.
 *
 * Ordering: the session runs with `session_replication_role = replica` when
 * permitted (FK and ordinary triggers do not fire, as in PostgreSQL's own apply
 * worker); then statements are grouped per table within a batch (per-table
 * order kept, TRUNCATE is a barrier). When it is not permitted (non-superuser,
 * managed services), runs are grouped only when consecutive in global order.
 *
 * Failure: a set-based statement can fail where the one-by-one sequence would
 * not (e.g. values of a unique column swapped within a run). The fast path
 * then rolls the batch back and throws `SafeReplayNeeded`; sync.ts restarts the
 * stream from the last committed position and this stage re-applies the
 * failed range strictly one change per statement. Re-reading from the source
 * rather than keeping the batch in memory keeps memory bounded even when the
 * failed batch was a huge transaction applied in chunks. A change that still
 * fails is an APPLY_FAILED error naming the table, the operation and the LSN.
 *
 * Known limit: PostgreSQL lets UPDATE set a GENERATED ALWAYS identity column
 * only to DEFAULT, so such columns are left out of UPDATE's SET list and
 * checked instead; a source UPDATE that changed one stops with APPLY_FAILED.
 */
import type pg from 'pg';
import { connect, qi, ql, qn } from './conn';
import { PgferryError, isTransientError, sqlState, type PgServerError } from './errors';
import { formatLsn, maxLsn, parseLsn, pgMicrosToUnixMs, type Lsn } from './lsn';
import { BufferPool, Plan, TextModeNeeded, type Change, type Group, type RelMap, type RowChange, type Single, type Step, type TargetColumn, type TargetTable, type TruncateChange } from './apply-plan';
import { UNCHANGED_TOAST, type BeginMessage, type CommitMessage, type DeleteMessage, type InsertMessage, type RelationMessage, type TruncateMessage, type Tuple, type UpdateMessage } from './pgoutput';
import type { Endpoint } from './spec';
import { LOCAL_WAL_POSITIONS, RECORD_APPLIED_LSN, ensureTargetState, readAppliedLsn } from './target-state';
import { Pipeline, PipelineError, PipelineSkipped, type PartResult, type PipelineStatement, type PipelineValue } from './pipeline';

import type { LogFn } from './log-fn';

/** How statements may be ordered, decided by what the target session is allowed to do. */
export type ApplyMode = 'replica' | 'ordered';

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
  log?: LogFn;
}

/** The fast path failed: restart the stream from `appliedLsn` and apply through `throughLsn` one change per statement. */
export class SafeReplayNeeded extends Error {
  constructor(readonly throughLsn: Lsn, cause: unknown) {
    super(`set-based apply failed, replaying through ${formatLsn(throughLsn)} one change per statement: ${(cause as Error)?.message ?? String(cause)}`, { cause });
    this.name = 'SafeReplayNeeded';
  }
}

interface Statement {
  text: string; values: PipelineValue[]; step: Step; expectRows: number | null; onShort: 'fail' | 'warn';
  /** COPY … FROM STDIN text-format data, when the statement is a COPY. */
  copyData?: Buffer;
}

/** A batch commits at the next source transaction boundary once its row data reaches this size, whatever its change count. */
const BATCH_BYTES = 8 * 1024 * 1024;
/** The first batch after a (re)start closes at this many changes (see `batchLimit`). */
const FIRST_BATCH_CHANGES = 256;

interface Batch {
  openedAtMs: number;
  changes: number;
  txns: number;
  lastEndLsn: Lsn | null;
  lastCommitTime: Date | null;
  /** A keepalive position received at a transaction boundary inside this batch. */
  boundaryLsn: Lsn;
  maxFinalLsn: Lsn;
  /** Row data bytes gathered. */
  bytes: number;
  targetTxnOpen: boolean;
  /** Some of it was applied one change per statement. */
  safe: boolean;
}

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

interface SourceTxn { finalLsn: Lsn; commitTimeMicros: bigint; skip: boolean; changes: number }

/** Raised by the fast path when UPDATE touched fewer rows than it should have. */
class ShortRowCount extends Error {}

/**
 * Applies one stream of source changes to the target. Not reentrant: await
 * each call before the next (sync.ts drives it from one loop).
 */
export class Applier {
  /** Everything the source committed before this position is committed (visible) on the target. */
  appliedLsn: Lsn;
  /**
   * Everything the source committed before this position is committed AND
   * flushed on the target: the only position ever confirmed to the source.
   */
  durableLsn: Lsn;
  /** Committed batches not yet known to be flushed: source end LSN → target commit position. */
  private notDurable: Array<{ sourceLsn: Lsn; localLsn: Lsn }> = [];
  /** Batches committing on the target, oldest first (at most MAX_INFLIGHT), while the next one gathers. */
  private inflight: Inflight[] = [];
  private inflightFailure: { e: unknown } | null = null;
  /** The pipeline batches are sent on (pipeline.ts); a new one once it has ended. */
  private pipe: Pipeline | null = null;
  /**
   * Settles when the connection's last user (a pipeline or a query) is done:
   * each waits for the one before, so node-postgres never queues a query.
   */
  private turn: Promise<unknown> = Promise.resolve();
  /** Called after each batch commits (sync.ts reports progress and confirms). */
  onCommitted: (() => void) | null = null;
  private lastLocalLsn: Lsn = 0n;
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
  private readonly maps = new Map<number, RelMap>();
  private readonly targets = new Map<string, TargetTable>();
  /** Statement buffers lent from one batch to the next (see BufferPool). */
  private readonly pool = new BufferPool(2 * BATCH_BYTES);
  /** Prepared statement names by statement text, and the names the session has prepared. */
  private readonly prepared = new Map<string, string>();
  private readonly parsed = new Set<string>();
  private nameSeq = 0;
  /**
   * Changes that close a batch: starts small and doubles with every commit
   * up to `batchChanges`, so after a (re)start the target gets its first
   * batch while the rest of the backlog is still being decoded (slow start).
   */
  private batchLimit: number;
  private readonly log: LogFn;

  private constructor(private readonly client: pg.Client, readonly mode: ApplyMode, private readonly opts: ApplierOptions, durableLsn: Lsn) {
    this.appliedLsn = durableLsn;
    this.durableLsn = durableLsn;
    this.safeThroughLsn = opts.safeThroughLsn ?? null;
    this.log = opts.log ?? (() => undefined);
    this.plan = this.newPlan();
    this.batchLimit = Math.min(opts.batchChanges, FIRST_BATCH_CHANGES);
  }

  /** Connect to the target, prepare the session and read the applied position. */
  static async open(target: Endpoint, opts: ApplierOptions): Promise<Applier> {
    const client = await connect('target', target, { applicationName: 'pgferry-apply' });
    try {
      // Commits are asynchronous (as PostgreSQL's own apply worker's): what is
      // confirmed to the source is not the committed position but the durable
      // one (`durableLsn`: batches whose commit record the target has flushed),
      // so a target crash that loses the last commits loses nothing for good.
      // Long chunked transactions must not be cut off by timeouts.
      // Generic plans: a custom plan sees the real array length and, for a
      // few thousand keys against a cached table, picks a hash join over a
      // sequential scan of the WHOLE table (cost grows with table size and
      // is replanned every time); the generic plan probes the replica
      // identity index per key, as PostgreSQL's own apply worker does.
      await client.query("SET synchronous_commit = off; SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0; SET plan_cache_mode = force_generic_plan");
      let mode: ApplyMode = 'replica';
      try {
        await client.query('SET session_replication_role = replica');
      } catch (e) {
        if (sqlState(e) !== '42501') throw e;
        mode = 'ordered';
      }
      await ensureTargetState(client);
      const durable = await readAppliedLsn(client, opts.migrationId);
      const a = new Applier(client, mode, opts, durable ?? 0n);
      // Every table's target columns in one catalog read, now, while the
      // replication connection is still being set up: otherwise each table's
      // first change waits for a read of its own (a round trip per table
      // after every start, resume or reconnect).
      const known = await a.readTargets([...opts.tableSyncLsn.keys()]);
      for (const [key, t] of known) a.targets.set(key, t);
      a.log('info', `read the target's columns of ${known.size} of ${opts.tableSyncLsn.size} table(s)`, { event: 'target-tables', found: known.size, expected: opts.tableSyncLsn.size });
      if (mode === 'replica') {
        a.log('info', 'apply mode: replica (session_replication_role = replica; statements grouped per table within a batch)', { event: 'apply-mode', mode });
      } else {
        a.log('warn', 'apply mode: ordered (the target user may not set session_replication_role: foreign keys and triggers fire on the target, statements keep the source order)',
          { event: 'apply-mode', mode, remedy: 'Run the agent with a target user allowed to SET session_replication_role (superuser, or on PostgreSQL 15+: GRANT SET ON PARAMETER session_replication_role TO <user>) for faster apply.' });
      }
      return a;
    } catch (e) {
      await client.end().catch(() => undefined);
      throw e;
    }
  }

  /** Inside a source transaction (between Begin and Commit). */
  get inSourceTransaction(): boolean { return this.txn !== null; }
  /** Changes gathered in the open batch, not yet committed. */
  get pendingChanges(): number { return (this.batch?.changes ?? 0) + this.inflight.reduce((n, f) => n + f.changes, 0); }
  /** ms the open batch has been open; null when none. */
  batchAgeMs(nowMs = Date.now()): number | null { return this.batch ? nowMs - this.batch.openedAtMs : null; }

  /**
   * What keeps the stream from sending binary values, given the source's
   * published columns (null: nothing): a table without a replica identity
   * key (`identity` 'f': its rows are matched as text), or a column whose target type is not
   * `binaryOk` or is not the source's type. Tables the target lacks are left
   * to `mapFor`, which names them.
   */
  async binaryBlocker(columns: { schema: string; table: string; identity: string; column: string; typeOid: number }[]): Promise<string | null> {
    const unread = [...new Set(columns.map((c) => qn(c.schema, c.table)))].filter((k) => !this.targets.has(k));
    if (unread.length) for (const [key, t] of await this.readTargets(unread)) this.targets.set(key, t);
    for (const c of columns) {
      const key = qn(c.schema, c.table);
      const t = this.targets.get(key);
      if (!t) continue;
      if (c.identity === 'f') return keylessReason(key);
      const col = t.columns.get(c.column);
      if (!col || col.generated) continue;
      const why = notBinaryReason(key, c.column, col, c.typeOid);
      if (why) return why;
    }
    return null;
  }

  /** A Relation message: forget the mapping for that OID (the source table may have changed). */
  relation(m: RelationMessage): void {
    this.maps.delete(m.relationOid);
  }

  begin(m: BeginMessage): void {
    if (this.txn) throw new PgferryError('INTERNAL', `Begin of a source transaction at ${formatLsn(m.finalLsn)} inside the one at ${formatLsn(this.txn.finalLsn)}.`, 'Restart the agent; report this if it repeats.');
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
    const map = this.knownMap(m.relation);
    if (!map) return this.mapFor(m.relation).then(() => this.change(m));
    const lsn = txn.finalLsn;
    if (lsn < map.syncLsn) return undefined; // Guard 2 (per-table start): the table's copy already holds what committed before its snapshot.
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
      const map = await this.mapFor(rel);
      // Guard 2, as above.
      if (txn.finalLsn >= map.syncLsn && !maps.some((x) => x.target === map.target)) maps.push(map);
    }
    if (maps.length === 0) return;
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
      this.batch = { openedAtMs: Date.now(), changes: 0, txns: 0, lastEndLsn: null, lastCommitTime: null, boundaryLsn: 0n, maxFinalLsn: txn.finalLsn, bytes: 0, targetTxnOpen: false, safe: false };
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
    await this.execute(batch, plan);
  }

  /** Commit of a source transaction. Returns true when a target transaction was committed. */
  commit(m: CommitMessage): boolean | Promise<boolean> {
    const txn = this.txn;
    if (!txn) throw new PgferryError('INTERNAL', `Commit at ${formatLsn(m.commitLsn)} without Begin.`, 'Restart the agent; report this if it repeats.');
    if (m.commitLsn !== txn.finalLsn) throw new PgferryError('INTERNAL', `Commit at ${formatLsn(m.commitLsn)} does not match its Begin (${formatLsn(txn.finalLsn)}).`, 'Restart the agent; report this if it repeats.');
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
    // not share a batch with the replay (see `failed`).
    const replayDone = this.batch.safe && this.safeThroughLsn !== null && txn.finalLsn >= this.safeThroughLsn;
    if (replayDone || this.batch.changes >= this.batchLimit || this.batch.bytes + this.plan.bytes >= BATCH_BYTES || Date.now() - this.batch.openedAtMs >= this.opts.batchMs) {
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
    else { this.appliedLsn = maxLsn(this.appliedLsn, lsn); this.coverIdle(lsn); }
  }

  /** Wait for the batches sent before `entry` (all in flight when it is not yet listed); throws the first one's failure. */
  private async afterEarlier(entry: Inflight): Promise<void> {
    for (const f of [...this.inflight]) {
      if (f === entry) break;
      await f.done;
    }
  }

  /**
   * A position that covers no change of ours: durable as soon as every batch
   * committed before it is (it rides on the last batch's commit position).
   */
  private coverIdle(lsn: Lsn): void {
    if (this.notDurable.length === 0) this.durableLsn = maxLsn(this.durableLsn, lsn);
    else this.notDurable.push({ sourceLsn: lsn, localLsn: this.lastLocalLsn });
  }

  /** Advance `durableLsn` over batches whose target commit is at or below `flushedLsn`. */
  private advanceDurable(flushedLsn: Lsn): void {
    while (this.notDurable.length && this.notDurable[0].localLsn <= flushedLsn) {
      this.durableLsn = maxLsn(this.durableLsn, this.notDurable.shift()!.sourceLsn);
    }
  }

  /** Commits not yet known to be flushed on the target. */
  get undurableBatches(): number { return this.notDurable.length; }

  /**
   * Ask the target how far its WAL is flushed (cheap; safe inside an open
   * transaction). Not while batches are in flight: their commits report it.
   */
  async refreshDurable(): Promise<void> {
    if (this.notDurable.length === 0 || this.inflight.length > 0) return;
    const r = await this.query('SELECT pg_current_wal_flush_lsn()::text AS l');
    this.advanceDurable(parseLsn(r.rows[0].l));
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
    const entry: Inflight = { done: Promise.resolve(), sent: new Promise<void>((resolve) => { markSent = resolve; }), changes: batch.changes, idleAfter: 0n };
    // A failed batch stays counted as pending: its changes are not on the
    // target, and nobody (the cutover's drain) may read "nothing pending".
    entry.done = this.commitBatch(batch, plan, entry, markSent).then(() => { this.inflight.splice(this.inflight.indexOf(entry), 1); });
    entry.done.catch((e) => { this.inflightFailure ??= { e }; }); // surfaced by settle() / throwIfFailed()
    this.inflight.push(entry);
  }

  /** Wait for every batch in flight; rethrows the first failure. */
  async settle(): Promise<void> {
    while (this.inflight.length) await this.inflight[0].done;
    this.throwIfFailed();
  }

  /** A batch is committing on the target. */
  get hasInflight(): boolean { return this.inflight.length > 0; }

  /** Rethrow the failure of a batch in flight as soon as it is known. */
  throwIfFailed(): void {
    const f = this.inflightFailure;
    if (f) throw f.e;
  }

  /**
   * An open pipeline to send on: the current one, or a new one behind it
   * that starts when the connection's last user is done (`turn`).
   */
  private pipeline(): Pipeline {
    if (!this.pipe?.open) {
      this.pipe = new Pipeline(this.client, this.parsed, this.pipe, this.turn);
      this.turn = this.pipe.ended;
    }
    return this.pipe;
  }

  /** Any other query on the session: in its turn, after the pipeline has ended. */
  private async query(text: string, values?: unknown[]): Promise<pg.QueryResult> {
    void this.pipe?.end();
    const before = this.turn;
    let done!: () => void;
    this.turn = new Promise<void>((resolve) => { done = resolve; });
    try {
      await before;
      return await this.client.query(text, values);
    } finally { done(); }
  }

  private async commitBatch(batch: Batch, plan: Plan, entry: Inflight, markSent: () => void): Promise<void> {
    const endLsn = maxLsn(batch.lastEndLsn ?? 0n, batch.boundaryLsn);
    let step: Step | null = null;
    try {
      const { sts, oneTrip } = this.statements(plan, batch, (s) => { step = s; });
      step = null;
      if (sts.length === 0 && !batch.targetTxnOpen) {
        // Nothing to write: no target transaction. Its position counts only
        // once the batches before it have committed (their answers keep the
        // order of the others).
        await this.afterEarlier(entry);
        this.coverIdle(endLsn);
      } else if (oneTrip) {
        // The batch in one part: its changes, checked on the server, and its commit.
        const begin = batch.targetTxnOpen ? 0 : 1;
        const sending = this.send(batch, sts.map(checkedOnServer), true, endLsn, (s) => { step = s; });
        markSent(); // the part is queued (send() queues it before it first waits)
        const r = await sending;
        this.warnShort(sts, r.counts.slice(begin));
        this.committed(endLsn, r);
        batch.targetTxnOpen = false;
      } else {
        // Row counts checked here, then COMMIT: a second round trip.
        await this.run(batch, sts, (s) => { step = s; });
        step = null;
        const sending = this.send(batch, [], true, endLsn, () => undefined);
        markSent();
        this.committed(endLsn, await sending);
        batch.targetTxnOpen = false;
      }
    } catch (e) {
      const err = await this.failedBatch(e, step, batch, entry);
      // Known before `sent` settles, so a flush waiting on it sends nothing after this batch.
      this.inflightFailure ??= { e: err };
      throw err;
    } finally {
      markSent();
    }
    plan.release(); // answered: the server has read every byte of it
    this.appliedLsn = maxLsn(this.appliedLsn, endLsn);
    if (batch.lastCommitTime) this.appliedCommitTime = batch.lastCommitTime;
    this.changesApplied += batch.changes;
    this.batchLimit = Math.min(this.opts.batchChanges, this.batchLimit * 2);
    this.transactionsApplied += batch.txns;
    this.lastBatchAt = new Date();
    // Positions that arrived (idle keepalives) while this was the newest batch in flight.
    if (entry.idleAfter > 0n) {
      this.appliedLsn = maxLsn(this.appliedLsn, entry.idleAfter);
      this.coverIdle(entry.idleAfter);
    }
    if (this.safeThroughLsn !== null && this.appliedLsn > this.safeThroughLsn) {
      this.log('info', `one-change-per-statement replay done through ${formatLsn(this.safeThroughLsn)}; back to set-based apply`, { event: 'safe-replay-done' });
      this.safeThroughLsn = null;
    }
    this.onCommitted?.();
  }

  /** Book a batch's commit: the answer of LOCAL_WAL_POSITIONS is the last row of `r`. */
  private committed(endLsn: Lsn, r: PartResult): void {
    const row = r.rows[r.rows.length - 1];
    if (!row || row[0] == null || row[1] == null) throw new Error('the target did not report its WAL position after COMMIT');
    const localLsn = parseLsn(row[0]);
    this.lastLocalLsn = localLsn;
    this.notDurable.push({ sourceLsn: endLsn, localLsn });
    this.advanceDurable(parseLsn(row[1]));
  }

  /** Roll back whatever is open and disconnect. Uncommitted changes are re-sent after a restart. */
  async close(): Promise<void> {
    for (const f of [...this.inflight]) await f.done.catch(() => undefined);
    this.inflight = [];
    if (this.batch?.targetTxnOpen) await this.query('ROLLBACK').catch(() => undefined);
    await this.pipe?.end();
    this.batch = null;
    this.plan = this.newPlan();
    this.txn = null;
    await this.client.end().catch(() => undefined);
  }

  // ---- mapping -------------------------------------------------------------

  /** The mapping of `rel` when it is known (no catalog read needed). */
  private knownMap(rel: RelationMessage): RelMap | undefined {
    const cached = this.maps.get(rel.relationOid);
    return cached && cached.rel === rel ? cached : undefined;
  }

  private async mapFor(rel: RelationMessage): Promise<RelMap> {
    const cached = this.knownMap(rel);
    if (cached) return cached;
    const key = qn(rel.schema, rel.name);
    let target = this.targets.get(key);
    const missing = (t: TargetTable | undefined) => (t ? rel.columns.find((c) => !t.columns.has(c.name)) : undefined);
    if (!target || missing(target)) {
      // Read (again: the user may have fixed drift) from the target catalog.
      target = (await this.readTargets([key])).get(key);
      if (!target) {
        throw new PgferryError('SCHEMA_DRIFT', `Table ${key} receives changes from the source but does not exist on the target.`,
          `Create ${key} on the target with the source's definition, then restart the agent.`);
      }
      this.targets.set(key, target);
    }
    const lacking = missing(target);
    if (lacking) {
      throw new PgferryError('SCHEMA_DRIFT', `Column ${qi(lacking.name)} of table ${key} exists on the source but not on the target.`,
        `Add the column on the target (ALTER TABLE ${key} ADD COLUMN ${qi(lacking.name)} <its type on the source>), then restart the agent.`);
    }
    const cols = rel.columns.map((c) => {
      const t = target!.columns.get(c.name)!;
      return t.generated ? null : t;
    });
    const writeIdx = cols.flatMap((c, i) => (c ? [i] : []));
    const map: RelMap = {
      rel, target, cols, writeIdx,
      keyIdx: rel.replicaIdentity === 'f' ? [] : rel.keyIndexes,
      // No key columns: UPDATE/DELETE can only have reached us with a full old
      // tuple ('O'), e.g. a partitioned root without a key whose leaf
      // partitions are REPLICA IDENTITY FULL (the source refuses them otherwise).
      full: rel.replicaIdentity === 'f' || rel.keyIndexes.length === 0,
      overriding: writeIdx.some((i) => cols[i]!.identityAlways),
      syncLsn: this.opts.tableSyncLsn.get(key) ?? 0n,
      binary: this.binary,
      shapes: new Map(),
    };
    if (this.binary) {
      // sync.ts checked the source's catalog before it chose binary; the
      // stream's own description of the table has the last word (a column's
      // type may have changed since). REPLICA IDENTITY FULL rows are matched
      // as the source's text (see `statement`), so they need text too.
      if (map.full) throw new TextModeNeeded(key, null, keylessReason(key));
      for (const i of writeIdx) {
        const why = notBinaryReason(key, rel.columns[i].name, cols[i]!, rel.columns[i].typeOid);
        if (why) throw new TextModeNeeded(key, qi(rel.columns[i].name), why);
      }
    }
    this.maps.set(rel.relationOid, map);
    return map;
  }

  /** The target tables named by `keys` (qualified, quoted names), by key; a table that does not exist is absent. */
  private async readTargets(keys: string[]): Promise<Map<string, TargetTable>> {
    const out = new Map<string, TargetTable>();
    if (keys.length === 0) return out;
    // counts_here (see TargetTable.countsHere): rules on the table or any of
    // its partitions, or BEFORE INSERT row triggers that fire in this session
    // (session_replication_role replica: ENABLE REPLICA / ALWAYS ones; else
    // the ordinary ones too).
    const r = await this.query(`
      SELECT n.nspname AS schema, c.relname AS relname, c.relkind::text AS kind, a.attname AS name,
             EXISTS (SELECT 1 FROM pg_class p
                      WHERE (p.oid = c.oid OR p.oid IN (SELECT relid FROM pg_partition_tree(c.oid)))
                        AND (p.relhasrules OR EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = p.oid
                               AND g.tgenabled = ANY($2::"char"[]) AND (g.tgtype & 7) = 7))) AS counts_here,
             CASE a.atttypid WHEN 'bpchar'::regtype THEN 'bpchar' WHEN '_bpchar'::regtype THEN 'bpchar[]'
                             WHEN 'bit'::regtype THEN 'bit varying' WHEN '_bit'::regtype THEN 'bit varying[]'
                             ELSE format_type(a.atttypid, NULL) END AS cast_type,
             CASE a.atttypid WHEN 'bit'::regtype THEN 'varbit'::regtype ELSE a.atttypid END::int AS cast_oid,
             -- RelMap.binary: a built-in base type, not an array, with binary send and receive
             -- (not the reg* types: their binary form is the object's OID, which names another object, or none, on the target)
             -- (nor bit, whose values are cast to bit varying)
             a.atttypid < 16384 AND t.typtype = 'b' AND t.typcategory <> 'A' AND t.typsend <> 0 AND t.typreceive <> 0 AND t.typname NOT LIKE 'reg%' AND t.typname <> 'bit' AS binary_ok,
             a.attgenerated <> '' AS generated, a.attidentity = 'a' AS identity_always, t.typcollation <> 0 AS collatable,
             CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                  THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END AS collation
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
       WHERE c.oid IN (SELECT to_regclass(k) FROM unnest($1::text[]) AS k) AND c.relkind IN ('r', 'p')
       ORDER BY c.oid, a.attnum`, [keys, this.mode === 'replica' ? ['R', 'A'] : ['O', 'A']]);
    for (const row of r.rows) {
      const key = qn(row.schema, row.relname);
      let t = out.get(key);
      if (!t) { t = { schema: row.schema, name: row.relname, quoted: key, partitioned: row.kind === 'p', countsHere: row.counts_here, columns: new Map<string, TargetColumn>() }; out.set(key, t); }
      if (row.name === null) continue;
      t.columns.set(row.name, { name: row.name, castType: row.cast_type, generated: row.generated, identityAlways: row.identity_always, collate: row.collation ? ` COLLATE ${row.collation}` : '', collatable: row.collatable, castOid: row.cast_oid, binaryOk: row.binary_ok });
    }
    return out;
  }

  // ---- execution -----------------------------------------------------------

  /**
   * The plan's statements, in execution order (`onStep` is told which step
   * is being built, for errors), and whether the batch can commit in the
   * same part as its changes: every row count that must hold is then
   * checked by the server (`checkedOnServer`). Not so when a table's counts
   * are checked by the agent (TargetTable.countsHere: triggers that may skip
   * a row of a COPY, whose count SQL cannot check, or rules), nor in a
   * one-change-per-statement replay (a failure there names its change).
   */
  private statements(plan: Plan, batch: Batch, onStep: (s: Step) => void): { sts: Statement[]; oneTrip: boolean } {
    const sts: Statement[] = [];
    let oneTrip = !batch.safe;
    for (const step of plan.steps()) {
      onStep(step);
      const st = step.kind === 'group' ? this.groupStatement(step, plan) : this.statement(step);
      if (!st) continue;
      if (step.kind === 'group' ? step.map.target.countsHere : step.change.op !== 'TRUNCATE' && step.change.map.target.countsHere) oneTrip = false;
      sts.push(st);
      if (st.copyData && step.kind === 'group' && step.shape.copyCheck) sts.push({ text: step.shape.copyCheck, values: [], step, expectRows: null, onShort: 'warn' });
    }
    return { sts, oneTrip };
  }

  /**
   * Send `sts` as one pipeline part, opening the target transaction first if
   * this batch has not yet, and with `commit` the applied position, COMMIT
   * and the target's WAL positions behind them. A failed statement's error
   * is rethrown as the server's, after `onStep` is told its step.
   */
  private async send(batch: Batch, sts: Statement[], commit: boolean, endLsn: Lsn, onStep: (s: Step) => void): Promise<PartResult> {
    const begin = batch.targetTxnOpen ? 0 : 1;
    const list: PipelineStatement[] = begin ? [{ text: 'BEGIN', name: '', values: [] }] : [];
    for (const st of sts) list.push({ text: st.text, name: this.statementName(st.text), values: st.values, copyData: st.copyData });
    if (commit) {
      list.push(
        { text: RECORD_APPLIED_LSN, name: this.statementName(RECORD_APPLIED_LSN), values: [this.opts.migrationId, formatLsn(endLsn), batch.lastCommitTime?.toISOString() ?? null] },
        { text: 'COMMIT', name: '', values: [] },
        { text: LOCAL_WAL_POSITIONS, name: this.statementName(LOCAL_WAL_POSITIONS), values: [] });
    }
    batch.targetTxnOpen = true; // from here a failure must roll back
    try {
      return await this.pipeline().send(list);
    } catch (e) {
      if (!(e instanceof PipelineError)) throw e;
      // Whether the failed statement's Parse ran is unknown: never reuse its name.
      if (list[e.index]!.name) this.prepared.delete(list[e.index]!.text);
      const k = e.index - begin;
      if (k >= 0 && k < sts.length) onStep(sts[k]!.step);
      throw e.cause;
    }
  }

  /** Send `sts` inside the batch's target transaction and check their row counts here; a short count throws ShortRowCount. */
  private async run(batch: Batch, sts: Statement[], onStep: (s: Step) => void): Promise<void> {
    if (sts.length === 0) return;
    const begin = batch.targetTxnOpen ? 0 : 1;
    const { counts } = await this.send(batch, sts, false, 0n, onStep);
    for (let k = 0; k < sts.length; k++) {
      const st = sts[k]!;
      const rows = counts[k + begin] ?? 0;
      if (st.expectRows !== null && rows < st.expectRows) {
        onStep(st.step);
        if (st.onShort === 'fail') throw new ShortRowCount(`${st.step.op} on ${stepTable(st.step)} matched ${rows} of ${st.expectRows} rows`);
        this.warnMissing(st, rows);
      }
    }
  }

  /** After a one-part commit: the counts of statements that were not checked on the server (`onShort: 'warn'`). */
  private warnShort(sts: Statement[], counts: (number | null)[]): void {
    sts.forEach((st, k) => {
      if (st.onShort === 'warn' && st.expectRows !== null && (counts[k] ?? 0) < st.expectRows) this.warnMissing(st, counts[k] ?? 0);
    });
  }

  private warnMissing(st: Statement, rows: number): void {
    this.log('warn', `${st.step.op} on ${stepTable(st.step)} found ${rows} of ${st.expectRows} rows on the target (already gone: the target had diverged)`, { event: 'rows-missing', lsn: formatLsn(stepLsn(st.step)) });
  }

  /**
   * Execute a chunk of a large source transaction inside the batch's target
   * transaction (it commits with the batch), row counts checked here.
   */
  private async execute(batch: Batch, plan: Plan): Promise<void> {
    let step: Step | null = null;
    try {
      const { sts } = this.statements(plan, batch, (s) => { step = s; });
      step = null;
      await this.run(batch, sts, (s) => { step = s; });
      plan.release();
    } catch (e) {
      throw await this.failed(e, step, batch);
    }
  }

  /**
   * A batch failed. A batch that did not run because one sent before it
   * failed (PipelineSkipped) fails with that one's error.
   */
  private async failedBatch(e: unknown, step: Step | null, batch: Batch, entry: Inflight): Promise<unknown> {
    if (e instanceof PipelineSkipped) {
      try { await this.afterEarlier(entry); } catch (earlier) { return earlier; }
    }
    return this.failed(e, step, batch);
  }

  /** The statement of a group built by the plan; null when it would change nothing. */
  private groupStatement(g: Group, plan: Plan): Statement | null {
    const s = g.shape;
    if (s.text === null) return null;
    if (g.op === 'INSERT') {
      if (g.map.writeIdx.length === 0) return { text: s.text, values: [g.rows], step: g, expectRows: g.rows, onShort: 'fail' };
      if (g.copy) return { text: s.copyText!, values: [], copyData: plan.copyData(g), step: g, expectRows: g.rows, onShort: 'fail' };
      return { text: s.text, values: plan.insertArrays(g), step: g, expectRows: g.rows, onShort: 'fail' };
    }
    const values = g.arrays!.map((a) => a.finish());
    if (g.op === 'DELETE') return { text: s.text, values, step: g, expectRows: g.keys!.size, onShort: 'warn' };
    return { text: s.text, values, step: g, expectRows: g.rows, onShort: 'fail' };
  }

  /** The prepared-statement name for `text` ('' once 2 000 are prepared: parsed every time). */
  private statementName(text: string): string {
    let name = this.prepared.get(text);
    if (name === undefined && this.prepared.size < 2000) {
      name = `pgferry_${this.nameSeq++}`;
      this.prepared.set(text, name);
    }
    return name ?? '';
  }

  /**
   * Roll back and classify a failure: transient ones (connection lost,
   * deadlock) are rethrown for a reconnect; a statement of the fast path
   * (a group, or a single change outside a replay) asks for a
   * one-change-per-statement replay; a change of that replay, or COMMIT of a
   * batch that holds one (`step` null), is fatal.
   */
  private async failed(e: unknown, step: Step | null, batch: Batch): Promise<unknown> {
    // Not run because the pipeline before it failed (e.g. the connection was
    // lost after its last answer, before its Sync's): the cause is the failure.
    if (e instanceof PipelineSkipped) e = e.cause;
    // Whatever failed, even in the agent (a statement it could not build),
    // the batch's target transaction ends here: left open, the next batch's
    // COMMIT would commit it (the chunks of a large transaction already run
    // in it) under that batch's position.
    if (batch?.targetTxnOpen) {
      await this.query('ROLLBACK').catch(() => undefined);
      batch.targetTxnOpen = false;
    }
    if (e instanceof PgferryError || e instanceof SafeReplayNeeded || e instanceof TextModeNeeded) return e;
    if (isTransientError(e)) return e;
    if (step?.kind === 'single' && step.safe) return this.applyFailed(step, e);
    if (step === null && batch?.safe) {
      // Failed at COMMIT (a deferred constraint) during the one-by-one replay: replaying again would loop.
      const err = e as PgServerError;
      return new PgferryError('APPLY_FAILED', `Committing the source transactions through ${formatLsn(batch.maxFinalLsn)} on the target failed: ${err?.message ?? String(e)}${sqlState(e) ? ` (SQLSTATE ${sqlState(e)})` : ''}`,
        `Fix the target (a deferred constraint rejects the changes: compare the tables' constraints with the source), then restart the agent; the sync resumes from ${formatLsn(this.appliedLsn)}.`, { cause: e });
    }
    const through = maxLsn(batch?.maxFinalLsn ?? 0n, this.txn?.finalLsn ?? 0n);
    return new SafeReplayNeeded(through, e);
  }

  private async applyFailed(run: Single, e: unknown): Promise<PgferryError> {
    const c = run.change;
    const table = c.op === 'TRUNCATE' ? c.maps.map((m) => m.target.quoted).join(', ') : c.map.target.quoted;
    const where = `${run.op} on ${table} from the source transaction committed at ${formatLsn(c.lsn)}`;
    const resume = `the sync resumes from the last applied position ${formatLsn(this.appliedLsn)}`;
    if (e instanceof ShortRowCount && c.op === 'INSERT') {
      return new PgferryError('APPLY_FAILED', `${where} failed: the target did not store the row (a trigger or rule on ${table} on the target dropped it).`,
        `Disable the trigger or rule on ${table} that drops rows during the migration (ALTER TABLE ${table} DISABLE TRIGGER <name>, or DROP RULE), then restart the agent; ${resume}.`);
    }
    if (e instanceof ShortRowCount && c.op !== 'TRUNCATE') {
      const key = c.map.full ? '' : ` with key (${c.map.keyIdx.map((i) => qi(c.map.rel.columns[i].name)).join(', ')})=(${(await this.keyText(c)).map((v) => (v === null ? 'NULL' : clip(v))).join(', ')})`;
      // Tell "row missing" from "GENERATED ALWAYS identity changed".
      const ident = c.map.writeIdx.filter((i) => c.map.cols[i]!.identityAlways && !c.map.keyIdx.includes(i));
      if (ident.length && !c.map.full && c.op === 'UPDATE' && !c.oldTuple && await this.rowExists(c)) {
        const col = c.map.rel.columns[ident[0]].name;
        return new PgferryError('APPLY_FAILED', `${where} failed: it changes ${qi(col)}, a GENERATED ALWAYS identity column on the target, which UPDATE cannot set.`,
          `Make the column assignable during the migration (ALTER TABLE ${table} ALTER COLUMN ${qi(col)} SET GENERATED BY DEFAULT; set it back after cutover), then restart the agent; ${resume}.`);
      }
      return new PgferryError('APPLY_FAILED', `${where} failed: the row to ${run.op === 'UPDATE' ? 'update' : 'delete'}${key} does not exist on the target, so the target has diverged from the source.`,
        `Copy ${table} again (or restore the row on the target), then restart the agent; ${resume}.`);
    }
    const err = e as PgServerError;
    const state = sqlState(e);
    const server = `${err?.message ?? String(e)}${state ? ` (SQLSTATE ${state}${err.detail ? `; ${err.detail}` : ''})` : ''}`;
    let remedy: string;
    if (state === '23505') remedy = `The target already holds a row with this key, so it has diverged from the source (written to directly, or loaded twice). Remove the conflicting row from ${table} on the target or copy the table again, then restart the agent; ${resume}.`;
    else if (state === '23503') remedy = `A foreign key on the target rejects the change (the target session cannot set session_replication_role, so foreign keys are checked). Let the target user SET session_replication_role (superuser, or PostgreSQL 15+: GRANT SET ON PARAMETER session_replication_role TO <user>) or drop the foreign key until cutover, then restart the agent; ${resume}.`;
    else if (state === '428C9') remedy = `The change writes a GENERATED ALWAYS column on the target. Make it assignable during the migration (ALTER TABLE ${table} ALTER COLUMN <column> SET GENERATED BY DEFAULT), then restart the agent; ${resume}.`;
    else if (state === '42501') remedy = `Grant INSERT, UPDATE, DELETE and TRUNCATE on ${table} to \`target\`.user, then restart the agent; ${resume}.`;
    else if (state && /^(22|23|42)/.test(state)) remedy = `The definition of ${table} on the target differs from the source (column type, NOT NULL, CHECK or unique constraint). Make it match the source, then restart the agent; ${resume}.`;
    else remedy = `Fix the cause on the target, then restart the agent; ${resume}.`;
    return new PgferryError('APPLY_FAILED', `${where} failed: ${server}`, remedy, { cause: e });
  }

  /** The change's key values as text, for an error message (binary values are turned into text by the target; hex if that fails). */
  private async keyText(c: RowChange): Promise<(string | null)[]> {
    const vals = keyValues(c);
    if (!vals.some((v) => Buffer.isBuffer(v))) return vals as (string | null)[];
    const list = c.map.keyIdx.map((i, j) => `$${j + 1}::${c.map.cols[i]!.castType}::text AS k${j}`).join(', ');
    try {
      const r = await this.query(`SELECT ${list}`, vals);
      return vals.map((_, j) => r.rows[0][`k${j}`] as string | null);
    } catch {
      return vals.map((v) => (Buffer.isBuffer(v) ? `\\x${v.toString('hex')}` : v));
    }
  }

  private async rowExists(c: RowChange): Promise<boolean> {
    const m = c.map;
    const cond = m.keyIdx.map((i, j) => `t.${qi(m.rel.columns[i].name)} = $${j + 1}::${m.cols[i]!.castType}${m.cols[i]!.collate}`).join(' AND ');
    try {
      const r = await this.query(`SELECT 1 FROM ${m.target.quoted} AS t WHERE ${cond} LIMIT 1`, keyValues(c));
      return r.rows.length > 0;
    } catch { return false; }
  }

  // ---- single-change statements --------------------------------------------

  /** The SQL for one change; null when it would change nothing. */
  private statement(run: Single): Statement | null {
    if (run.op === 'TRUNCATE') {
      const c = run.change as TruncateChange;
      // ONLY keeps inheritance children (published separately) out; a
      // partitioned root publishes for all its partitions, so it is truncated whole.
      const list = c.maps.map((m) => (m.target.partitioned ? '' : 'ONLY ') + m.target.quoted).join(', ');
      return { text: `TRUNCATE ${list}${c.restartIdentity ? ' RESTART IDENTITY' : ''}`, values: [], step: run, expectRows: null, onShort: 'warn' };
    }
    const c = run.change as RowChange;
    const m = c.map;
    const col = (i: number) => m.cols[i]!;
    const name = (i: number) => qi(m.rel.columns[i].name);
    const params = new Params();

    if (run.op === 'INSERT') {
      if (m.writeIdx.length === 0) {
        // A table without columns (or only generated ones): the row carries no values.
        return { text: `INSERT INTO ${m.target.quoted} DEFAULT VALUES`, values: [], step: run, expectRows: 1, onShort: 'fail' };
      }
      const vals = m.writeIdx.map((i) => params.typed(value(c.newTuple!, i, c), col(i).castType));
      return {
        text: `INSERT INTO ${m.target.quoted} (${m.writeIdx.map(name).join(', ')})${m.overriding ? ' OVERRIDING SYSTEM VALUE' : ''} VALUES (${vals.join(', ')})`,
        values: params.values, step: run, expectRows: 1, onShort: 'fail',
      };
    }

    if (run.form === 'full') {
      // REPLICA IDENTITY FULL: duplicates are possible, so match every old
      // column and touch exactly one row (tableoid too: ctids repeat across
      // partitions). Values are compared as the type's output text, the form
      // the source sent: format('%s') calls the output function, whereas
      // `::text` is a different cast for some types (boolean gives 'true' not
      // 't', inet adds '/32', character(n) drops its padding), and comparing
      // as typed values needs an equality operator that json, xml or point lack.
      const old = c.oldTuple!;
      const match = m.writeIdx.filter((i) => old[i] !== UNCHANGED_TOAST)
        .map((i) => (old[i] === null ? `t.${name(i)} IS NULL` : `(t.${name(i)} IS NOT NULL AND format('%s', t.${name(i)}) = ${params.text(old[i] as string | Buffer)})`))
        .join(' AND ') || 'true';
      const pick = `WITH s AS MATERIALIZED (SELECT t.tableoid AS toid, t.ctid AS tid FROM ${m.target.quoted} AS t WHERE ${match} LIMIT 1)`;
      const target = 'WHERE t.ctid = (SELECT tid FROM s) AND t.tableoid = (SELECT toid FROM s)';
      if (run.op === 'DELETE') return { text: `${pick} DELETE FROM ${m.target.quoted} AS t ${target}`, values: params.values, step: run, expectRows: 1, onShort: 'warn' };
      const nu = c.newTuple!;
      const present = m.writeIdx.filter((i) => nu[i] !== UNCHANGED_TOAST);
      const set = present.filter((i) => !col(i).identityAlways);
      const guard = present.filter((i) => col(i).identityAlways).map((i) => ` AND t.${name(i)} IS NOT DISTINCT FROM ${params.typed(value(nu, i, c), col(i).castType)}`).join('');
      if (set.length === 0) return null;
      const sets = set.map((i) => `${name(i)} = ${params.typed(value(nu, i, c), col(i).castType)}`).join(', ');
      return { text: `${pick} UPDATE ${m.target.quoted} AS t SET ${sets} ${target}${guard}`, values: params.values, step: run, expectRows: 1, onShort: 'fail' };
    }

    if (m.keyIdx.length === 0) {
      throw new PgferryError('APPLY_FAILED', `${run.op} on ${m.target.quoted} (source transaction at ${formatLsn(c.lsn)}) cannot be applied: the source table has no replica identity to find the row by.`,
        `On the source: ALTER TABLE ${m.target.quoted} REPLICA IDENTITY FULL (or add a primary key), then copy the table again.`);
    }
    const keyCond = (tuple: Tuple) => m.keyIdx.map((i) => `t.${name(i)} = ${params.typed(value(tuple, i, c), col(i).castType)}${col(i).collate}`).join(' AND ');

    if (run.op === 'DELETE') {
      return { text: `DELETE FROM ${m.target.quoted} AS t WHERE ${keyCond(c.oldTuple!)}`, values: params.values, step: run, expectRows: 1, onShort: 'warn' };
    }

    // UPDATE. The key is matched on the old key when it changed ('K' sent), else on the new tuple.
    const keyChange = run.form === 'key-change';
    const nu = c.newTuple!;
    const present = m.writeIdx.filter((i) => nu[i] !== UNCHANGED_TOAST);
    // Guard 5 (unchanged TOAST): absent values are left out of SET, never written.
    const set = present.filter((i) => (keyChange || !m.keyIdx.includes(i)) && !(col(i).identityAlways && !(keyChange && m.keyIdx.includes(i))));
    const guardIdx = present.filter((i) => col(i).identityAlways && !set.includes(i) && !m.keyIdx.includes(i));
    if (set.length === 0) return null;
    const sets = set.map((i) => `${name(i)} = ${params.typed(value(nu, i, c), col(i).castType)}`).join(', ');
    const where = keyCond(keyChange ? c.oldTuple! : nu);
    const guards = guardIdx.map((i) => ` AND t.${name(i)} IS NOT DISTINCT FROM ${params.typed(value(nu, i, c), col(i).castType)}`).join('');
    return { text: `UPDATE ${m.target.quoted} AS t SET ${sets} WHERE ${where}${guards}`, values: params.values, step: run, expectRows: 1, onShort: 'fail' };
  }
}

/** Why a table's values cannot travel in binary form: it has no replica identity key. */
function keylessReason(key: string): string {
  return `${key} has no replica identity key (REPLICA IDENTITY FULL or none): its rows are matched as text`;
}

/** Why a column's values cannot travel in binary form (null: they can), given the source's type OID. */
function notBinaryReason(key: string, column: string, col: TargetColumn, sourceTypeOid: number): string | null {
  if (!col.binaryOk) return `${key}.${qi(column)} is of a type whose values travel only as text (user-defined, domain, array, range, reg* or bit)`;
  if (col.castOid !== sourceTypeOid) return `${key}.${qi(column)} has another type on the target (${col.castType})`;
  return null;
}

/** Bind parameters in order. */
class Params {
  readonly values: PipelineValue[] = [];
  /**
   * A value of `type`: text is sent as text and cast by the target's input
   * function; a binary value (binary stream) is sent in binary format as a
   * parameter of that type, read by its receive function.
   */
  typed(v: string | Buffer | null, type: string): string {
    this.values.push(v);
    return Buffer.isBuffer(v) ? `$${this.values.length}::${type}` : `$${this.values.length}::text::${type}`;
  }
  /** A value compared as the source's output text (REPLICA IDENTITY FULL rows, which never travel in binary: sync.ts). */
  text(v: string | Buffer): string {
    if (Buffer.isBuffer(v)) throw new Error('a binary value where only text can be compared (REPLICA IDENTITY FULL in a binary stream)');
    this.values.push(v);
    return `$${this.values.length}::text`;
  }
}

function value(t: Tuple, i: number, c: RowChange): string | Buffer | null {
  const v = t[i];
  if (v === UNCHANGED_TOAST) {
    throw new PgferryError('APPLY_FAILED', `${c.op} on ${c.map.target.quoted} (source transaction at ${formatLsn(c.lsn)}): column ${qi(c.map.rel.columns[i].name)} is needed but its value was not sent (unchanged TOAST).`,
      'Restart the agent; if it repeats, set REPLICA IDENTITY FULL on the source table and copy it again.');
  }
  return v;
}

function keyValues(c: RowChange): (string | Buffer | null)[] {
  const t = (c.op === 'DELETE' || (c.op === 'UPDATE' && c.oldTuple)) ? c.oldTuple! : c.newTuple!;
  return c.map.keyIdx.map((i) => value(t, i, c));
}

/** A row change with its values as strings (the one-change-per-statement paths). */
function rowChange(m: InsertMessage | UpdateMessage | DeleteMessage, map: RelMap, lsn: Lsn): RowChange {
  if (m.tag === 'insert') return { op: 'INSERT', map, lsn, newTuple: m.newTuple.values(), oldTuple: null };
  if (m.tag === 'update') return { op: 'UPDATE', map, lsn, newTuple: m.newTuple.values(), oldTuple: m.oldTuple?.values() ?? null };
  return { op: 'DELETE', map, lsn, newTuple: null, oldTuple: m.oldTuple.values() };
}

function singleOf(c: Change, safe: boolean): Single {
  if (c.op === 'TRUNCATE') return { kind: 'single', op: 'TRUNCATE', change: c, form: null, safe };
  const full = c.map.full && c.op !== 'INSERT';
  const keyChange = !full && c.op === 'UPDATE' && c.oldTuple !== null;
  return { kind: 'single', op: c.op, change: c, form: full ? 'full' : keyChange ? 'key-change' : null, safe };
}

/**
 * `st` (an INSERT, UPDATE or DELETE with an expected row count) made to
 * fail on the server when it touches another number of rows, so the batch's
 * COMMIT can follow it in the same pipeline part: the rows it touched are
 * counted through RETURNING, and a count that differs is cast to bigint from
 * a text that says what happened, which fails with that text in the message
 * (SQL has no function to raise an error; this needs none created on the
 * target). Any failure of the fast path leads to the one-change-per-statement
 * replay, which names the change. Statements without a count that must hold
 * pass unchanged.
 */
function checkedOnServer(st: Statement): Statement {
  if (st.expectRows === null || st.onShort !== 'fail' || st.copyData) return st;
  const k = `$${st.values.length + 1}::bigint`;
  const what = ql(`pgferry: ${st.step.op} on ${stepTable(st.step)} touched `);
  return {
    ...st,
    text: `WITH m AS (${st.text} RETURNING 1) SELECT CASE WHEN n = ${k} THEN n ELSE (${what} || n || ' of ' || ${k} || ' rows on the target')::bigint END FROM (SELECT count(*) AS n FROM m) AS c`,
    values: [...st.values, st.expectRows],
  };
}

function stepTable(s: Step): string {
  if (s.kind === 'group') return s.map.target.quoted;
  const c = s.change;
  return c.op === 'TRUNCATE' ? c.maps.map((m) => m.target.quoted).join(', ') : c.map.target.quoted;
}

function stepLsn(s: Step): Lsn {
  return s.kind === 'group' ? s.firstLsn : s.change.lsn;
}

function clip(s: string): string {
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

