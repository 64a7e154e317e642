/**
 * Schema changes during the sync are followed: what the application
 * creates, replaces or drops on the source besides tables and columns
 * (indexes, views, materialized views, functions, triggers, policies,
 * comments, grants, types and enum values) is made on the target by
 * `reconcileObjects`, so that the cutover's schema check finds only the
 * switched-off triggers and row security; tables, columns and rows of the
 * target are never touched. Source 14, target 17, real clusters, no agent.
 */
import assert from 'node:assert/strict';
import type pg from 'pg';
import { startCluster, type Cluster } from '../dev/testbed';
import { selectTables, type TableInfo } from '../agent/engine/catalog';
import { applyFinish, applyPostDataStatement, applyPreData, NO_ROLE_MAPPING, planSchema } from '../agent/engine/schema';
import { describeSchema } from '../agent/engine/schema-describe';
import { diffSchemas, formatSchemaDiff, type SchemaDifference } from '../agent/engine/schema-diff';
import { reconcileObjects, reconcileTypes, type ReconcileOptions } from '../agent/engine/schema-follow-objects';
import { migratableTables } from '../agent/engine/preflight';
import { RENTAL_OWNER, rentalRolesSql, rentalSchemaSql, rentalSeedSql } from './fixtures/rental';

const ROLES_SQL = `CREATE ROLE app_owner NOLOGIN; CREATE ROLE app_reader NOLOGIN;`;

const SHOP_DDL = `
CREATE SCHEMA shop;
CREATE TYPE shop.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE shop.customers (id integer PRIMARY KEY, email text NOT NULL, mood shop.mood DEFAULT 'ok');
CREATE TABLE shop.orders (id bigserial PRIMARY KEY, customer_id integer NOT NULL REFERENCES shop.customers (id), note text,
  status text DEFAULT 'new', total numeric(12,2));
CREATE INDEX orders_status_idx ON shop.orders (status);
CREATE FUNCTION shop.touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.status := 'new'; RETURN NEW; END$$;
CREATE FUNCTION shop.label(o shop.orders) RETURNS text LANGUAGE sql STABLE AS $$SELECT o.status$$;
CREATE FUNCTION shop.twice(n integer) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT n * 2';
CREATE TRIGGER orders_touch BEFORE INSERT ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.touch();
CREATE VIEW shop.open_orders AS SELECT id, customer_id FROM shop.orders WHERE status = 'new';
CREATE VIEW shop.old_view AS SELECT id FROM shop.customers;
ALTER TABLE shop.customers ENABLE ROW LEVEL SECURITY;
CREATE POLICY customers_all ON shop.customers FOR SELECT TO app_reader USING (true);
ALTER TABLE shop.orders OWNER TO app_owner;
`;

/** What the application does during the sync, one of each. */
const CHANGES = `
CREATE INDEX orders_note_idx ON shop.orders (note) WHERE note IS NOT NULL;
DROP INDEX shop.orders_status_idx;
CREATE VIEW shop.big_orders AS SELECT id, total FROM shop.orders WHERE total > 100;
CREATE OR REPLACE VIEW shop.open_orders AS SELECT id, customer_id, total FROM shop.orders WHERE status IN ('new', 'paid');
DROP VIEW shop.old_view;
CREATE FUNCTION shop.order_total(cid integer) RETURNS numeric LANGUAGE sql STABLE AS $$SELECT sum(total) FROM shop.orders WHERE customer_id = cid$$;
CREATE OR REPLACE FUNCTION shop.touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.status := coalesce(NEW.status, 'new'); RETURN NEW; END$$;
DROP FUNCTION shop.twice(integer);
CREATE FUNCTION shop.twice(n integer) RETURNS bigint LANGUAGE sql IMMUTABLE AS 'SELECT n::bigint * 2';
CREATE TRIGGER orders_note AFTER UPDATE OF note ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.touch();
DROP TRIGGER orders_touch ON shop.orders;
CREATE POLICY customers_mood ON shop.customers AS RESTRICTIVE FOR UPDATE TO app_reader USING (mood <> 'sad');
DROP POLICY customers_all ON shop.customers;
COMMENT ON INDEX shop.orders_note_idx IS 'notes';
COMMENT ON TABLE shop.orders IS 'Orders';
COMMENT ON FUNCTION shop.touch() IS 'keeps status';
GRANT SELECT ON shop.orders TO app_reader;
GRANT SELECT (email) ON shop.customers TO app_reader;
REVOKE EXECUTE ON FUNCTION shop.order_total(integer) FROM PUBLIC;
CREATE TYPE shop.size AS ENUM ('s', 'm', 'l');
ALTER TYPE shop.mood ADD VALUE 'meh' BEFORE 'happy';
ALTER TYPE shop.mood ADD VALUE 'ecstatic';
CREATE MATERIALIZED VIEW shop.totals AS SELECT customer_id, sum(total) AS total FROM shop.orders GROUP BY customer_id;
CREATE UNIQUE INDEX totals_customer ON shop.totals (customer_id);
CREATE SEQUENCE shop.ticket_seq START 100;
ALTER TABLE shop.orders ADD CONSTRAINT orders_total_check CHECK (total >= 0);
ALTER DEFAULT PRIVILEGES IN SCHEMA shop GRANT SELECT ON TABLES TO app_reader;
CREATE STATISTICS shop.orders_stats (dependencies) ON customer_id, status FROM shop.orders;
CREATE RULE orders_keep_paid AS ON DELETE TO shop.orders WHERE OLD.status = 'paid' DO INSTEAD NOTHING;
ALTER TABLE shop.orders OWNER TO app_reader;
`;

const SELECTION = { include: ['shop.*'], exclude: [] };

/** The schema stage, as the migration runs it: pre-data, post-data, finish. */
async function schemaStage(src: pg.Client, tgt: pg.Client, tables: TableInfo[], schemas: string[]): Promise<void> {
  const plan = await planSchema(src, tables, { schemas, roles: NO_ROLE_MAPPING });
  await applyPreData(tgt, plan);
  for (const s of plan.postData) await applyPostDataStatement(tgt, s);
  await applyFinish(tgt, plan, { missingRoles: 'fail' });
}

/** The differences the cutover's check would find, but the `enabled` ones of triggers, rules and row security (the handover's). */
async function differences(src: pg.Client, tgt: pg.Client, opts: ReconcileOptions): Promise<SchemaDifference[]> {
  const which = { schemas: opts.schemas, tables: opts.tables.map((t) => ({ schema: t.schema, name: t.name })) };
  const diffs = diffSchemas(await describeSchema(src, which), await describeSchema(tgt, which), { roleMap: opts.roles.map });
  return diffs.filter((d) => !(d.what === 'enabled' && ['trigger', 'rule', 'table'].includes(d.kind)));
}

describe('schema follow: objects besides tables and columns, PostgreSQL 14 → 17', function () {
  this.timeout(300_000);
  let source: Cluster;
  let target: Cluster;
  let src: pg.Client;
  let tgt: pg.Client;
  let opts: ReconcileOptions;

  before(async function () {
    [source, target] = await Promise.all([startCluster({ version: 14, fast: true }), startCluster({ version: 17, fast: true })]);
    for (const c of [source, target]) await c.query(ROLES_SQL);
    [src, tgt] = [await source.client(), await target.client()];
    await src.query(SHOP_DDL);
    const tables = migratableTables((await selectTables(src, SELECTION)).tables);
    opts = { tables, schemas: ['shop'], roles: NO_ROLE_MAPPING };
    await schemaStage(src, tgt, tables, ['shop']);
  });

  after(async function () {
    for (const c of [src, tgt]) await c?.end().catch(() => undefined);
    await Promise.all([source?.stop(), target?.stop()]);
  });

  it('finds nothing to do right after the schema stage', async function () {
    assert.deepEqual(await differences(src, tgt, opts), []);
    const r = await reconcileObjects(src, tgt, opts);
    assert.deepEqual(r, { applied: [], failed: [], unsupported: [] });
  });

  it('makes on the target what the application created, replaced and dropped on the source; a second call applies nothing', async function () {
    await src.query(CHANGES);
    const r = await reconcileObjects(src, tgt, opts);
    assert.deepEqual(r.failed, [], JSON.stringify(r.failed, null, 2));
    assert.deepEqual(r.unsupported, []);
    const left = await differences(src, tgt, opts);
    assert.deepEqual(left, [], formatSchemaDiff(left));
    const change = (object: string) => r.applied.filter((a) => a.object === object).map((a) => a.change);
    assert.deepEqual(change('index shop.orders_note_idx'), ['index created', 'comment set']);
    assert.match(r.applied.find((a) => a.object === 'index shop.orders_note_idx')!.statement, /^CREATE INDEX CONCURRENTLY orders_note_idx ON shop\.orders /);
    assert.deepEqual(change('index shop.orders_status_idx'), ['index dropped']);
    assert.deepEqual(change('view shop.open_orders'), ['view replaced']);
    assert.deepEqual(change('view shop.old_view'), ['view dropped']);
    assert.deepEqual(change('function shop.twice(integer)'), ['function replaced'], 'a changed result type: dropped and created again');
    assert.deepEqual(change('type shop.mood'), ['enum values added']);
    assert.deepEqual(change('trigger orders_touch on shop.orders'), ['trigger dropped']);
    assert.deepEqual(change('materialized view shop.totals'), ['materialized view created']);
    // The enum's values in the source's order (one added in the middle with BEFORE).
    const labels = await tgt.query(`SELECT array_agg(enumlabel::text ORDER BY enumsortorder) AS l FROM pg_enum WHERE enumtypid = 'shop.mood'::regtype`);
    assert.deepEqual(labels.rows[0].l, ['sad', 'ok', 'meh', 'happy', 'ecstatic']);
    const quiet = await tgt.query(`SELECT (SELECT tgenabled FROM pg_trigger WHERE tgname = 'orders_note') AS trigger,
      (SELECT ev_enabled FROM pg_rewrite WHERE rulename = 'orders_keep_paid') AS rule`);
    assert.deepEqual(quiet.rows[0], { trigger: 'D', rule: 'D' }, 'a trigger and a rule created during the sync stay off until the handover');
    const mv = await tgt.query(`SELECT relispopulated FROM pg_class WHERE oid = 'shop.totals'::regclass`);
    assert.equal(mv.rows[0].relispopulated, true, 'the materialized view is refreshed');
    assert.deepEqual(await reconcileObjects(src, tgt, opts), { applied: [], failed: [], unsupported: [] });
  });

  it('reports a statement the target refuses in `failed` and still applies the others', async function () {
    // A column only the source has yet (the stream brings it later), an index on it, and a comment.
    await src.query(`ALTER TABLE shop.orders ADD COLUMN shipped_at timestamptz;
      CREATE INDEX orders_shipped_idx ON shop.orders (shipped_at);
      COMMENT ON VIEW shop.big_orders IS 'over 100'`);
    const r = await reconcileObjects(src, tgt, opts);
    assert.deepEqual(
      r.failed.map((f) => f.object),
      ['index shop.orders_shipped_idx'],
    );
    assert.match(r.failed[0].error, /shipped_at.*does not exist.*42703/);
    assert.deepEqual(
      r.applied.map((a) => `${a.object}: ${a.change}`),
      ['view shop.big_orders: comment set'],
    );
    // No invalid index was left behind by the concurrent build.
    const left = await tgt.query(`SELECT count(*)::int AS n FROM pg_class WHERE relname = 'orders_shipped_idx'`);
    assert.equal(left.rows[0].n, 0);
    await src.query(`DROP INDEX shop.orders_shipped_idx; ALTER TABLE shop.orders DROP COLUMN shipped_at`);
  });

  it('never touches a table, a column or a row: a table and a column only on the target stay, and so do their rows', async function () {
    await tgt.query(`CREATE TABLE shop.target_only (x integer); INSERT INTO shop.target_only VALUES (1);
      ALTER TABLE shop.customers ADD COLUMN target_col text; INSERT INTO shop.customers (id, email, target_col) VALUES (1, 'a@b', 'kept')`);
    await src.query(`ALTER TABLE shop.customers ADD COLUMN source_col text`);
    const r = await reconcileObjects(src, tgt, opts);
    assert.deepEqual(r, { applied: [], failed: [], unsupported: [] });
    const t = await tgt.query(`SELECT (SELECT count(*)::int FROM shop.target_only) AS rows, (SELECT target_col FROM shop.customers WHERE id = 1) AS col,
      (SELECT count(*)::int FROM pg_attribute WHERE attrelid = 'shop.customers'::regclass AND attname = 'source_col') AS added`);
    assert.deepEqual(t.rows[0], { rows: 1, col: 'kept', added: 0 });
    await src.query(`ALTER TABLE shop.customers DROP COLUMN source_col`);
    await tgt.query(`ALTER TABLE shop.customers DROP COLUMN target_col; DROP TABLE shop.target_only`);
  });

  it('leaves what hangs off a table the target does not have yet to the table, and follows it once the table is there', async function () {
    const table = `CREATE TABLE shop.returns (id integer PRIMARY KEY, order_id bigint, reason text)`;
    await src.query(`${table}; CREATE INDEX returns_order_idx ON shop.returns (order_id);
      CREATE TRIGGER returns_touch BEFORE INSERT ON shop.returns FOR EACH ROW EXECUTE FUNCTION shop.touch()`);
    const withReturns = { ...opts, tables: migratableTables((await selectTables(src, SELECTION)).tables) };
    assert.deepEqual(await reconcileObjects(src, tgt, withReturns), { applied: [], failed: [], unsupported: [] });
    await tgt.query(table); // as the copy of a new table makes it
    const r = await reconcileObjects(src, tgt, withReturns);
    assert.deepEqual(r.failed, []);
    assert.deepEqual(r.applied.map((a) => `${a.object}: ${a.change}`).sort(), [
      'index shop.returns_order_idx: index created',
      'trigger returns_touch on shop.returns: trigger created',
    ]);
    await src.query('DROP TABLE shop.returns');
    await tgt.query('DROP TABLE shop.returns');
  });

  it('reconcileTypes creates new types and adds enum values, and nothing else', async function () {
    await src.query(`CREATE TYPE shop.color AS ENUM ('red', 'blue'); ALTER TYPE shop.color ADD VALUE 'green' BEFORE 'blue';
      ALTER TYPE shop.size ADD VALUE 'xs' BEFORE 's'; CREATE INDEX orders_total_idx ON shop.orders (total)`);
    const applied = await reconcileTypes(src, tgt, opts);
    assert.deepEqual(applied.map((a) => `${a.object}: ${a.change}`).sort(), ['type shop.color: type created', 'type shop.size: enum value added']);
    const labels = await tgt.query(`SELECT array_agg(enumlabel::text ORDER BY enumsortorder) AS l FROM pg_enum WHERE enumtypid = 'shop.size'::regtype`);
    assert.deepEqual(labels.rows[0].l, ['xs', 's', 'm', 'l']);
    assert.deepEqual(
      (await differences(src, tgt, opts)).map((d) => `${d.identity}: ${d.what}`),
      ['index shop.orders_total_idx: missing-on-target'],
    );
    const r = await reconcileObjects(src, tgt, opts);
    assert.deepEqual(
      r.applied.map((a) => a.change),
      ['index created'],
    );
  });
});

describe('schema follow: the rental database, PostgreSQL 14 → 17', function () {
  this.timeout(300_000);
  let source: Cluster;
  let target: Cluster;
  let src: pg.Client;
  let tgt: pg.Client;

  before(async function () {
    [source, target] = await Promise.all([startCluster({ version: 14, fast: true }), startCluster({ version: 17, fast: true })]);
    for (const c of [source, target]) {
      await c.query(rentalRolesSql('rental-pw'));
      await c.createDatabase('rental');
    }
    await source.query(`${rentalSchemaSql(14)};\n${rentalSeedSql()}`, [], 'rental');
    [src, tgt] = [await source.client('rental'), await target.client('rental')];
  });

  after(async function () {
    for (const c of [src, tgt]) await c?.end().catch(() => undefined);
    await Promise.all([source?.stop(), target?.stop()]);
  });

  it('after the schema stage, a call finds nothing to do; an index and a view created as the owner come over', async function () {
    const tables = migratableTables((await selectTables(src, { include: ['rental.*', 'reporting.*'], exclude: [] })).tables);
    const opts: ReconcileOptions = { tables, schemas: ['rental', 'reporting'], roles: NO_ROLE_MAPPING };
    await schemaStage(src, tgt, tables, opts.schemas);
    const ms: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t0 = process.hrtime.bigint();
      assert.deepEqual(await reconcileObjects(src, tgt, opts), { applied: [], failed: [], unsupported: [] });
      ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    console.log(`      (a call with nothing to do on the rental database: ${ms.map((x) => x.toFixed(0)).join(', ')} ms)`);
    await src.query(`SET ROLE ${RENTAL_OWNER}; CREATE INDEX film_title_lower ON rental.film (lower(title));
      CREATE VIEW rental.short_films AS SELECT film_id, title FROM rental.film WHERE length_minutes < 60; RESET ROLE`);
    const r = await reconcileObjects(src, tgt, opts);
    assert.deepEqual(r.failed, []);
    assert.deepEqual(await differences(src, tgt, opts), []);
  });
});
