/**
 * verify-round — one round of the continuous verification: a pair of
 * snapshots that mean the same state on both sides, and the ranges compared
 * in it.
 *
 * The pair: a TEMPORARY logical slot's exported snapshot on the source (its
 * consistent point L) and, on the target, a REPEATABLE READ snapshot taken
 * while the apply is paused exactly at L (verify-barrier.ts). The pause lasts
 * a round trip, except in a repair round.
 *
 * Ranges: a table is checked in key ranges of `rangeRows` rows (bounds read
 * on the source), count + checksum on each side (verify-ranges.ts). A range
 * that differs may have been caught in flight: it is compared again row by
 * row in a later round, with the apply paused for the whole comparison, and
 * the rows that still differ are rewritten from the source in the same
 * target transaction (a repair, logged and counted).
 *
 * Input: the round's work (`RoundWork`), its connections (`RoundLinks`).
 * Output: the ranges' outcomes through `RoundSink` (verify.ts records them).
 */
import type pg from 'pg';
import type { TableInfo } from './catalog';
import { createSlotWithSnapshot } from './snapshot';
import type { Endpoint } from './spec';
import { parseLsn, type Lsn } from './lsn';
import type { ApplyBarrier } from './verify-barrier';
import { APPLYING_SETTING_SQL, guardSnapshot } from './verify-guard';
import {
  copyKeys,
  differingKeys,
  hasRangeKey,
  keysRowHashes,
  lastKey,
  parseKeyId,
  rangeEnd,
  rangeFingerprint,
  rangeRowHashes,
  type KeyRange,
  type KeyValues,
} from './verify-ranges';
import { dataColumns } from './catalog';
import { tableFingerprint } from './checksum';
import { sleep } from './sleep';
import { failpoint } from './failpoints';

/** The longest the apply may wait for the source slot to be created before the round goes on without the pause. */
const PROVISIONAL_PAUSE_MS = 2000;
/** The longest the round waits for the apply to reach the snapshot's point. */
const REACH_MS = 30_000;

export interface RoundLinks {
  source: Endpoint;
  slotName: string;
  /** Source connection that takes the imported snapshot (idle between rounds). */
  src: pg.Client;
  /** Target connection for the REPEATABLE READ snapshot. */
  tgt: pg.Client;
  /** Target connection for repairs (its own transaction, while the apply is paused). */
  repair: pg.Client;
  barrier: ApplyBarrier;
  signal: AbortSignal;
  /** Compare the tables' column names only, not their types (the user's own target schema may use other types on purpose). */
  namesOnly: boolean;
}

/** A table's work in this round: go on with its pass, or re-check one range that differed. */
export interface RoundItem {
  table: TableInfo;
  key: string;
  /** Start a new pass at this round's pair (else continue the one in progress). */
  newPass: boolean;
  /** Continue from this key (null: from the first row). */
  after: KeyValues | null;
  /** Where the pass ends (its table's last key when first read; null: it was empty); undefined until read. */
  end?: KeyValues | null;
  /** A range that differed earlier: compared again row by row while paused, and repaired. */
  recheck?: KeyRange;
  /**
   * A key round's item: the keys the apply changed since the table was
   * verified, taken by the sink while the apply is paused (`atPause`), then
   * compared in the pair of snapshots. `settled` once their outcome is told.
   */
  keys?: { taken: string[] | null; settled: boolean };
  /** Keys that differed in a key round: compared again while paused, and repaired. */
  recheckKeys?: KeyValues[];
}

export interface RoundSink {
  /** While the apply is paused at the pair's point: the passes that start here begin (state written, tracker told), key items take their keys. */
  atPause(items: RoundItem[], lsn: Lsn, targetSnapshot: string): Promise<void>;
  /** A key item compared: these of its keys differ (re-check them while paused). */
  keysCompared(item: RoundItem, differ: KeyValues[]): void;
  /** Keys that differed were compared again while paused (and rewritten where they still differed). */
  keysRechecked(item: RoundItem): void;
  /** A pass's end, read in the snapshot of its first compared range. */
  passEnd(item: RoundItem, end: KeyValues | null): Promise<void>;
  /** A range compared equal (or was repaired): the pass goes on after `upTo` (null: the table is done). */
  rangeDone(item: RoundItem, upTo: KeyValues | null, rows: number): Promise<void>;
  /** A range differed: re-check it in a later round. */
  rangeDiffers(item: RoundItem, range: KeyRange): void;
  /** Rows rewritten from the source in a re-check (in the repair's transaction). */
  repaired(item: RoundItem, range: KeyRange, keys: KeyValues[], repairTx: pg.Client): Promise<void>;
  /** …and that transaction committed: log it, count it. */
  repairCommitted(item: RoundItem, keys: KeyValues[]): void;
  /** A table without a key still differs when compared again: it cannot be repaired row by row. */
  unrepairable(item: RoundItem): void;
  /** Rows read so far, for the rate limit. */
  rowsRead(rows: number): void;
  /**
   * Tables whose columns differ between the pair of snapshots (a column change the stream has not brought to the
   * target yet: its next row of the table will): left out of the round; their rows count as changed whole.
   */
  shapeLags(items: RoundItem[]): Promise<void>;
}

export interface RoundLimits {
  rangeRows: number;
  /** Rows the round may read per side before it ends. */
  budgetRows: number;
  /** Rows per second per side, at most. */
  rowsPerSecond: number;
}

/**
 * One round. Returns how it went: 'done' (the work compared), 'missed' (the
 * apply had passed the snapshot's point before it could be held: try again),
 * 'not-reached' (the apply did not reach it in time, e.g. the sync is down).
 */
export async function runRound(l: RoundLinks, items: RoundItem[], lim: RoundLimits, sink: RoundSink): Promise<'done' | 'missed' | 'not-reached'> {
  const { src, tgt, barrier } = l;
  // Hold the apply provisionally at the source's position now (≤ the slot's point), see verify-barrier.ts.
  const p = parseLsn((await src.query('SELECT pg_current_wal_insert_lsn()::text AS l')).rows[0].l);
  barrier.hold(p, false);
  const provisional = setTimeout(() => barrier.release(), PROVISIONAL_PAUSE_MS);
  let lsn: Lsn;
  try {
    const snap = await createSlotWithSnapshot(l.source, l.slotName, true, l.signal);
    try {
      lsn = snap.lsn;
      await src.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      await src.query(`SET TRANSACTION SNAPSHOT '${snap.snapshotName.replace(/'/g, "''")}'`);
    } finally {
      await snap.release();
    }
  } catch (e) {
    clearTimeout(provisional);
    barrier.release();
    await src.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
  clearTimeout(provisional);
  let tgtOpen = false;
  try {
    if (!barrier.hold(lsn, true)) return 'missed';
    const at = await barrier.arrived(REACH_MS, l.signal);
    if (at === null) {
      barrier.release();
      return 'not-reached';
    }
    try {
      await tgt.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      tgtOpen = true;
      const snapshot = await guardSnapshot(tgt); // the first query fixes the snapshot
      // Compared while their shapes differ, a table's rows would differ, and a repair would write the source's new
      // values into the target's old columns (a text column getting what a USING on the source made of it).
      const lagging = await shapeLagging(l, items);
      if (lagging.length) await sink.shapeLags(lagging);
      items = items.filter((i) => !lagging.includes(i));
      await sink.atPause(items, lsn, snapshot);
      for (const item of items) {
        if (item.recheck) await recheck(l, item, item.recheck, sink);
        if (item.recheckKeys) await recheckKeys(l, item, item.recheckKeys, sink);
      }
      await failpoint('verify.paused', l.signal).catch(() => undefined);
    } finally {
      barrier.release();
    }
    for (const item of items) if (item.keys?.taken) await compareKeys(l, item, sink);
    await compareRanges(
      l,
      items.filter((i) => !i.recheck && !i.recheckKeys && !i.keys),
      lim,
      sink,
    );
    return 'done';
  } finally {
    await src.query('ROLLBACK').catch(() => undefined);
    if (tgtOpen) await tgt.query('ROLLBACK').catch(() => undefined);
  }
}

/** The items whose columns (name and type, or name only) differ between the two snapshots of the pair. */
async function shapeLagging(l: RoundLinks, items: RoundItem[]): Promise<RoundItem[]> {
  if (items.length === 0) return [];
  const sql = `SELECT k, (SELECT json_object_agg(a.attname, ${l.namesOnly ? "''" : 'pg_catalog.format_type(a.atttypid, a.atttypmod)'})
                 FROM pg_catalog.pg_attribute a WHERE a.attrelid = pg_catalog.to_regclass(k) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '') AS cols
                 FROM unnest($1::text[]) AS k`;
  const keys = items.map((i) => i.key);
  const [a, b] = await Promise.all([l.src.query(sql, [keys]), l.tgt.query(sql, [keys])]);
  const target = new Map(b.rows.map((r) => [r.k as string, (r.cols ?? {}) as Record<string, string>]));
  const lagging = new Set(
    a.rows
      .filter((r) => {
        const t = target.get(r.k) ?? {};
        // Every source column, of the same type; a column only the target has is not compared (not the source's).
        return Object.entries((r.cols ?? {}) as Record<string, string>).some(([name, type]) => t[name] !== type);
      })
      .map((r) => r.k as string),
  );
  return items.filter((i) => lagging.has(i.key));
}

/** The pass items' ranges, compared in the pair of snapshots, until the budget is spent. */
async function compareRanges(l: RoundLinks, items: RoundItem[], lim: RoundLimits, sink: RoundSink): Promise<void> {
  const started = Date.now();
  let read = 0;
  for (const item of items) {
    let after = item.after;
    for (;;) {
      if (l.signal.aborted || read >= lim.budgetRows) return;
      const keyed = hasRangeKey(item.table);
      if (keyed && item.end === undefined) {
        // The pass's ranges are counted up to the last key it finds now: rows inserted later are its changes (checked by
        // key) and fall in its last range, so a table that grows faster than the verification reads still gets verified.
        item.end = await lastKey(l.src, item.table);
        await sink.passEnd(item, item.end);
      }
      // Ranges are counted up to the end; the last one is open (rows only on the target, above the source's
      // last key, must be compared too). A table without a key is one range: the whole table.
      const upTo = keyed ? await rangeEnd(l.src, item.table, after, lim.rangeRows, item.end ?? null) : null;
      const last = upTo === null;
      const range: KeyRange = { after, upTo };
      const [a, b] = await Promise.all([fingerprint(l.src, item.table, range), fingerprint(l.tgt, item.table, range)]);
      read += Math.max(a.rows, b.rows);
      sink.rowsRead(Math.max(a.rows, b.rows));
      if (a.rows !== b.rows || a.checksum !== b.checksum) {
        sink.rangeDiffers(item, range);
        break;
      }
      await failpoint('verify.range-compared', l.signal).catch(() => undefined);
      await sink.rangeDone(item, upTo, a.rows);
      await failpoint('verify.range-recorded', l.signal).catch(() => undefined);
      if (last) break;
      after = upTo;
      // The rate limit: never more than rowsPerSecond per side on average over the round.
      const aheadMs = (read * 1000) / lim.rowsPerSecond - (Date.now() - started);
      if (aheadMs > 0) await sleep(aheadMs, l.signal).catch(() => undefined);
    }
  }
}

function fingerprint(c: pg.Client, t: TableInfo, r: KeyRange): Promise<{ rows: number; checksum: string }> {
  if (hasRangeKey(t) || r.after || r.upTo) return rangeFingerprint(c, t, r);
  return tableFingerprint(
    c,
    t.schema,
    t.name,
    dataColumns(t).map((x) => x.name),
  );
}

/** A key item's keys, compared in the pair of snapshots (by exact key, both sides at once). */
async function compareKeys(l: RoundLinks, item: RoundItem, sink: RoundSink): Promise<void> {
  const keys = item.keys!.taken!.map(parseKeyId);
  const [a, b] = await Promise.all([keysRowHashes(l.src, item.table, keys), keysRowHashes(l.tgt, item.table, keys)]);
  sink.rowsRead(keys.length);
  sink.keysCompared(item, differingKeys(a, b));
}

/** Keys that differed in a key round, compared again while paused, and rewritten from the source where they still differ. */
async function recheckKeys(l: RoundLinks, item: RoundItem, keys: KeyValues[], sink: RoundSink): Promise<void> {
  const tx = l.repair;
  await tx.query('BEGIN');
  try {
    await repairSession(tx);
    const [a, b] = await Promise.all([keysRowHashes(l.src, item.table, keys), keysRowHashes(tx, item.table, keys)]);
    const still = differingKeys(a, b);
    if (still.length) {
      await copyKeys(l.src, tx, item.table, still);
      await sink.repaired(item, { after: null, upTo: null }, still, tx);
      await failpoint('verify.repair-before-commit', l.signal).catch(() => undefined);
    }
    await tx.query('COMMIT');
    if (still.length) sink.repairCommitted(item, still);
  } catch (e) {
    await tx.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
  sink.keysRechecked(item);
}

/** The repair transaction's settings: the write guard does not count it, triggers and keys stay quiet where allowed. */
async function repairSession(tx: pg.Client): Promise<void> {
  await tx.query(APPLYING_SETTING_SQL.replace(/^SET /, 'SET LOCAL '));
  await tx.query('SAVEPOINT replica_role');
  try {
    await tx.query('SET LOCAL session_replication_role = replica');
    await tx.query('RELEASE SAVEPOINT replica_role');
  } catch {
    // Not allowed to this role: the repair's rows go in with triggers and keys checked.
    await tx.query('ROLLBACK TO SAVEPOINT replica_role');
  }
}

/**
 * A range that differed, compared again row by row while the apply is
 * paused (the target holds exactly the source snapshot's state), and the
 * rows that still differ rewritten from the source, in one target
 * transaction.
 */
async function recheck(l: RoundLinks, item: RoundItem, range: KeyRange, sink: RoundSink): Promise<void> {
  if (!hasRangeKey(item.table)) {
    // Still (the apply is paused) a table without a key: compared whole again, never rewritten.
    const [a, b] = await Promise.all([fingerprint(l.src, item.table, range), fingerprint(l.repair, item.table, range)]);
    sink.rowsRead(Math.max(a.rows, b.rows));
    if (a.rows === b.rows && a.checksum === b.checksum) await sink.rangeDone(item, null, a.rows);
    else sink.unrepairable(item);
    return;
  }
  const tx = l.repair;
  let keys: KeyValues[];
  let rows: number;
  await tx.query('BEGIN');
  try {
    await repairSession(tx);
    const [a, b] = await Promise.all([rangeRowHashes(l.src, item.table, range), rangeRowHashes(tx, item.table, range)]);
    sink.rowsRead(Math.max(a.size, b.size));
    rows = a.size;
    keys = differingKeys(a, b);
    if (keys.length) {
      // Compared by exact key (range bounds may order text differently on the two sides).
      const [ka, kb] = await Promise.all([keysRowHashes(l.src, item.table, keys), keysRowHashes(tx, item.table, keys)]);
      keys = differingKeys(ka, kb);
    }
    if (keys.length) {
      await copyKeys(l.src, tx, item.table, keys);
      await sink.repaired(item, range, keys, tx);
      await failpoint('verify.repair-before-commit', l.signal).catch(() => undefined);
    }
    await tx.query('COMMIT');
  } catch (e) {
    await tx.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
  if (keys.length) sink.repairCommitted(item, keys);
  await sink.rangeDone(item, range.upTo, rows);
}
