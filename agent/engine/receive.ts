/**
 * receive — the replication connection to the source. Stage: **receive** →
 * transform → apply.
 *
 * Input: the source endpoint, a logical slot, a publication and a start LSN.
 * Output: an ordered, pull-based stream of events (`poll()` without waiting,
 * `next()` with): decoded XLogData payloads and primary keepalives in one
 * ordered queue (Guard 8), with TCP backpressure (the socket is paused while
 * the consumer lags behind, by event count and by bytes); and `sendStatus()`,
 * the Standby Status Update that tells the source which position the target
 * has durably committed.
 *
 * Framing (streaming replication protocol):
 * https://www.postgresql.org/docs/current/protocol-replication.html
 *   XLogData         'w' Int64 dataStart, Int64 walEnd, Int64 sendTime, Byte(n) payload
 *   Keepalive        'k' Int64 walEnd, Int64 sendTime, Byte1 replyRequested
 *   Status update    'r' Int64 write, Int64 flush, Int64 apply, Int64 clock, Byte1 replyRequested
 *
 * node-postgres makes the connection (TLS, authentication, the SQL before
 * streaming, every message but CopyData); FrameSplitter cuts the CopyData
 * frames out of the socket's chunks. Why not pg-logical-replication's
 * LogicalReplicationService: docs/architecture.md, "Why pgferry speaks the
 * protocols itself".
 */
import type pg from 'pg';
import { connect } from './conn';
import { PgferryError, sqlState } from './errors';
import { readLsn, unixMsToPgMicros, type Lsn } from './lsn';
import { PgoutputPlugin, u32At } from './pgoutput';
import type { Endpoint } from './spec';

/** A read shorter than this is followed by a pause of READ_COALESCE_MS (see ReplicationStream.onSocketData). */
const SMALL_READ_BYTES = 16 * 1024;
const READ_COALESCE_MS = 1;

/** A primary keepalive ('k'). */
export interface Keepalive {
  tag: 'keepalive';
  /** The server's position: everything before it has been sent. */
  walEnd: Lsn;
  /** Server clock, µs since the PostgreSQL epoch. */
  sendTimeMicros: bigint;
  /** The server asks for an immediate status update (else it disconnects after wal_sender_timeout). */
  replyRequested: boolean;
}

/**
 * What `next()`/`poll()` return, in stream order: a decoded XLogData payload
 * (its header's positions are read from the stream, see `consumedWalEnd`) or
 * a primary keepalive. Decoded payloads must not use the tag 'keepalive'.
 */
export type ReceiveEvent<T> = T | Keepalive;

/** Parse a primary keepalive message ('k', 18 bytes). */
export function parseKeepalive(buf: Buffer, offset = 0, end = buf.length): Keepalive {
  if (end - offset < 18 || buf[offset] !== 0x6b /*k*/)
    throw new Error(`not a primary keepalive message (${end - offset} bytes, type 0x${(buf[offset] ?? 0).toString(16)})`);
  return { tag: 'keepalive', walEnd: readLsn(buf, offset + 1), sendTimeMicros: buf.readBigInt64BE(offset + 9), replyRequested: buf[offset + 17] !== 0 };
}

/**
 * Encode a Standby Status Update ('r', 34 bytes) reporting `lsn` as written,
 * flushed and applied — exactly the position the target has committed (not
 * lsn+1: the next transaction's commit record may start right there).
 */
export function encodeStandbyStatus(lsn: Lsn, nowMs: number = Date.now(), replyRequested = false): Buffer {
  const b = Buffer.alloc(34);
  b[0] = 0x72; /*r*/
  b.writeBigUInt64BE(lsn, 1); // last WAL byte + 1 written
  b.writeBigUInt64BE(lsn, 9); // ... flushed (what the slot may forget)
  b.writeBigUInt64BE(lsn, 17); // ... applied
  b.writeBigInt64BE(unixMsToPgMicros(nowMs), 25);
  b[33] = replyRequested ? 1 : 0;
  return b;
}

export interface ReplicationStreamOptions<T> {
  source: Endpoint;
  slotName: string;
  publicationName: string;
  /** Where to start; 0 = the slot's confirmed position. The server never goes below the slot's confirmed position. */
  startLsn: Lsn;
  /**
   * Decodes an XLogData payload: `buf` from `offset` to `end`. Runs when the
   * consumer takes the event; the bytes are never reused, so the result may
   * keep referring to them.
   */
  decode: (buf: Buffer, offset: number, end: number) => T;
  /** Pause the socket when this many events wait for the consumer. Default 512. */
  highWaterEvents?: number;
  /** ... or when their payloads add up to this many bytes. Default 32 MiB. */
  highWaterBytes?: number;
  applicationName?: string;
}

type Connection = pg.Connection & { sendCopyFromChunk(chunk: Buffer): void; endCopyFrom(): void };

/**
 * Cuts a protocol byte stream into whole messages (Byte1 type, Int32 length
 * including itself, body: https://www.postgresql.org/docs/current/protocol-overview.html)
 * and calls `onFrame(buf, start, end)` for each, in order. A message inside
 * one chunk is passed as a range of that chunk (no copy); one split across
 * chunks is assembled into a buffer of its own. Hand-rolled because
 * node-postgres' parser, the library that does this, allocates a message
 * object and a Buffer view per message (see ReplicationStream).
 */
export class FrameSplitter {
  /** A frame split across chunks: its bytes so far (`partialFill` of them). */
  private partial: Buffer | null = null;
  private partialFill = 0;
  /** The first bytes of a frame header split across chunks. */
  private head5: Buffer | null = null;

  constructor(private readonly onFrame: (buf: Buffer, start: number, end: number) => void) {}

  /** Feed the next chunk of the stream; throws on a malformed length. */
  push(chunk: Buffer): void {
    // A header split across chunks (rare: at most once a chunk) is glued to the next chunk.
    if (this.head5 !== null) {
      chunk = Buffer.concat([this.head5, chunk]);
      this.head5 = null;
    }
    let pos = 0;
    const n = chunk.length;
    if (this.partial !== null) {
      const frame = this.partial;
      pos = Math.min(frame.length - this.partialFill, n);
      this.partialFill += chunk.copy(frame, this.partialFill, 0, pos);
      if (this.partialFill < frame.length) return;
      this.partial = null;
      this.onFrame(frame, 0, frame.length);
    }
    while (pos < n) {
      if (n - pos < 5) {
        this.head5 = Buffer.from(chunk.subarray(pos, n));
        return;
      }
      const len = u32At(chunk, pos + 1);
      if (len < 4) throw new Error(`malformed protocol message (type 0x${chunk[pos].toString(16)}, length ${len})`);
      const end = pos + 1 + len;
      if (end > n) {
        this.partial = Buffer.allocUnsafe(1 + len);
        this.partialFill = chunk.copy(this.partial, 0, pos, n);
        return;
      }
      this.onFrame(chunk, pos, end);
      pos = end;
    }
  }
}

/**
 * A running START_REPLICATION session. Call `close()` when done.
 *
 * Per message cost matters here (hundreds of thousands of messages a
 * second), and so does what stays alive until the consumer gets to it (the
 * garbage collector copies every surviving object). So the CopyData frames
 * of the stream are cut out of the socket's chunks here rather than by
 * node-postgres' parser (which allocates a Buffer view and a message object
 * and emits two events per message): the connection's socket listener is
 * replaced by a FrameSplitter, and every other message (CopyBoth
 * response, errors, notices, CommandComplete, ReadyForQuery) goes to
 * node-postgres unchanged, as whole frames. An XLogData payload is queued as
 * (chunk, start, end) plus its header's positions as 32-bit halves, in a
 * ring of fixed arrays — no copy (a socket chunk is a fresh buffer per read, never
 * reused; only a message split across chunks is assembled into its own
 * buffer) and no object until the consumer takes it and it is decoded.
 * `consumedDataStart`/`consumedWalEnd` give the last consumed message's
 * positions as an Lsn when asked.
 */
export class ReplicationStream<T extends { tag: string }> {
  /**
   * The queue, a ring of `cap` slots (a power of two) from `head`, `count`
   * long: per event the buffer holding its payload or a decoded keepalive,
   * and 6 numbers: payload start, end, dataStart hi/lo, walEnd hi/lo. Fixed
   * arrays that double when full (rarely: the socket pauses at the high-water
   * mark) rather than JavaScript arrays emptied and regrown: their large
   * backing stores would be allocated again and again in V8's old generation
   * (it allocates objects over 128 kB there), and each refill would bring
   * the next full garbage collection closer.
   */
  private cap = 1024;
  private items: (Buffer | Keepalive | undefined)[] = new Array(1024).fill(undefined);
  private nums = new Uint32Array(6 * 1024);
  private head = 0;
  private count = 0;
  private queuedBytes = 0;
  private readonly consumed = [0, 0, 0, 0];
  /** node-postgres' own socket listener, which gets every frame that is not CopyData. */
  private pgListener: ((chunk: Buffer) => void) | null = null;
  /** CopyBoth mode entered: CopyData frames are ours from here on. */
  private copyBoth = false;
  private readonly frames = new FrameSplitter((buf, start, end) => this.onFrame(buf, start, end));
  private framingBroken = false;
  private failure: unknown = null;
  private waiter: (() => void) | null = null;
  /** The socket is paused by the backpressure high-water mark (see onCopyData). */
  private paused = false;
  /** ... or for READ_COALESCE_MS after a small read (see onSocketData). */
  private coalescing = false;
  private closed = false;
  private readonly highWater: number;
  private readonly highWaterBytes: number;
  private readonly decode: (buf: Buffer, offset: number, end: number) => T;
  private readonly slotName: string;
  private readonly publicationName: string;
  private streaming: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly client: pg.Client,
    private readonly con: Connection,
    opts: Omit<ReplicationStreamOptions<T>, 'startLsn'>,
  ) {
    this.highWater = opts.highWaterEvents ?? 512;
    this.highWaterBytes = opts.highWaterBytes ?? 32 * 1024 * 1024;
    this.decode = opts.decode;
    this.slotName = opts.slotName;
    this.publicationName = opts.publicationName;
  }

  /** Connect (as conn.ts does, with SESSION_OPTIONS) and start streaming. */
  static async open<T extends { tag: string }>(opts: ReplicationStreamOptions<T>): Promise<ReplicationStream<T>> {
    const s = await ReplicationStream.connect(opts);
    await s.start(opts.startLsn);
    return s;
  }

  /**
   * Connect, ready for `query()` (simple SQL: a replication connection takes
   * no parameters) and `start()`. Close it if `start()` is never called.
   */
  static async connect<T extends { tag: string }>(opts: Omit<ReplicationStreamOptions<T>, 'startLsn'>): Promise<ReplicationStream<T>> {
    const client = await connect('source', opts.source, { replication: true, applicationName: opts.applicationName ?? 'pgferry-sync' });
    const con = (client as unknown as { connection: Connection }).connection;
    const s = new ReplicationStream<T>(client, con, opts);
    try {
      // The connection is idle (its last message was ReadyForQuery), so no
      // frame is half-read by node-postgres' parser when we take over.
      const listeners = con.stream.listeners('data') as ((chunk: Buffer) => void)[];
      if (listeners.length !== 1) throw new Error(`the replication connection has ${listeners.length} data listeners, expected node-postgres' one`);
      s.pgListener = listeners[0];
      con.stream.removeListener('data', s.pgListener);
      con.stream.on('data', (chunk: Buffer) => s.onSocketData(chunk));
    } catch (e) {
      await client.end().catch(() => undefined);
      throw e;
    }
    client.on('error', (e: unknown) => s.fail(e));
    client.on('end', () => s.fail(new Error('Connection terminated: the replication connection to the source ended')));
    return s;
  }

  /** Run a simple SQL statement on the connection before streaming starts. */
  query(sql: string): Promise<pg.QueryResult> {
    return this.client.query(sql);
  }

  /**
   * START_REPLICATION from `startLsn` (0 = the slot's confirmed position);
   * resolves once the server streams. `binary`: values in their types'
   * binary form (see PgoutputPlugin.startCommand).
   */
  async start(startLsn: Lsn, binary = false): Promise<void> {
    const plugin = new PgoutputPlugin([this.publicationName]);
    const started = new Promise<void>((resolve) => this.con.once('replicationStart', () => resolve()));
    this.streaming = this.client.query(plugin.startCommand(this.slotName, startLsn, binary)).then(
      () => this.fail(new Error('Connection terminated: the source ended replication')),
      (e: unknown) => this.fail(e),
    );
    try {
      await Promise.race([
        started,
        this.streaming.then(() => {
          throw this.failure;
        }),
      ]);
    } catch (e) {
      this.closed = true;
      await this.client.end().catch(() => undefined);
      throw e;
    }
  }

  private onSocketData(chunk: Buffer): void {
    // After a throw mid-chunk the splitter has lost its place in the stream: read no further.
    if (this.framingBroken) return;
    try {
      this.frames.push(chunk);
    } catch (e) {
      this.framingBroken = true;
      this.fail(e);
    }
    // Read coalescing (while streaming): a small read means we are waiting
    // on the source, which sends every change as soon as it is decoded.
    // Reading each bit as it comes wakes this process every few kilobytes,
    // and every send of the walsender then has a sleeping reader to wake
    // (what that cost on the bench: docs/performance.md). Not reading for a millisecond
    // lets the kernel gather the next tens of kilobytes into one read.
    if (this.copyBoth && chunk.length < SMALL_READ_BYTES && !this.paused && !this.coalescing && !this.closed) {
      this.coalescing = true;
      this.con.stream.pause();
      setTimeout(() => {
        this.coalescing = false;
        if (!this.paused && !this.closed) this.con.stream.resume();
      }, READ_COALESCE_MS);
    }
  }

  private onFrame(buf: Buffer, start: number, end: number): void {
    const type = buf[start];
    if (type === 0x64 /*d*/ && this.copyBoth) {
      this.onCopyData(buf, start + 5, end);
      return;
    }
    if (type === 0x57 /*W: CopyBothResponse*/) this.copyBoth = true;
    this.pgListener!(buf.subarray(start, end));
  }

  private onCopyData(buf: Buffer, start: number, end: number): void {
    if (this.closed || this.failure) return;
    const type = buf[start];
    if (type === 0x77 /*w*/) {
      if (end - start < 25) throw new Error(`XLogData message of ${end - start} bytes (less than its 25-byte header)`);
      const j = 6 * this.slot(buf);
      const p = this.nums;
      p[j] = start + 25;
      p[j + 1] = end;
      p[j + 2] = u32At(buf, start + 1);
      p[j + 3] = u32At(buf, start + 5);
      p[j + 4] = u32At(buf, start + 9);
      p[j + 5] = u32At(buf, start + 13);
      this.queuedBytes += end - start - 25;
    } else if (type === 0x6b /*k*/) {
      this.slot(parseKeepalive(buf, start, end));
    } else {
      throw new Error(`unexpected replication message type 0x${(type ?? 0).toString(16)}`);
    }
    if (!this.paused && (this.count >= this.highWater || this.queuedBytes >= this.highWaterBytes)) {
      this.paused = true;
      this.con.stream.pause();
    }
    if (this.waiter) this.wake();
  }

  /** Append `item` to the queue; returns its slot. */
  private slot(item: Buffer | Keepalive): number {
    if (this.count === this.cap) {
      // Double, keeping the order from `head`.
      const cap = this.cap * 2;
      const items = new Array<Buffer | Keepalive | undefined>(cap).fill(undefined);
      const nums = new Uint32Array(6 * cap);
      for (let k = 0; k < this.count; k++) {
        const from = (this.head + k) & (this.cap - 1);
        items[k] = this.items[from];
        nums.set(this.nums.subarray(6 * from, 6 * from + 6), 6 * k);
      }
      this.items = items;
      this.nums = nums;
      this.cap = cap;
      this.head = 0;
    }
    const i = (this.head + this.count) & (this.cap - 1);
    this.items[i] = item;
    this.count++;
    return i;
  }

  private fail(e: unknown): void {
    if (this.failure === null && !this.closed) this.failure = replicationError(e ?? new Error('replication stream failed'), this.slotName);
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /** Events waiting in memory. */
  get buffered(): number {
    return this.count;
  }

  /** Start of the last XLogData message consumed (0 before the first). */
  get consumedDataStart(): Lsn {
    return (BigInt(this.consumed[0]) << 32n) | BigInt(this.consumed[1]);
  }

  /** Server WAL end reported with the last XLogData message consumed (0 before the first). */
  get consumedWalEnd(): Lsn {
    return (BigInt(this.consumed[2]) << 32n) | BigInt(this.consumed[3]);
  }

  /**
   * The next event if one is already buffered, else undefined; throws once
   * the connection has failed and everything received before has been
   * consumed, or when a payload does not decode. Synchronous: the consumer
   * drains what is buffered without a promise per message.
   */
  poll(): ReceiveEvent<T> | undefined {
    if (this.count > 0) return this.take();
    if (this.failure !== null) throw this.failure;
    return undefined;
  }

  /**
   * The next event, in stream order; `null` when `timeoutMs` passes first or
   * `signal` aborts. Throws once the connection has failed and the events
   * received before the failure have been consumed.
   */
  async next(timeoutMs: number, signal?: AbortSignal): Promise<ReceiveEvent<T> | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.count > 0) return this.take();
      if (this.failure !== null) throw this.failure;
      const leftMs = deadline - Date.now();
      if (this.closed || signal?.aborted || leftMs <= 0) return null;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', done);
          this.waiter = null;
          resolve();
        };
        const timer = setTimeout(done, leftMs);
        signal?.addEventListener('abort', done, { once: true });
        this.waiter = done;
      });
    }
  }

  private take(): ReceiveEvent<T> {
    const i = this.head;
    const item = this.items[i]!;
    this.items[i] = undefined;
    this.head = (i + 1) & (this.cap - 1);
    this.count--;
    const p = this.nums;
    const j = 6 * i;
    let ev: ReceiveEvent<T>;
    if (item instanceof Buffer) {
      const c = this.consumed;
      c[0] = p[j + 2];
      c[1] = p[j + 3];
      c[2] = p[j + 4];
      c[3] = p[j + 5];
      this.queuedBytes -= p[j + 1] - p[j];
      ev = this.decode(item, p[j], p[j + 1]);
    } else {
      ev = item as Keepalive;
    }
    if (this.paused && this.buffered <= this.highWater / 4 && this.queuedBytes <= this.highWaterBytes / 4) {
      this.paused = false;
      this.con.stream.resume();
    }
    return ev;
  }

  /** Send a Standby Status Update confirming `lsn` (see `encodeStandbyStatus`). */
  sendStatus(lsn: Lsn, replyRequested = false): void {
    if (this.closed || this.failure) return;
    this.con.sendCopyFromChunk(encodeStandbyStatus(lsn, Date.now(), replyRequested));
  }

  /**
   * End the session: CopyDone, so the server releases the slot before we
   * hang up (a restart right after would otherwise find the slot "active"),
   * then close the connection.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    const healthy = this.failure === null;
    this.closed = true;
    this.items.fill(undefined);
    this.head = 0;
    this.count = 0;
    this.queuedBytes = 0;
    this.wake();
    if (healthy && this.copyBoth) {
      try {
        this.con.endCopyFrom();
        if (this.paused || this.coalescing) this.con.stream.resume();
        // Drain whatever is in flight until the server's CommandComplete; bounded wait.
        await Promise.race([this.streaming, new Promise((r) => setTimeout(r, 2000).unref())]);
      } catch {
        /* hanging up anyway */
      }
    }
    await this.client.end().catch(() => undefined);
  }
}

/** Turn the server's refusals into errors that say what to fix; others pass through. */
export function replicationError(e: unknown, slotName: string): unknown {
  if (e instanceof PgferryError) return e;
  const state = sqlState(e);
  const msg = (e as Error)?.message ?? String(e);
  if (state === '42704' && /publication/i.test(msg)) {
    return new PgferryError(
      'STATE_CORRUPT',
      `The publication of this migration is missing on the source: ${msg}.`,
      'Recreate the publication (starting the migration again recreates it), then restart the agent.',
      { cause: e },
    );
  }
  if (state === '42704') {
    return new PgferryError(
      'STATE_CORRUPT',
      `The replication slot "${slotName}" does not exist on the source: ${msg}.`,
      'The slot was dropped, so changes since the last applied position are gone from the source. Delete the migration and start it again (a fresh copy).',
      { cause: e },
    );
  }
  if (state === '42501') {
    return new PgferryError(
      'INSUFFICIENT_PRIVILEGE',
      `The source user may not stream from slot "${slotName}": ${msg}.`,
      'Grant the REPLICATION attribute to `source`.user (ALTER ROLE ... REPLICATION), or connect as a role that has it.',
      { cause: e },
    );
  }
  return e;
}
