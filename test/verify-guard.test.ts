/**
 * verify guard — the continuous verification re-checks only the rows the
 * agent applied since, so it must learn of every write anyone else makes to
 * a migrated target table after its snapshot: each is reported for the
 * tables it touched (a partitioned table's statement for each leaf below
 * it), with its kind; the agent's own writes, and writes before the
 * snapshot, are not. The guards never show in the schema comparison.
 */
import assert from 'node:assert/strict';
import type pg from 'pg';
import { selectTables, tableKey, type TableInfo } from '../agent/engine/catalog';
import { connect } from '../agent/engine/conn';
import { isPgferryError, sqlState } from '../agent/engine/errors';
import { describeSchema } from '../agent/engine/schema-describe';
import { diffSchemas } from '../agent/engine/schema-diff';
import { readTriggers } from '../agent/engine/schema-objects-read';
import { ensureTargetState } from '../agent/engine/target-state';
import {
  APPLYING_SETTING_SQL,
  GUARD_TRIGGER,
  dropGuards,
  foreignWritesAfter,
  guardSnapshot,
  installGuards,
  type ForeignWrites,
} from '../agent/engine/verify-guard';
import { startCluster, type Cluster, type PgMajor } from '../dev/testbed';

const TARGETS: PgMajor[] = [17, 13];

const APP_ROLE = 'app_writer';
const APP_PASSWORD = 'app-writer-pw';

/** Plain tables (one with a trigger of its own, one whose name quote_ident quotes and qi does not), and a two-level partitioned table. */
const SHOP_DDL = `
CREATE SCHEMA shop;
CREATE TABLE shop.items (id int PRIMARY KEY, v text, touched timestamptz);
CREATE FUNCTION shop.touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.touched := now(); RETURN NEW; END$$;
CREATE TRIGGER items_touch BEFORE INSERT OR UPDATE ON shop.items FOR EACH ROW EXECUTE FUNCTION shop.touch();
CREATE TABLE shop.notes (id int PRIMARY KEY, v text);
CREATE TABLE shop.quiet (id int PRIMARY KEY);
CREATE TABLE shop."odd$" (id int PRIMARY KEY);
CREATE TABLE shop.events (id int NOT NULL, at date NOT NULL, region text NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE shop.events_2024 PARTITION OF shop.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY LIST (region);
CREATE TABLE shop.events_2024_eu PARTITION OF shop.events_2024 FOR VALUES IN ('eu');
CREATE TABLE shop.events_2024_us PARTITION OF shop.events_2024 FOR VALUES IN ('us');
CREATE TABLE shop.events_2025 PARTITION OF shop.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO shop.items VALUES (1, 'one'), (2, 'two');
INSERT INTO shop.notes VALUES (1, 'a');`;

const LEAVES_2024 = ['shop.events_2024_eu', 'shop.events_2024_us'];

for (const version of TARGETS) {
  describe(`verify guard, target PostgreSQL ${version}`, function () {
    let target: Cluster;
    let n = 0;
    let open: pg.Client[] = [];

    before(async function () {
      target = await startCluster({ version, fast: true });
      await target.query(`CREATE ROLE ${APP_ROLE} LOGIN PASSWORD '${APP_PASSWORD}'`);
    });

    after(async function () {
      await target?.stop();
    });

    afterEach(async function () {
      await Promise.all(open.map((c) => c.end().catch(() => undefined)));
      open = [];
    });

    /** A new target session on `db` (as the superuser unless `user` is given). */
    async function session(db: string, user?: { user: string; password: string }): Promise<pg.Client> {
      const c = await connect('target', { ...target.endpoint(db), ...user });
      open.push(c);
      return c;
    }

    /** A fresh database with the shop's tables, pgferry's schema, and (unless `guard` is false) the guards. */
    async function fresh(guard = true): Promise<{ db: string; tgt: pg.Client; tables: TableInfo[] }> {
      const db = `guard${++n}`;
      await target.createDatabase(db);
      const tgt = await session(db);
      await tgt.query(SHOP_DDL);
      await ensureTargetState(tgt);
      const { tables } = await selectTables(tgt, { include: ['shop.*'], exclude: [] });
      if (guard) await installGuards(tgt, tables);
      return { db, tgt, tables };
    }

    /** A verification's snapshot: taken in its own REPEATABLE READ transaction on `c`. */
    async function snapshot(c: pg.Client): Promise<string> {
      await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
      try {
        return await guardSnapshot(c);
      } finally {
        await c.query('COMMIT');
      }
    }

    /** The same snapshot for every data table. */
    const sinceAll = (tables: TableInfo[], s: string) => new Map(tables.filter((t) => t.kind === 'r').map((t) => [tableKey(t), s]));

    /** The report as { table: ops }, for comparing whole. */
    const opsOf = (r: Map<string, ForeignWrites>) => Object.fromEntries([...r].map(([k, v]) => [k, v.ops]).sort());

    const guardCount = async (c: pg.Client) => Number((await c.query('SELECT count(*) AS n FROM pg_trigger WHERE tgname = $1', [GUARD_TRIGGER])).rows[0].n);
    const noteCount = async (c: pg.Client) => Number((await c.query('SELECT count(*) AS n FROM pgferry.foreign_writes')).rows[0].n);

    it('reports an INSERT, UPDATE, DELETE and TRUNCATE by an ordinary session after the snapshot, with their kinds, and nothing committed before it', async function () {
      const { db, tgt, tables } = await fresh();
      const app = await session(db);
      await app.query("INSERT INTO shop.items VALUES (3, 'before'); TRUNCATE shop.quiet");
      const s = await snapshot(tgt);

      await app.query("INSERT INTO shop.items VALUES (4, 'after')");
      await app.query("UPDATE shop.items SET v = 'x' WHERE id = 1");
      await app.query('DELETE FROM shop.items WHERE id = 2');
      await app.query('TRUNCATE shop.notes');
      await app.query('INSERT INTO shop."odd$" VALUES (1)');

      const r = await foreignWritesAfter(tgt, tables, sinceAll(tables, s));
      assert.deepEqual(opsOf(r), { 'shop.items': ['DELETE', 'INSERT', 'UPDATE'], 'shop.notes': ['TRUNCATE'], 'shop.odd$': ['INSERT'] });
      assert.equal(r.get('shop.items')!.count, 3);
      // The TRUNCATE of shop.notes ran after the last write to shop.items (ISO 8601 text, one offset: ordered as text).
      const [items, notes] = [r.get('shop.items')!.lastAt, r.get('shop.notes')!.lastAt];
      assert.ok(Number.isFinite(Date.parse(items)) && items < notes, `${items} < ${notes}`);

      // A table without a snapshot is not looked at; a later snapshot sees none of it.
      const only = await foreignWritesAfter(tgt, tables, new Map([['shop.notes', s]]));
      assert.deepEqual(opsOf(only), { 'shop.notes': ['TRUNCATE'] });
      assert.equal((await foreignWritesAfter(tgt, tables, sinceAll(tables, await snapshot(tgt)))).size, 0);
    });

    it('reports a transaction open at the snapshot that commits after it (transaction ids, not times)', async function () {
      const { db, tgt, tables } = await fresh();
      const [early, open1] = [await session(db), await session(db)];
      await early.query("INSERT INTO shop.notes VALUES (10, 'committed before')");
      await open1.query('BEGIN');
      await open1.query("INSERT INTO shop.items VALUES (10, 'in progress at the snapshot')");
      const s = await snapshot(tgt);
      assert.equal((await foreignWritesAfter(tgt, tables, sinceAll(tables, s))).size, 0, 'not committed yet');
      await open1.query('COMMIT');

      const r = await foreignWritesAfter(tgt, tables, sinceAll(tables, s));
      assert.deepEqual(opsOf(r), { 'shop.items': ['INSERT'] });
      assert.equal(r.get('shop.items')!.count, 1);
    });

    it("does not report the agent's own writes: replica mode, or pgferry.applying = 'on' (ordered mode)", async function () {
      const { db, tgt, tables } = await fresh();
      const [replica, ordered, app] = [await session(db), await session(db), await session(db)];
      await replica.query('SET session_replication_role = replica');
      await ordered.query(APPLYING_SETTING_SQL);
      const s = await snapshot(tgt);
      for (const c of [replica, ordered]) {
        await c.query("INSERT INTO shop.items VALUES (20, 'agent') ON CONFLICT (id) DO UPDATE SET v = 'agent again'");
        await c.query("DELETE FROM shop.notes; TRUNCATE shop.quiet; INSERT INTO shop.events VALUES (1, '2025-03-01', 'eu')");
      }
      assert.equal((await foreignWritesAfter(tgt, tables, sinceAll(tables, s))).size, 0);
      assert.equal(await noteCount(tgt), 0);

      await app.query('DELETE FROM shop.quiet');
      assert.deepEqual(opsOf(await foreignWritesAfter(tgt, tables, sinceAll(tables, s))), { 'shop.quiet': ['DELETE'] });
    });

    it('records an application role that has no rights on schema pgferry, without refusing its write', async function () {
      const { db, tgt, tables } = await fresh();
      await tgt.query(`GRANT USAGE ON SCHEMA shop TO ${APP_ROLE}; GRANT INSERT ON shop.items TO ${APP_ROLE}`);
      const privileges = await tgt.query(
        `SELECT has_schema_privilege($1, 'pgferry', 'USAGE') AS usage, has_table_privilege($1, 'pgferry.foreign_writes', 'INSERT') AS ins,
                has_function_privilege($1, 'pgferry.note_foreign_write()', 'EXECUTE') AS exec`,
        [APP_ROLE],
      );
      assert.deepEqual(privileges.rows[0], { usage: false, ins: false, exec: false });
      const s = await snapshot(tgt);

      const app = await session(db, { user: APP_ROLE, password: APP_PASSWORD });
      await app.query("INSERT INTO shop.items (id, v) VALUES (30, 'by the application')");
      await assert.rejects(app.query('SELECT count(*) FROM pgferry.foreign_writes'), (e) => sqlState(e) === '42501');

      assert.deepEqual(opsOf(await foreignWritesAfter(tgt, tables, sinceAll(tables, s))), { 'shop.items': ['INSERT'] });
    });

    it("reports a partitioned table's statement for every leaf below it, and a partition's for that leaf only", async function () {
      const { db, tgt, tables } = await fresh();
      const app = await session(db);
      const check = async (sql: string, expected: Record<string, string[]>) => {
        const s = await snapshot(tgt);
        await app.query(sql);
        assert.deepEqual(opsOf(await foreignWritesAfter(tgt, tables, sinceAll(tables, s))), expected, sql);
      };
      await check("INSERT INTO shop.events VALUES (1, '2024-05-01', 'eu')", {
        'shop.events_2024_eu': ['INSERT'],
        'shop.events_2024_us': ['INSERT'],
        'shop.events_2025': ['INSERT'],
      });
      await check("INSERT INTO shop.events_2025 VALUES (2, '2025-05-01', 'us')", { 'shop.events_2025': ['INSERT'] });
      await check("UPDATE shop.events_2024 SET region = 'us' WHERE id = 1", Object.fromEntries(LEAVES_2024.map((k) => [k, ['UPDATE']])));
      await check('DELETE FROM shop.events_2024_us', { 'shop.events_2024_us': ['DELETE'] });
      await check('TRUNCATE shop.events', {
        'shop.events_2024_eu': ['TRUNCATE'],
        'shop.events_2024_us': ['TRUNCATE'],
        'shop.events_2025': ['TRUNCATE'],
      });
      // No report under a partitioned table: it holds no data.
      const s = await snapshot(tgt);
      await app.query("INSERT INTO shop.events VALUES (3, '2025-06-01', 'eu')");
      const r = await foreignWritesAfter(tgt, tables, new Map(tables.map((t) => [tableKey(t), s])));
      assert.deepEqual([...r.keys()].sort(), [...LEAVES_2024, 'shop.events_2025']);
    });

    it('installs once however often it is called, forgets a rolled-back write, and drops every guard and note in one round trip', async function () {
      const { db, tgt, tables } = await fresh();
      await installGuards(tgt, tables);
      assert.equal(await guardCount(tgt), tables.length);
      const app = await session(db);
      const s = await snapshot(tgt);
      await app.query('BEGIN');
      await app.query("INSERT INTO shop.items VALUES (40, 'rolled back')");
      await app.query('ROLLBACK');
      assert.equal(await noteCount(tgt), 0);
      assert.equal((await foreignWritesAfter(tgt, tables, sinceAll(tables, s))).size, 0);

      await app.query("INSERT INTO shop.items VALUES (41, 'kept')");
      assert.equal(await noteCount(tgt), 1);
      const queries = countQueries(tgt);
      await dropGuards(tgt, tables);
      assert.equal(queries.stop(), 1);
      assert.equal(await guardCount(tgt), 0);
      assert.equal(await noteCount(tgt), 0);
      await app.query("INSERT INTO shop.items VALUES (42, 'unguarded')");
      assert.equal(await noteCount(tgt), 0);
      await dropGuards(tgt, tables); // again: nothing left to do
      await tgt.query('DROP TABLE shop.quiet');
      await installGuards(
        tgt,
        tables.filter((t) => t.name !== 'quiet'),
      );
      await dropGuards(tgt, tables); // a table gone from the target is skipped
      assert.equal(await guardCount(tgt), 0);
    });

    it('waits for a lock held briefly, and names the table when it stays locked (all guards dropped or none)', async function () {
      const { db, tgt, tables } = await fresh(false);
      const holder = await session(db);
      await holder.query('BEGIN');
      await holder.query('LOCK TABLE shop.quiet IN ROW EXCLUSIVE MODE');
      await assert.rejects(installGuards(tgt, tables, { attempts: 2, lockTimeoutMs: 50 }), (e) => {
        assert.ok(isPgferryError(e) && e.code === 'CUTOVER_FAILED' && e.message.includes('shop.quiet'), String(e));
        assert.equal(sqlState(e.cause), '55P03');
        return true;
      });
      // Released while installGuards waits for it: the guard is installed.
      const installing = installGuards(tgt, tables, { lockTimeoutMs: 2000 });
      await waitForLockWait(holder, 'shop.quiet');
      await holder.query('COMMIT');
      await installing;
      assert.equal(await guardCount(tgt), tables.length);

      await holder.query('BEGIN');
      await holder.query('SELECT count(*) FROM shop.events_2025');
      await assert.rejects(dropGuards(tgt, tables, { attempts: 2, lockTimeoutMs: 50 }), (e) => {
        assert.ok(isPgferryError(e) && e.code === 'CUTOVER_FAILED' && e.message.includes('shop.events_2025'), String(e));
        return true;
      });
      assert.equal(await guardCount(tgt), tables.length);
      await holder.query('COMMIT');
      await dropGuards(tgt, tables);
      assert.equal(await guardCount(tgt), 0);
    });

    it('refuses a snapshot taken outside a REPEATABLE READ transaction', async function () {
      const { tgt } = await fresh();
      await assert.rejects(guardSnapshot(tgt), (e) => isPgferryError(e) && e.code === 'INTERNAL');
    });

    it('leaves the schema comparison as it was without the guards', async function () {
      const { tgt, tables } = await fresh(false);
      const before = await describeSchema(tgt, { schemas: ['shop'] });
      await installGuards(tgt, tables);
      assert.equal(await guardCount(tgt), tables.length);
      const after = await describeSchema(tgt, { schemas: ['shop'] });
      assert.deepEqual(diffSchemas(before, after), []);
      assert.deepEqual(after, before);
      assert.ok(after.some((o) => o.identity.includes('items_touch')));
      const oids = tables.map((t) => t.oid);
      assert.deepEqual(
        (await readTriggers(tgt, oids)).map((t) => t.name),
        ['items_touch'],
      );
    });

    it('drops the guards of a few dozen tables at once (time printed)', async function () {
      const { db, tgt } = await fresh(false);
      await tgt.query(Array.from({ length: 48 }, (_, i) => `CREATE TABLE shop.t${i} (id int PRIMARY KEY)`).join('; '));
      const { tables } = await selectTables(tgt, { include: ['shop.t*'], exclude: [] });
      assert.equal(tables.length, 48);
      const t0 = performance.now();
      await installGuards(tgt, tables);
      const installMs = performance.now() - t0;
      const app = await session(db);
      await app.query(tables.map((t) => `INSERT INTO ${tableKey(t)} VALUES (1)`).join('; '));
      assert.equal(await noteCount(tgt), 48);
      const t1 = performance.now();
      await dropGuards(tgt, tables);
      const dropMs = performance.now() - t1;
      console.log(`      ${tables.length} tables: installGuards ${installMs.toFixed(1)} ms, dropGuards ${dropMs.toFixed(1)} ms (one round trip)`);
      assert.equal(await guardCount(tgt), 0);
      assert.equal(await noteCount(tgt), 0);
    });
  });
}

/** Count the queries sent on `c` until `stop()`, which says how many. */
function countQueries(c: pg.Client): { stop(): number } {
  const original = c.query;
  let calls = 0;
  c.query = function (this: pg.Client, ...args: unknown[]) {
    calls++;
    return (original as (...a: unknown[]) => unknown).apply(this, args);
  } as typeof c.query;
  return {
    stop() {
      c.query = original;
      return calls;
    },
  };
}

/** Until some session waits for a lock on `table` (the state to wait on, not a time). */
async function waitForLockWait(c: pg.Client, table: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    const r = await c.query('SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = $1::regclass AND NOT granted) AS waiting', [table]);
    if (r.rows[0].waiting) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`no session came to wait for a lock on ${table}`);
}
