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
 * While one batch executes on the target the next one is gathered.
 *
 * Statements are set-based and built as the changes arrive (apply-plan.ts):
 * a run of INSERTs into one table is one COPY (or, for a few rows, one
 * `INSERT … SELECT … FROM unnest($1::text[], …)`), UPDATEs and DELETEs join
 * on the replica identity through `unnest` of binary text[] parameters.
 * Values travel as the source's text and are cast to the target column's
 * type (I/O conversion works for every type: enums, domains, arrays,
 * ranges). Types are cast without their modifier, so storing into a narrower
 * target column fails instead of truncating silently.
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
import { connect, qi, qn } from './conn';
import { PgferryError, sqlState, type PgServerError } from './errors';
import { formatLsn, maxLsn, parseLsn, pgMicrosToUnixMs, type Lsn } from './lsn';
import { Plan, type Change, type Group, type RelMap, type RowChange, type Single, type Step, type TargetColumn, type TargetTable, type TruncateChange } from './apply-plan';
import { UNCHANGED_TOAST, type BeginMessage, type CommitMessage, type DeleteMessage, type InsertMessage, type RelationMessage, type TruncateMessage, type Tuple, type UpdateMessage } from './pgoutput';
import type { Endpoint } from './spec';
import { commitWithAppliedLsn, ensureTargetState, readAppliedLsn } from './target-state';
import { PipelineError, runPipeline, type PipelineStatement, type PipelineValue } from './pipeline';

export type LogFn = (level: 'info' | 'warn' | 'error', msg: string, fields?: object) => void;

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
  /** The batch committing on the target while the next one gathers. */
  private inflight: Promise<void> | null = null;
  private inflightChanges = 0;
  private inflightFailure: { e: unknown } | null = null;
  /** An idle position seen while a batch was in flight: covered once it commits. */
  private idleWhileInflight: Lsn = 0n;
  /** Called after each batch commits (sync.ts reports progress and confirms). */
  onCommitted: (() => void) | null = null;
  private lastLocalLsn: Lsn = 0n;
  appliedCommitTime: Date | null = null;
  changesApplied = 0;
  transactionsApplied = 0;
  lastBatchAt: Date | null = null;
  safeThroughLsn: Lsn | null;

  private txn: SourceTxn | null = null;
  private batch: Batch | null = null;
  private plan: Plan;
  private readonly maps = new Map<number, RelMap>();
  private readonly targets = new Map<string, TargetTable>();
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
  get pendingChanges(): number { return (this.batch?.changes ?? 0) + this.inflightChanges; }
  /** ms the open batch has been open; null when none. */
  batchAgeMs(nowMs = Date.now()): number | null { return this.batch ? nowMs - this.batch.openedAtMs : null; }

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
    return new Plan(this.mode === 'replica');
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
      if (this.inflight) this.idleWhileInflight = maxLsn(this.idleWhileInflight, m.endLsn);
      else { this.appliedLsn = maxLsn(this.appliedLsn, m.endLsn); this.coverIdle(m.endLsn); }
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
    else if (this.inflight) this.idleWhileInflight = maxLsn(this.idleWhileInflight, walEnd);
    else { this.appliedLsn = maxLsn(this.appliedLsn, walEnd); this.coverIdle(walEnd); }
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

  /** Ask the target how far its WAL is flushed (cheap; safe inside an open transaction). */
  async refreshDurable(): Promise<void> {
    if (this.notDurable.length === 0) return;
    const r = await this.client.query('SELECT pg_current_wal_flush_lsn()::text AS l');
    this.advanceDurable(parseLsn(r.rows[0].l));
  }

  /**
   * Commit the open batch (call between source transactions). No-op when none
   * is open. The batch's statements and COMMIT run on the target while the
   * caller goes on decoding the next batch (at most one batch in flight):
   * decode and target execution overlap instead of taking turns. A failure
   * surfaces from the next call that needs the connection (`settle`).
   */
  async flush(): Promise<void> {
    const batch = this.batch;
    if (!batch) return;
    if (this.txn) throw new PgferryError('INTERNAL', 'flush inside a source transaction', 'Restart the agent; report this if it repeats.');
    await this.settle();
    const plan = this.plan;
    this.plan = this.newPlan();
    this.batch = null;
    this.inflightChanges = batch.changes;
    // A failed batch stays counted as pending: its changes are not on the
    // target, and nobody (the cutover's drain) may read "nothing pending".
    const p = this.commitBatch(batch, plan).then(() => { this.inflightChanges = 0; });
    p.catch((e) => { this.inflightFailure ??= { e }; }); // surfaced by settle() / throwIfFailed()
    this.inflight = p;
  }

  /** Wait for the batch in flight, if any; rethrows its failure. */
  async settle(): Promise<void> {
    const p = this.inflight;
    if (!p) return;
    this.inflight = null;
    this.inflightFailure = null;
    await p;
  }

  /** A batch is committing on the target. */
  get hasInflight(): boolean { return this.inflight !== null; }

  /** Rethrow the failure of the batch in flight as soon as it is known. */
  throwIfFailed(): void {
    const f = this.inflightFailure;
    if (f) { this.inflight = null; this.inflightFailure = null; throw f.e; }
  }

  private async commitBatch(batch: Batch, plan: Plan): Promise<void> {
    const endLsn = maxLsn(batch.lastEndLsn ?? 0n, batch.boundaryLsn);
    try {
      await this.execute(batch, plan);
      if (batch.targetTxnOpen) {
        const { localLsn, flushedLsn } = await commitWithAppliedLsn(this.client, this.opts.migrationId, endLsn, batch.lastCommitTime);
        batch.targetTxnOpen = false;
        this.lastLocalLsn = localLsn;
        this.notDurable.push({ sourceLsn: endLsn, localLsn });
        this.advanceDurable(flushedLsn);
      } else {
        this.coverIdle(endLsn);
      }
    } catch (e) {
      throw await this.failed(e, null, batch);
    }
    this.appliedLsn = maxLsn(this.appliedLsn, endLsn);
    if (batch.lastCommitTime) this.appliedCommitTime = batch.lastCommitTime;
    this.changesApplied += batch.changes;
    this.batchLimit = Math.min(this.opts.batchChanges, this.batchLimit * 2);
    this.transactionsApplied += batch.txns;
    this.lastBatchAt = new Date();
    // Positions that arrived (idle keepalives) while this batch was in flight.
    if (this.idleWhileInflight > 0n) {
      this.appliedLsn = maxLsn(this.appliedLsn, this.idleWhileInflight);
      this.coverIdle(this.idleWhileInflight);
      this.idleWhileInflight = 0n;
    }
    if (this.safeThroughLsn !== null && this.appliedLsn > this.safeThroughLsn) {
      this.log('info', `one-change-per-statement replay done through ${formatLsn(this.safeThroughLsn)}; back to set-based apply`, { event: 'safe-replay-done' });
      this.safeThroughLsn = null;
    }
    this.onCommitted?.();
  }

  /** Roll back whatever is open and disconnect. Uncommitted changes are re-sent after a restart. */
  async close(): Promise<void> {
    await this.inflight?.catch(() => undefined);
    this.inflight = null;
    if (this.batch?.targetTxnOpen) await this.client.query('ROLLBACK').catch(() => undefined);
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
      shapes: new Map(),
    };
    this.maps.set(rel.relationOid, map);
    return map;
  }

  /** The target tables named by `keys` (qualified, quoted names), by key; a table that does not exist is absent. */
  private async readTargets(keys: string[]): Promise<Map<string, TargetTable>> {
    const out = new Map<string, TargetTable>();
    if (keys.length === 0) return out;
    const r = await this.client.query(`
      SELECT n.nspname AS schema, c.relname AS relname, c.relkind::text AS kind, a.attname AS name,
             CASE a.atttypid WHEN 'bpchar'::regtype THEN 'bpchar' WHEN '_bpchar'::regtype THEN 'bpchar[]'
                             WHEN 'bit'::regtype THEN 'bit varying' WHEN '_bit'::regtype THEN 'bit varying[]'
                             ELSE format_type(a.atttypid, NULL) END AS cast_type,
             a.attgenerated <> '' AS generated, a.attidentity = 'a' AS identity_always,
             CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                  THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END AS collation
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
       WHERE c.oid IN (SELECT to_regclass(k) FROM unnest($1::text[]) AS k) AND c.relkind IN ('r', 'p')
       ORDER BY c.oid, a.attnum`, [keys]);
    for (const row of r.rows) {
      const key = qn(row.schema, row.relname);
      let t = out.get(key);
      if (!t) { t = { schema: row.schema, name: row.relname, quoted: key, partitioned: row.kind === 'p', columns: new Map<string, TargetColumn>() }; out.set(key, t); }
      if (row.name === null) continue;
      t.columns.set(row.name, { name: row.name, castType: row.cast_type, generated: row.generated, identityAlways: row.identity_always, collate: row.collation ? ` COLLATE ${row.collation}` : '' });
    }
    return out;
  }

  // ---- execution -----------------------------------------------------------

  /**
   * Run the plan's statements on the target in one round trip (pipeline.ts),
   * opening the target transaction first if this batch has not yet; then
   * check each statement's row count. COMMIT is sent by the caller only after
   * the counts were checked: a short count rolls the batch back.
   */
  private async execute(batch: Batch, plan: Plan): Promise<void> {
    const steps = plan.steps();
    if (steps.length === 0) return;
    let current: Step | null = null;
    try {
      const sts: Statement[] = [];
      for (const step of steps) {
        current = step;
        const st = step.kind === 'group' ? this.groupStatement(step, plan) : this.statement(step);
        if (st) sts.push(st);
      }
      current = null;
      if (sts.length === 0 && batch.targetTxnOpen) return;
      const begin = batch.targetTxnOpen ? 0 : 1;
      const pipeline: PipelineStatement[] = begin ? [{ text: 'BEGIN', name: '', values: [] }] : [];
      for (const st of sts) pipeline.push({ text: st.text, name: this.statementName(st.text), values: st.values, copyData: st.copyData });
      batch.targetTxnOpen = true; // from here a failure must roll back
      let counts: (number | null)[];
      try {
        counts = await runPipeline(this.client, pipeline, this.parsed);
      } catch (e) {
        if (!(e instanceof PipelineError)) throw e;
        // Whether the failed statement's Parse ran is unknown: never reuse its name.
        if (pipeline[e.index]!.name) this.prepared.delete(pipeline[e.index]!.text);
        current = e.index >= begin ? sts[e.index - begin]!.step : null;
        throw e.cause;
      }
      for (let k = 0; k < sts.length; k++) {
        const st = sts[k]!;
        current = st.step;
        const rows = counts[k + begin] ?? 0;
        if (st.expectRows !== null && rows < st.expectRows) {
          if (st.onShort === 'warn') {
            this.log('warn', `${st.step.op} on ${stepTable(st.step)} found ${rows} of ${st.expectRows} rows on the target (already gone: the target had diverged)`, { event: 'rows-missing', lsn: formatLsn(stepLsn(st.step)) });
          } else {
            throw new ShortRowCount(`${st.step.op} on ${stepTable(st.step)} matched ${rows} of ${st.expectRows} rows`);
          }
        }
      }
    } catch (e) {
      throw await this.failed(e, current, batch);
    }
  }

  /** The statement of a group built by the plan; null when it would change nothing. */
  private groupStatement(g: Group, plan: Plan): Statement | null {
    const s = g.shape;
    if (s.text === null) return null;
    if (g.op === 'INSERT') {
      if (g.map.writeIdx.length === 0) return { text: s.text, values: [g.rows], step: g, expectRows: g.rows, onShort: 'fail' };
      if (g.copy) return { text: s.copyText!, values: [], copyData: g.copy.view(), step: g, expectRows: g.rows, onShort: 'fail' };
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
    if (e instanceof PgferryError || e instanceof SafeReplayNeeded) return e;
    if (batch?.targetTxnOpen) {
      await this.client.query('ROLLBACK').catch(() => undefined);
      batch.targetTxnOpen = false;
    }
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
    if (e instanceof ShortRowCount && c.op !== 'TRUNCATE') {
      const key = c.map.full ? '' : ` with key (${c.map.keyIdx.map((i) => qi(c.map.rel.columns[i].name)).join(', ')})=(${keyValues(c).map((v) => (v === null ? 'NULL' : clip(String(v)))).join(', ')})`;
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

  private async rowExists(c: RowChange): Promise<boolean> {
    const m = c.map;
    const cond = m.keyIdx.map((i, j) => `t.${qi(m.rel.columns[i].name)} = $${j + 1}::${m.cols[i]!.castType}${m.cols[i]!.collate}`).join(' AND ');
    try {
      const r = await this.client.query(`SELECT 1 FROM ${m.target.quoted} AS t WHERE ${cond} LIMIT 1`, keyValues(c));
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
      const vals = m.writeIdx.map((i) => `${params.scalar(value(c.newTuple!, i, c))}::${col(i).castType}`);
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
        .map((i) => (old[i] === null ? `t.${name(i)} IS NULL` : `(t.${name(i)} IS NOT NULL AND format('%s', t.${name(i)}) = ${params.scalar(old[i] as string)})`))
        .join(' AND ') || 'true';
      const pick = `WITH s AS MATERIALIZED (SELECT t.tableoid AS toid, t.ctid AS tid FROM ${m.target.quoted} AS t WHERE ${match} LIMIT 1)`;
      const target = 'WHERE t.ctid = (SELECT tid FROM s) AND t.tableoid = (SELECT toid FROM s)';
      if (run.op === 'DELETE') return { text: `${pick} DELETE FROM ${m.target.quoted} AS t ${target}`, values: params.values, step: run, expectRows: 1, onShort: 'warn' };
      const nu = c.newTuple!;
      const present = m.writeIdx.filter((i) => nu[i] !== UNCHANGED_TOAST);
      const set = present.filter((i) => !col(i).identityAlways);
      const guard = present.filter((i) => col(i).identityAlways).map((i) => ` AND t.${name(i)} IS NOT DISTINCT FROM ${params.scalar(nu[i] as string | null)}::${col(i).castType}`).join('');
      if (set.length === 0) return null;
      const sets = set.map((i) => `${name(i)} = ${params.scalar(nu[i] as string | null)}::${col(i).castType}`).join(', ');
      return { text: `${pick} UPDATE ${m.target.quoted} AS t SET ${sets} ${target}${guard}`, values: params.values, step: run, expectRows: 1, onShort: 'fail' };
    }

    if (m.keyIdx.length === 0) {
      throw new PgferryError('APPLY_FAILED', `${run.op} on ${m.target.quoted} (source transaction at ${formatLsn(c.lsn)}) cannot be applied: the source table has no replica identity to find the row by.`,
        `On the source: ALTER TABLE ${m.target.quoted} REPLICA IDENTITY FULL (or add a primary key), then copy the table again.`);
    }
    const keyCond = (tuple: Tuple) => m.keyIdx.map((i) => `t.${name(i)} = ${params.scalar(value(tuple, i, c))}::${col(i).castType}${col(i).collate}`).join(' AND ');

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
    const sets = set.map((i) => `${name(i)} = ${params.scalar(value(nu, i, c))}::${col(i).castType}`).join(', ');
    const where = keyCond(keyChange ? c.oldTuple! : nu);
    const guards = guardIdx.map((i) => ` AND t.${name(i)} IS NOT DISTINCT FROM ${params.scalar(value(nu, i, c))}::${col(i).castType}`).join('');
    return { text: `UPDATE ${m.target.quoted} AS t SET ${sets} WHERE ${where}${guards}`, values: params.values, step: run, expectRows: 1, onShort: 'fail' };
  }
}

/** Bind parameters in order. */
class Params {
  readonly values: PipelineValue[] = [];
  scalar(v: string | null): string { this.values.push(v); return `$${this.values.length}::text`; }
}

function value(t: Tuple, i: number, c: RowChange): string | null {
  const v = t[i];
  if (v === UNCHANGED_TOAST) {
    throw new PgferryError('APPLY_FAILED', `${c.op} on ${c.map.target.quoted} (source transaction at ${formatLsn(c.lsn)}): column ${qi(c.map.rel.columns[i].name)} is needed but its value was not sent (unchanged TOAST).`,
      'Restart the agent; if it repeats, set REPLICA IDENTITY FULL on the source table and copy it again.');
  }
  return v;
}

function keyValues(c: RowChange): (string | null)[] {
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

/**
 * Errors after which a reconnect may succeed: lost connections, server
 * shutdown, too many connections, serialization failures and deadlocks, a
 * replication slot still held by the previous session.
 */
export function isTransientError(e: unknown): boolean {
  if (e instanceof PgferryError) return e.code === 'SOURCE_UNREACHABLE' || e.code === 'TARGET_UNREACHABLE';
  const state = sqlState(e);
  if (state) return state.startsWith('08') || ['57P01', '57P02', '57P03', '53300', '40001', '40P01', '55006', '55P03'].includes(state);
  const code = (e as { code?: unknown })?.code;
  if (typeof code === 'string' && ['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNABORTED'].includes(code)) return true;
  return /Connection terminated|connection timeout|Client has encountered a connection error|not queryable|Client was closed/i.test((e as Error)?.message ?? '');
}
