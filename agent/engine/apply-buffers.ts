/**
 * apply-buffers — the byte structures the apply plan (apply-plan.ts) writes
 * a batch's statement data into, outside the JavaScript heap: pooled
 * buffers, a growable byte buffer, a set of key hashes, and array
 * parameters in PostgreSQL's binary format.
 *
 * Input: bytes copied from pgoutput messages. Output: Buffers sent as COPY
 * data and binary parameters (pipeline.ts).
 */

/**
 * Statement buffers of committed batches, lent to the batches after them.
 * A batch writes megabytes of COPY rows and parameter arrays; allocated
 * fresh each time, that is new memory for the kernel to fault in and
 * external memory that makes V8 run a full garbage collection every few
 * dozen megabytes (mark-compacts in the middle of a backlog's replay). Lent
 * again, the same few buffers serve every batch. A buffer comes back only
 * once its batch has committed (the server has read every byte of it) or
 * when a growing Bytes leaves it behind; at most `maxBytes` wait here, the
 * rest is left to the garbage collector. Hand-rolled: no library pools
 * variable-size Buffers this way.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];
  private bytes = 0;
  constructor(private readonly maxBytes: number) {}

  /** A buffer of at least `min` bytes: the smallest waiting one that fits, else a new one. */
  take(min: number): Buffer {
    const free = this.free;
    let best = -1;
    for (let i = 0; i < free.length; i++) {
      const n = free[i].length;
      if (n >= min && (best < 0 || n < free[best].length)) best = i;
    }
    if (best < 0) return Buffer.allocUnsafeSlow(min);
    const b = free[best];
    free[best] = free[free.length - 1];
    free.pop();
    this.bytes -= b.length;
    return b;
  }

  /** Hand back a buffer nothing reads or writes any more. */
  give(b: Buffer): void {
    if (b.length === 0 || this.bytes + b.length > this.maxBytes) return;
    this.free.push(b);
    this.bytes += b.length;
  }

  /** Bytes waiting to be lent. */
  get size(): number {
    return this.bytes;
  }
}

const NO_BYTES = Buffer.alloc(0);

/**
 * A growable byte buffer, its memory from `pool` when given one. Hand-rolled:
 * Node has no appendable Buffer, and the escapes and length prefixes written
 * here are byte-level.
 */
export class Bytes {
  buf: Buffer;
  len = 0;
  constructor(
    capacity = 1024,
    private readonly pool: BufferPool | null = null,
  ) {
    this.buf = pool ? pool.take(capacity) : Buffer.allocUnsafe(capacity);
  }

  private grow(n: number): void {
    const size = Math.max(this.buf.length * 2, this.len + n);
    const next = this.pool ? this.pool.take(size) : Buffer.allocUnsafeSlow(size);
    this.buf.copy(next, 0, 0, this.len);
    this.pool?.give(this.buf);
    this.buf = next;
  }

  /** Hand the memory back to the pool (nothing may read `view()` any more); empty afterwards. */
  release(): void {
    this.pool?.give(this.buf);
    this.buf = NO_BYTES;
    this.len = 0;
  }

  int32(v: number): void {
    if (this.len + 4 > this.buf.length) this.grow(4);
    // Byte by byte: writeInt32BE validates its arguments on every call.
    const b = this.buf;
    const o = this.len;
    b[o] = v >>> 24;
    b[o + 1] = v >>> 16;
    b[o + 2] = v >>> 8;
    b[o + 3] = v;
    this.len = o + 4;
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

  /** Make room for `n` more bytes (then write to `buf` from `len` directly). */
  reserve(n: number): void {
    if (this.len + n > this.buf.length) this.grow(n);
  }

  view(): Buffer {
    return this.buf.subarray(0, this.len);
  }
}

/**
 * A set of 30-bit key hashes (Plan.key) for one UPDATE/DELETE group: open
 * addressing with linear probing in an Int32Array, a hash h stored as h + 1
 * so that 0 marks a free slot. Hand-rolled: a JavaScript Set of numbers
 * costs about 65 bytes of V8 heap per key (its table is reallocated as it
 * grows), young-generation memory the garbage collector copies while the
 * batch is open; this table lives outside the JavaScript heap and costs
 * 8 to 16 bytes per key (it is kept between a quarter and half full).
 */
export class KeyHashes {
  private slots = new Int32Array(64);
  size = 0;

  has(h: number): boolean {
    const slots = this.slots;
    const mask = slots.length - 1;
    const v = h + 1;
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const s = slots[i];
      if (s === v) return true;
      if (s === 0) return false;
    }
  }

  /** Add `h` (0 ≤ h < 2^30), which must not be in the set yet. */
  add(h: number): void {
    if (2 * (this.size + 1) > this.slots.length) this.grow();
    this.put(this.slots, h + 1);
    this.size++;
  }

  private put(slots: Int32Array, v: number): void {
    const mask = slots.length - 1;
    let i = (v - 1) & mask;
    while (slots[i] !== 0) i = (i + 1) & mask;
    slots[i] = v;
  }

  private grow(): void {
    const old = this.slots;
    this.slots = new Int32Array(old.length * 2);
    for (let i = 0; i < old.length; i++) if (old[i] !== 0) this.put(this.slots, old[i]);
  }
}

export const TEXT_OID = 25;
const ARRAY_HEADER = 20;

/**
 * A one-dimensional array parameter in PostgreSQL's binary format
 * (array_recv): Int32 ndim = 1, Int32 has-nulls, Int32 element type OID,
 * Int32 length, Int32 lower bound = 1, then per element Int32 byte length
 * (-1 = NULL) and the element's binary form — for `text` (the default
 * element type) that is the text itself. The pipeline sends a Buffer
 * parameter in binary format.
 */
export class ArrayParam {
  private readonly b: Bytes;
  count = 0;
  private hasNull = false;
  constructor(
    pool: BufferPool | null = null,
    private readonly elemOid = TEXT_OID,
  ) {
    this.b = new Bytes(512, pool);
    this.b.len = ARRAY_HEADER;
  }

  add(src: Buffer, start: number, len: number): void {
    if (len < 0) {
      this.b.int32(-1);
      this.hasNull = true;
    } else {
      this.b.int32(len);
      this.b.copyFrom(src, start, start + len);
    }
    this.count++;
  }

  finish(): Buffer {
    const buf = this.b.buf;
    buf.writeInt32BE(1, 0);
    buf.writeInt32BE(this.hasNull ? 1 : 0, 4);
    buf.writeInt32BE(this.elemOid, 8);
    buf.writeInt32BE(this.count, 12);
    buf.writeInt32BE(1, 16);
    return this.b.view();
  }

  /** See Bytes.release. */
  release(): void {
    this.b.release();
  }
}
