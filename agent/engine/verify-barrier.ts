/**
 * verify-barrier — stops the apply at an exact point of the stream, so that
 * the continuous verification (verify.ts) can read the target in the state
 * that matches a source snapshot.
 *
 * A logical slot's exported snapshot on the source holds exactly the source
 * transactions whose commit LSN is below the slot's consistent point L (the
 * same fact the initial load and `tableSyncLsn` rely on). The target holds
 * the same state when the apply has committed every transaction committed
 * before L and none at or after it. The stream is in commit order, so that
 * is a transaction boundary: before the Begin of the first transaction
 * committed at or past L, or at an idle keepalive at or past L.
 *
 * L is known only once the slot is created, which can take a while (the
 * server waits for the transactions running then). So the verifier first
 * holds the apply provisionally at the source's insert position P read just
 * before (P ≤ L): the apply pauses at the first boundary b ≥ P. Every
 * transaction it let through was below P, and none lies between P and b
 * (commit order), so once L is known a pause at b ≥ L is exact; if b < L the
 * apply moves on to the first boundary ≥ L. A hold whose point the apply has
 * already passed is refused (the round is tried again later).
 *
 * sync.ts calls `due()` at every boundary and, when it answers true, flushes
 * and settles the open batch and awaits `arrive()`: the apply stays paused
 * until the verifier releases it. Everything here is synchronous JavaScript
 * between those calls, so the checks cannot interleave with a boundary.
 */
import type { Lsn } from './lsn';

export class ApplyBarrier {
  private want: { lsn: Lsn; final: boolean } | null = null;
  /** The highest boundary the apply went past (a transaction committed there may be applied). */
  private passed: Lsn = 0n;
  /** Where the apply is paused now, or null. */
  private pausedAt: Lsn | null = null;
  private onArrive: ((at: Lsn) => void) | null = null;
  private resume: (() => void) | null = null;

  /**
   * sync.ts, at a boundary: `lsn` is the commit LSN of the transaction about
   * to begin, or an idle keepalive's position. True: pause here (flush and
   * settle the apply first, then await `arrive(lsn)`).
   */
  due(lsn: Lsn): boolean {
    if (this.want && lsn >= this.want.lsn) return true;
    if (lsn > this.passed) this.passed = lsn;
    return false;
  }

  /** sync.ts: the apply is paused at `lsn`, everything before it committed on the target. Resolves when released. */
  arrive(lsn: Lsn): Promise<void> {
    if (!this.want || lsn < this.want.lsn) {
      // Released meanwhile: the apply goes through this boundary, so a later hold at or below it cannot be exact.
      if (lsn > this.passed) this.passed = lsn;
      return Promise.resolve();
    }
    this.pausedAt = lsn;
    const done = new Promise<void>((resolve) => {
      this.resume = resolve;
    });
    const cb = this.onArrive;
    this.onArrive = null;
    cb?.(lsn);
    return done;
  }

  /**
   * The verifier: pause the apply at the first boundary at or past `lsn`.
   * `final` says `lsn` is the snapshot's point (else it is provisional).
   * Returns false when the apply has already gone past it: no exact pause
   * is possible for this point any more.
   */
  hold(lsn: Lsn, final: boolean): boolean {
    if (final && this.passed >= lsn) {
      this.release();
      return false;
    }
    this.want = { lsn, final };
    if (this.pausedAt !== null && this.pausedAt < lsn) this.continueApply(); // paused short of it: go on to it
    return true;
  }

  /** The verifier: wait until the apply pauses at the point held (its boundary), or `ms` pass (null). */
  arrived(ms: number, signal?: AbortSignal): Promise<Lsn | null> {
    if (this.pausedAt !== null && this.want && this.pausedAt >= this.want.lsn) return Promise.resolve(this.pausedAt);
    if (signal?.aborted) return Promise.resolve(null);
    return new Promise((resolve) => {
      const done = (v: Lsn | null) => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (this.onArrive === cb) this.onArrive = null;
        resolve(v);
      };
      const cb = (at: Lsn) => done(at);
      const onAbort = () => done(null);
      const timer = setTimeout(() => done(null), ms);
      timer.unref?.();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.onArrive = cb;
    });
  }

  /** The apply is paused (at this boundary). */
  get paused(): Lsn | null {
    return this.pausedAt;
  }

  /** The verifier: forget the hold and let the apply go on. */
  release(): void {
    this.want = null;
    this.continueApply();
  }

  private continueApply(): void {
    const r = this.resume;
    this.resume = null;
    if (this.pausedAt !== null && this.pausedAt > this.passed) this.passed = this.pausedAt;
    this.pausedAt = null;
    r?.();
  }
}
