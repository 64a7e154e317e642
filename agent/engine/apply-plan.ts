/**
 * apply-plan — turn a batch of decoded changes into the steps that apply
 * it, as the changes arrive. Part of the apply stage (apply.ts drives it:
 * batching, execution, exactly-once bookkeeping).
 *
 * Input: row changes whose values are still the server's bytes (TupleData),
 * one at a time, in source order. Output: `Plan.steps()`, the batch's
 * statements in execution order — each a `Group` (a run of INSERTs, UPDATEs
 * or DELETEs of one table: one statement) or a `Single` (one change: a
 * TRUNCATE, an UPDATE that moves the key, a REPLICA IDENTITY FULL row, or any
 * change while a failed range is replayed one change per statement). A
 * group's values are copied byte for byte into its COPY data or array
 * parameters (apply-buffers.ts) as each change arrives. Design:
 * docs/architecture.md.
 */
import { qi } from './conn';
import { PgferryError } from './errors';
import { formatLsn, type Lsn } from './lsn';
import { SCAN_UNCHANGED, isBinaryValue, u32At, type DeleteMessage, type InsertMessage, type Tuple, type TupleData, type UpdateMessage } from './pgoutput';
import { ArrayParam, BufferPool, Bytes, KeyHashes, TEXT_OID } from './apply-buffers';
import { deleteShape, insertShape, updateShape, type Shape } from './apply-shapes';
import { TextModeNeeded, type RelMap, type TargetTable } from './apply-target';

// Re-exported: test/apply-plan.test.ts imports them from here.
export { ArrayParam, BufferPool, Bytes, KeyHashes } from './apply-buffers';
export { TextModeNeeded, type RelMap, type TargetColumn, type TargetTable } from './apply-target';

/** One change with its values as strings (the one-change-per-statement path). */
export interface RowChange {
  op: 'INSERT' | 'UPDATE' | 'DELETE';
  map: RelMap;
  lsn: Lsn;
  newTuple: Tuple | null;
  oldTuple: Tuple | null;
}
export interface TruncateChange {
  op: 'TRUNCATE';
  maps: RelMap[];
  restartIdentity: boolean;
  lsn: Lsn;
}
export type Change = RowChange | TruncateChange;

/** One change, one statement. */
export interface Single {
  kind: 'single';
  op: 'INSERT' | 'UPDATE' | 'DELETE' | 'TRUNCATE';
  change: Change;
  /** Which single-change statement form: key-moving UPDATE, REPLICA IDENTITY FULL row, or an ordinary one. */
  form: 'key-change' | 'full' | null;
  /** Part of a one-change-per-statement replay: a failure names this change. */
  safe: boolean;
}

/** A row change with its values as strings (the one-change-per-statement paths). */
export function rowChange(m: InsertMessage | UpdateMessage | DeleteMessage, map: RelMap, lsn: Lsn): RowChange {
  if (m.tag === 'insert') return { op: 'INSERT', map, lsn, newTuple: m.newTuple.values(), oldTuple: null };
  if (m.tag === 'update') return { op: 'UPDATE', map, lsn, newTuple: m.newTuple.values(), oldTuple: m.oldTuple?.values() ?? null };
  return { op: 'DELETE', map, lsn, newTuple: null, oldTuple: m.oldTuple.values() };
}

/** The one-change-per-statement step of `c`; `safe`: part of a replay. */
export function singleOf(c: Change, safe: boolean): Single {
  if (c.op === 'TRUNCATE') return { kind: 'single', op: 'TRUNCATE', change: c, form: null, safe };
  const full = c.map.full && c.op !== 'INSERT';
  const keyChange = !full && c.op === 'UPDATE' && c.oldTuple !== null;
  return { kind: 'single', op: c.op, change: c, form: full ? 'full' : keyChange ? 'key-change' : null, safe };
}

/** A run of same-kind changes to one table: one statement. */
export interface Group {
  kind: 'group';
  op: 'INSERT' | 'UPDATE' | 'DELETE';
  map: RelMap;
  shape: Shape;
  mask: string;
  rows: number;
  firstLsn: Lsn;
  /** UPDATE/DELETE: hashes of the replica identity keys in the group (Guard 6). */
  keys: KeyHashes | null;
  /** INSERT while short: the rows themselves (an INSERT … unnest is cheaper than COPY for a few rows). */
  refs: TupleData[] | null;
  /** INSERT once COPY_MIN_ROWS long: COPY data (text, or binary without its trailer until `Plan.copyData`). */
  copy: Bytes | null;
  /** The binary COPY trailer is written (copy is complete). */
  copyEnded: boolean;
  /** UPDATE/DELETE: one binary array parameter per `shape.cols` entry. */
  arrays: ArrayParam[] | null;
}

export type Step = Group | Single;

/** INSERT runs at least this long go through COPY (bulk insert path, no casts, no array building). */
export const COPY_MIN_ROWS = 16;

/**
 * The statements of one batch (or one chunk of a large transaction), built
 * as changes arrive. Ordering: grouped (replica mode), each table's changes
 * form their own lane within a segment, in source order, lanes running one
 * after the other; TRUNCATE and one-change-per-statement replay are barriers.
 * Otherwise one lane: a group only grows while consecutive changes hit the
 * same table with the same operation.
 */
export class Plan {
  private readonly done: Step[] = [];
  private readonly lanes = new Map<TargetTable, Step[]>();
  /** Changes added. */
  changes = 0;
  /** Bytes of row data added (the size of the statement data, roughly). */
  bytes = 0;
  /** Per column of the tuple being added: where its value starts and how long it is (SCAN_NULL / SCAN_UNCHANGED). */
  private starts = new Int32Array(64);
  private lens = new Int32Array(64);

  /**
   * `grouped`: replica mode (a lane per table); else one lane in source
   * order. `pool`: where the statement buffers come from (see `release`).
   */
  constructor(
    private readonly grouped: boolean,
    private readonly pool: BufferPool | null = null,
  ) {}

  /**
   * Hand every statement buffer back to the pool: only once the statements
   * have been executed and answered (the server has read them), never after
   * a failure (a part's bytes may still wait in the socket's queue).
   */
  release(): void {
    for (const step of this.steps()) {
      if (step.kind !== 'group') continue;
      step.copy?.release();
      if (step.arrays) for (const a of step.arrays) a.release();
    }
  }

  /** Every step, in execution order. Ends the plan's current segment. */
  steps(): Step[] {
    this.barrier();
    return this.done;
  }

  /** A change that must run after everything before it and before everything after it. */
  addBarrier(step: Single): void {
    this.barrier();
    this.done.push(step);
    this.changes++;
  }

  /** A change applied on its own, in its table's lane. */
  addSingle(step: Single, table: TargetTable): void {
    this.lane(table).push(step);
    this.changes++;
  }

  insert(map: RelMap, t: TupleData, lsn: Lsn): void {
    const lane = this.lane(map.target);
    const last = lane[lane.length - 1];
    let g: Group;
    if (last !== undefined && last.kind === 'group' && last.op === 'INSERT' && last.map === map) g = last;
    else {
      g = newGroup('INSERT', map, insertShape(map), '', lsn);
      g.refs = [];
      lane.push(g);
    }
    g.rows++;
    this.changes++;
    this.bytes += t.end - t.start;
    if (map.writeIdx.length === 0) return; // rows without values: only counted
    if (g.copy) {
      this.copyRow(g, t, lsn);
      return;
    }
    g.refs!.push(t.copy()); // the parser may reuse `t` for the next change
    if (g.refs!.length >= COPY_MIN_ROWS) {
      g.copy = new Bytes(16 * 1024, this.pool);
      if (map.binary) g.copy.copyFrom(BINARY_COPY_HEADER, 0, BINARY_COPY_HEADER.length);
      for (const r of g.refs!) this.copyRow(g, r, lsn);
      g.refs = null;
    }
  }

  /** An UPDATE whose key did not move, of a table with a replica identity key. */
  update(map: RelMap, t: TupleData, lsn: Lsn): void {
    this.ensureScratch(t.columns);
    t.scan(this.starts, this.lens);
    let mask = '';
    for (let i = 0; i < t.columns; i++) {
      if (this.lens[i] === SCAN_UNCHANGED) {
        mask = maskOf(this.lens, t.columns);
        break;
      }
    }
    const key = this.key(map, t, 'UPDATE', lsn);
    const g = this.groupFor('UPDATE', map, mask, key, lsn);
    this.fill(g, t, 'UPDATE', lsn);
    this.bytes += t.end - t.start;
  }

  /** A DELETE of a table with a replica identity key (old key tuple). */
  delete(map: RelMap, old: TupleData, lsn: Lsn): void {
    this.ensureScratch(old.columns);
    old.scan(this.starts, this.lens);
    const key = this.key(map, old, 'DELETE', lsn);
    const g = this.groupFor('DELETE', map, '', key, lsn);
    this.fill(g, old, 'DELETE', lsn);
    this.bytes += old.end - old.start;
  }

  /** Parameters for a short INSERT group (built from its rows when the statement is made). */
  insertArrays(g: Group): Buffer[] {
    const cols = g.shape.cols;
    const arrays = cols.map((i) => new ArrayParam(null, elemOid(g.map, i)));
    for (const t of g.refs!) {
      this.ensureScratch(t.columns);
      t.scan(this.starts, this.lens);
      for (let k = 0; k < cols.length; k++) {
        const i = cols[k];
        const len = this.lens[i];
        if (len === SCAN_UNCHANGED) throw valueMissing('INSERT', g.map, i, g.firstLsn);
        if (g.map.binary && len >= 0 && !isBinaryValue(t.buf, this.starts[i])) throw notBinary(g.map, i);
        arrays[k].add(t.buf, this.starts[i], len);
      }
    }
    return arrays.map((a) => a.finish());
  }

  /** The COPY data of an INSERT group, complete (binary: its trailer added once). */
  copyData(g: Group): Buffer {
    const out = g.copy!;
    if (g.map.binary && !g.copyEnded) {
      out.reserve(2);
      out.buf[out.len++] = 0xff;
      out.buf[out.len++] = 0xff; // Int16 -1: end of data
      g.copyEnded = true;
    }
    return out.view();
  }

  private barrier(): void {
    if (this.lanes.size === 0) return;
    for (const lane of this.lanes.values()) for (const s of lane) this.done.push(s);
    this.lanes.clear();
  }

  private lane(table: TargetTable): Step[] {
    if (!this.grouped) return this.done;
    let lane = this.lanes.get(table);
    if (!lane) {
      lane = [];
      this.lanes.set(table, lane);
    }
    return lane;
  }

  private groupFor(op: 'UPDATE' | 'DELETE', map: RelMap, mask: string, key: number, lsn: Lsn): Group {
    const lane = this.lane(map.target);
    const last = lane[lane.length - 1];
    let g: Group;
    // Guard 6 (one row per key per statement): a key already in the group starts a new one.
    // Guard 7 (one column set per UPDATE group): so does another set of sent columns (`mask`).
    if (last !== undefined && last.kind === 'group' && last.op === op && last.map === map && last.mask === mask && !last.keys!.has(key)) {
      g = last;
    } else {
      g = newGroup(op, map, op === 'UPDATE' ? updateShape(map, mask) : deleteShape(map), mask, lsn);
      g.keys = new KeyHashes();
      g.arrays = g.shape.text === null ? [] : g.shape.cols.map((i) => new ArrayParam(this.pool, elemOid(map, i)));
      lane.push(g);
    }
    g.keys!.add(key);
    g.rows++;
    this.changes++;
    return g;
  }

  /** Append the scanned tuple's values to the group's parameters. */
  private fill(g: Group, t: TupleData, op: 'UPDATE' | 'DELETE', lsn: Lsn): void {
    if (g.shape.text === null) return;
    const cols = g.shape.cols;
    const arrays = g.arrays!;
    const binary = g.map.binary;
    for (let k = 0; k < cols.length; k++) {
      const i = cols[k];
      const len = this.lens[i];
      if (len === SCAN_UNCHANGED) throw valueMissing(op, g.map, i, lsn);
      // A text value in an array of the column's type would be read as its binary form.
      if (binary && len >= 0 && !isBinaryValue(t.buf, this.starts[i])) throw notBinary(g.map, i);
      arrays[k].add(t.buf, this.starts[i], len);
    }
  }

  /**
   * A 30-bit hash (FNV-1a) of the replica identity key of the scanned
   * tuple: its columns' bytes, each after its length (so NULL, empty and the
   * column boundaries count). A number rather than the key's bytes as a
   * string: no string is made and kept per change (KeyHashes holds the
   * numbers outside the JavaScript heap). Guard 6 only needs "maybe the same key": a
   * false match (two keys with one hash, about one in 10^9 per pair) only
   * splits a group. Equal keys have equal bytes (the source's output
   * function is deterministic); two different texts of one value (numeric
   * `1.0` / `1.00`, case under a nondeterministic collation) can only follow
   * each other through an UPDATE that changes the key's bytes, which
   * pgoutput sends with the old key and which is always a statement of its
   * own, so a group never holds both.
   */
  private key(map: RelMap, t: TupleData, op: 'UPDATE' | 'DELETE', lsn: Lsn): number {
    const idx = map.keyIdx;
    const buf = t.buf;
    let h = 0x811c9dc5;
    for (let j = 0; j < idx.length; j++) {
      const i = idx[j];
      const len = this.lens[i];
      if (len === SCAN_UNCHANGED) throw valueMissing(op, map, i, lsn);
      h = Math.imul(h ^ (len & 0xffff), 0x01000193);
      h = Math.imul(h ^ (len >>> 16), 0x01000193);
      for (let p = this.starts[i], end = p + len; p < end; p++) h = Math.imul(h ^ buf[p], 0x01000193);
    }
    return h & 0x3fffffff;
  }

  /**
   * Append the row's written columns as one COPY text line, in one pass over
   * the pgoutput bytes (kind byte, length, text per column: see TupleData):
   * no scan into the scratch arrays first, one capacity check per row, and
   * each value copied and escaped in the same loop (backslash, newline,
   * carriage return and tab are the only bytes COPY text reads specially).
   */
  private copyRow(g: Group, t: TupleData, lsn: Lsn): void {
    if (g.map.binary) {
      this.copyRowBinary(g, t, lsn);
      return;
    }
    const out = g.copy!;
    const cols = g.shape.cols;
    // At most two bytes out per value byte, plus a tab (or \N and a tab) per column and the newline.
    out.reserve(2 * (t.end - t.start) + 3 * cols.length + 1);
    const src = t.buf;
    const dst = out.buf;
    const rowStart = out.len;
    let o = rowStart;
    let pos = t.start;
    for (let i = 0, k = 0; k < cols.length; i++) {
      const kind = src[pos++];
      const len = kind === 0x74 /*t*/ ? u32At(src, pos) : 0;
      if (kind === 0x74) pos += 4;
      if (i !== cols[k]) {
        pos += len;
        continue;
      } // a column the target generates
      if (k++ > 0) dst[o++] = 0x09;
      if (kind === 0x6e /*n*/) {
        dst[o++] = 0x5c;
        dst[o++] = 0x4e;
        continue;
      } // \N
      if (kind !== 0x74) {
        out.len = rowStart;
        throw valueMissing('INSERT', g.map, i, lsn);
      }
      for (const end = pos + len; pos < end; pos++) {
        const b = src[pos];
        if (b === 0x5c || (b < 0x0e && (b === 0x09 || b === 0x0a || b === 0x0d))) {
          dst[o++] = 0x5c;
          dst[o++] = b === 0x5c ? 0x5c : b === 0x09 ? 0x74 /*t*/ : b === 0x0a ? 0x6e /*n*/ : 0x72; /*r*/
        } else {
          dst[o++] = b;
        }
      }
    }
    dst[o++] = 0x0a;
    out.len = o;
  }

  /**
   * Append the row as one binary COPY tuple: Int16 field count, then per
   * written column Int32 length (-1 = NULL) and the bytes — a pgoutput 'b'
   * value without its kind byte, so each value is one copy.
   */
  private copyRowBinary(g: Group, t: TupleData, lsn: Lsn): void {
    const out = g.copy!;
    const cols = g.shape.cols;
    // A NULL grows from 1 byte to 4, a value shrinks by its kind byte.
    out.reserve(2 + (t.end - t.start) + 4 * cols.length);
    const src = t.buf;
    const dst = out.buf;
    const rowStart = out.len;
    let o = rowStart;
    dst[o++] = cols.length >>> 8;
    dst[o++] = cols.length;
    let pos = t.start;
    for (let i = 0, k = 0; k < cols.length; i++) {
      const kind = src[pos++];
      const sized = kind === KIND_BINARY || kind === 0x74; /*t*/
      const n = sized ? 4 + u32At(src, pos) : 0; // the length word and the bytes
      if (i !== cols[k]) {
        pos += n;
        continue;
      } // a column the target generates
      k++;
      if (kind === 0x6e /*n*/) {
        dst[o] = 0xff;
        dst[o + 1] = 0xff;
        dst[o + 2] = 0xff;
        dst[o + 3] = 0xff;
        o += 4;
        continue;
      }
      if (kind !== KIND_BINARY) {
        out.len = rowStart;
        throw sized ? notBinary(g.map, i) : valueMissing('INSERT', g.map, i, lsn);
      }
      if (n <= 36) {
        for (const end = pos + n; pos < end;) dst[o++] = src[pos++];
      } else {
        src.copy(dst, o, pos, pos + n);
        o += n;
        pos += n;
      }
    }
    out.len = o;
  }

  private ensureScratch(n: number): void {
    if (this.starts.length < n) {
      this.starts = new Int32Array(n);
      this.lens = new Int32Array(n);
    }
  }
}

function newGroup(op: Group['op'], map: RelMap, shape: Shape, mask: string, lsn: Lsn): Group {
  return { kind: 'group', op, map, shape, mask, rows: 0, firstLsn: lsn, keys: null, refs: null, copy: null, copyEnded: false, arrays: null };
}

const KIND_BINARY = 0x62; // pgoutput 'b'
/** Binary COPY's signature, flags field (no OIDs) and header extension length (none). */
const BINARY_COPY_HEADER = Buffer.from([0x50, 0x47, 0x43, 0x4f, 0x50, 0x59, 0x0a, 0xff, 0x0d, 0x0a, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]);

/** The element type of column `i`'s array parameter. */
function elemOid(m: RelMap, i: number): number {
  return m.binary ? m.cols[i]!.castOid : TEXT_OID;
}

function notBinary(m: RelMap, i: number): TextModeNeeded {
  return new TextModeNeeded(m.target.quoted, qi(m.rel.columns[i].name));
}

function maskOf(lens: Int32Array, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += lens[i] === SCAN_UNCHANGED ? '0' : '1';
  return s;
}

/** A value the statement needs was not sent (unchanged TOAST). */
export function valueMissing(op: string, map: RelMap, i: number, lsn: Lsn): PgferryError {
  return new PgferryError(
    'APPLY_FAILED',
    `${op} on ${map.target.quoted} (source transaction at ${formatLsn(lsn)}): column ${qi(map.rel.columns[i].name)} is needed but its value was not sent (unchanged TOAST).`,
    'Restart the agent; if it repeats, set REPLICA IDENTITY FULL on the source table and copy it again.',
  );
}
