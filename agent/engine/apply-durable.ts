/**
 * apply-durable — how far the apply stage's work is durable on the target:
 * batches commit asynchronously (apply-session.ts), so a batch's source
 * position counts only once the target has flushed its commit record.
 *
 * Input: each batch's source end LSN with the target's WAL positions after
 * its COMMIT, positions that cover no change, and the target's flushed WAL
 * position. Output: `lsn`, the only position ever confirmed to the source
 * (Guard 9, confirm only what is durable: sync.ts).
 */
import { maxLsn, parseLsn, type Lsn } from './lsn';
import type { PartResult } from './pipeline';

export class DurablePosition {
  /**
   * Everything the source committed before this position is committed AND
   * flushed on the target: the only position ever confirmed to the source.
   */
  lsn: Lsn;
  /** Committed batches not yet known to be flushed: source end LSN → target commit position. */
  private notDurable: Array<{ sourceLsn: Lsn; localLsn: Lsn }> = [];
  private lastLocalLsn: Lsn = 0n;

  constructor(lsn: Lsn) {
    this.lsn = lsn;
  }

  /** Commits not yet known to be flushed on the target. */
  get pending(): number {
    return this.notDurable.length;
  }

  /**
   * A position that covers no change of ours: durable as soon as every batch
   * committed before it is (it rides on the last batch's commit position).
   */
  coverIdle(lsn: Lsn): void {
    if (this.notDurable.length === 0) this.lsn = maxLsn(this.lsn, lsn);
    else this.notDurable.push({ sourceLsn: lsn, localLsn: this.lastLocalLsn });
  }

  /** Book a batch's commit: the answer of LOCAL_WAL_POSITIONS is the last row of `r`. */
  committed(endLsn: Lsn, r: PartResult): void {
    const row = r.rows[r.rows.length - 1];
    if (!row || row[0] == null || row[1] == null) throw new Error('the target did not report its WAL position after COMMIT');
    const localLsn = parseLsn(row[0]);
    this.lastLocalLsn = localLsn;
    this.notDurable.push({ sourceLsn: endLsn, localLsn });
    this.advance(parseLsn(row[1]));
  }

  /** Advance `lsn` over batches whose target commit is at or below `flushedLsn`. */
  advance(flushedLsn: Lsn): void {
    while (this.notDurable.length && this.notDurable[0].localLsn <= flushedLsn) {
      this.lsn = maxLsn(this.lsn, this.notDurable.shift()!.sourceLsn);
    }
  }
}
