/**
 * verify — the continuous verification: while the sync runs, every migrated
 * table is compared with the source, in key ranges, at pairs of snapshots
 * that mean the same state (verify-round.ts), so that the cutover checks
 * inside its fence only what changed since (cutover-verify.ts).
 *
 * Input: the migration's spec (endpoints, `verification` knobs) and tables,
 * the apply's barrier and change tracker (sync.ts feeds both).
 * Output: per table, a completed pass (`pgferry.verify_state` on the target,
 * verify-state.ts), the keys applied since (verify-changes.ts), repairs of
 * ranges that still differed when compared again, and `status()`.
 *
 * Order of work, each round: a range that differed (re-checked, repaired);
 * the pass in progress; tables never verified; tables written by someone
 * else since (the target's write guard, verify-guard.ts) or whose changes
 * could not be kept key by key; tables changed since their pass, once it is
 * a minute old; any table once its pass is an hour old. Reads are limited to
 * `verification.rowsPerSecond` per side.
 *
 * Faults: a round that fails is logged, shown in `status().lastError` and
 * tried again after a pause; nothing is recorded for a range that was not
 * compared equal. The sync never waits for the verification, except for the
 * round trip of a pause (or a repair's comparison of one range).
 */
import type pg from 'pg';
import { closeQuietly, connect } from './conn';
import { dataTables, tableKey, type TableInfo } from './catalog';
import type { LogFn } from './log-fn';
import type { MigrationSpec } from './spec';
import { sleep } from './sleep';
import { ApplyBarrier } from './verify-barrier';
import { ChangeTracker } from './verify-changes';
import { foreignWritesAfter, installGuards } from './verify-guard';
import { keyId, parseKeyId, type KeyRange, type KeyValues } from './verify-ranges';
import { runRound, type RoundItem, type RoundLinks, type RoundSink } from './verify-round';
import {
  forgetVerification,
  readVerifyState,
  recordChanged,
  recordPassAbandoned,
  recordPassComplete,
  recordPassEnd,
  recordPassProgress,
  recordPassStart,
  recordRepair,
} from './verify-state';
import type { VerificationStatus } from './state';

const IDLE_MS = 1000;
const RETRY_MS = 5000;
/**
 * How often a key round compares the rows the apply changed since their
 * table's verification (so that the fence finds only the last seconds'
 * changes to check). Back to back while a cutover waits.
 */
const KEY_ROUND_MS = Number(process.env.PGFERRY_KEY_ROUND_MS) || 2000;
/** Any table is verified again once its pass is this old. */
const REVERIFY_ANY_MS = 3_600_000;
/** The latest repairs kept for the status. */
const REPAIRS_KEPT = 20;

interface TableState {
  info: TableInfo;
  key: string;
  verified: { at: Date; rows: number; snapshot: string } | null;
  pass: { after: KeyValues | null; end?: KeyValues | null; rows: number; snapshot: string } | null;
  recheck: KeyRange | null;
  /** Keys that differed in a key round: compared again (and repaired) with the apply paused. */
  recheckKeys: KeyValues[] | null;
  /** Written by someone else since its verification (as last seen). */
  foreign: boolean;
  /** A table without a key that differs: needs a person. */
  unrepairable: boolean;
  /** Its columns differed between the last pair of snapshots (a change the stream had not brought yet): checked in full at the fence. */
  shapeLag?: boolean;
}

/** The status of a migration whose spec switches the verification off. */
export function verificationOff(): VerificationStatus {
  return {
    state: 'off',
    tablesTotal: 0,
    tablesVerified: 0,
    rowsVerified: 0,
    rowsEstimated: 0,
    lastVerifiedAt: '',
    oldestVerifiedAt: '',
    tablesChanged: 0,
    keysChanged: 0,
    rangesRepaired: 0,
    rowsRepaired: 0,
    repairs: [],
    lastError: '',
  };
}

export class Verifier {
  readonly barrier = new ApplyBarrier();
  readonly tracker: ChangeTracker;
  private readonly tables = new Map<string, TableState>();
  private state: pg.Client | null = null;
  private flags: pg.Client | null = null;
  private links: Omit<RoundLinks, 'signal'> | null = null;
  private prepared = false;
  private loop: { ac: AbortController; done: Promise<void> } | null = null;
  private lastError = '';
  private lastSignal: AbortSignal | null = null;
  /** Rounds in a row that could not pair the snapshots. */
  private misses = 0;
  /** When the last key round took its keys (ms). */
  private lastKeyRoundAt = 0;
  /** When the last pass completed (ms). */
  private lastPassAt = 0;
  /** When a waiting cutover asked for the fence (ms), 0 when none waits. */
  private fenceWantedAt = 0;
  private rangesRepaired = 0;
  private rowsRepaired = 0;
  private readonly repairs: string[] = [];
  private rowsRead = 0;

  constructor(
    private readonly id: string,
    private readonly spec: MigrationSpec,
    private allTables: TableInfo[],
    private readonly log: LogFn,
  ) {
    this.tracker = new ChangeTracker({ persistFlag: (table) => this.persistFlag(table) });
    for (const t of dataTables(allTables)) {
      const key = tableKey(t);
      this.tables.set(key, { info: t, key, verified: null, pass: null, recheck: null, recheckKeys: null, foreign: false, unrepairable: false });
      this.tracker.track(key, t.keyColumns, t.root ? tableKey(t.root) : null);
    }
  }

  /**
   * Before the sync applies anything: the write guards on the target, and
   * what earlier runs verified (the tracker must know it before the first
   * change is applied). Idempotent; throws when the target refuses.
   */
  async prepare(): Promise<void> {
    if (this.prepared) return;
    const tgt = await this.stateClient();
    await installGuards(tgt, this.allTables);
    for (const [key, row] of await readVerifyState(tgt, this.id)) {
      const t = this.tables.get(key);
      if (!t) continue;
      this.rowsRepaired += row.repairedRows; // what earlier runs repaired (the repairs' lines are in their logs)
      if (row.verified) {
        t.verified = { at: row.verified.at, rows: row.verified.rows, snapshot: row.verified.snapshot };
        this.tracker.restore(key, true, row.verified.changed);
      }
      if (row.pass && !row.pass.changed) {
        t.pass = {
          after: row.pass.after ? parseKeyId(row.pass.after) : null,
          end: row.pass.end ? parseKeyId(row.pass.end) : undefined,
          rows: row.pass.rows,
          snapshot: row.pass.snapshot,
        };
        this.tracker.resumePass(key);
      } else if (row.pass) {
        await recordPassAbandoned(tgt, this.id, key); // changed since it started, keys unknown: from the start again
      }
    }
    this.prepared = true;
  }

  /**
   * The migration's tables after a schema change (schema-follow.ts): new ones
   * tracked and guarded, dropped ones forgotten, the others' columns taken
   * up (a pass over a table of another shape starts again; the apply counted
   * its rows changed whole).
   */
  async updateTables(all: TableInfo[]): Promise<void> {
    const next = new Map(dataTables(all).map((t) => [tableKey(t), t]));
    const added: TableInfo[] = [];
    for (const [key, t] of next) {
      const s = this.tables.get(key);
      if (s && JSON.stringify(s.info.columns) !== JSON.stringify(t.columns)) {
        Object.assign(s, { pass: null, recheck: null, recheckKeys: null });
        this.tracker.abandonPass(key);
      }
      if (s) s.info = t;
      if (s) continue;
      this.tables.set(key, { info: t, key, verified: null, pass: null, recheck: null, recheckKeys: null, foreign: false, unrepairable: false });
      this.tracker.track(key, t.keyColumns, t.root ? tableKey(t.root) : null);
      added.push(t);
    }
    for (const key of [...this.tables.keys()]) if (!next.has(key)) this.tables.delete(key);
    this.allTables = all;
    if (added.length && this.prepared) await installGuards(await this.stateClient(), added);
  }

  /**
   * Run the rounds again after `halt()` (a cutover that failed), under the
   * signal of the last `start`. `guardsLost`: the cutover had taken the write
   * guards off already, so writes by others may have gone unseen: every
   * table is verified again (with new guards).
   */
  resume(guardsLost = false): void {
    this.fenceWantedAt = 0;
    if (guardsLost) {
      this.prepared = false;
      for (const t of this.tables.values()) {
        t.verified = null;
        t.pass = null;
        this.tracker.invalidate(t.key);
        this.tracker.abandonPass(t.key);
      }
      void this.stateClient()
        .then(async (tgt) => {
          // Persisted too: a restart must not trust what was verified while the guards were down.
          await forgetVerification(tgt, this.id);
          await installGuards(tgt, this.allTables);
        })
        .then(
          () => {
            this.prepared = true;
            if (this.lastSignal) this.start(this.lastSignal);
          },
          (e) => this.noteError(`the write guards could not be put back: ${(e as Error).message}`),
        );
      return;
    }
    if (this.lastSignal) this.start(this.lastSignal);
  }

  /** Run the rounds until `signal` aborts or `halt()`. */
  start(signal: AbortSignal): void {
    this.lastSignal = signal;
    if (this.loop || signal.aborted) return;
    const ac = new AbortController();
    const stop = () => ac.abort();
    signal.addEventListener('abort', stop, { once: true });
    const done = this.run(ac.signal).finally(() => {
      signal.removeEventListener('abort', stop);
      this.barrier.release();
      if (this.loop?.ac === ac) this.loop = null;
    });
    this.loop = { ac, done };
  }

  /** Stop the rounds (the cutover, before its fence): resolves once no round runs and the apply is not held. */
  async halt(): Promise<void> {
    this.fenceWantedAt = 0;
    const l = this.loop;
    if (!l) return;
    l.ac.abort();
    // A query in flight (a range's checksum) ends with its connections, and so does a repair's
    // transaction (rolled back) — before the apply goes on, which must not meet it half done.
    await this.closeLinks();
    this.barrier.release();
    await l.done;
  }

  /** Say why it does not run (shown in the status). */
  noteError(message: string): void {
    this.lastError = message;
  }

  /** Prepared (guards up, state read): the cutover may rely on it. */
  get usable(): boolean {
    return this.prepared;
  }

  get running(): boolean {
    return this.loop !== null;
  }

  async close(): Promise<void> {
    await this.halt();
    await this.closeLinks();
    await closeQuietly(this.state);
    await closeQuietly(this.flags);
    this.state = this.flags = null;
  }

  private async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        await this.refreshForeign();
        const items = this.pickWork();
        if (!items.length) {
          await sleep(IDLE_MS, signal).catch(() => undefined);
          continue;
        }
        const links = await this.openLinks();
        const v = this.spec.verification;
        const outcome = await runRound(
          { ...links, signal },
          items,
          { rangeRows: v.rangeRows, rowsPerSecond: v.rowsPerSecond, budgetRows: v.rowsPerSecond * 5 },
          this.sink(),
        ).finally(() => this.unsettled(items));
        if (outcome === 'done') {
          this.misses = 0;
          this.lastError = '';
          continue;
        }
        // Missed: the apply went past the snapshot's point before it could be held — the slot took long to
        // create (a long transaction on the source delays it). Back off, so the provisional pauses stay rare.
        this.misses++;
        if (this.misses >= 3)
          this.lastError =
            outcome === 'missed'
              ? `could not pair the two sides' snapshots ${this.misses} times in a row (creating the verification's temporary slot on the source waits for the transactions running then: a long one delays it)`
              : 'the apply did not reach the verification snapshot in time (is the sync running?)';
        await sleep(Math.min(RETRY_MS * 6, 200 * 2 ** Math.min(this.misses, 8)), signal).catch(() => undefined);
      } catch (e) {
        if (signal.aborted) break;
        this.lastError = (e as Error).message;
        this.log('warn', `verification: a round failed, retried in ${RETRY_MS / 1000} s: ${this.lastError}`, { event: 'verify-failed' });
        await this.closeLinks();
        await sleep(RETRY_MS, signal).catch(() => undefined);
      }
    }
  }

  /** The round's work, most urgent first (see the header), about five seconds' worth of rows. */
  private pickWork(): RoundItem[] {
    const all = [...this.tables.values()].filter((t) => !t.unrepairable);
    const again = all.find((t) => t.recheck || t.recheckKeys);
    if (again)
      return [
        {
          table: again.info,
          key: again.key,
          newPass: false,
          after: again.pass?.after ?? null,
          recheck: again.recheck ?? undefined,
          recheckKeys: again.recheckKeys ?? undefined,
        },
      ];
    const now = Date.now();
    const keyed = all.filter((t) => {
      const n = this.tracker.changedCount(t.key);
      return t.verified && !t.foreign && typeof n === 'number' && n > 0;
    });
    const keyRound = () => keyed.map((t): RoundItem => ({ table: t.info, key: t.key, newPass: false, after: null, keys: { taken: null, settled: false } }));
    // Every KEY_ROUND_MS between passes; back to back only while a cutover waits and no pass is left (else passes would starve).
    if (keyed.length && now - this.lastKeyRoundAt >= KEY_ROUND_MS) return keyRound();
    const urgency = (t: TableState): number => {
      if (t.pass) return 0;
      if (!t.verified) return 1;
      // A table without a key counts "whole" at every change: verifying it again would not help the fence.
      if (t.foreign || (this.tracker.changedCount(t.key) === 'whole' && t.info.keyColumns.length > 0)) return 2;
      if (now - t.verified.at.getTime() >= REVERIFY_ANY_MS) return 4;
      return 9;
    };
    const ranked = all
      .map((t) => ({ t, u: urgency(t) }))
      .filter((x) => x.u < 9)
      .sort((a, b) => a.u - b.u);
    if (!ranked.length) return keyed.length && this.fenceWantedAt > 0 ? keyRound() : [];
    const budget = this.spec.verification.rowsPerSecond * 5;
    const out: RoundItem[] = [];
    let rows = 0;
    for (const { t } of ranked) {
      if (out.length && rows >= budget) break;
      out.push({ table: t.info, key: t.key, newPass: !t.pass, after: t.pass?.after ?? null, end: t.pass?.end });
      rows += Math.max(1, t.info.estimatedRows - (t.pass?.rows ?? 0));
    }
    return out;
  }

  private sink(): RoundSink {
    return {
      atPause: async (items, lsn, snapshot) => {
        const tgt = await this.stateClient();
        for (const i of items) {
          this.tables.get(i.key)!.shapeLag = false;
          if (i.keys) {
            i.keys.taken = this.tracker.takeKeys(i.key);
            this.lastKeyRoundAt = Date.now();
          }
          if (!i.newPass) continue;
          await recordPassStart(tgt, this.id, i.key, lsn, snapshot);
          this.tracker.startPass(i.key);
          this.tables.get(i.key)!.pass = { after: null, rows: 0, snapshot };
        }
      },
      shapeLags: async (items) => {
        for (const i of items) this.tables.get(i.key)!.shapeLag = true;
        for (const i of items) await this.tracker.noteWhole(i.key);
      },
      passEnd: async (item, end) => {
        const t = this.tables.get(item.key)!;
        if (t.pass) t.pass.end = end;
        await recordPassEnd(await this.stateClient(), this.id, item.key, end === null ? null : keyId(end));
      },
      keysCompared: (item, differ) => {
        item.keys!.settled = true;
        if (!differ.length) return;
        this.tracker.returnKeys(item.key, differ.map(keyId));
        this.tables.get(item.key)!.recheckKeys = differ;
        this.log('info', `verification: ${differ.length} changed row(s) of ${item.key} differ; comparing them again with the apply paused`, {
          event: 'verify-differs',
          table: item.key,
        });
      },
      keysRechecked: (item) => {
        // Compared again (and rewritten where they differed) with the apply paused: verified now.
        const t = this.tables.get(item.key)!;
        if (t.recheckKeys) this.tracker.forgetKeys(item.key, t.recheckKeys.map(keyId));
        t.recheckKeys = null;
      },
      rangeDone: async (item, upTo, rows) => {
        const t = this.tables.get(item.key)!;
        if (!t.pass) return;
        t.recheck = null;
        t.pass.rows += rows;
        const tgt = await this.stateClient();
        if (upTo === null) {
          await recordPassComplete(tgt, this.id, t.key, t.pass.rows);
          this.tracker.completePass(t.key);
          this.lastPassAt = Date.now();
          t.verified = { at: new Date(), rows: t.pass.rows, snapshot: t.pass.snapshot };
          t.pass = null;
          t.foreign = false;
          this.log('info', `verification: ${t.key} verified (${t.verified.rows} rows)`, { event: 'verified', table: t.key, rows: t.verified.rows });
        } else {
          t.pass.after = upTo;
          await recordPassProgress(tgt, this.id, t.key, keyId(upTo), t.pass.rows);
        }
      },
      rangeDiffers: (item, range) => {
        this.tables.get(item.key)!.recheck = range;
        this.log('info', `verification: a range of ${item.key} differs; comparing it again row by row with the apply paused`, {
          event: 'verify-differs',
          table: item.key,
        });
      },
      repaired: async (item, _range, keys, tx) => {
        await recordRepair(tx, this.id, item.key, keys.length);
      },
      repairCommitted: (item, keys) => {
        this.rangesRepaired++;
        this.rowsRepaired += keys.length;
        const sample = keys
          .slice(0, 3)
          .map((k) => `(${k.join(', ')})`)
          .join(', ');
        const line = `${new Date().toISOString()} ${item.key}: ${keys.length} row(s) rewritten from the source, key ${sample}${keys.length > 3 ? ', …' : ''}`;
        this.repairs.push(line);
        if (this.repairs.length > REPAIRS_KEPT) this.repairs.shift();
        this.log('warn', `verification: ${item.key} differed from the source in ${keys.length} row(s) (key ${sample}); rewritten from the source`, {
          event: 'verify-repaired',
          table: item.key,
          rows: keys.length,
        });
      },
      unrepairable: (item) => {
        const t = this.tables.get(item.key)!;
        t.unrepairable = true;
        t.recheck = null;
        t.pass = null;
        this.tracker.abandonPass(item.key);
        this.lastError = `${item.key} differs from the source and has no key to repair it row by row; the cutover will fail on it. Give it a primary key (and REPLICA IDENTITY), or copy it again.`;
        this.log('error', `verification: ${this.lastError}`, { event: 'verify-unrepairable', table: item.key });
      },
      rowsRead: (n) => {
        this.rowsRead += n;
      },
    };
  }

  /** Keys a key round took but did not compare (it failed or stopped): changed since verification again. */
  private unsettled(items: RoundItem[]): void {
    for (const i of items) if (i.keys?.taken && !i.keys.settled) this.tracker.returnKeys(i.key, i.keys.taken);
  }

  /**
   * The cutover waits to fence: key rounds run back to back, and `readiness`
   * wants one that began after this call (so the fence finds only the
   * changes of its last moments).
   */
  wantFence(): void {
    this.fenceWantedAt = Date.now();
  }

  /** Which verified tables someone else wrote since their verification (the guard's notes). */
  private async refreshForeign(): Promise<void> {
    const since = new Map<string, string>();
    for (const t of this.tables.values()) if (t.verified) since.set(t.key, t.verified.snapshot);
    if (!since.size) return;
    const found = await foreignWritesAfter(await this.stateClient(), this.allTables, since);
    for (const t of this.tables.values()) {
      const was = t.foreign;
      t.foreign = found.has(t.key);
      if (t.foreign && !was) {
        const f = found.get(t.key)!;
        this.log(
          'warn',
          `verification: ${t.key} was written on the target by someone other than pgferry (${f.ops.join(', ')}, last at ${f.lastAt}); verifying it again`,
          {
            event: 'foreign-write',
            table: t.key,
          },
        );
      }
    }
  }

  /** Whether the fence may rely on the verification now, and what it waits for. */
  readiness(): { ready: boolean; waitingFor: string } {
    const all = [...this.tables.values()];
    const bad = all.filter((t) => t.unrepairable);
    if (bad.length) return { ready: false, waitingFor: `tables that differ and cannot be repaired: ${bad.map((t) => t.key).join(', ')}` };
    const unverified = all.filter((t) => !t.shapeLag && (!t.verified || t.recheck || t.recheckKeys || t.foreign));
    if (!unverified.length) {
      const keys = all.some((t) => typeof this.tracker.changedCount(t.key) === 'number' && (this.tracker.changedCount(t.key) as number) > 0);
      // A key round that took its keys after the cutover asked, and after the last pass completed (a pass gathers its table's changes from its start).
      if (!keys || this.lastKeyRoundAt >= Math.max(this.fenceWantedAt, this.lastPassAt)) return { ready: true, waitingFor: '' };
      return { ready: false, waitingFor: 'a last comparison of the rows changed since each table was verified' };
    }
    const failing = this.lastError ? ` (its last round failed: ${this.lastError})` : '';
    const rows = unverified.reduce((n, t) => n + Math.max(0, t.info.estimatedRows - (t.pass?.rows ?? 0)), 0);
    return {
      ready: false,
      waitingFor: `${unverified.length} table(s) not verified yet (about ${rows} rows to read at up to ${this.spec.verification.rowsPerSecond} rows/s): ${unverified
        .slice(0, 5)
        .map((t) => t.key)
        .join(', ')}${unverified.length > 5 ? ', …' : ''}${failing}`,
    };
  }

  /** Each verified table's target snapshot (for the fence's look at the guard's notes). */
  verifiedSnapshots(): Map<string, string> {
    const out = new Map<string, string>();
    for (const t of this.tables.values()) if (t.verified) out.set(t.key, t.verified.snapshot);
    return out;
  }

  status(): VerificationStatus {
    const all = [...this.tables.values()];
    const verified = all.filter((t) => t.verified && !t.foreign);
    const times = verified.map((t) => t.verified!.at.getTime());
    const s = this.tracker.summary();
    return {
      state: this.spec.verification.disabled || !this.prepared ? 'off' : !this.running ? 'paused' : verified.length === all.length ? 'verified' : 'verifying',
      tablesTotal: all.length,
      tablesVerified: verified.length,
      rowsVerified: verified.reduce((n, t) => n + t.verified!.rows, 0),
      rowsEstimated: all.reduce((n, t) => n + Math.max(0, t.info.estimatedRows), 0),
      lastVerifiedAt: times.length ? new Date(Math.max(...times)).toISOString() : '',
      oldestVerifiedAt: times.length && verified.length === all.length ? new Date(Math.min(...times)).toISOString() : '',
      tablesChanged: s.changedTables,
      keysChanged: s.keys,
      rangesRepaired: this.rangesRepaired,
      rowsRepaired: this.rowsRepaired,
      repairs: [...this.repairs],
      lastError: this.lastError,
    };
  }

  private async persistFlag(table: string): Promise<void> {
    try {
      this.flags ??= await connect('target', this.spec.target, { applicationName: `pgferry verify ${this.id}` });
      await recordChanged(this.flags, this.id, table);
    } catch (e) {
      await closeQuietly(this.flags);
      this.flags = null;
      throw e;
    }
  }

  private async stateClient(): Promise<pg.Client> {
    if (this.state) return this.state;
    const c = await connect('target', this.spec.target, { applicationName: `pgferry verify ${this.id}` });
    c.on('error', () => {
      if (this.state === c) this.state = null;
    });
    this.state = c;
    return c;
  }

  private async openLinks(): Promise<Omit<RoundLinks, 'signal'>> {
    if (this.links) return this.links;
    const app = { applicationName: `pgferry verify ${this.id}` };
    const src = await connect('source', this.spec.source, app);
    const tgt = await connect('target', this.spec.target, app).catch(async (e) => {
      await closeQuietly(src);
      throw e;
    });
    const repair = await connect('target', this.spec.target, app).catch(async (e) => {
      await closeQuietly(src);
      await closeQuietly(tgt);
      throw e;
    });
    for (const c of [src, tgt, repair]) c.on('error', () => void this.closeLinks());
    const namesOnly = this.spec.schemaMode === 'existing';
    this.links = { source: this.spec.source, slotName: `pgferry_v_${this.id}`.slice(0, 63), src, tgt, repair, barrier: this.barrier, namesOnly };
    return this.links;
  }

  private async closeLinks(): Promise<void> {
    const l = this.links;
    this.links = null;
    if (l) for (const c of [l.src, l.tgt, l.repair]) await closeQuietly(c);
  }
}
