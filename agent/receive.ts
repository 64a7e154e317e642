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
  /** The server's position: everything before it has been sent. */
  walEnd: Lsn;
  /** Server clock, µs since the PostgreSQL epoch. */
  sendTimeMicros: bigint;
  /** The server asks for an immediate status update (else it disconnects after wal_sender_timeout). */
  replyRequested: boolean;
}

export type ReceiveEvent<T> =
  | { kind: 'xlog'; dataStart: Lsn; walEnd: Lsn; message: T }
  | { kind: 'keepalive'; keepalive: Keepalive };

/** Parse a primary keepalive message ('k', 18 bytes). */
export function parseKeepalive(buf: Buffer): Keepalive {
  if (buf.length < 18 || buf[0] !== 0x6b /*k*/) throw new Error(`not a primary keepalive message (${buf.length} bytes, type 0x${(buf[0] ?? 0).toString(16)})`);
  return { walEnd: readLsn(buf, 1), sendTimeMicros: buf.readBigInt64BE(9), replyRequested: buf[17] !== 0 };
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
  /** Decodes an XLogData payload; runs as bytes arrive (the socket's buffers are reused afterwards). */
  decode: (payload: Buffer) => T;
  /** Pause the socket when this many events wait for the consumer. Default 512. */
  highWaterEvents?: number;
  applicationName?: string;
}

type Connection = pg.Connection & { sendCopyFromChunk(chunk: Buffer): void; endCopyFrom(): void };
interface CopyDataMsg { chunk: Buffer }

/** A running START_REPLICATION session. Call `close()` when done. */
export class ReplicationStream<T> {
  private readonly queue: ReceiveEvent<T>[] = [];
  private head = 0;
  private failure: unknown = null;
  private waiter: (() => void) | null = null;
  private paused = false;
  private closed = false;
  private readonly highWater: number;
  private streaming: Promise<unknown> = Promise.resolve();

  private constructor(private readonly client: pg.Client, private readonly con: Connection, highWater: number, private readonly slotName: string) {
    this.highWater = highWater;
  }

  /** Connect (as conn.ts does, with SESSION_OPTIONS) and start streaming. */
  static async open<T>(opts: ReplicationStreamOptions<T>): Promise<ReplicationStream<T>> {
    const client = await connect('source', opts.source, { replication: true, applicationName: opts.applicationName ?? 'pgferry-sync' });
    const con = (client as unknown as { connection: Connection }).connection;
    const s = new ReplicationStream<T>(client, con, opts.highWaterEvents ?? 512, opts.slotName);
    const plugin = new PgoutputPlugin([opts.publicationName]);
    con.on('copyData', (msg: CopyDataMsg) => s.onCopyData(msg.chunk, opts.decode));
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

  private onCopyData(chunk: Buffer, decode: (payload: Buffer) => T): void {
    if (this.closed || this.failure) return;
    try {
      const type = chunk[0];
      if (type === 0x77 /*w*/) {
        this.push({ kind: 'xlog', dataStart: readLsn(chunk, 1), walEnd: readLsn(chunk, 9), message: decode(chunk.subarray(25)) });
      } else if (type === 0x6b /*k*/) {
        this.push({ kind: 'keepalive', keepalive: parseKeepalive(chunk) });
      } else {
        throw new Error(`unexpected replication message type 0x${(type ?? 0).toString(16)}`);
      }
    } catch (e) {
      this.fail(e);
    }
  }

  private push(ev: ReceiveEvent<T>): void {
    this.queue.push(ev);
    if (!this.paused && this.queue.length - this.head >= this.highWater) {
      this.paused = true;
      this.con.stream.pause();
    }
    this.wake();
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
    return this.queue.length - this.head;
  }

  /**
   * The next event, in stream order; `null` when `timeoutMs` passes first or
   * `signal` aborts. Throws once the connection has failed and the events
   * received before the failure have been consumed.
   */
  async next(timeoutMs: number, signal?: AbortSignal): Promise<ReceiveEvent<T> | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.head < this.queue.length) return this.take();
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
    const ev = this.queue[this.head];
    this.queue[this.head++] = undefined as unknown as ReceiveEvent<T>;
    if (this.head === this.queue.length) { this.queue.length = 0; this.head = 0; }
    else if (this.head >= 1024) { this.queue.splice(0, this.head); this.head = 0; }
    if (this.paused && this.buffered <= this.highWater / 4) { this.paused = false; this.con.stream.resume(); }
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
    this.queue.length = 0;
    this.head = 0;
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

