/**
 * large objects — logical replication does not carry them, so the load copies
 * them (same OIDs, owner, grants, comment) and each sync pass brings the
 * target in line again; a resumed copy ends equal, and a user's own object on
 * the target is never overwritten.
 */
import assert from 'node:assert/strict';
import type pg from 'pg';
import { connect } from '../agent/engine/conn';
import { isPgferryError } from '../agent/engine/errors';
import { copyLargeObjects, largeObjectsEqual, syncLargeObjects, LO_CHUNK_BYTES } from '../agent/engine/large-objects';
import { startCluster, type Cluster, type PgMajor } from '../dev/testbed';

const PAIRS: Array<{ source: PgMajor; target: PgMajor }> = [
  { source: 13, target: 17 },
  { source: 14, target: 17 },
];

/** The source role `lo_owner` is `lo_owner_t` on the target; `lo_reader` has the same name on both. */
const ROLE_MAP = { lo_owner: 'lo_owner_t' };

interface Seeded {
  empty: number;
  small: number;
  /** Exactly one chunk. */
  exact: number;
  /** A few chunks and a part of one. */
  big: number;
}

/** Pseudo-random bytes: `n` md5 digests of 16 bytes. */
const bytesSql = (n: number) => `(SELECT string_agg(decode(md5(i::text), 'hex'), ''::bytea ORDER BY i) FROM generate_series(1, ${n}) i)`;

async function seed(src: pg.Client): Promise<Seeded> {
  const r = await src.query(
    `SELECT lo_from_bytea(0, ''::bytea)::int8 AS empty, lo_from_bytea(0, 'hello large object'::bytea)::int8 AS small,
            lo_from_bytea(0, ${bytesSql(LO_CHUNK_BYTES / 16)})::int8 AS exact, lo_from_bytea(0, ${bytesSql(230_000)})::int8 AS big`,
  );
  const s = Object.fromEntries(Object.entries(r.rows[0]).map(([k, v]) => [k, Number(v)])) as unknown as Seeded;
  for (const oid of Object.values(s)) await src.query(`ALTER LARGE OBJECT ${oid} OWNER TO lo_owner`);
  await src.query(`GRANT SELECT ON LARGE OBJECT ${s.big} TO lo_reader`);
  await src.query(`COMMENT ON LARGE OBJECT ${s.small} IS 'a comment'`);
  return s;
}

async function assertEqual(src: pg.Client, tgt: pg.Client): Promise<void> {
  const r = await largeObjectsEqual(src, tgt, { roleMap: ROLE_MAP });
  assert.deepEqual(r.differences, []);
  assert.equal(r.equal, true);
}

async function recordedCount(tgt: pg.Client, migrationId: string): Promise<number> {
  return Number((await tgt.query('SELECT count(*) AS n FROM pgferry.large_objects WHERE migration_id = $1', [migrationId])).rows[0].n);
}

for (const pair of PAIRS) {
  describe(`large objects, PostgreSQL ${pair.source} → ${pair.target}`, function () {
    let source: Cluster;
    let target: Cluster;
    let n = 0;
    let open: pg.Client[] = [];

    before(async function () {
      [source, target] = await Promise.all([startCluster({ version: pair.source, fast: true }), startCluster({ version: pair.target, fast: true })]);
      await source.query('CREATE ROLE lo_owner; CREATE ROLE lo_reader');
      await target.query('CREATE ROLE lo_owner_t; CREATE ROLE lo_reader');
    });

    after(async function () {
      await Promise.all([source?.stop(), target?.stop()]);
    });

    afterEach(async function () {
      await Promise.all(open.map((c) => c.end().catch(() => undefined)));
      open = [];
    });

    /** A fresh database on each side and a session on each. */
    async function fresh(): Promise<{ db: string; src: pg.Client; tgt: pg.Client }> {
      const db = `lo${++n}`;
      await Promise.all([source.createDatabase(db), target.createDatabase(db)]);
      const src = await connect('source', source.endpoint(db));
      const tgt = await connect('target', target.endpoint(db));
      open.push(src, tgt);
      return { db, src, tgt };
    }

    it('copies every large object as the load snapshot saw it, with the same OID, owner, grants and comment', async function () {
      const { db, src, tgt } = await fresh();
      const lo = await seed(src);
      const exporter = await source.client(db);
      open.push(exporter);
      await exporter.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      const snapshot = (await exporter.query('SELECT pg_export_snapshot() AS s')).rows[0].s as string;
      // Written after the snapshot: the load must not see it.
      await src.query(`SELECT lo_put(${lo.small}, 0, 'HELLO'::bytea)`);

      const reader = await connect('source', source.endpoint(db));
      open.push(reader);
      await reader.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      await reader.query(`SET TRANSACTION SNAPSHOT '${snapshot}'`);
      const stats = await copyLargeObjects(reader, tgt, { migrationId: 'm1', roleMap: ROLE_MAP });
      await assertEqual(reader, tgt);
      await reader.query('COMMIT');
      await exporter.query('COMMIT');

      assert.equal(stats.objects, 4);
      assert.equal(stats.created, 4);
      assert.equal(stats.bytes, 0 + 18 + LO_CHUNK_BYTES + 230_000 * 16);
      const meta = await tgt.query(`SELECT pg_get_userbyid(lomowner) AS owner, lomacl::text[] AS acl FROM pg_largeobject_metadata WHERE oid = $1`, [lo.big]);
      assert.equal(meta.rows[0].owner, 'lo_owner_t');
      assert.ok((meta.rows[0].acl as string[]).some((a) => a.startsWith('lo_reader=r/')));
      const got = await tgt.query(`SELECT convert_from(lo_get(${lo.small}), 'UTF8') AS v, obj_description(${lo.small}, 'pg_largeobject') AS c`);
      assert.deepEqual(got.rows[0], { v: 'hello large object', c: 'a comment' });

      // Against the source's current state, only the object written after the snapshot differs.
      const now = await largeObjectsEqual(src, tgt, { roleMap: ROLE_MAP });
      assert.equal(now.equal, false);
      assert.ok(now.differences.length > 0 && now.differences.every((d) => d.includes(String(lo.small))), now.differences.join('\n'));
      const sync = await syncLargeObjects(src, tgt, { migrationId: 'm1', roleMap: ROLE_MAP });
      assert.deepEqual([sync.created, sync.updated, sync.unchanged, sync.unlinked], [0, 1, 3, 0]);
      await assertEqual(src, tgt);
    });

    it('a sync pass carries changed, truncated, unlinked and new objects and owner, grant and comment changes', async function () {
      const { src, tgt } = await fresh();
      const lo = await seed(src);
      await copyLargeObjects(src, tgt, { migrationId: 'm2', roleMap: ROLE_MAP });
      await assertEqual(src, tgt);

      // Same size, new bytes across a chunk boundary.
      await src.query(`SELECT lo_put(${lo.big}, ${LO_CHUNK_BYTES - 3}, '\\x0102030405060708'::bytea)`);
      await src.query(`BEGIN; SELECT lo_truncate(lo_open(${lo.small}, ${0x20000}), 5); COMMIT`);
      await src.query(`SELECT lo_unlink(${lo.exact})`);
      const added = Number((await src.query(`SELECT lo_from_bytea(0, ${bytesSql(70_000)})::int8 AS oid`)).rows[0].oid);
      await src.query(`ALTER LARGE OBJECT ${lo.empty} OWNER TO lo_reader`);
      await src.query(`GRANT UPDATE ON LARGE OBJECT ${lo.big} TO PUBLIC`);
      await src.query(`REVOKE SELECT ON LARGE OBJECT ${lo.big} FROM lo_reader`);
      await src.query(`COMMENT ON LARGE OBJECT ${lo.small} IS NULL`);

      const stats = await syncLargeObjects(src, tgt, { migrationId: 'm2', roleMap: ROLE_MAP });
      assert.deepEqual([stats.objects, stats.created, stats.updated, stats.unlinked, stats.unchanged], [4, 1, 2, 1, 1]);
      assert.ok(stats.metadataChanged >= 2);
      assert.ok(stats.elapsedMs >= 0);
      await assertEqual(src, tgt);
      assert.equal((await tgt.query('SELECT 1 FROM pg_largeobject_metadata WHERE oid = $1', [added])).rows.length, 1);

      const again = await syncLargeObjects(src, tgt, { migrationId: 'm2', roleMap: ROLE_MAP });
      assert.deepEqual([again.created, again.updated, again.unlinked, again.metadataChanged, again.bytes, again.unchanged], [0, 0, 0, 0, 0, 4]);

      // An object the user created on the target is not pgferry's to unlink.
      const mine = Number((await tgt.query(`SELECT lo_from_bytea(0, 'mine'::bytea)::int8 AS oid`)).rows[0].oid);
      const last = await syncLargeObjects(src, tgt, { migrationId: 'm2', roleMap: ROLE_MAP });
      assert.equal(last.unlinked, 0);
      assert.equal((await tgt.query(`SELECT convert_from(lo_get(${mine}), 'UTF8') AS v`)).rows[0].v, 'mine');
      await tgt.query(`SELECT lo_unlink(${mine})`);

      // A grant changed on the target by hand is seen and put back.
      await tgt.query(`GRANT SELECT ON LARGE OBJECT ${lo.small} TO lo_reader`);
      const drift = await largeObjectsEqual(src, tgt, { roleMap: ROLE_MAP });
      assert.equal(drift.equal, false);
      assert.ok(drift.differences.every((d) => d.includes(String(lo.small))));
      const fixed = await syncLargeObjects(src, tgt, { migrationId: 'm2', roleMap: ROLE_MAP });
      assert.deepEqual([fixed.metadataChanged, fixed.bytes], [1, 0]);
      await assertEqual(src, tgt);
    });

    it('needs no superuser on the source: SELECT on each large object is enough, and its absence is named', async function () {
      const { db, src, tgt } = await fresh();
      const lo = await seed(src);
      await src.query(`CREATE ROLE lo_mover LOGIN PASSWORD 'lo-mover-pw-1'`);
      await tgt.query('CREATE ROLE lo_mover');
      const plain = await connect('source', { ...source.endpoint(db), user: 'lo_mover', password: 'lo-mover-pw-1' });
      open.push(plain);
      for (const oid of [lo.empty, lo.small, lo.exact]) await src.query(`GRANT SELECT ON LARGE OBJECT ${oid} TO lo_mover`);
      await assert.rejects(copyLargeObjects(plain, tgt, { migrationId: 'm6', roleMap: ROLE_MAP }), (e: unknown) => {
        assert.ok(isPgferryError(e));
        assert.equal(e.code, 'INSUFFICIENT_PRIVILEGE');
        return true;
      });
      await src.query(`GRANT SELECT ON LARGE OBJECT ${lo.big} TO lo_mover`);
      const stats = await copyLargeObjects(plain, tgt, { migrationId: 'm6', roleMap: ROLE_MAP });
      assert.equal(stats.created + stats.unchanged, 4);
      await src.query(`SELECT lo_put(${lo.big}, 5, '\\xff'::bytea)`);
      assert.equal((await syncLargeObjects(plain, tgt, { migrationId: 'm6', roleMap: ROLE_MAP })).updated, 1);
      await assertEqual(plain, tgt);
    });

    it('a copy stopped midway and run again ends equal, replacing what changed meanwhile', async function () {
      const { src, tgt } = await fresh();
      const lo = await seed(src);
      await src.query(`SELECT lo_from_bytea(0, convert_to(i::text, 'UTF8')) FROM generate_series(1, 250) i`);
      const stop = new AbortController();
      await assert.rejects(
        copyLargeObjects(src, tgt, {
          migrationId: 'm3',
          roleMap: ROLE_MAP,
          signal: stop.signal,
          onProgress: (done) => {
            if (done >= 150) stop.abort();
          },
        }),
        (e: unknown) => isPgferryError(e),
      );
      const partial = await recordedCount(tgt, 'm3');
      assert.ok(partial > 0 && partial < 254, `recorded ${partial}`);
      assert.equal(Number((await tgt.query('SELECT count(*) AS n FROM pg_largeobject_metadata')).rows[0].n), partial);
      assert.equal((await tgt.query(`SELECT 1 FROM pgferry.large_objects WHERE oid = $1`, [lo.small])).rows.length, 1);

      await src.query(`SELECT lo_put(${lo.small}, 0, 'HELLO'::bytea)`);
      const stats = await copyLargeObjects(src, tgt, { migrationId: 'm3', roleMap: ROLE_MAP });
      assert.equal(stats.created + stats.updated + stats.unchanged, 254);
      assert.equal(stats.updated, 1);
      assert.equal(stats.unchanged, partial - 1);
      await assertEqual(src, tgt);
      assert.equal(await recordedCount(tgt, 'm3'), 254);
    });

    it("refuses an OID the user's own target object holds, and leaves that object as it was", async function () {
      const { src, tgt } = await fresh();
      const lo = await seed(src);
      await tgt.query(`SELECT lo_from_bytea($1, 'the user''s own'::bytea)`, [lo.big]);
      const before = (await tgt.query(`SELECT lomowner, lomacl::text AS acl FROM pg_largeobject_metadata WHERE oid = $1`, [lo.big])).rows[0];

      await assert.rejects(copyLargeObjects(src, tgt, { migrationId: 'm4', roleMap: ROLE_MAP }), (e: unknown) => {
        assert.ok(isPgferryError(e));
        assert.equal(e.code, 'COPY_FAILED');
        assert.ok(e.message.includes(String(lo.big)));
        assert.ok(e.remedy.includes(String(lo.big)));
        return true;
      });
      assert.equal((await tgt.query(`SELECT convert_from(lo_get(${lo.big}), 'UTF8') AS v`)).rows[0].v, "the user's own");
      const after = (await tgt.query(`SELECT lomowner, lomacl::text AS acl FROM pg_largeobject_metadata WHERE oid = $1`, [lo.big])).rows[0];
      assert.deepEqual(after, before);
      assert.equal(await recordedCount(tgt, 'm4'), 0);
    });

    it('names a role missing on the target and writes nothing for its objects', async function () {
      const { src, tgt } = await fresh();
      await seed(src);
      await assert.rejects(copyLargeObjects(src, tgt, { migrationId: 'm5', roleMap: { lo_owner: 'no_such_role' } }), (e: unknown) => {
        assert.ok(isPgferryError(e));
        assert.equal(e.code, 'COPY_FAILED');
        assert.ok(e.message.includes('no_such_role'));
        return true;
      });
      assert.equal(Number((await tgt.query('SELECT count(*) AS n FROM pg_largeobject_metadata')).rows[0].n), 0);
    });
  });
}
