/**
 * apply-batch — one batch on the target: its statements sent as pipeline
 * parts inside its target transaction, row counts checked here or on the
 * server, and at its end the applied position, COMMIT and the target's WAL
 * positions in the same part (Guard 4); on a failure, the target
 * transaction rolled back and the failure classified (apply-diagnosis.ts).
 *
 * Input: a batch gathered by apply.ts and its Plan, or a chunk of a large
 * source transaction (Guard 3). Output: the commit booked in the
 * DurablePosition, or the error to throw.
 */
import type { Plan, Step } from './apply-plan';
import type { ApplySession } from './apply-session';
import { ShortRowCount, diagnose } from './apply-diagnosis';
import type { DurablePosition } from './apply-durable';
import { batchStatements, checkedOnServer, stepLsn, stepTable, type Statement } from './apply-statements';
import { formatLsn, type Lsn } from './lsn';
import { LOCAL_WAL_POSITIONS, RECORD_APPLIED_LSN } from './target-state';
import { PipelineError, PipelineSkipped, type PartResult, type PipelineStatement } from './pipeline';
import type { LogFn } from './log-fn';
import type { ShapeChange } from './schema-follow-columns';

/** The changes of many whole source transactions, gathered to commit as one target transaction. */
export interface Batch {
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
  /** Column changes followed inside it (schema-follow-columns.ts): reported once it commits. */
  followed?: ShapeChange[];
}

/** Where a batch failed: the step whose statement failed (null: its COMMIT, or no statement's). */
export interface FailedAt {
  step: Step | null;
}

/** What a failure's diagnosis reads of the Applier, when it happens. */
export interface ApplyPositions {
  /** Everything the source committed before this position is on the target. */
  readonly appliedLsn: Lsn;
  /** The final LSN of the source transaction open in the stream (0 when none). */
  readonly openTxnLsn: Lsn;
}

/** Writes batches to the target on the apply session. */
export class BatchWriter {
  constructor(
    private readonly session: ApplySession,
    private readonly migrationId: string,
    private readonly durable: DurablePosition,
    private readonly positions: ApplyPositions,
    private readonly log: LogFn,
  ) {}

  /**
   * Send `plan` and COMMIT the batch at `endLsn`, and book the commit in
   * the DurablePosition. False, and nothing sent, when it has nothing to
   * write and no target transaction open. `markSent` is called once its
   * COMMIT is queued; a failure leaves its step in `at`.
   */
  async commit(batch: Batch, plan: Plan, endLsn: Lsn, markSent: () => void, at: FailedAt): Promise<boolean> {
    const onStep = (s: Step) => {
      at.step = s;
    };
    const { sts, oneTrip } = batchStatements(plan, batch.safe, onStep);
    at.step = null;
    if (sts.length === 0 && !batch.targetTxnOpen) return false;
    if (oneTrip) {
      // The batch in one part: its changes, checked on the server, and its commit.
      const begin = batch.targetTxnOpen ? 0 : 1;
      const sending = this.send(batch, sts.map(checkedOnServer), true, endLsn, onStep);
      markSent(); // the part is queued (send() queues it before it first waits)
      const r = await sending;
      this.warnShort(sts, r.counts.slice(begin));
      this.durable.committed(endLsn, r);
    } else {
      // Row counts checked here, then COMMIT: a second round trip.
      await this.run(batch, sts, onStep);
      at.step = null;
      const sending = this.send(batch, [], true, endLsn, () => undefined);
      markSent();
      this.durable.committed(endLsn, await sending);
    }
    batch.targetTxnOpen = false;
    return true;
  }

  /**
   * Execute a chunk of a large source transaction inside the batch's target
   * transaction (it commits with the batch), row counts checked here.
   */
  async execute(batch: Batch, plan: Plan): Promise<void> {
    let step: Step | null = null;
    try {
      const { sts } = batchStatements(plan, batch.safe, (s) => {
        step = s;
      });
      step = null;
      await this.run(batch, sts, (s) => {
        step = s;
      });
      plan.release();
    } catch (e) {
      throw await this.failed(e, step, batch);
    }
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
    for (const st of sts) list.push({ text: st.text, name: this.session.statementName(st.text), values: st.values, copyData: st.copyData });
    if (commit) {
      list.push(
        {
          text: RECORD_APPLIED_LSN,
          name: this.session.statementName(RECORD_APPLIED_LSN),
          values: [this.migrationId, formatLsn(endLsn), batch.lastCommitTime?.toISOString() ?? null],
        },
        { text: 'COMMIT', name: '', values: [] },
        { text: LOCAL_WAL_POSITIONS, name: this.session.statementName(LOCAL_WAL_POSITIONS), values: [] },
      );
    }
    batch.targetTxnOpen = true; // from here a failure must roll back
    try {
      return await this.session.pipeline().send(list);
    } catch (e) {
      if (!(e instanceof PipelineError)) throw e;
      this.session.forget(list[e.index]!);
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
    this.log('warn', `${st.step.op} on ${stepTable(st.step)} found ${rows} of ${st.expectRows} rows on the target (already gone: the target had diverged)`, {
      event: 'rows-missing',
      lsn: formatLsn(stepLsn(st.step)),
    });
  }

  /** Roll back and classify a failure (apply-diagnosis.ts, `diagnose`). */
  async failed(e: unknown, step: Step | null, batch: Batch): Promise<unknown> {
    // Not run because the pipeline before it failed (e.g. the connection was
    // lost after its last answer, before its Sync's): the cause is the failure.
    if (e instanceof PipelineSkipped) e = e.cause;
    // Whatever failed, even in the agent (a statement it could not build),
    // the batch's target transaction ends here: left open, the next batch's
    // COMMIT would commit it (the chunks of a large transaction already run
    // in it) under that batch's position.
    if (batch?.targetTxnOpen) {
      await this.session.query('ROLLBACK').catch(() => undefined);
      batch.targetTxnOpen = false;
    }
    return diagnose(this.session, e, step, batch, this.positions.openTxnLsn, this.positions.appliedLsn);
  }
}
