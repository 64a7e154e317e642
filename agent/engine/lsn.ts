/**
 * lsn — PostgreSQL WAL positions as `bigint`, never as strings compared lexically.
 *
 * Text form is `XXXXXXXX/XXXXXXXX` (two hex halves, as pg_current_wal_lsn() prints).
 * Timestamps on the replication protocol are microseconds since the PostgreSQL
 * epoch, 2000-01-01 00:00:00 UTC; `PG_EPOCH_MS` is derived, not hard-coded.
 */

export type Lsn = bigint;

export const ZERO_LSN: Lsn = 0n;

export function parseLsn(text: string): Lsn {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text.trim());
  if (!m) throw new Error(`not an LSN: '${text}'`);
  return (BigInt('0x' + m[1]) << 32n) | BigInt('0x' + m[2]);
}

export function formatLsn(lsn: Lsn): string {
  const hi = Number(lsn >> 32n)
    .toString(16)
    .toUpperCase();
  const lo = Number(lsn & 0xffffffffn)
    .toString(16)
    .toUpperCase();
  return `${hi}/${lo}`;
}

export function readLsn(buf: Buffer, offset: number): Lsn {
  return buf.readBigUInt64BE(offset);
}

export function maxLsn(a: Lsn, b: Lsn): Lsn {
  return a > b ? a : b;
}

/** Milliseconds from the Unix epoch to the PostgreSQL epoch (2000-01-01T00:00:00Z). */
export const PG_EPOCH_MS = Date.UTC(2000, 0, 1);

/** Protocol timestamp (µs since PG epoch, int64) → Unix milliseconds. */
export function pgMicrosToUnixMs(micros: bigint): number {
  return PG_EPOCH_MS + Number(micros / 1000n);
}

/** Unix milliseconds → protocol timestamp (µs since PG epoch). */
export function unixMsToPgMicros(ms: number): bigint {
  return BigInt(Math.round(ms - PG_EPOCH_MS)) * 1000n;
}
