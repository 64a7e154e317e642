/**
 * verify-changes — what the apply changed on each table since the continuous
 * verification checked it, so that the cutover re-checks only those rows
 * inside the fence (cutover-verify.ts).
 *
 * Input: every row change the apply takes (apply.ts calls `note`, before the
 * change is batched), and the verifier's passes (verify.ts: a pass checks a
 * whole table, range by range, from a first barrier on).
 * Output, per table: the keys changed since the start of its last completed
 * pass (`verifiedKeys`), or "whole" when they could not all be kept (more
 * than the bound, a table without a key, a TRUNCATE, a key type kept only in
 * binary form): the fence then checks that table in full.
 *
 * Memory is bounded: at most `maxKeysPerTable` keys per table and
 * `maxKeys` in all; past that a table counts as changed "whole".
 *
 * Durability: the keys live in memory only. What survives a kill -9 is a
 * flag on the target (verify-state.ts): before the first change to a table
 * after its pass started is applied, the flag is committed (`persistFlag`),
 * so a restarted agent knows which verified tables changed since, and
 * counts them "whole" instead of trusting an empty key set.
 */
import { SCAN_NULL, SCAN_UNCHANGED, isBinaryValue, type DeleteMessage, type InsertMessage, type TupleData, type UpdateMessage } from './pgoutput';
import type { RelMap } from './apply-target';
import { keyId, parseKeyId, type KeyValues } from './verify-ranges';

interface TableChanges {
  /** The key columns' names in the order verify-ranges.ts uses (the key's index order). */
  keyColumns: string[];
  /** Since the start of the last completed pass; null when none completed. */
  verified: Set<string> | null;
  verifiedWhole: boolean;
  /** Since the start of the pass in progress; null when none is. */
  pass: Set<string> | null;
  passWhole: boolean;
  /** The target's row already says "changed since the pass started" (nothing to persist). */
  flagged: boolean;
}

export interface ChangeTrackerOptions {
  maxKeysPerTable?: number;
  maxKeys?: number;
  /** Commit the table's "changed since verified" flag on the target (verify-state.ts). */
  persistFlag: (table: string) => Promise<void>;
}

export class ChangeTracker {
  private readonly tables = new Map<string, TableChanges>();
  /** Stream relation (a table, or the partitioned root its changes arrive as) → the data tables it covers. */
  private readonly byRelation = new Map<string, Array<{ table: string; t: TableChanges }>>();
  private readonly order = new WeakMap<RelMap, number[] | null>();
  private readonly maxPerTable: number;
  private readonly maxKeys: number;
  private keys = 0;

  constructor(private readonly opts: ChangeTrackerOptions) {
    this.maxPerTable = opts.maxKeysPerTable ?? 100_000;
    this.maxKeys = opts.maxKeys ?? 1_000_000;
  }

  /**
   * Follow this data table (its key columns in key order). A partition's
   * changes arrive as its root (publish_via_partition_root) or as itself: a
   * key changed in the root counts for each of its partitions (a key that is
   * not in one is absent on both sides there). Idempotent.
   */
  track(table: string, keyColumns: string[], root: string | null = null): void {
    if (this.tables.has(table)) return;
    const t: TableChanges = { keyColumns, verified: null, verifiedWhole: false, pass: null, passWhole: false, flagged: false };
    this.tables.set(table, t);
    for (const rel of root ? [table, root] : [table]) {
      const list = this.byRelation.get(rel) ?? [];
      list.push({ table, t });
      this.byRelation.set(rel, list);
    }
  }

  /**
   * After a restart: the table's last completed pass, and whether it changed
   * since (then its keys are unknown: "whole").
   */
  restore(table: string, verified: boolean, changedSince: boolean): void {
    const t = this.tables.get(table);
    if (!t) return;
    t.verified = verified ? new Set() : null;
    t.verifiedWhole = verified && changedSince;
    t.flagged = false;
  }

  /** A pass of `table` starts (called while the apply is paused at its first barrier, after the target's flag was cleared). */
  startPass(table: string): void {
    const t = this.tables.get(table);
    if (!t) return;
    this.drop(t.pass);
    t.pass = new Set();
    t.passWhole = false;
    t.flagged = false;
  }

  /** A resumed pass (after a restart, nothing changed since it started). */
  resumePass(table: string): void {
    const t = this.tables.get(table);
    if (t && !t.pass) {
      t.pass = new Set();
      t.passWhole = false;
    }
  }

  /** The pass completed: its changes are now the ones since verification. */
  completePass(table: string): void {
    const t = this.tables.get(table);
    if (!t || !t.pass) return;
    this.drop(t.verified);
    t.verified = t.pass;
    t.verifiedWhole = t.passWhole;
    t.pass = null;
    t.passWhole = false;
  }

  /** The pass was abandoned (its table must be verified again). */
  abandonPass(table: string): void {
    const t = this.tables.get(table);
    if (!t) return;
    this.drop(t.pass);
    t.pass = null;
    t.passWhole = false;
  }

  /** The table's verification no longer holds (e.g. written by someone else): nothing is verified until a new pass completes. */
  invalidate(table: string): void {
    const t = this.tables.get(table);
    if (!t) return;
    this.drop(t.verified);
    t.verified = null;
    t.verifiedWhole = false;
  }

  /**
   * A key round (verify.ts) takes the keys changed since the table's
   * verification, while the apply is paused: the changes after the pause
   * gather anew. Null when there is nothing to take (not verified, no keys,
   * or "whole").
   */
  takeKeys(table: string): string[] | null {
    const t = this.tables.get(table);
    if (!t || !t.verified || t.verifiedWhole || t.verified.size === 0) return null;
    const keys = [...t.verified];
    this.drop(t.verified);
    t.verified = new Set();
    return keys;
  }

  /** Keys a key round could not clear (they differed, or the round failed): changed since verification again. */
  returnKeys(table: string, keys: string[]): void {
    const t = this.tables.get(table);
    if (!t || !t.verified) return;
    for (const k of keys) this.add(t, k, 'verified');
  }

  /**
   * Keys compared equal (or rewritten) while the apply is paused: verified at
   * that point, so no longer changed since verification (a change after the
   * pause is noted again).
   */
  forgetKeys(table: string, keys: string[]): void {
    const t = this.tables.get(table);
    if (!t || !t.verified || t.verifiedWhole) return;
    for (const k of keys) if (t.verified.delete(k)) this.keys--;
  }

  /** What the fence must re-check for `table`: null (never verified), 'whole', or the keys changed since. */
  changedSinceVerified(table: string): null | 'whole' | KeyValues[] {
    const t = this.tables.get(table);
    if (!t || !t.verified) return null;
    if (t.verifiedWhole) return 'whole';
    return [...t.verified].map(parseKeyId);
  }

  /** How many keys changed since the table's verification: 'whole', a count, or null (not verified). */
  changedCount(table: string): null | 'whole' | number {
    const t = this.tables.get(table);
    if (!t || !t.verified) return null;
    return t.verifiedWhole ? 'whole' : t.verified.size;
  }

  /** Verified tables changed since (and how many keys they hold). */
  summary(): { changedTables: number; keys: number } {
    let changedTables = 0;
    let keys = 0;
    for (const t of this.tables.values()) {
      if (t.verified && (t.verifiedWhole || t.verified.size > 0)) changedTables++;
      keys += t.verified?.size ?? 0;
    }
    // Keys since verification (a key also held by a pass in progress counts once; `this.keys`, the memory bound, counts both).
    return { changedTables, keys };
  }

  /**
   * apply.ts, for each row change it takes (before it is batched): returns a
   * promise when the table's flag must be committed on the target first.
   */
  note(relation: string, map: RelMap, m: InsertMessage | UpdateMessage | DeleteMessage): Promise<void> | undefined {
    const list = this.byRelation.get(relation);
    if (!list) return undefined;
    let pending: Promise<void>[] | undefined;
    for (const { table, t } of list) {
      if (!t.verified && !t.pass) continue;
      const keys = this.keysOf(t, map, m);
      if (keys === null) this.whole(t);
      else for (const k of keys) this.add(t, k);
      const p = this.flag(table, t);
      if (p) (pending ??= []).push(p);
    }
    return pending && Promise.all(pending).then(() => undefined);
  }

  /** A TRUNCATE (or any change whose rows are unknown) of `relation`. */
  noteWhole(relation: string): Promise<void> | undefined {
    let pending: Promise<void>[] | undefined;
    for (const { table, t } of this.byRelation.get(relation) ?? []) {
      if (!t.verified && !t.pass) continue;
      this.whole(t);
      const p = this.flag(table, t);
      if (p) (pending ??= []).push(p);
    }
    return pending && Promise.all(pending).then(() => undefined);
  }

  private flag(table: string, t: TableChanges): Promise<void> | undefined {
    if (t.flagged) return undefined;
    return this.opts.persistFlag(table).then(() => {
      t.flagged = true;
    });
  }

  private whole(t: TableChanges): void {
    if (t.verified) {
      this.drop(t.verified);
      t.verified = new Set();
      t.verifiedWhole = true;
    }
    if (t.pass) {
      this.drop(t.pass);
      t.pass = new Set();
      t.passWhole = true;
    }
  }

  private add(t: TableChanges, key: string, only?: 'verified'): void {
    for (const which of only ? [only] : (['verified', 'pass'] as const)) {
      const set = t[which];
      const whole = which === 'verified' ? t.verifiedWhole : t.passWhole;
      if (!set || whole || set.has(key)) continue;
      if (set.size >= this.maxPerTable || this.keys >= this.maxKeys) {
        this.drop(set);
        set.clear();
        if (which === 'verified') t.verifiedWhole = true;
        else t.passWhole = true;
        continue;
      }
      set.add(key);
      this.keys++;
    }
  }

  private drop(set: Set<string> | null): void {
    if (set) this.keys -= set.size;
  }

  /** The change's key(s) as text (the old key too when an UPDATE moves it); null when one cannot be kept. */
  private keysOf(t: TableChanges, map: RelMap, m: InsertMessage | UpdateMessage | DeleteMessage): string[] | null {
    if (map.full || t.keyColumns.length === 0) return null;
    let idx = this.order.get(map);
    if (idx === undefined) {
      const cols = map.rel.columns;
      const found = t.keyColumns.map((name) => cols.findIndex((c) => c.name === name));
      idx = found.some((i) => i < 0) ? null : found;
      this.order.set(map, idx);
    }
    if (!idx) return null;
    const out: string[] = [];
    const tuples = m.tag === 'delete' ? [m.oldTuple] : m.tag === 'update' && m.oldTuple ? [m.oldTuple, m.newTuple] : [m.newTuple];
    for (const tuple of tuples) {
      const k = keyOf(tuple, idx, map);
      if (k === null) return null;
      out.push(keyId(k));
    }
    return out;
  }
}

/** Reused per call (the tracker runs on the apply's one thread): where each column's value lies in the row's bytes. */
let scanStarts = new Int32Array(64);
let scanLens = new Int32Array(64);

/** The key columns' values of a row as text, decoding only those; null when one is missing or cannot be decoded. */
function keyOf(tuple: TupleData | null, idx: number[], map: RelMap): KeyValues | null {
  if (!tuple) return null;
  if (scanStarts.length < tuple.columns) {
    scanStarts = new Int32Array(tuple.columns * 2);
    scanLens = new Int32Array(tuple.columns * 2);
  }
  tuple.scan(scanStarts, scanLens);
  const out: string[] = [];
  for (const i of idx) {
    if (i >= tuple.columns) return null;
    const start = scanStarts[i];
    const len = scanLens[i];
    if (len === SCAN_NULL || len === SCAN_UNCHANGED) return null;
    if (isBinaryValue(tuple.buf, start)) {
      const text = binaryKeyText(map.rel.columns[i].typeOid, tuple.buf.subarray(start, start + len));
      if (text === null) return null;
      out.push(text);
    } else out.push(tuple.buf.toString('utf8', start, start + len));
  }
  return out;
}

/**
 * A key value the stream sent in binary form, as text PostgreSQL reads back
 * as the same value; null for the types not decoded here (the table then
 * counts as changed "whole"). Only the usual key types: integers, text-like,
 * uuid, bool, oid, date and timestamps (binary timestamps are 64-bit
 * microseconds, the only format since PostgreSQL 10). Hand-rolled: node-postgres's binary parsers give
 * JavaScript values (a bigint would lose precision), not PostgreSQL's text.
 */
export function binaryKeyText(typeOid: number, b: Buffer): string | null {
  switch (typeOid) {
    case 16: // bool
      return b.length === 1 ? (b[0] ? 't' : 'f') : null;
    case 20: // int8
      return b.length === 8 ? b.readBigInt64BE(0).toString() : null;
    case 21: // int2
      return b.length === 2 ? String(b.readInt16BE(0)) : null;
    case 23: // int4
      return b.length === 4 ? String(b.readInt32BE(0)) : null;
    case 26: // oid
      return b.length === 4 ? String(b.readUInt32BE(0)) : null;
    case 19: // name
    case 25: // text
    case 1042: // bpchar
    case 1043: // varchar
      return b.toString('utf8');
    case 2950: {
      // uuid
      if (b.length !== 16) return null;
      const h = b.toString('hex');
      return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
    }
    case 1082: // date: days since 2000-01-01
      return b.length === 4 ? dateText(b.readInt32BE(0)) : null;
    case 1114: // timestamp
    case 1184: // timestamptz (UTC)
      return b.length === 8 ? timestampText(b.readBigInt64BE(0), typeOid === 1184) : null;
    default:
      return null;
  }
}

const EPOCH_2000_MS = Date.UTC(2000, 0, 1);
const pad = (n: number, w = 2) => String(n).padStart(w, '0');

/** A date as ISO text; null outside years 1–9999 (then the table counts as changed "whole"). */
function dateText(days: number): string | null {
  if (days === 0x7fffffff) return 'infinity';
  if (days === -0x80000000) return '-infinity';
  const d = new Date(EPOCH_2000_MS + days * 86_400_000);
  const y = d.getUTCFullYear();
  if (y < 1 || y > 9999) return null;
  return `${pad(y, 4)}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
}

/** Microseconds since 2000-01-01 as ISO text (with +00 for timestamptz); null outside years 1–9999. */
function timestampText(us: bigint, tz: boolean): string | null {
  if (us === 0x7fffffffffffffffn) return 'infinity';
  if (us === -0x8000000000000000n) return '-infinity';
  let sec = us / 1_000_000n;
  let frac = us % 1_000_000n;
  if (frac < 0n) {
    frac += 1_000_000n;
    sec -= 1n;
  }
  const d = new Date(EPOCH_2000_MS + Number(sec) * 1000);
  const y = d.getUTCFullYear();
  if (!Number.isFinite(y) || y < 1 || y > 9999) return null;
  const text = `${pad(y, 4)}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.${pad(Number(frac), 6)}`;
  return tz ? `${text}+00` : text;
}
