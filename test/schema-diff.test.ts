/**
 * schema verification — the catalog of every object class of a migrated
 * schema reads the same on two databases built by the same DDL, whatever
 * their major versions (13 → 17, 14 → 17), and one change on the target is
 * reported as exactly that change: the object and what differs.
 */
import assert from 'node:assert/strict';
import type pg from 'pg';
import { describeSchema, normalizeViewDef, type SchemaObject } from '../agent/engine/schema-describe';
import { diffSchemas, formatSchemaDiff, type SchemaDifference } from '../agent/engine/schema-diff';
import { startCluster, type Cluster } from '../dev/testbed';

const ROLES = ['app_owner', 'app_reader'];
const createRoles = (roles: string[]) =>
  `DO $$BEGIN ${roles.map((r) => `IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${r}') THEN CREATE ROLE ${r}; END IF;`).join(' ')} END$$;`;

/** One object of each class, on every version from 13. */
const SHOP_DDL = `
CREATE SCHEMA exts;
CREATE EXTENSION citext WITH SCHEMA exts;
CREATE SCHEMA shop;
CREATE TYPE shop.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN shop.posint AS integer DEFAULT 1 NOT NULL CONSTRAINT posint_positive CHECK (VALUE > 0);
CREATE TYPE shop.money_pair AS (amount numeric(12,2), currency text COLLATE "C");
CREATE TYPE shop.price_pair AS (amount numeric(12,2), currency text);
CREATE TYPE shop.floatrange AS RANGE (subtype = float8, subtype_diff = float8mi);
CREATE COLLATION shop.nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE shop.customers (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email exts.citext NOT NULL UNIQUE,
  name text COLLATE shop.nocase, mood shop.mood DEFAULT 'ok', notes text);
ALTER TABLE shop.customers ALTER COLUMN notes SET STORAGE EXTERNAL;
CREATE TABLE shop.orders (id bigserial PRIMARY KEY, customer_id integer NOT NULL REFERENCES shop.customers (id) ON DELETE CASCADE,
  qty shop.posint, total numeric(12,2) CHECK (total >= 0), placed_at timestamptz NOT NULL DEFAULT now(), during shop.floatrange,
  status text DEFAULT 'new', price shop.money_pair) WITH (fillfactor = 80, autovacuum_enabled = false);
ALTER TABLE shop.orders ALTER COLUMN status SET STATISTICS 500;
CREATE INDEX orders_customer_idx ON shop.orders (customer_id) WHERE status <> 'cancelled';
CREATE INDEX orders_lower_status ON shop.orders (lower(status)) WITH (fillfactor = 70);
CREATE TABLE shop.events (id integer NOT NULL, at date NOT NULL, payload jsonb, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE shop.events_2024 PARTITION OF shop.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE INDEX events_payload ON shop.events USING gin (payload);
CREATE VIEW shop.order_totals AS
  SELECT c.id, c.email, sum(o.total) AS total, count(*) FILTER (WHERE o.status = 'new') AS open_orders,
         CASE WHEN c.mood = 'happy' THEN 'yes' ELSE 'no' END AS happy, coalesce(c.name, '-') AS name
    FROM shop.customers c JOIN shop.orders o ON o.customer_id = c.id
   WHERE o.placed_at > '2020-01-01'::timestamptz AND o.status IN ('new', 'paid')
   GROUP BY c.id, c.email HAVING sum(o.total) > 0;
CREATE VIEW shop.big_orders WITH (security_barrier) AS
  SELECT id, total, (SELECT count(*) FROM shop.orders o2 WHERE o2.customer_id = orders.customer_id) AS siblings
    FROM shop.orders WHERE total > 100 ORDER BY id WITH CASCADED CHECK OPTION;
CREATE MATERIALIZED VIEW shop.daily AS SELECT date_trunc('day', placed_at) AS day, count(*) AS n FROM shop.orders GROUP BY 1;
CREATE UNIQUE INDEX daily_day ON shop.daily (day);
CREATE FUNCTION shop.touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.placed_at := now(); RETURN NEW; END$$;
CREATE FUNCTION shop.add(a integer, b integer) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT a + b';
CREATE FUNCTION shop.order_count(cid integer) RETURNS bigint LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
  AS $$SELECT count(*) FROM shop.orders WHERE customer_id = cid$$;
CREATE PROCEDURE shop.cancel(order_id bigint) LANGUAGE plpgsql AS $$BEGIN UPDATE shop.orders SET status = 'cancelled' WHERE id = order_id; END$$;
CREATE FUNCTION shop.int_max(a integer, b integer) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT greatest(a, b)';
CREATE AGGREGATE shop.maxint(integer) (SFUNC = shop.int_max, STYPE = integer, INITCOND = '0', PARALLEL = SAFE);
CREATE FUNCTION shop.approx_eq(a numeric, b numeric) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT abs(a - b) < 0.01';
CREATE OPERATOR shop.~= (FUNCTION = shop.approx_eq, LEFTARG = numeric, RIGHTARG = numeric, COMMUTATOR = OPERATOR(shop.~=), RESTRICT = eqsel);
CREATE FUNCTION shop.to_price(m shop.money_pair) RETURNS shop.price_pair LANGUAGE sql IMMUTABLE AS 'SELECT ROW(m.amount, m.currency)::shop.price_pair';
CREATE CAST (shop.money_pair AS shop.price_pair) WITH FUNCTION shop.to_price(shop.money_pair) AS ASSIGNMENT;
CREATE TRIGGER orders_touch BEFORE INSERT ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.touch();
CREATE TRIGGER orders_touch_replica BEFORE UPDATE ON shop.orders FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION shop.touch();
CREATE TRIGGER orders_touch_always BEFORE UPDATE OF total ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.touch();
CREATE TRIGGER customers_noop AFTER INSERT OR DELETE ON shop.customers FOR EACH STATEMENT EXECUTE FUNCTION shop.touch();
ALTER TABLE shop.orders ENABLE REPLICA TRIGGER orders_touch_replica;
ALTER TABLE shop.orders ENABLE ALWAYS TRIGGER orders_touch_always;
ALTER TABLE shop.customers DISABLE TRIGGER customers_noop;
CREATE RULE orders_keep_shipped AS ON DELETE TO shop.orders WHERE OLD.status = 'shipped' DO INSTEAD NOTHING;
ALTER TABLE shop.customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE shop.customers FORCE ROW LEVEL SECURITY;
CREATE POLICY customers_read ON shop.customers FOR SELECT TO app_reader USING (mood <> 'sad');
CREATE POLICY customers_write ON shop.customers AS RESTRICTIVE FOR UPDATE TO app_owner, app_reader USING (true) WITH CHECK (email <> '');
CREATE TEXT SEARCH DICTIONARY shop.simple_dict (TEMPLATE = pg_catalog.simple, STOPWORDS = english);
CREATE TEXT SEARCH CONFIGURATION shop.cfg (COPY = pg_catalog.english);
ALTER TEXT SEARCH CONFIGURATION shop.cfg ALTER MAPPING FOR asciiword WITH shop.simple_dict, english_stem;
CREATE STATISTICS shop.orders_stats (dependencies, ndistinct) ON customer_id, status FROM shop.orders;
COMMENT ON SCHEMA shop IS 'the shop';
COMMENT ON TABLE shop.orders IS 'Orders';
COMMENT ON COLUMN shop.orders.total IS 'in EUR';
COMMENT ON FUNCTION shop.add(integer, integer) IS 'adds';
COMMENT ON VIEW shop.order_totals IS 'totals';
COMMENT ON TRIGGER orders_touch ON shop.orders IS 'stamps';
COMMENT ON POLICY customers_read ON shop.customers IS 'readers';
COMMENT ON TYPE shop.mood IS 'moods';
COMMENT ON INDEX shop.orders_customer_idx IS 'by customer';
GRANT USAGE ON SCHEMA shop TO app_reader;
GRANT SELECT ON shop.orders, shop.order_totals TO app_reader;
GRANT SELECT (email) ON shop.customers TO app_reader;
REVOKE EXECUTE ON FUNCTION shop.order_count(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION shop.order_count(integer) TO app_reader;
GRANT UPDATE ON shop.orders TO app_owner WITH GRANT OPTION;
GRANT USAGE ON TYPE shop.mood TO app_reader;
GRANT USAGE ON SEQUENCE shop.orders_id_seq TO app_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA shop GRANT SELECT ON TABLES TO app_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE app_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER TABLE shop.customers OWNER TO app_owner;
ALTER FUNCTION shop.add(integer, integer) OWNER TO app_owner;
`;

/** What only 14+ can say: SQL-standard function bodies, column compression, statistics on expressions. */
const SHOP_DDL_14 = `
CREATE FUNCTION shop.double_it(x integer) RETURNS integer LANGUAGE sql IMMUTABLE
BEGIN ATOMIC
  SELECT x * 2;
END;
CREATE PROCEDURE shop.bump(cid integer) LANGUAGE sql
BEGIN ATOMIC
  UPDATE shop.orders SET total = total + 1 WHERE customer_id = cid;
  INSERT INTO shop.orders (customer_id, total) VALUES (cid, 0);
END;
ALTER TABLE shop.orders ALTER COLUMN status SET COMPRESSION pglz;
CREATE STATISTICS shop.orders_expr_stats ON (lower(status)), customer_id FROM shop.orders;
`;

/** Views whose text 13 stores differently from 14+ (plain function calls for the SQL-standard forms). */
const STANDARD_FORMS_DDL = `
CREATE SCHEMA forms;
CREATE TABLE forms.t (id int, s text, ts timestamptz);
CREATE VIEW forms.v AS SELECT extract(year FROM ts) AS y, substring(s FROM 2 FOR 3) AS sub, trim(both 'x' FROM s) AS tr,
  position('a' IN s) AS pos, overlay(s placing 'z' FROM 2) AS ov, ts AT TIME ZONE 'UTC' AS utc FROM forms.t;
`;

const SCHEMAS = ['shop', 'exts', 'pgferry'];
const pick = (d: SchemaDifference[]) => d.map((x) => ({ identity: x.identity, what: x.what }));

describe('schema verification: describeSchema and diffSchemas', function () {
  this.timeout(300_000);
  let c13: Cluster, c14: Cluster, c17: Cluster;
  const clients: pg.Client[] = [];
  const open = async (cluster: Cluster, db: string) => {
    const c = await cluster.client(db);
    clients.push(c);
    return c;
  };
  const build = async (cluster: Cluster, db: string, ddl: string[]) => {
    await cluster.createDatabase(db);
    const c = await cluster.client(db);
    try {
      for (const sql of ddl) await c.query(sql);
    } finally {
      await c.end();
    }
  };
  /** Describe a database of the 17 cluster, and leave it (a template must have no session). */
  const describe17 = async (db: string) => {
    const c = await c17.client(db);
    try {
      return await describeSchema(c, { schemas: SCHEMAS });
    } finally {
      await c.end();
    }
  };
  let source: SchemaObject[];

  before(async function () {
    [c13, c14, c17] = await Promise.all([13, 14, 17].map((version) => startCluster({ version: version as 13 | 14 | 17, fast: true })));
    const base = [createRoles(ROLES), SHOP_DDL];
    await Promise.all([
      build(c13, 'shop', base),
      build(c14, 'shop', [...base, SHOP_DDL_14]),
      (async () => {
        await build(c17, 'shop13', base);
        await build(c17, 'shop', [...base, SHOP_DDL_14]);
        // The target: the same, plus pgferry's bookkeeping schema.
        await build(c17, 'target', [...base, SHOP_DDL_14, 'CREATE SCHEMA pgferry; CREATE TABLE pgferry.progress (id int PRIMARY KEY)']);
      })(),
    ]);
    source = await describe17('shop');
  });

  after(async function () {
    for (const c of clients) await c.end().catch(() => undefined);
    await Promise.all([c13, c14, c17].map((c) => c?.stop()));
  });

  it('describes one object of every class, without extension members or pgferry’s schema', function () {
    const kinds = new Set(source.map((o) => o.kind));
    for (const k of ['schema', 'extension', 'collation', 'type', 'domain', 'function', 'procedure', 'aggregate', 'operator', 'cast', 'sequence']) {
      assert.ok(kinds.has(k as SchemaObject['kind']), k);
    }
    for (const k of ['table', 'column', 'view', 'materialized-view', 'index', 'constraint', 'trigger', 'rule', 'policy', 'statistics']) {
      assert.ok(kinds.has(k as SchemaObject['kind']), k);
    }
    for (const k of ['text-search-dictionary', 'text-search-config', 'default-privileges']) assert.ok(kinds.has(k as SchemaObject['kind']), k);
    const byId = new Map(source.map((o) => [o.identity, o]));
    assert.ok(!source.some((o) => o.identity.includes('citext(') || o.identity.includes('pgferry')), 'no citext function, nothing of pgferry');
    assert.equal(byId.get('extension citext')?.definition, "SCHEMA exts VERSION '1.6'");
    assert.equal(byId.get('trigger orders_touch_replica on shop.orders')?.enabled, 'ENABLE REPLICA');
    assert.equal(byId.get('trigger orders_touch_always on shop.orders')?.enabled, 'ENABLE ALWAYS');
    assert.equal(byId.get('trigger customers_noop on shop.customers')?.enabled, 'DISABLE');
    assert.equal(byId.get('table shop.customers')?.enabled, 'row security forced');
    assert.deepEqual(byId.get('policy customers_write on shop.customers')?.roles, ['app_owner', 'app_reader']);
    assert.deepEqual(byId.get('function shop.order_count(integer)')?.acl, ['GRANT EXECUTE TO app_reader', 'REVOKE EXECUTE FROM PUBLIC']);
    assert.deepEqual(byId.get('table shop.orders')?.acl, ['GRANT SELECT TO app_reader', 'GRANT UPDATE TO app_owner WITH GRANT OPTION']);
    assert.deepEqual(byId.get('column shop.customers.email')?.acl, ['GRANT SELECT TO app_reader']);
    assert.deepEqual(byId.get('default privileges on tables in schema shop for role app_owner')?.acl, ['GRANT SELECT TO app_reader']);
    assert.deepEqual(byId.get('default privileges on functions for role app_owner')?.acl, ['REVOKE EXECUTE FROM PUBLIC']);
    assert.match(byId.get('column shop.customers.notes')!.definition, /STORAGE EXTERNAL/);
    assert.match(byId.get('column shop.orders.status')!.definition, /COMPRESSION pglz STATISTICS 500/);
    assert.equal(byId.get('function shop.add(integer,integer)')?.owner, 'app_owner');
    assert.equal(byId.get('column shop.orders.total')?.comment, 'in EUR');
    assert.ok(!byId.has('type shop.floatmultirange') && !byId.has('cast (shop.floatrange AS shop.floatmultirange)'), 'no multirange');
  });

  it('finds no difference between two databases built by the same DDL, and says so', async function () {
    const target = await describe17('target');
    const diffs = diffSchemas(source, target);
    assert.deepEqual(diffs, []);
    assert.equal(formatSchemaDiff(diffs, source.length), `The target's schema matches the source: ${source.length} objects compared.`);
  });

  it('finds no difference between the same DDL on 13 and on 17', async function () {
    const on13 = await describeSchema(await open(c13, 'shop'), { schemas: SCHEMAS });
    assert.deepEqual(diffSchemas(on13, await describe17('shop13')), []);
  });

  it('finds no difference between the same DDL on 14 and on 17, BEGIN ATOMIC bodies included', async function () {
    const on14 = await describeSchema(await open(c14, 'shop'), { schemas: SCHEMAS });
    assert.ok(on14.some((o) => o.identity === 'function shop.double_it(integer)'));
    assert.deepEqual(diffSchemas(on14, source), []);
  });

  it('compares a 13 view recreated on 17 from its own text as equal, SQL-standard forms included', async function () {
    await build(c13, 'forms', [STANDARD_FORMS_DDL]);
    const old = await open(c13, 'forms');
    await old.query('SET search_path = pg_catalog');
    const text = (await old.query(`SELECT pg_get_viewdef('forms.v'::regclass, true) AS d`)).rows[0].d as string;
    await old.query('RESET search_path');
    await build(c17, 'forms', [`CREATE SCHEMA forms; CREATE TABLE forms.t (id int, s text, ts timestamptz); CREATE VIEW forms.v AS ${text}`]);
    const [a, b] = [await describeSchema(old, { schemas: ['forms'] }), await describeSchema(await open(c17, 'forms'), { schemas: ['forms'] })];
    assert.deepEqual(diffSchemas(a, b), []);
    // The same DDL typed on 17 is another query (EXTRACT is not 13's date_part): that difference is real.
    await build(c17, 'forms_typed', [STANDARD_FORMS_DDL]);
    const typed = await describeSchema(await open(c17, 'forms_typed'), { schemas: ['forms'] });
    assert.deepEqual(pick(diffSchemas(a, typed)), [
      { identity: 'column forms.v.y', what: 'definition' },
      { identity: 'view forms.v', what: 'definition' },
    ]);
  });

  describe('one change on the target is reported as exactly that change', function () {
    let n = 0;
    /** A copy of the target with one change. */
    const changed = async (sql: string) => {
      const db = `changed_${++n}`;
      await c17.query(`CREATE DATABASE ${db} TEMPLATE target`);
      const c = await open(c17, db);
      await c.query(sql);
      return diffSchemas(source, await describeSchema(c, { schemas: SCHEMAS }));
    };
    const CASES: Array<{ name: string; sql: string; expected: Array<Partial<SchemaDifference>> }> = [
      {
        name: 'a dropped function',
        sql: 'DROP FUNCTION shop.add(integer, integer)',
        expected: [{ identity: 'function shop.add(integer,integer)', what: 'missing-on-target' }],
      },
      {
        name: 'a changed view',
        sql: `CREATE OR REPLACE VIEW shop.big_orders WITH (security_barrier) AS
                SELECT id, total, (SELECT count(*) FROM shop.orders o2 WHERE o2.customer_id = orders.customer_id) AS siblings
                  FROM shop.orders WHERE total > 200 ORDER BY id WITH CASCADED CHECK OPTION`,
        expected: [{ identity: 'view shop.big_orders', what: 'definition' }],
      },
      {
        name: 'a disabled trigger',
        sql: 'ALTER TABLE shop.orders DISABLE TRIGGER orders_touch',
        expected: [{ identity: 'trigger orders_touch on shop.orders', what: 'enabled', source: 'ENABLE', target: 'DISABLE' }],
      },
      {
        name: 'a revoked grant',
        sql: 'REVOKE SELECT ON shop.orders FROM app_reader',
        expected: [{ identity: 'table shop.orders', what: 'acl', source: 'GRANT SELECT TO app_reader' }],
      },
      {
        name: 'another owner',
        sql: 'ALTER FUNCTION shop.touch() OWNER TO app_owner',
        expected: [{ identity: 'function shop.touch()', what: 'owner', source: 'postgres', target: 'app_owner' }],
      },
      {
        name: 'another comment',
        sql: `COMMENT ON COLUMN shop.orders.total IS 'in USD'`,
        expected: [{ identity: 'column shop.orders.total', what: 'comment', source: 'in EUR', target: 'in USD' }],
      },
      {
        name: 'a disabled rule',
        sql: 'ALTER TABLE shop.orders DISABLE RULE orders_keep_shipped',
        expected: [{ identity: 'rule orders_keep_shipped on shop.orders', what: 'enabled', source: 'ENABLE', target: 'DISABLE' }],
      },
      {
        name: 'row level security no longer forced',
        sql: 'ALTER TABLE shop.customers NO FORCE ROW LEVEL SECURITY',
        expected: [{ identity: 'table shop.customers', what: 'enabled', source: 'row security forced', target: 'row security on' }],
      },
      {
        name: 'a policy for other roles',
        sql: 'ALTER POLICY customers_read ON shop.customers TO app_owner',
        expected: [{ identity: 'policy customers_read on shop.customers', what: 'definition' }],
      },
      {
        name: 'default privileges gone',
        sql: 'ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA shop REVOKE SELECT ON TABLES FROM app_reader',
        expected: [{ identity: 'default privileges on tables in schema shop for role app_owner', what: 'missing-on-target' }],
      },
      {
        name: 'another column storage',
        sql: 'ALTER TABLE shop.customers ALTER COLUMN notes SET STORAGE EXTENDED',
        expected: [{ identity: 'column shop.customers.notes', what: 'definition' }],
      },
      {
        name: 'an index only the target has',
        sql: 'CREATE INDEX orders_placed ON shop.orders (placed_at)',
        expected: [{ identity: 'index shop.orders_placed', what: 'extra-on-target' }],
      },
    ];
    for (const c of CASES) {
      it(`${c.name}`, async function () {
        const diffs = await changed(c.sql);
        assert.deepEqual(
          diffs.map((d) => Object.fromEntries(Object.keys(c.expected[0]).map((k) => [k, d[k as keyof SchemaDifference]]))),
          c.expected,
        );
        const text = formatSchemaDiff(diffs);
        assert.equal(text.split('\n').length, 1);
        assert.ok(text.startsWith(`${c.expected[0].identity}: `), text);
      });
    }

    it('marks an accepted difference as accepted', async function () {
      const diffs = await changed('ALTER TABLE shop.orders DISABLE TRIGGER orders_touch');
      const accepted = diffSchemas(source, await describeSchema(clients[clients.length - 1], { schemas: SCHEMAS }), {
        accept: ['trigger orders_touch on shop.orders'],
      });
      assert.deepEqual(
        accepted.map((d) => d.accepted),
        [true],
      );
      assert.deepEqual(
        diffs.map((d) => d.accepted),
        [false],
      );
      assert.match(formatSchemaDiff(accepted), /\[accepted\]$/);
    });
  });

  it('maps the source’s roles to the target’s before comparing', async function () {
    const renamed = (sql: string) => sql.replace(/app_owner/g, 'app_owner_v2').replace(/app_reader/g, 'app_reader_v2');
    await build(c17, 'renamed', [createRoles(ROLES.map(renamed)), renamed(SHOP_DDL), SHOP_DDL_14]);
    const target = await describe17('renamed');
    const unmapped = diffSchemas(source, target);
    for (const what of ['owner', 'acl', 'definition', 'missing-on-target', 'extra-on-target']) {
      assert.ok(
        unmapped.some((d) => d.what === what),
        what,
      );
    }
    assert.deepEqual(diffSchemas(source, target, { roleMap: { app_owner: 'app_owner_v2', app_reader: 'app_reader_v2' } }), []);
  });

  it('describes only the named tables among the relations, and every view', async function () {
    const some = await describeSchema(await open(c17, 'shop'), { schemas: ['shop'], tables: [{ schema: 'shop', name: 'customers' }] });
    const ids = new Set(some.map((o) => o.identity));
    for (const id of ['table shop.customers', 'column shop.customers.email', 'view shop.order_totals', 'materialized view shop.daily']) {
      assert.ok(ids.has(id), id);
    }
    for (const id of ['table shop.orders', 'column shop.orders.id', 'trigger orders_touch on shop.orders', 'statistics shop.orders_stats']) {
      assert.ok(!ids.has(id), id);
    }
    // A serial sequence of a table left out stays, without its OWNED BY.
    assert.ok(!some.find((o) => o.identity === 'sequence shop.orders_id_seq')?.definition.includes('OWNED BY'));
  });
});

describe('schema verification: view definitions across printers', function () {
  it('drops the outer query’s qualifier when it reads one FROM item, and only there', function () {
    assert.equal(
      normalizeViewDef(' SELECT orders.id,\n    orders.total\n   FROM shop.orders\n  WHERE orders.total > 100::numeric;'),
      normalizeViewDef('SELECT id, total FROM shop.orders WHERE total > 100::numeric'),
    );
    // A subquery's references keep theirs; a join's are needed.
    assert.equal(normalizeViewDef('SELECT t.id, (SELECT 1 FROM x WHERE x.id = t.id) FROM s.t'), 'SELECT id, (SELECT 1 FROM x WHERE x.id = t.id) FROM s.t');
    assert.equal(normalizeViewDef('SELECT a.id FROM s.a JOIN s.b ON a.id = b.id'), 'SELECT a.id FROM s.a JOIN s.b ON a.id = b.id');
    assert.equal(normalizeViewDef('SELECT t.s, \'t.s\' AS "t.s", shop.f(t.s) FROM s.t t'), 'SELECT s, \'t.s\' AS "t.s", shop.f(s) FROM s.t t');
  });
});
