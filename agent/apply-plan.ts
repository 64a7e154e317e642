/**
 * apply-plan — turn a batch of decoded changes into the statements that
 * apply it, as the changes arrive. Part of the **apply** stage (apply.ts
 * drives it: batching, execution, exactly-once bookkeeping).
 *
 * Input: row changes whose values are still the server's bytes (TupleData),
 * one at a time, in source order. Output: `Plan.steps()`, the batch's
 * statements in execution order — each a `Group` (a run of INSERTs, UPDATEs
 * or DELETEs of one table: one statement) or a `Single` (one change: a
 * TRUNCATE, an UPDATE that moves the key, a REPLICA IDENTITY FULL row, or any
 * change while a failed range is replayed one change per statement).
 *
 * Cost: a change is appended to its group's statement data when it arrives:
 * INSERT rows become COPY text lines, UPDATE/DELETE values go into binary
 * `text[]` parameters (array_recv format), both copied byte for byte from the
 * pgoutput message — no JavaScript string per value, no object kept per
 * change, and only a few off-heap buffers survive until the batch executes.
 * Hand-rolled because no library builds PostgreSQL's binary array or COPY
 * text encodings incrementally from foreign bytes; both formats are small
 * and specified in the PostgreSQL docs (array_recv in arrayfuncs.c, COPY
 * text format in the COPY reference page).
 *
 * Ordering (what may be grouped):
 *  - replica mode (FK and ordinary triggers do not fire): within a segment,
 *    each table's changes form their own lane, in source order; lanes run
 *    one after the other. TRUNCATE and one-change-per-statement replay are
 *    barriers (everything before them runs before them).
 *  - ordered mode: one lane; a group only grows while consecutive changes
 *    hit the same table with the same operation.
 * Guard 6 (one row per key per statement): a key already in a group starts a
 * new group, else UPDATE … FROM would apply only one of its changes, at
 * random. Guard 7: a different set of sent columns (unchanged TOAST) starts a
 * new UPDATE group.
 */
import { qi } from './conn';
import { PgferryError } from './errors';
import { formatLsn, type Lsn } from './lsn';
import { SCAN_NULL, SCAN_UNCHANGED, type RelationMessage, type Tuple, type TupleData } from './pgoutput';

/** A target table as the apply statements need it. */
export interface TargetColumn {
  name: string;
  /**
   * The type to cast the text value to: format_type without the modifier, so
   * the column's own modifier applies on assignment (an error when a value does
   * not fit, where an explicit cast would truncate it silently). Typeless
   * `character` and `bit` mean length 1, so those become bpchar / bit varying.
   */
  castType: string;
  generated: boolean;
  identityAlways: boolean;
  /** ` COLLATE x` when the column's collation is not its type's default (equality must use the column's). */
  collate: string;
}
export interface TargetTable {
  schema: string; name: string; quoted: string; partitioned: boolean;
  /**
   * Row counts of its statements are checked by the agent before COMMIT, not
   * by the server (apply.ts, checkedOnServer): BEFORE INSERT row triggers
   * fire on it (or a partition) in the apply session, and one may skip a row
   * of a COPY; or it has rules, which a statement inside WITH cannot go through.
   */
  countsHere: boolean;
  columns: Map<string, TargetColumn>;
}

/** A source relation mapped onto its target table. */
export interface RelMap {
  rel: RelationMessage;
  target: TargetTable;
  /** Target column per source column, null when the target generates it (never written). */
  cols: (TargetColumn | null)[];
  /** Source column indexes that are written (not generated on the target). */
  writeIdx: number[];
  keyIdx: number[];
  full: boolean;
  overriding: boolean;
  syncLsn: Lsn;
  /** Statement shapes by operation and sent-column mask. */
  shapes: Map<string, Shape>;
}

/** One change with its values as strings (the one-change-per-statement path). */
export interface RowChange { op: 'INSERT' | 'UPDATE' | 'DELETE'; map: RelMap; lsn: Lsn; newTuple: Tuple | null; oldTuple: Tuple | null }
export interface TruncateChange { op: 'TRUNCATE'; maps: RelMap[]; restartIdentity: boolean; lsn: Lsn }
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

/** Statement text and parameter layout for one table, operation and set of sent columns. */
export interface Shape {
  /** null: the statement would change nothing (every column it could set is generated or unsent). */
  text: string | null;
  /** Source column index per `text[]` parameter, in parameter order. */
  cols: number[];
  /** INSERT: the COPY statement for long runs. */
  copyText?: string;
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
  /** UPDATE/DELETE: the replica identity keys in the group (Guard 6). */
  keys: Set<string> | null;
  /** INSERT while short: the rows themselves (an INSERT … unnest is cheaper than COPY for a few rows). */
  refs: TupleData[] | null;
  /** INSERT once COPY_MIN_ROWS long: COPY text-format data. */
  copy: Bytes | null;
  /** UPDATE/DELETE: one binary text[] per `shape.cols` entry. */
  arrays: TextArray[] | null;
}

export type Step = Group | Single;

/** INSERT runs at least this long go through COPY (bulk insert path, no casts, no array building). */
export const COPY_MIN_ROWS = 16;

/**
 * A growable byte buffer. Hand-rolled: Node has no appendable Buffer, and
 * the escapes and length prefixes written here are byte-level.
 */
export class Bytes {
  buf: Buffer;
  len = 0;
  constructor(capacity = 1024) { this.buf = Buffer.allocUnsafe(capacity); }

  private grow(n: number): void {
    const next = Buffer.allocUnsafeSlow(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  int32(v: number): void {
    if (this.len + 4 > this.buf.length) this.grow(4);
    this.buf.writeInt32BE(v, this.len);
    this.len += 4;
  }

  byte(b: number): void {
    if (this.len + 1 > this.buf.length) this.grow(1);
    this.buf[this.len++] = b;
  }

  ascii(s: string): void {
    if (this.len + s.length > this.buf.length) this.grow(s.length);
    for (let i = 0; i < s.length; i++) this.buf[this.len++] = s.charCodeAt(i);
  }

  /** Append src[start, end). */
  copyFrom(src: Buffer, start: number, end: number): void {
    const n = end - start;
    if (this.len + n > this.buf.length) this.grow(n);
    const out = this.buf;
    if (n <= 32) {
      // A native copy costs more than the loop for short values.
      let o = this.len;
      for (let i = start; i < end; i++) out[o++] = src[i];
    } else {
      src.copy(out, this.len, start, end);
    }
    this.len += n;
  }

  /**
   * Append src[start, end) as a COPY text-format field: the value's own
   * text with backslash, newline, carriage return and tab escaped (the
   * delimiter and the line structure are the only things COPY text reads).
   */
  copyField(src: Buffer, start: number, end: number): void {
    let i = start;
    for (; i < end; i++) { const b = src[i]; if (b === 0x5c || b === 0x0a || b === 0x0d || b === 0x09) break; }
    if (i === end) { this.copyFrom(src, start, end); return; }
    this.copyFrom(src, start, i);
    for (; i < end; i++) {
      const b = src[i];
      if (b === 0x5c) { this.byte(0x5c); this.byte(0x5c); }
      else if (b === 0x0a) { this.byte(0x5c); this.byte(0x6e); }
      else if (b === 0x0d) { this.byte(0x5c); this.byte(0x72); }
      else if (b === 0x09) { this.byte(0x5c); this.byte(0x74); }
      else this.byte(b);
    }
  }

  view(): Buffer { return this.buf.subarray(0, this.len); }
}

const TEXT_OID = 25;
const ARRAY_HEADER = 20;

/**
 * A one-dimensional `text[]` in PostgreSQL's binary format (array_recv):
 * Int32 ndim = 1, Int32 has-nulls, Int32 element type OID, Int32 length,
 * Int32 lower bound = 1, then per element Int32 byte length (-1 = NULL) and
 * the bytes. node-postgres sends a Buffer parameter in binary format.
 */
export class TextArray {
  private readonly b = new Bytes(512);
  count = 0;
  private hasNull = false;
  constructor() { this.b.len = ARRAY_HEADER; }

  add(src: Buffer, start: number, len: number): void {
    if (len < 0) { this.b.int32(-1); this.hasNull = true; }
    else { this.b.int32(len); this.b.copyFrom(src, start, start + len); }
    this.count++;
  }

  finish(): Buffer {
    const buf = this.b.buf;
    buf.writeInt32BE(1, 0);
    buf.writeInt32BE(this.hasNull ? 1 : 0, 4);
    buf.writeInt32BE(TEXT_OID, 8);
    buf.writeInt32BE(this.count, 12);
    buf.writeInt32BE(1, 16);
    return this.b.view();
  }
}

/**
 * The statements of one batch (or one chunk of a large transaction), built
 * as changes arrive. See the module comment for the ordering rules.
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

  /** `grouped`: replica mode (a lane per table); else one lane in source order. */
  constructor(private readonly grouped: boolean) {}

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
    else { g = newGroup('INSERT', map, insertShape(map), '', lsn); g.refs = []; lane.push(g); }
    g.rows++;
    this.changes++;
    this.bytes += t.end - t.start;
    if (map.writeIdx.length === 0) return; // rows without values: only counted
    if (g.copy) { this.copyRow(g, t, lsn); return; }
    g.refs!.push(t);
    if (g.refs!.length >= COPY_MIN_ROWS) {
      g.copy = new Bytes(16 * 1024);
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
      if (this.lens[i] === SCAN_UNCHANGED) { mask = maskOf(this.lens, t.columns); break; }
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
    const arrays = cols.map(() => new TextArray());
    for (const t of g.refs!) {
      this.ensureScratch(t.columns);
      t.scan(this.starts, this.lens);
      for (let k = 0; k < cols.length; k++) {
        const i = cols[k];
        const len = this.lens[i];
        if (len === SCAN_UNCHANGED) throw valueMissing('INSERT', g.map, i, g.firstLsn);
        arrays[k].add(t.buf, this.starts[i], len);
      }
    }
    return arrays.map((a) => a.finish());
  }

  private barrier(): void {
    if (this.lanes.size === 0) return;
    for (const lane of this.lanes.values()) for (const s of lane) this.done.push(s);
    this.lanes.clear();
  }

  private lane(table: TargetTable): Step[] {
    if (!this.grouped) return this.done;
    let lane = this.lanes.get(table);
    if (!lane) { lane = []; this.lanes.set(table, lane); }
    return lane;
  }

  private groupFor(op: 'UPDATE' | 'DELETE', map: RelMap, mask: string, key: string, lsn: Lsn): Group {
    const lane = this.lane(map.target);
    const last = lane[lane.length - 1];
    let g: Group;
    if (last !== undefined && last.kind === 'group' && last.op === op && last.map === map && last.mask === mask && !last.keys!.has(key)) {
      g = last;
    } else {
      g = newGroup(op, map, op === 'UPDATE' ? updateShape(map, mask) : deleteShape(map), mask, lsn);
      g.keys = new Set();
      g.arrays = g.shape.text === null ? [] : g.shape.cols.map(() => new TextArray());
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
    for (let k = 0; k < cols.length; k++) {
      const i = cols[k];
      const len = this.lens[i];
      if (len === SCAN_UNCHANGED) throw valueMissing(op, g.map, i, lsn);
      arrays[k].add(t.buf, this.starts[i], len);
    }
  }

  /**
   * The replica identity key of the scanned tuple as a string (exact: one
   * char per byte). Two keys with the same string are the same key (the
   * source's output function is deterministic); two different strings of
   * one value (numeric `1.0` / `1.00`, case under a nondeterministic
   * collation) can only follow each other through an UPDATE that changes the
   * key's bytes, which pgoutput sends with the old key and which is always a
   * statement of its own, so a group never holds both. A false match only
   * splits a group.
   */
  private key(map: RelMap, t: TupleData, op: 'UPDATE' | 'DELETE', lsn: Lsn): string {
    const idx = map.keyIdx;
    let s = '';
    for (let j = 0; j < idx.length; j++) {
      const i = idx[j];
      const len = this.lens[i];
      if (len === SCAN_UNCHANGED) throw valueMissing(op, map, i, lsn);
      const part = len === SCAN_NULL ? '\u0000' : t.buf.toString('latin1', this.starts[i], this.starts[i] + len);
      s = j === 0 ? part : `${s}\u0001${part}`;
    }
    return s;
  }

  private copyRow(g: Group, t: TupleData, lsn: Lsn): void {
    this.ensureScratch(t.columns);
    t.scan(this.starts, this.lens);
    const out = g.copy!;
    const cols = g.shape.cols;
    for (let k = 0; k < cols.length; k++) {
      if (k > 0) out.byte(0x09);
      const i = cols[k];
      const len = this.lens[i];
      if (len === SCAN_NULL) { out.byte(0x5c); out.byte(0x4e); } // \N
      else if (len === SCAN_UNCHANGED) throw valueMissing('INSERT', g.map, i, lsn);
      else out.copyField(t.buf, this.starts[i], this.starts[i] + len);
    }
    out.byte(0x0a);
  }

  private ensureScratch(n: number): void {
    if (this.starts.length < n) { this.starts = new Int32Array(n); this.lens = new Int32Array(n); }
  }
}

function newGroup(op: Group['op'], map: RelMap, shape: Shape, mask: string, lsn: Lsn): Group {
  return { kind: 'group', op, map, shape, mask, rows: 0, firstLsn: lsn, keys: null, refs: null, copy: null, arrays: null };
}

function maskOf(lens: Int32Array, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += lens[i] === SCAN_UNCHANGED ? '0' : '1';
  return s;
}

/** A value the statement needs was not sent (unchanged TOAST). */
export function valueMissing(op: string, map: RelMap, i: number, lsn: Lsn): PgferryError {
  return new PgferryError('APPLY_FAILED', `${op} on ${map.target.quoted} (source transaction at ${formatLsn(lsn)}): column ${qi(map.rel.columns[i].name)} is needed but its value was not sent (unchanged TOAST).`,
    'Restart the agent; if it repeats, set REPLICA IDENTITY FULL on the source table and copy it again.');
}

function cached(map: RelMap, key: string, make: () => Shape): Shape {
  let s = map.shapes.get(key);
  if (!s) { s = make(); map.shapes.set(key, s); }
  return s;
}

export function insertShape(m: RelMap): Shape {
  return cached(m, 'I', () => {
    const name = (i: number) => qi(m.rel.columns[i].name);
    if (m.writeIdx.length === 0) {
      // A table without columns (or only generated ones): rows carry no values.
      return { text: `INSERT INTO ${m.target.quoted} SELECT FROM generate_series(1, $1::int)`, cols: [] };
    }
    const list = m.writeIdx.map(name).join(', ');
    return {
      cols: m.writeIdx,
      text: `INSERT INTO ${m.target.quoted} (${list})${m.overriding ? ' OVERRIDING SYSTEM VALUE' : ''} SELECT ${m.writeIdx.map((i, j) => `v.c${j}::${m.cols[i]!.castType}`).join(', ')} FROM unnest(${m.writeIdx.map((_, j) => `$${j + 1}::text[]`).join(', ')}) AS v(${m.writeIdx.map((_, j) => `c${j}`).join(', ')})`,
      // COPY writes identity (even GENERATED ALWAYS) columns as given and
      // enforces the columns' types and lengths like an INSERT would.
      copyText: `COPY ${m.target.quoted} (${list}) FROM STDIN`,
    };
  });
}

function keyCond(m: RelMap, firstParam: number): string {
  return m.keyIdx.map((i, j) => `t.${qi(m.rel.columns[i].name)} = v.c${firstParam + j}::${m.cols[i]!.castType}${m.cols[i]!.collate}`).join(' AND ');
}

function unnestList(n: number): string {
  return `unnest(${Array.from({ length: n }, (_, j) => `$${j + 1}::text[]`).join(', ')}) AS v(${Array.from({ length: n }, (_, j) => `c${j}`).join(', ')})`;
}

/** UPDATE matched on the (unchanged) key from the new tuple; `mask` '' = every column sent. */
export function updateShape(m: RelMap, mask: string): Shape {
  return cached(m, `U${mask}`, () => {
    const col = (i: number) => m.cols[i]!;
    const name = (i: number) => qi(m.rel.columns[i].name);
    const present = m.writeIdx.filter((i) => mask === '' || mask[i] === '1');
    // Guard 5 (unchanged TOAST): absent values are left out of SET, never written.
    const set = present.filter((i) => !m.keyIdx.includes(i) && !col(i).identityAlways);
    // PostgreSQL lets UPDATE set a GENERATED ALWAYS identity column only to
    // DEFAULT: such columns are checked instead (a change to one fails the row count).
    const guard = present.filter((i) => col(i).identityAlways && !m.keyIdx.includes(i));
    if (set.length === 0) return { text: null, cols: [] };
    const k = m.keyIdx.length;
    const sets = set.map((i, j) => `${name(i)} = v.c${k + j}::${col(i).castType}`).join(', ');
    const guards = guard.map((i, j) => ` AND t.${name(i)} IS NOT DISTINCT FROM v.c${k + set.length + j}::${col(i).castType}`).join('');
    const cols = [...m.keyIdx, ...set, ...guard];
    return { cols, text: `UPDATE ${m.target.quoted} AS t SET ${sets} FROM ${unnestList(cols.length)} WHERE ${keyCond(m, 0)}${guards}` };
  });
}

export function deleteShape(m: RelMap): Shape {
  return cached(m, 'D', () => ({ cols: m.keyIdx, text: `DELETE FROM ${m.target.quoted} AS t USING ${unnestList(m.keyIdx.length)} WHERE ${keyCond(m, 0)}` }));
}
