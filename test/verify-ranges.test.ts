/**
 * verify-ranges — a table compared between source and target one key range at
 * a time: the ranges cover every row exactly once, the same rows give the same
 * fingerprints and row hashes on an older source and a newer target, keys of
 * any type round-trip through their text form, and the rows that differ are
 * found and copied again without touching any other row.
 */
import assert from 'node:assert/strict';
import type pg from 'pg';
import { dataColumns, selectTables, type TableInfo } from '../agent/engine/catalog';
import { tableFingerprint } from '../agent/engine/checksum';
import { connect, qi, qn } from '../agent/engine/conn';
import { isPgferryError } from '../agent/engine/errors';
import {
  KEYS_PER_QUERY,
  copyKeys,
  differingKeys,
  hasRangeKey,
  keyId,
  keysRowHashes,
  lastKey,
  parseKeyId,
  rangeEnd,
  rangeFingerprint,
  rangeRowHashes,
  type KeyRange,
  type KeyValues,
} from '../agent/engine/verify-ranges';
import { startCluster, type Cluster, type PgMajor } from '../dev/testbed';

const PAIRS: Array<{ source: PgMajor; target: PgMajor }> = [{ source: 14, target: 17 }];

/** Rows of `items`: more than two chunks of keys, and not a multiple of the range size. */
const ITEMS = 2 * KEYS_PER_QUERY + 7;

/** Keys above 2^53, which a JavaScript number cannot hold. */
const ITEMS_DDL = `
CREATE TABLE items (id bigint PRIMARY KEY, name text, price numeric(12,2), at timestamptz, f float8, tags text[], raw bytea, doc jsonb);
CREATE TABLE empty (id int PRIMARY KEY, v text);`;
const ITEMS_ROWS = `
INSERT INTO items SELECT 9007199254740000 + i * 3, 'item ' || i || CASE WHEN i % 7 = 0 THEN ' "q", \\b' ELSE '' END,
  CASE WHEN i % 11 = 0 THEN NULL ELSE i * 1.25 END, timestamptz '2024-01-01 00:00:00.123456+00' + i * interval '1 minute 1.000001 second',
  1.0 / i, ARRAY['t' || (i % 5), NULL], decode(md5(i::text), 'hex'), jsonb_build_object('i', i, 'half', i / 2.0)
FROM generate_series(1, ${ITEMS}) i`;

/** Text with the characters a key's text form must survive. */
const LABELS = ['a,b', '"quoted"', 'back\\slash', "it's", 'ünïcödé ✓', '(paren)', '{brace}', 'NULL', '', ' ', 'tab\there', 'new\nline', 'A', 'a', '_'];
/** The key's index order (amount, label, at) is not the columns' order. */
const ODD_DDL = `
CREATE TABLE odd (label text, at timestamptz, amount numeric, note text, PRIMARY KEY (amount, label, at));
CREATE TABLE uuids (id uuid PRIMARY KEY, v int);`;
const ODD_ROWS = `
INSERT INTO odd SELECT l, ts, a, l || '/' || a || '/' || ts
  FROM unnest($1::text[]) l,
       unnest(ARRAY['2024-02-29 23:59:59.999999+00', '1999-12-31 12:00:00+05:30', 'infinity', '-infinity']::timestamptz[]) ts,
       unnest(ARRAY[0, -0.5, 1.000000000000000000001, 1e20, 'NaN']::numeric[]) a`;

const GENERATED_DDL = `
CREATE TABLE gen (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, qty int, price numeric, total numeric GENERATED ALWAYS AS (qty * price) STORED);
CREATE TABLE nokey (a int, b text);
ALTER TABLE nokey REPLICA IDENTITY FULL;`;

/** Walk the table's key order on `c`, `step` rows per range. */
async function walk(c: pg.Client, t: TableInfo, step: number): Promise<KeyRange[]> {
  const ranges: KeyRange[] = [];
  let after: KeyValues | null = null;
  do {
    const upTo: KeyValues | null = await rangeEnd(c, t, after, step);
    ranges.push({ after, upTo });
    after = upTo;
  } while (after);
  return ranges;
}

/** Copy a table's rows with one plain INSERT of literals (data columns only). */
async function copyRows(src: pg.Client, tgt: pg.Client, t: TableInfo): Promise<void> {
  const cols = dataColumns(t);
  const literals = cols.map((c) => `quote_nullable(t.${qi(c.name)})`).join(` || ', ' || `);
  const r = await src.query(`SELECT string_agg('(' || ${literals} || ')', ', ') AS v FROM ONLY ${qn(t.schema, t.name)} t`);
  if (r.rows[0].v === null) return;
  const overriding = cols.some((c) => c.identity === 'a') ? ' OVERRIDING SYSTEM VALUE' : '';
  await tgt.query(`INSERT INTO ${qn(t.schema, t.name)} (${cols.map((c) => qi(c.name)).join(', ')})${overriding} VALUES ${r.rows[0].v}`);
}

const whole: KeyRange = { after: null, upTo: null };

for (const pair of PAIRS) {
  describe(`verify ranges, PostgreSQL ${pair.source} → ${pair.target}`, function () {
    let source: Cluster;
    let target: Cluster;
    let n = 0;
    let open: pg.Client[] = [];

    before(async function () {
      [source, target] = await Promise.all([startCluster({ version: pair.source, fast: true }), startCluster({ version: pair.target, fast: true })]);
    });

    after(async function () {
      await Promise.all([source?.stop(), target?.stop()]);
    });

    afterEach(async function () {
      await Promise.all(open.map((c) => c.end().catch(() => undefined)));
      open = [];
    });

    /** A fresh database on each side with `ddl` in both, `rows` on the source, and the source's tables by name. */
    async function fresh(ddl: string, rows = '', params: unknown[] = []) {
      const db = `vr${++n}`;
      await Promise.all([source.createDatabase(db), target.createDatabase(db)]);
      const src = await connect('source', source.endpoint(db));
      const tgt = await connect('target', target.endpoint(db));
      open.push(src, tgt);
      await Promise.all([src.query(ddl), tgt.query(ddl)]);
      if (rows) await src.query(rows, params);
      const tables = (await selectTables(src, { include: ['public.*'], exclude: [] })).tables;
      const table = (name: string) => tables.find((t) => t.name === name)!;
      return { src, tgt, table };
    }

    it('ranges from repeated rangeEnd cover every row exactly once, and fingerprint alike on both versions', async function () {
      const { src, tgt, table } = await fresh(ITEMS_DDL, ITEMS_ROWS);
      const items = table('items');
      await copyRows(src, tgt, items);

      const ranges = await walk(src, items, 1000);
      assert.equal(ranges.length, 11);
      assert.equal(ranges[0].after, null);
      assert.equal(ranges.at(-1)!.upTo, null);
      for (let i = 1; i < ranges.length; i++) assert.deepEqual(ranges[i].after, ranges[i - 1].upTo);

      let rows = 0;
      const union = new Map<string, string>();
      for (const r of ranges) {
        const [a, b] = await Promise.all([rangeFingerprint(src, items, r), rangeFingerprint(tgt, items, r)]);
        assert.deepEqual(a, b);
        assert.equal(a.rows, r.upTo ? 1000 : 7);
        rows += a.rows;
        const hashes = await rangeRowHashes(src, items, r);
        assert.equal(hashes.size, a.rows);
        for (const [k, v] of hashes) {
          assert.ok(!union.has(k), `key ${k} is in two ranges`);
          union.set(k, v);
        }
      }
      assert.equal(rows, ITEMS);
      assert.deepEqual(union, await rangeRowHashes(tgt, items, whole));
      // A bigint key above 2^53 comes back digit for digit.
      assert.ok(union.has(keyId([String(9007199254740000n + BigInt(ITEMS) * 3n)])));

      // The whole-table range is checksum.ts's fingerprint.
      const cols = dataColumns(items).map((c) => c.name);
      assert.deepEqual(await rangeFingerprint(tgt, items, whole), await tableFingerprint(src, 'public', 'items', cols));

      // Exactly `rows` rows left: the last key, then an empty open range.
      const last = await walk(src, items, ITEMS);
      assert.equal(last.length, 2);
      assert.deepEqual(await rangeFingerprint(src, items, last[1]), { rows: 0, checksum: '0' });

      const empty = table('empty');
      assert.deepEqual(await walk(src, empty, 1000), [whole]);
      assert.deepEqual(await rangeFingerprint(tgt, empty, whole), { rows: 0, checksum: '0' });
      assert.equal((await rangeRowHashes(src, empty, whole)).size, 0);
    });

    it('counts ranges up to a given last key (a pass ends at the last key it found, however fast the table grows)', async function () {
      const { src, table } = await fresh(ITEMS_DDL, ITEMS_ROWS);
      const items = table('items');
      const last = await lastKey(src, items);
      assert.ok(last);
      const firstOf = await rangeEnd(src, items, null, 1);
      assert.deepEqual(await rangeEnd(src, items, null, 1, last), firstOf);
      // Rows above the last key do not count: fewer than `rows` remain up to it.
      assert.equal(await rangeEnd(src, items, firstOf, 1_000_000_000, last), null);
      assert.equal(await lastKey(src, table('empty')), null);
    });

    it("a key's INCLUDE columns are not part of it (the stream's old key does not carry them)", async function () {
      const { table } = await fresh('CREATE TABLE incl (a int, b text, c int, PRIMARY KEY (a, c) INCLUDE (b))');
      assert.deepEqual(table('incl').keyColumns, ['a', 'c']);
    });

    it('a composite key of mixed types and a uuid key round-trip through their text form', async function () {
      const { src, tgt, table } = await fresh(ODD_DDL, ODD_ROWS, [LABELS]);
      await src.query('INSERT INTO uuids SELECT gen_random_uuid(), i FROM generate_series(1, 100) i');
      const odd = table('odd');
      assert.deepEqual(odd.keyColumns, ['amount', 'label', 'at']);
      const total = LABELS.length * 4 * 5;
      for (const t of [odd, table('uuids')]) await copyRows(src, tgt, t);

      // One row per range: every key, as printed, bounds exactly its own row on both sides.
      const ranges = await walk(src, odd, 1);
      assert.equal(ranges.length, total + 1);
      for (const r of ranges.slice(0, -1)) {
        const [a, b] = await Promise.all([rangeRowHashes(src, odd, r), rangeRowHashes(tgt, odd, r)]);
        assert.equal(a.size, 1, `range (${JSON.stringify(r.after)}, ${JSON.stringify(r.upTo)}]`);
        assert.deepEqual(b, a);
        assert.deepEqual([...a.keys()], [keyId(r.upTo!)]);
      }
      const all = await rangeRowHashes(src, odd, whole);
      assert.equal(all.size, total);
      const keys = [...all.keys()].map(parseKeyId);
      assert.ok(keys.some((k) => k[0] === 'NaN' && k[1] === 'back\\slash' && k[2] === 'infinity'));
      assert.ok(keys.some((k) => k[0] === '1.000000000000000000001' && k[1] === 'ünïcödé ✓' && k[2] === '1999-12-31 06:30:00+00'));
      // Found again by equality from the text form alone, on either version.
      assert.deepEqual(await keysRowHashes(tgt, odd, keys), all);

      const uuids = table('uuids');
      const uranges = await walk(src, uuids, 7);
      assert.equal(uranges.length, 15);
      for (const r of uranges) assert.deepEqual(await rangeFingerprint(tgt, uuids, r), await rangeFingerprint(src, uuids, r));
      const u = await rangeRowHashes(src, uuids, whole);
      assert.ok([...u.keys()].every((k) => /^[0-9a-f-]{36}$/.test(parseKeyId(k)[0])));
      assert.deepEqual(await keysRowHashes(tgt, uuids, [...u.keys()].map(parseKeyId)), u);
    });

    it('finds an updated, a missing and an extra row, and copyKeys repairs exactly those', async function () {
      const { src, tgt, table } = await fresh(ITEMS_DDL, ITEMS_ROWS);
      const items = table('items');
      await copyRows(src, tgt, items);
      const id = (i: number) => String(9007199254740000 + i * 3);
      await tgt.query(`UPDATE items SET name = 'changed' WHERE id = ${id(10)}`);
      await tgt.query(`DELETE FROM items WHERE id = ${id(20)}`);
      await tgt.query(`INSERT INTO items (id, name) VALUES (1, 'extra')`);
      // Drift the caller does not ask to repair: it must stay.
      await tgt.query(`UPDATE items SET f = 42 WHERE id = ${id(30)}`);

      const [a, b] = await Promise.all([rangeRowHashes(src, items, whole), rangeRowHashes(tgt, items, whole)]);
      // Key lookups (three chunks) agree with the range.
      assert.deepEqual(await keysRowHashes(src, items, [...a.keys()].map(parseKeyId)), a);
      const diff = differingKeys(a, b);
      assert.deepEqual(diff.map(keyId).sort(), [['1'], [id(10)], [id(20)], [id(30)]].map(keyId).sort());
      assert.deepEqual(differingKeys(a, a), []);

      const repair = diff.filter((k) => k[0] !== id(30));
      const before = await rangeRowHashes(tgt, items, whole);
      await tgt.query('BEGIN; SET LOCAL session_replication_role = replica');
      // A key on neither side, and a key given twice, change nothing more.
      const counts = await copyKeys(src, tgt, items, [...repair, ['5'], [id(10)]]);
      await tgt.query('COMMIT');
      assert.deepEqual(counts, { deleted: 2, inserted: 2 });

      const after = await rangeRowHashes(tgt, items, whole);
      assert.deepEqual(differingKeys(a, after), [[id(30)]]);
      assert.equal((await tgt.query(`SELECT f FROM items WHERE id = ${id(30)}`)).rows[0].f, 42);
      const touched = new Set(repair.map(keyId));
      for (const [k, v] of before) if (!touched.has(k)) assert.equal(after.get(k), v, `row ${k} changed`);
    });

    it('copyKeys moves many chunks of keys, identity ALWAYS keys and generated columns', async function () {
      const { src, tgt, table } = await fresh(`${ITEMS_DDL}${GENERATED_DDL}`, ITEMS_ROWS);
      const items = table('items');
      const keys = [...(await rangeRowHashes(src, items, whole)).keys()].map(parseKeyId);
      assert.deepEqual(await copyKeys(src, tgt, items, keys), { deleted: 0, inserted: ITEMS });
      assert.deepEqual(await copyKeys(src, tgt, items, keys), { deleted: ITEMS, inserted: ITEMS });
      assert.deepEqual(await rangeFingerprint(tgt, items, whole), await rangeFingerprint(src, items, whole));

      // Identity values the target's sequence would not give, and a generated total the target computes.
      await src.query('INSERT INTO gen (qty, price) SELECT i, i * 0.5 FROM generate_series(1, 30) i');
      await src.query('DELETE FROM gen WHERE id % 3 = 0');
      const gen = table('gen');
      assert.deepEqual(
        gen.columns.map((c) => [c.name, c.identity, c.generated]),
        [
          ['id', 'a', false],
          ['qty', '', false],
          ['price', '', false],
          ['total', '', true],
        ],
      );
      const genKeys = [...(await rangeRowHashes(src, gen, whole)).keys()].map(parseKeyId);
      assert.deepEqual(await copyKeys(src, tgt, gen, genKeys), { deleted: 0, inserted: 20 });
      await tgt.query('UPDATE gen SET qty = 0 WHERE id = 4');
      const diff = differingKeys(await rangeRowHashes(src, gen, whole), await rangeRowHashes(tgt, gen, whole));
      assert.deepEqual(diff, [['4']]);
      assert.deepEqual(await copyKeys(src, tgt, gen, diff), { deleted: 1, inserted: 1 });
      assert.deepEqual(await rangeFingerprint(tgt, gen, whole), await rangeFingerprint(src, gen, whole));
      const totals = await tgt.query('SELECT count(*)::int AS n FROM gen WHERE total IS DISTINCT FROM qty * price');
      assert.equal(totals.rows[0].n, 0);
      assert.equal((await tgt.query('SELECT max(id)::int AS m FROM gen')).rows[0].m, 29);

      // No key: range verification refuses, and says to compare the table whole.
      const nokey = table('nokey');
      assert.equal(hasRangeKey(nokey), false);
      await assert.rejects(rangeEnd(src, nokey, null, 10), (e: unknown) => isPgferryError(e) && e.code === 'INTERNAL');
    });
  });
}
