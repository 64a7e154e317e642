/**
 * verify-ranges — SQL helpers for continuous verification: a table compared
 * between source and target one key range at a time, and the rows that differ
 * found and copied again by exact key.
 *
 * Input: a session on each side (the caller owns the connections, the
 * transactions and the matching snapshots), a source `TableInfo` with a
 * replica identity key, and key ranges or keys. Output: range bounds,
 * fingerprints, per-row hashes, and a repaired target.
 *
 * A row renders as in checksum.ts (`ROW(data columns)::text` in conn.ts's
 * session settings), so a range's fingerprint is checksum.ts's over those rows
 * and the whole-table range gives `tableFingerprint`. Keys travel as their
 * columns' text output (what the server prints, which is `::text` for nearly
 * every type) and go back in through `$n::<column type>`, so they round-trip
 * exactly.
 *
 * Collation: bounds are computed on one side (the source) and applied on both;
 * a target whose libc orders text differently may place a row in a
 * neighbouring range. That shows as a row missing on one side and extra on the
 * other, and is resolved by comparing those keys with `keysRowHashes`, which,
 * like `copyKeys`, works by equality, never by order.
 */
import type pg from 'pg';
import { qi, qn } from './conn';
import { checksumSql } from './checksum';
import { dataColumns, tableKey, type ColumnInfo, type TableInfo } from './catalog';
import { PgferryError } from './errors';

/** A key's column values as PostgreSQL prints them (the types' text output), in key order. */
export type KeyValues = string[];

/** Rows with key in (after, upTo]; null = unbounded on that side. */
export interface KeyRange {
  after: KeyValues | null;
  upTo: KeyValues | null;
}

/** Keys per query in `keysRowHashes` and `copyKeys`. */
export const KEYS_PER_QUERY = 5000;

/** A stable string form of a key, for use as a Map key (JSON). */
export function keyId(k: KeyValues): string {
  return JSON.stringify(k);
}

export function parseKeyId(id: string): KeyValues {
  const k: unknown = JSON.parse(id);
  if (!Array.isArray(k) || !k.every((v) => typeof v === 'string')) throw new Error(`not a key id: ${id}`);
  return k;
}

/** Can this table be compared by key range? It needs a replica identity key (not REPLICA IDENTITY FULL or NOTHING). */
export function hasRangeKey(t: TableInfo): boolean {
  return t.keyColumns.length > 0;
}

/**
 * The key of the `rows`-th row after `after` in key order, or null when fewer
 * than `rows` rows remain (the last range is then `(after, +inf)`). Walks the
 * key's index: `WHERE (k1, k2) > (…) ORDER BY k1, k2 LIMIT 1 OFFSET rows - 1`.
 *
 * @example
 * let after = null;
 * do { const upTo = await rangeEnd(src, t, after, 50_000); ranges.push({ after, upTo }); after = upTo; } while (after);
 */
export async function rangeEnd(
  client: pg.Client,
  t: TableInfo,
  after: KeyValues | null,
  rows: number,
  within: KeyValues | null = null,
): Promise<KeyValues | null> {
  if (!Number.isInteger(rows) || rows < 1) throw new Error(`rangeEnd: rows must be a positive integer, got ${rows}`);
  const q = new Sql(t);
  // `within`: only rows up to that key count (null when fewer than `rows` remain up to it).
  const where = q.range({ after, upTo: within });
  const keys = q.keys.map((c) => `t.${qi(c.name)}`).join(', ');
  const r = await q.run(client, `SELECT ${keys} FROM ONLY ${qn(t.schema, t.name)} AS t WHERE ${where} ORDER BY ${keys} LIMIT 1 OFFSET ${rows - 1}`);
  return r.length ? (r[0] as KeyValues) : null;
}

/** The last key in key order, or null for an empty table. */
export async function lastKey(client: pg.Client, t: TableInfo): Promise<KeyValues | null> {
  const q = new Sql(t);
  const keys = q.keys.map((c) => `t.${qi(c.name)}`);
  const r = await q.run(client, `SELECT ${keys.join(', ')} FROM ONLY ${qn(t.schema, t.name)} AS t ORDER BY ${keys.map((k) => `${k} DESC`).join(', ')} LIMIT 1`);
  return r.length ? (r[0] as KeyValues) : null;
}

/** Count and checksum of the range's rows (checksum.ts's definition). */
export async function rangeFingerprint(client: pg.Client, t: TableInfo, r: KeyRange): Promise<{ rows: number; checksum: string }> {
  const q = new Sql(t);
  const where = q.range(r);
  const columns = dataColumns(t).map((c) => c.name);
  const res = await client.query(`${checksumSql(t.schema, t.name, columns)} WHERE ${where}`, q.params);
  return { rows: Number(res.rows[0].rows), checksum: res.rows[0].checksum };
}

/** keyId → md5 of the row, for every row of the range (the caller bounds the range, e.g. to 50 000 rows). */
export async function rangeRowHashes(client: pg.Client, t: TableInfo, r: KeyRange): Promise<Map<string, string>> {
  const q = new Sql(t);
  const where = q.range(r);
  return hashesOf(t, await q.run(client, `${q.hashSelect()} WHERE ${where}`));
}

/** keyId → md5 of the row, for those of `keys` present (a missing key is absent), `KEYS_PER_QUERY` keys per query. */
export async function keysRowHashes(client: pg.Client, t: TableInfo, keys: KeyValues[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const chunk of chunks(distinct(keys))) {
    const q = new Sql(t);
    const where = q.keyIn(chunk);
    for (const [k, v] of hashesOf(t, await q.run(client, `${q.hashSelect()} WHERE ${where}`))) out.set(k, v);
  }
  return out;
}

/** Keys whose hash differs, or that are present on one side only: `a`'s in its order, then those only in `b`. */
export function differingKeys(a: Map<string, string>, b: Map<string, string>): KeyValues[] {
  const out: KeyValues[] = [];
  for (const [id, hash] of a) if (b.get(id) !== hash) out.push(parseKeyId(id));
  for (const id of b.keys()) if (!a.has(id)) out.push(parseKeyId(id));
  return out;
}

/**
 * Make the target's rows for `keys` equal the source's: delete the target's
 * rows with those keys, then insert the source's rows that exist (data
 * columns only; generated columns are computed by the target; identity
 * ALWAYS columns keep the source's value through OVERRIDING SYSTEM VALUE).
 * No other target row is touched. A key on neither side changes nothing.
 *
 * The caller runs this inside its own target transaction (with
 * `session_replication_role = replica`, so foreign keys and user triggers stay
 * quiet) and its own source snapshot.
 */
export async function copyKeys(src: pg.Client, tgt: pg.Client, t: TableInfo, keys: KeyValues[]): Promise<{ deleted: number; inserted: number }> {
  const cols = dataColumns(t);
  const table = qn(t.schema, t.name);
  const names = cols.map((c) => qi(c.name)).join(', ');
  let deleted = 0;
  let inserted = 0;
  for (const chunk of chunks(distinct(keys))) {
    const read = new Sql(t);
    const rows = await read.run(src, `SELECT ${cols.map((c) => `t.${qi(c.name)}`).join(', ')} FROM ONLY ${table} AS t WHERE ${read.keyIn(chunk)}`);
    const del = new Sql(t);
    deleted += (await tgt.query(`DELETE FROM ONLY ${table} AS t WHERE ${del.keyIn(chunk)}`, del.params)).rowCount ?? 0;
    if (rows.length === 0) continue;
    const overriding = cols.some((c) => c.identity === 'a') ? ' OVERRIDING SYSTEM VALUE' : '';
    const ins = new Sql(t);
    const values = ins.unnest(cols, transpose(rows, cols.length));
    const res = await tgt.query(`INSERT INTO ${table} (${names})${overriding} SELECT ${values.select} FROM ${values.from}`, ins.params);
    inserted += res.rowCount ?? 0;
  }
  return { deleted, inserted };
}

/** Values as the server prints them: every column a string (or null), no parsing by node-postgres. */
const RAW_TEXT = { getTypeParser: () => (v: string) => v } as unknown as pg.CustomTypesConfig;

type TextRow = Array<string | null>;

/** One statement over table `t` (aliased `t`): its key columns, and the parameters its fragments add. */
class Sql {
  readonly keys: ColumnInfo[];
  readonly params: unknown[] = [];

  constructor(private readonly t: TableInfo) {
    if (!hasRangeKey(t))
      throw new PgferryError(
        'INTERNAL',
        `table ${tableKey(t)} has no replica identity key, so it cannot be compared by key`,
        'compare it whole with checksum.ts `tableFingerprint` (check `hasRangeKey` first)',
      );
    this.keys = t.keyColumns.map((name) => {
      const c = t.columns.find((col) => col.name === name);
      if (!c) throw new PgferryError('INTERNAL', `key column ${qi(name)} is not a column of ${tableKey(t)}`);
      return c;
    });
  }

  private param(v: unknown): string {
    this.params.push(v);
    return `$${this.params.length}`;
  }

  /** `(t.k1, t.k2)` */
  private keyRow(): string {
    return `(${this.keys.map((c) => `t.${qi(c.name)}`).join(', ')})`;
  }

  /** `($n::type1, $m::type2)` for one key. */
  private keyValues(k: KeyValues): string {
    this.checkKey(k);
    return `(${this.keys.map((c, i) => `${this.param(k[i])}::${c.type}`).join(', ')})`;
  }

  private checkKey(k: KeyValues): void {
    if (k.length !== this.keys.length)
      throw new Error(`a key of ${tableKey(this.t)} has ${this.keys.length} column(s) (${this.t.keyColumns.join(', ')}), got ${JSON.stringify(k)}`);
  }

  /** The condition for a range (row comparison, in the key's index order). */
  range(r: KeyRange): string {
    const parts: string[] = [];
    if (r.after) parts.push(`${this.keyRow()} > ${this.keyValues(r.after)}`);
    if (r.upTo) parts.push(`${this.keyRow()} <= ${this.keyValues(r.upTo)}`);
    return parts.length ? parts.join(' AND ') : 'true';
  }

  /** The condition "key is one of `keys`" (equality; one text array per key column). */
  keyIn(keys: KeyValues[]): string {
    keys.forEach((k) => this.checkKey(k));
    const u = this.unnest(this.keys, transpose(keys, this.keys.length));
    return `${this.keyRow()} IN (SELECT ${u.select} FROM ${u.from})`;
  }

  /** `unnest($1::text[], …) AS u(c0, …)` with each column cast back to its type. */
  unnest(cols: ColumnInfo[], columns: TextRow[]): { select: string; from: string } {
    const arrays = columns.map((values) => `${this.param(values)}::text[]`);
    return {
      select: cols.map((c, i) => `u.c${i}::${c.type}`).join(', '),
      from: `unnest(${arrays.join(', ')}) AS u(${cols.map((_, i) => `c${i}`).join(', ')})`,
    };
  }

  /** `SELECT k1, k2, md5(row)`: the row as checksum.ts renders it. */
  hashSelect(): string {
    const row = `ROW(${dataColumns(this.t)
      .map((c) => `t.${qi(c.name)}`)
      .join(', ')})::text`;
    return `SELECT ${this.keys.map((c) => `t.${qi(c.name)}`).join(', ')}, md5(${row}) FROM ONLY ${qn(this.t.schema, this.t.name)} AS t`;
  }

  async run(client: pg.Client, text: string): Promise<TextRow[]> {
    const r = await client.query({ text, values: this.params, rowMode: 'array', types: RAW_TEXT });
    return r.rows as TextRow[];
  }
}

/** Rows of `hashSelect()` as keyId → md5. */
function hashesOf(t: TableInfo, rows: TextRow[]): Map<string, string> {
  const n = t.keyColumns.length;
  return new Map(rows.map((r) => [keyId(r.slice(0, n) as KeyValues), r[n] as string]));
}

/** Rows → one array per column. */
function transpose(rows: TextRow[], width: number): TextRow[] {
  return Array.from({ length: width }, (_, i) => rows.map((r) => r[i]));
}

function distinct(keys: KeyValues[]): KeyValues[] {
  return [...new Map(keys.map((k) => [keyId(k), k])).values()];
}

function chunks<T>(items: T[]): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += KEYS_PER_QUERY) out.push(items.slice(i, i + KEYS_PER_QUERY));
  return out;
}
