/**
 * pgoutput — decode the logical replication messages of PostgreSQL's built-in
 * `pgoutput` plugin (protocol version 1). Stage: receive → **transform** → apply.
 *
 * Input: the payload of one XLogData message (the bytes after the 25-byte
 * 'w' header), in stream order. Output: one `PgoutputMessage`, a union
 * discriminated by `tag`. Row data stays as the server's bytes in a
 * `TupleData` (validated when the message is decoded): the apply stage's
 * fast path copies those bytes straight into its statements without making a
 * JavaScript string per value; `values()` gives the row as an array indexed
 * like the relation's columns, each value the exact text the server sent
 * (`string`), the bytes of the type's binary send function (`Buffer`, when
 * the stream was started in binary mode), `null`, or the `UNCHANGED_TOAST`
 * marker (a large value an UPDATE did not touch; the apply stage must leave
 * such columns out of its SET list, never write them: Guard 5).
 *
 * Message formats:
 * https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
 *
 * Why pgferry's own parser and not pg-logical-replication's PgoutputParser,
 * and why protocol version 1 (large transactions are spilled by the source
 * and applied in chunks): docs/architecture.md, "The stream: receive →
 * decode → apply" and "Why pgferry speaks the protocols itself".
 */
import type pg from 'pg';
import { formatLsn, readLsn, type Lsn } from './lsn';

/** The big-endian Int32 at `pos` as unsigned; the caller has checked the bounds (readUInt32BE validates on every call). */
export function u32At(buf: Buffer, pos: number): number {
  return ((buf[pos] << 24) | (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]) >>> 0;
}

/** Marks a TOASTed value an UPDATE did not change (pgoutput's 'u'): its value was not sent. */
export const UNCHANGED_TOAST: unique symbol = Symbol('pgoutput.unchanged-toast');
/** Text as sent ('t'), binary as sent ('b': a stream started with `binary`), NULL, or not sent. */
export type TupleValue = string | Buffer | null | typeof UNCHANGED_TOAST;
/** One row: values in the order of the relation's columns. */
export type Tuple = TupleValue[];

/** Whether the value `TupleData.scan` placed at `start` came in binary form ('b'): its kind byte sits before its Int32 length. */
export function isBinaryValue(buf: Buffer, start: number): boolean {
  return buf[start - 5] === 0x62; /*b*/
}

/** Column value lengths `TupleData.scan` reports for a NULL and for an unchanged TOAST value. */
export const SCAN_NULL = -1;
export const SCAN_UNCHANGED = -2;

/**
 * One row of a change message, as the server's bytes: `buf` from `start`
 * (the first column's kind byte) to `end`. The bytes must not be reused while
 * the TupleData is in use (receive.ts copies messages out of the socket's
 * buffers). Well-formed by construction: the parser walked it. A parser
 * made with `reuse` overwrites its TupleData objects: `copy()` one to keep it.
 */
export class TupleData {
  private decoded: Tuple | null = null;
  constructor(
    public buf: Buffer,
    public start: number,
    public end: number,
    public columns: number,
  ) {}

  /** Point this object at another row (PgoutputParser with `reuse`). */
  set(buf: Buffer, start: number, end: number, columns: number): this {
    this.buf = buf;
    this.start = start;
    this.end = end;
    this.columns = columns;
    this.decoded = null;
    return this;
  }

  /** A TupleData of its own over the same bytes (which are never reused). */
  copy(): TupleData {
    return new TupleData(this.buf, this.start, this.end, this.columns);
  }

  /**
   * Fill `starts[i]`/`lens[i]` with where column i's value (text or binary)
   * is in `buf` and its byte length, or SCAN_NULL / SCAN_UNCHANGED. Arrays
   * must hold `columns`.
   */
  scan(starts: Int32Array, lens: Int32Array): void {
    const buf = this.buf;
    let pos = this.start;
    for (let i = 0; i < this.columns; i++) {
      const kind = buf[pos++];
      if (kind === 0x74 /*t*/ || kind === 0x62 /*b*/) {
        const len = u32At(buf, pos);
        starts[i] = pos + 4;
        lens[i] = len;
        pos += 4 + len;
      } else {
        starts[i] = pos;
        lens[i] = kind === 0x6e /*n*/ ? SCAN_NULL : SCAN_UNCHANGED;
      }
    }
  }

  /** The row as values: strings for text, copied Buffers for binary (decoded once, then kept). */
  values(): Tuple {
    if (this.decoded) return this.decoded;
    const starts = new Int32Array(this.columns);
    const lens = new Int32Array(this.columns);
    this.scan(starts, lens);
    const out: Tuple = new Array(this.columns);
    for (let i = 0; i < this.columns; i++) {
      const len = lens[i];
      if (len === SCAN_NULL) out[i] = null;
      else if (len === SCAN_UNCHANGED) out[i] = UNCHANGED_TOAST;
      else if (isBinaryValue(this.buf, starts[i])) out[i] = Buffer.from(this.buf.subarray(starts[i], starts[i] + len));
      else out[i] = this.buf.toString('utf8', starts[i], starts[i] + len);
    }
    this.decoded = out;
    return out;
  }
}

export interface RelationColumn {
  name: string;
  /** Part of the replica identity (every column when REPLICA IDENTITY FULL). */
  isKey: boolean;
  typeOid: number;
  typeMod: number;
}

export interface BeginMessage {
  tag: 'begin';
  /** LSN of the commit record. */ finalLsn: Lsn;
  /** µs since the PostgreSQL epoch. */ commitTimeMicros: bigint;
  xid: number;
}
export interface CommitMessage {
  tag: 'commit';
  flags: number;
  /** LSN of the commit record. */ commitLsn: Lsn;
  /** End of the commit record: the position to resume after this transaction. */ endLsn: Lsn;
  commitTimeMicros: bigint;
}
export interface RelationMessage {
  tag: 'relation';
  relationOid: number;
  schema: string;
  name: string;
  /** relreplident: 'd' default (primary key), 'n' nothing, 'f' full, 'i' index. */
  replicaIdentity: 'd' | 'n' | 'f' | 'i';
  columns: RelationColumn[];
  /** Indexes of the identity columns in `columns`. */
  keyIndexes: number[];
}
export interface TypeMessage {
  tag: 'type';
  typeOid: number;
  schema: string;
  name: string;
}
export interface InsertMessage {
  tag: 'insert';
  relation: RelationMessage;
  newTuple: TupleData;
}
export interface UpdateMessage {
  tag: 'update';
  relation: RelationMessage;
  /** 'K': old key (the key changed, or is stored out of line); 'O': whole old row (REPLICA IDENTITY FULL); null: neither sent. */
  oldKind: 'K' | 'O' | null;
  oldTuple: TupleData | null;
  newTuple: TupleData;
}
export interface DeleteMessage {
  tag: 'delete';
  relation: RelationMessage;
  oldKind: 'K' | 'O';
  oldTuple: TupleData;
}
export interface TruncateMessage {
  tag: 'truncate';
  cascade: boolean;
  restartIdentity: boolean;
  relations: RelationMessage[];
}
export interface OriginMessage {
  tag: 'origin';
  originLsn: Lsn;
  name: string;
}
export interface LogicalMessage {
  tag: 'message';
  transactional: boolean;
  lsn: Lsn;
  prefix: string;
  content: Buffer;
}

export type PgoutputMessage =
  | BeginMessage
  | CommitMessage
  | RelationMessage
  | TypeMessage
  | InsertMessage
  | UpdateMessage
  | DeleteMessage
  | TruncateMessage
  | OriginMessage
  | LogicalMessage;

const REPLICA_IDENTITIES = ['d', 'n', 'f', 'i'] as const;

/** A malformed or unexpected message: the stream cannot be trusted past it. */
export class PgoutputDecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PgoutputDecodeError';
  }
}

/**
 * Decodes pgoutput messages. Stateful: Relation messages are cached by OID
 * and referenced by the row messages that follow, so feed every message of a
 * stream, in order, to one parser.
 */
export class PgoutputParser {
  private readonly relations = new Map<number, RelationMessage>();
  private buf: Buffer = Buffer.alloc(0);
  private pos = 0;
  private end = 0;
  /** The row-message objects `reuse` overwrites, one per kind, and their rows. */
  private readonly rows: { insert: InsertMessage; update: UpdateMessage; delete: DeleteMessage; old: TupleData } | null;

  /**
   * `reuse`: every Insert, Update and Delete message comes back in the same
   * object per kind, rows included, overwritten by the next `parse()`. For a
   * consumer that is done with each message before it parses the next (the
   * sync loop; a TupleData it keeps must be `copy()`ed): a row change then
   * allocates nothing here (fresh objects were most of the decoder's
   * short-lived garbage; the figure is in docs/performance.md).
   */
  constructor(reuse = false) {
    if (!reuse) {
      this.rows = null;
      return;
    }
    const none = Buffer.alloc(0);
    const rel: RelationMessage = { tag: 'relation', relationOid: 0, schema: '', name: '', replicaIdentity: 'd', columns: [], keyIndexes: [] };
    this.rows = {
      insert: { tag: 'insert', relation: rel, newTuple: new TupleData(none, 0, 0, 0) },
      update: { tag: 'update', relation: rel, oldKind: null, oldTuple: null, newTuple: new TupleData(none, 0, 0, 0) },
      delete: { tag: 'delete', relation: rel, oldKind: 'K', oldTuple: new TupleData(none, 0, 0, 0) },
      old: new TupleData(none, 0, 0, 0),
    };
  }

  /** The last Relation message seen for `oid`, if any. */
  relation(oid: number): RelationMessage | undefined {
    return this.relations.get(oid);
  }

  /**
   * Decode the message in `payload` from `offset` to `end` (default: the end
   * of `payload`). Row data keeps referring to `payload` (see TupleData).
   */
  parse(payload: Buffer, offset = 0, end = payload.length): PgoutputMessage {
    this.buf = payload;
    this.pos = offset + 1;
    this.end = end;
    try {
      if (offset >= end) throw new PgoutputDecodeError('empty message');
      const m = this.message(payload[offset]);
      if (this.pos > end) throw new RangeError('read past the end');
      return m;
    } catch (e) {
      // Buffer reads past the end throw RangeError: the message is truncated.
      if (e instanceof RangeError) throw new PgoutputDecodeError(`message truncated (${end - offset} bytes): ${e.message}`);
      throw e;
    }
  }

  private message(tag: number | undefined): PgoutputMessage {
    switch (tag) {
      case 0x42 /*B*/:
        return this.begin();
      case 0x43 /*C*/:
        return this.commit();
      case 0x52 /*R*/:
        return this.relationMessage();
      case 0x59 /*Y*/:
        return { tag: 'type', typeOid: this.u32(), schema: this.cstring(), name: this.cstring() };
      case 0x49 /*I*/:
        return this.insert();
      case 0x55 /*U*/:
        return this.update();
      case 0x44 /*D*/:
        return this.delete();
      case 0x54 /*T*/:
        return this.truncate();
      case 0x4f /*O*/:
        return { tag: 'origin', originLsn: this.lsn(), name: this.cstring() };
      case 0x4d /*M*/:
        return this.logicalMessage();
      default:
        throw new PgoutputDecodeError(
          `unexpected pgoutput message type ${tag === undefined ? '(empty)' : `'${String.fromCharCode(tag)}' (0x${tag.toString(16)})`}`,
        );
    }
  }

  // Begin: Int64 final LSN, Int64 commit timestamp, Int32 xid.
  private begin(): BeginMessage {
    return { tag: 'begin', finalLsn: this.lsn(), commitTimeMicros: this.i64(), xid: this.u32() };
  }

  // Commit: Int8 flags (unused), Int64 commit LSN, Int64 end LSN, Int64 commit timestamp.
  private commit(): CommitMessage {
    const flags = this.u8();
    return { tag: 'commit', flags, commitLsn: this.lsn(), endLsn: this.lsn(), commitTimeMicros: this.i64() };
  }

  // Relation: Int32 OID, String namespace ('' = pg_catalog), String name,
  // Int8 replica identity, Int16 ncols, then per column: Int8 flags
  // (1 = part of the key), String name, Int32 type OID, Int32 type modifier.
  private relationMessage(): RelationMessage {
    const relationOid = this.u32();
    const schema = this.cstring() || 'pg_catalog';
    const name = this.cstring();
    const ident = String.fromCharCode(this.u8());
    if (!(REPLICA_IDENTITIES as readonly string[]).includes(ident))
      throw new PgoutputDecodeError(`relation ${schema}.${name}: unknown replica identity '${ident}'`);
    const n = this.u16();
    const columns: RelationColumn[] = new Array(n);
    const keyIndexes: number[] = [];
    for (let i = 0; i < n; i++) {
      const flags = this.u8();
      columns[i] = { name: this.cstring(), isKey: (flags & 1) !== 0, typeOid: this.u32(), typeMod: this.buf.readInt32BE(this.advance(4)) };
      if (columns[i].isKey) keyIndexes.push(i);
    }
    const rel: RelationMessage = {
      tag: 'relation',
      relationOid,
      schema,
      name,
      replicaIdentity: ident as RelationMessage['replicaIdentity'],
      columns,
      keyIndexes,
    };
    this.relations.set(relationOid, rel);
    return rel;
  }

  // Insert: Int32 OID, Byte1 'N', TupleData.
  private insert(): InsertMessage {
    const relation = this.knownRelation(this.u32());
    this.expect(0x4e /*N*/, 'insert');
    const r = this.rows;
    if (r === null) return { tag: 'insert', relation, newTuple: this.tuple(relation, null) };
    r.insert.relation = relation;
    this.tuple(relation, r.insert.newTuple);
    return r.insert;
  }

  // Update: Int32 OID, optional (Byte1 'K' | 'O', TupleData), Byte1 'N', TupleData.
  private update(): UpdateMessage {
    const relation = this.knownRelation(this.u32());
    let kind = this.u8();
    let oldKind: 'K' | 'O' | null = null;
    let oldTuple: TupleData | null = null;
    const r = this.rows;
    if (kind === 0x4b /*K*/ || kind === 0x4f /*O*/) {
      oldKind = kind === 0x4b ? 'K' : 'O';
      oldTuple = this.tuple(relation, r && r.old);
      kind = this.u8();
    }
    if (kind !== 0x4e /*N*/) throw new PgoutputDecodeError(`update of ${relation.schema}.${relation.name}: expected 'N', got 0x${kind.toString(16)}`);
    if (r === null) return { tag: 'update', relation, oldKind, oldTuple, newTuple: this.tuple(relation, null) };
    const m = r.update;
    m.relation = relation;
    m.oldKind = oldKind;
    m.oldTuple = oldTuple;
    this.tuple(relation, m.newTuple);
    return m;
  }

  // Delete: Int32 OID, Byte1 'K' | 'O', TupleData.
  private delete(): DeleteMessage {
    const relation = this.knownRelation(this.u32());
    const kind = this.u8();
    if (kind !== 0x4b /*K*/ && kind !== 0x4f /*O*/)
      throw new PgoutputDecodeError(`delete from ${relation.schema}.${relation.name}: expected 'K' or 'O', got 0x${kind.toString(16)}`);
    const r = this.rows;
    if (r === null) return { tag: 'delete', relation, oldKind: kind === 0x4b ? 'K' : 'O', oldTuple: this.tuple(relation, null) };
    const m = r.delete;
    m.relation = relation;
    m.oldKind = kind === 0x4b ? 'K' : 'O';
    this.tuple(relation, m.oldTuple);
    return m;
  }

  // Truncate: Int32 number of relations, Int8 options (1 = CASCADE, 2 = RESTART IDENTITY), Int32 OID each.
  private truncate(): TruncateMessage {
    const n = this.u32();
    const options = this.u8();
    const relations: RelationMessage[] = [];
    for (let i = 0; i < n; i++) relations.push(this.knownRelation(this.u32()));
    return { tag: 'truncate', cascade: (options & 1) !== 0, restartIdentity: (options & 2) !== 0, relations };
  }

  // Message: Int8 flags (1 = transactional), Int64 LSN, String prefix, Int32 length, Byte(n) content.
  private logicalMessage(): LogicalMessage {
    const transactional = (this.u8() & 1) !== 0;
    const lsn = this.lsn();
    const prefix = this.cstring();
    const len = this.u32();
    const start = this.advance(len);
    return { tag: 'message', transactional, lsn, prefix, content: Buffer.from(this.buf.subarray(start, start + len)) };
  }

  // TupleData: Int16 ncols, then per column Byte1 'n' (null) | 'u' (unchanged
  // TOAST) | 't' (Int32 length, text bytes) | 'b' (Int32 length, the type's
  // binary form; only in a stream started with `binary`).
  // Walked here to validate it and find its end; values are read later.
  private tuple(rel: RelationMessage, into: TupleData | null): TupleData {
    const n = this.u16();
    if (n !== rel.columns.length) throw new PgoutputDecodeError(`${rel.schema}.${rel.name}: tuple has ${n} columns, relation has ${rel.columns.length}`);
    const buf = this.buf;
    const end = this.end;
    const start = this.pos;
    let pos = start;
    for (let i = 0; i < n; i++) {
      if (pos >= end) throw new PgoutputDecodeError(`${rel.schema}.${rel.name}: tuple truncated at column ${rel.columns[i].name}`);
      const kind = buf[pos++];
      if (kind === 0x74 /*t*/ || kind === 0x62 /*b*/) {
        if (pos + 4 > end) throw new PgoutputDecodeError(`${rel.schema}.${rel.name}: tuple truncated at column ${rel.columns[i].name}`);
        pos += 4 + u32At(buf, pos);
        if (pos > end) throw new PgoutputDecodeError(`${rel.schema}.${rel.name}: value runs past the message end`);
      } else if (kind !== 0x6e /*n*/ && kind !== 0x75 /*u*/) {
        throw new PgoutputDecodeError(`${rel.schema}.${rel.name}: unsupported tuple value kind 0x${(kind ?? 0).toString(16)} in column ${rel.columns[i].name}`);
      }
    }
    this.pos = pos;
    return into === null ? new TupleData(buf, start, pos, n) : into.set(buf, start, pos, n);
  }

  private knownRelation(oid: number): RelationMessage {
    const rel = this.relations.get(oid);
    if (!rel) throw new PgoutputDecodeError(`change for relation OID ${oid} before its Relation message`);
    return rel;
  }

  private expect(byte: number, what: string): void {
    const got = this.u8();
    if (got !== byte) throw new PgoutputDecodeError(`${what}: expected '${String.fromCharCode(byte)}', got 0x${got.toString(16)}`);
  }

  private advance(n: number): number {
    const at = this.pos;
    this.pos += n;
    if (this.pos > this.end) throw new PgoutputDecodeError('message truncated');
    return at;
  }
  private u8(): number {
    return this.buf.readUInt8(this.advance(1));
  }
  private u16(): number {
    return this.buf.readUInt16BE(this.advance(2));
  }
  private u32(): number {
    return this.buf.readUInt32BE(this.advance(4));
  }
  private i64(): bigint {
    return this.buf.readBigInt64BE(this.advance(8));
  }
  private lsn(): Lsn {
    return readLsn(this.buf, this.advance(8));
  }
  private cstring(): string {
    const end = this.buf.indexOf(0, this.pos);
    if (end < 0 || end >= this.end) throw new PgoutputDecodeError('unterminated string');
    const s = this.buf.toString('utf8', this.pos, end);
    this.pos = end + 1;
    return s;
  }
}

/** Quote a name for a replication command or a publication list (always quoted: keeps case). */
function quoteAlways(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/**
 * The `pgoutput` output plugin in the shape pg-logical-replication expects of
 * a plugin (`name`, `parse`, `start`), decoding with `PgoutputParser`.
 */
export class PgoutputPlugin {
  readonly name = 'pgoutput';
  readonly parser = new PgoutputParser();
  constructor(readonly publicationNames: string[]) {
    if (publicationNames.length === 0) throw new Error('PgoutputPlugin needs at least one publication');
  }

  parse(payload: Buffer, offset = 0, end = payload.length): PgoutputMessage {
    return this.parser.parse(payload, offset, end);
  }

  /**
   * The START_REPLICATION command for `slotName` from `startLsn` (0 = the
   * slot's confirmed position). `binary` (PostgreSQL 14+): values of types
   * with a binary send function come in that form ('b'), all others as text.
   */
  startCommand(slotName: string, startLsn: Lsn, binary = false): string {
    // publication_names is split like an identifier list: quote each name so
    // mixed case and special characters survive, then quote the list as a literal.
    const pubs = this.publicationNames.map(quoteAlways).join(',').replace(/'/g, "''");
    return `START_REPLICATION SLOT ${quoteAlways(slotName)} LOGICAL ${formatLsn(startLsn)} (proto_version '1', publication_names '${pubs}'${binary ? ", binary 'true'" : ''})`;
  }

  /** Issue START_REPLICATION on a replication connection; resolves when streaming ends. */
  start(client: pg.Client, slotName: string, startLsn: Lsn, binary = false): Promise<unknown> {
    return client.query(this.startCommand(slotName, startLsn, binary));
  }
}
