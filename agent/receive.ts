/**
 * receive — the replication connection to the source. Stage: **receive** →
 * transform → apply.
 *
 * Input: the source endpoint, a logical slot, a publication and a start LSN.
 * Output: an ordered, pull-based stream of events (`next()`): decoded
 * XLogData payloads and primary keepalives, with TCP backpressure (the socket
 * is paused while the consumer lags behind); and `sendStatus()`, the Standby
 * Status Update that tells the source which position the target has durably
 * committed.
 *
 * Framing (streaming replication protocol):
 * https://www.postgresql.org/docs/current/protocol-replication.html
 *   XLogData         'w' Int64 dataStart, Int64 walEnd, Int64 sendTime, Byte(n) payload
 *   Keepalive        'k' Int64 walEnd, Int64 sendTime, Byte1 replyRequested
 *   Status update    'r' Int64 write, Int64 flush, Int64 apply, Int64 clock, Byte1 replyRequested
 *
 * Why not pg-logical-replication's LogicalReplicationService (a deliberate
 * departure from the first design; node-postgres still does the connection,
 * TLS, authentication and CopyData framing):
 *  1. With flow control on, it queues XLogData behind the async handler but
 *     emits keepalives ('heartbeat') at once, ahead of data still queued. A
 *     consumer that confirms an idle keepalive's walEnd would then confirm
 *     transactions it has not applied yet: loss after a crash. Here both kinds
 *     travel through one ordered queue.
 *  2. When a handler throws it emits 'error' and goes on with the next
 *     message, so later transactions could be applied after a failed one.
 *  3. It builds its own pg.Client, bypassing conn.ts (sslmode=prefer fallback,
 *     errors that name the endpoint and the fix).
 *  4. Its acknowledge() confirms lsn+1 (with interleaved transactions the next
 *     commit record can start exactly at the previous end, and would be
 *     skipped on restart) and its clock is 7 days off the PostgreSQL epoch.
 */
import type pg from 'pg';
import { connect } from './conn';
import { PgferryError, sqlState } from './errors';
import { readLsn, unixMsToPgMicros, type Lsn } from './lsn';
import { PgoutputPlugin } from './pgoutput';
import type { Endpoint } from './spec';

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
export function parseKeepalive(buf: Buffer): Keepalive {
  if (buf.length < 18 || buf[0] !== 0x6b /*k*/) throw new Error(`not a primary keepalive message (${buf.length} bytes, type 0x${(buf[0] ?? 0).toString(16)})`);
  return { tag: 'keepalive', walEnd: readLsn(buf, 1), sendTimeMicros: buf.readBigInt64BE(9), replyRequested: buf[17] !== 0 };
}

/**
 * Encode a Standby Status Update ('r', 34 bytes) reporting `lsn` as written,
 * flushed and applied — exactly the position the target has committed (not
 * lsn+1: the next transaction's commit record may start right there).
 */
export function encodeStandbyStatus(lsn: Lsn, nowMs: number = Date.now(), replyRequested = false): Buffer {
  const b = Buffer.alloc(34);
  b[0] = 0x72; /*r*/
  b.writeBigUInt64BE(lsn, 1);   // last WAL byte + 1 written
  b.writeBigUInt64BE(lsn, 9);   // ... flushed (what the slot may forget)
  b.writeBigUInt64BE(lsn, 17);  // ... applied
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
   * consumer takes the event; the bytes are the stream's own copy and are
   * never reused, so the result may keep referring to them.
   */
  decode: (buf: Buffer, offset: number, end: number) => T;
  /** Pause the socket when this many events wait for the consumer. Default 512. */
  highWaterEvents?: number;
  /** ... or when their payloads add up to this many bytes. Default 64 MiB. */
  highWaterBytes?: number;
  applicationName?: string;
}

type Connection = pg.Connection & { sendCopyFromChunk(chunk: Buffer): void; endCopyFrom(): void };
interface CopyDataMsg { chunk: Buffer }

/** Payloads are copied into chunks of this size (larger ones get their own buffer). */
const ARENA_CHUNK = 1 << 20;

/**
 * A running START_REPLICATION session. Call `close()` when done.
 *
 * Per message cost matters here (hundreds of thousands a second), and so does
 * what stays alive until the consumer gets to it (the garbage collector copies
 * every surviving object): a received XLogData payload is copied out of the
 * socket's buffer (node-postgres reuses it) into a 1 MiB arena chunk and
 * queued as (chunk, start, end) plus its header's positions as 32-bit halves,
 * in parallel arrays — no object per message until the consumer takes it and
 * it is decoded. `consumedDataStart`/`consumedWalEnd` turn the positions of
 * the last consumed message into an Lsn when asked.
 */
export class ReplicationStream<T extends { tag: string }> {
  /** Per queued event: its payload's arena chunk, or a decoded keepalive. */
  private readonly items: (Buffer | Keepalive)[] = [];
  /** Per queued event, 6 numbers: payload start, end, dataStart hi/lo, walEnd hi/lo. */
  private readonly nums: number[] = [];
  private head = 0;
  private queuedBytes = 0;
  private arena: Buffer = Buffer.allocUnsafeSlow(ARENA_CHUNK);
  private arenaUsed = 0;
  private readonly consumed = [0, 0, 0, 0];
  private failure: unknown = null;
  private waiter: (() => void) | null = null;
  private paused = false;
  private closed = false;
  private readonly highWater: number;
  private readonly highWaterBytes: number;
  private readonly decode: (buf: Buffer, offset: number, end: number) => T;
  private readonly slotName: string;
  private streaming: Promise<unknown> = Promise.resolve();

  private constructor(private readonly client: pg.Client, private readonly con: Connection, opts: ReplicationStreamOptions<T>) {
    this.highWater = opts.highWaterEvents ?? 512;
    this.highWaterBytes = opts.highWaterBytes ?? 64 * 1024 * 1024;
    this.decode = opts.decode;
    this.slotName = opts.slotName;
  }

  /** Connect (as conn.ts does, with SESSION_OPTIONS) and start streaming. */
  static async open<T extends { tag: string }>(opts: ReplicationStreamOptions<T>): Promise<ReplicationStream<T>> {
    const client = await connect('source', opts.source, { replication: true, applicationName: opts.applicationName ?? 'pgferry-sync' });
    const con = (client as unknown as { connection: Connection }).connection;
    const s = new ReplicationStream<T>(client, con, opts);
    const plugin = new PgoutputPlugin([opts.publicationName]);
    con.on('copyData', (msg: CopyDataMsg) => s.onCopyData(msg.chunk));
    client.on('error', (e: unknown) => s.fail(e));
    client.on('end', () => s.fail(new Error('Connection terminated: the replication connection to the source ended')));
    const started = new Promise<void>((resolve) => con.once('replicationStart', () => resolve()));
    s.streaming = client.query(plugin.startCommand(opts.slotName, opts.startLsn)).then(
      () => s.fail(new Error('Connection terminated: the source ended replication')),
      (e: unknown) => s.fail(e));
    try {
      await Promise.race([started, s.streaming.then(() => { throw s.failure; })]);
    } catch (e) {
      await client.end().catch(() => undefined);
      throw e;
    }
    return s;
  }

  private onCopyData(chunk: Buffer): void {
    if (this.closed || this.failure) return;
    try {
      const type = chunk[0];
      if (type === 0x77 /*w*/) {
        if (chunk.length < 25) throw new Error(`XLogData message of ${chunk.length} bytes (less than its 25-byte header)`);
        const n = chunk.length - 25;
        let buf: Buffer;
        let at: number;
        if (n > ARENA_CHUNK / 4) {
          buf = Buffer.allocUnsafeSlow(n);
          at = 0;
        } else {
          if (this.arenaUsed + n > ARENA_CHUNK) { this.arena = Buffer.allocUnsafeSlow(ARENA_CHUNK); this.arenaUsed = 0; }
          buf = this.arena;
          at = this.arenaUsed;
          this.arenaUsed += n;
        }
        chunk.copy(buf, at, 25);
        this.items.push(buf);
        this.nums.push(at, at + n, chunk.readUInt32BE(1), chunk.readUInt32BE(5), chunk.readUInt32BE(9), chunk.readUInt32BE(13));
        this.queuedBytes += n;
      } else if (type === 0x6b /*k*/) {
        this.items.push(parseKeepalive(chunk));
        this.nums.push(0, 0, 0, 0, 0, 0);
      } else {
        throw new Error(`unexpected replication message type 0x${(type ?? 0).toString(16)}`);
      }
      if (!this.paused && (this.items.length - this.head >= this.highWater || this.queuedBytes >= this.highWaterBytes)) {
        this.paused = true;
        this.con.stream.pause();
      }
      if (this.waiter) this.wake();
    } catch (e) {
      this.fail(e);
    }
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
    return this.items.length - this.head;
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
    if (this.head < this.items.length) return this.take();
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
      if (this.head < this.items.length) return this.take();
      if (this.failure !== null) throw this.failure;
      const leftMs = deadline - Date.now();
      if (this.closed || signal?.aborted || leftMs <= 0) return null;
      await new Promise<void>((resolve) => {
        const done = () => { clearTimeout(timer); signal?.removeEventListener('abort', done); this.waiter = null; resolve(); };
        const timer = setTimeout(done, leftMs);
        signal?.addEventListener('abort', done, { once: true });
        this.waiter = done;
      });
    }
  }

  private take(): ReceiveEvent<T> {
    const i = this.head++;
    const item: Buffer | Keepalive = this.items[i];
    this.items[i] = undefined as unknown as Buffer;
    const p = this.nums;
    const j = 6 * i;
    let ev: ReceiveEvent<T>;
    if (item instanceof Buffer) {
      const c = this.consumed;
      c[0] = p[j + 2]; c[1] = p[j + 3]; c[2] = p[j + 4]; c[3] = p[j + 5];
      this.queuedBytes -= p[j + 1] - p[j];
      ev = this.decode(item, p[j], p[j + 1]);
    } else {
      ev = item as Keepalive;
    }
    if (this.head === this.items.length) { this.items.length = 0; p.length = 0; this.head = 0; }
    else if (this.head >= 1024) { this.items.splice(0, this.head); p.splice(0, 6 * this.head); this.head = 0; }
    if (this.paused && this.buffered <= this.highWater / 4 && this.queuedBytes <= this.highWaterBytes / 4) { this.paused = false; this.con.stream.resume(); }
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
    this.items.length = 0;
    this.nums.length = 0;
    this.head = 0;
    this.queuedBytes = 0;
    this.wake();
    if (healthy) {
      try {
        this.con.endCopyFrom();
        if (this.paused) this.con.stream.resume();
        // Drain whatever is in flight until the server's CommandComplete; bounded wait.
        await Promise.race([this.streaming, new Promise((r) => setTimeout(r, 2000).unref())]);
      } catch { /* hanging up anyway */ }
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
    return new PgferryError('STATE_CORRUPT', `The publication of this migration is missing on the source: ${msg}.`,
      'Recreate the publication (starting the migration again recreates it), then restart the agent.', { cause: e });
  }
  if (state === '42704') {
    return new PgferryError('STATE_CORRUPT', `The replication slot "${slotName}" does not exist on the source: ${msg}.`,
      'The slot was dropped, so changes since the last applied position are gone from the source. Delete the migration and start it again (a fresh copy).', { cause: e });
  }
  if (state === '42501') {
    return new PgferryError('INSUFFICIENT_PRIVILEGE', `The source user may not stream from slot "${slotName}": ${msg}.`,
      'Grant the REPLICATION attribute to `source`.user (ALTER ROLE ... REPLICATION), or connect as a role that has it.', { cause: e });
  }
  return e;
}

