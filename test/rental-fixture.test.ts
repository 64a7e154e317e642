/**
 * The rental application fixture (test/fixtures/rental.ts) stands on its
 * own: on PostgreSQL 13, 14 and 17 its roles, schema and seed load, every
 * object class it means to cover is there with the owner, enabled state and
 * body it should have, the application's statements all succeed as
 * `rental_app` and leave the data as they found it, and their rows are the
 * same on every version — what the migration test relies on when it compares
 * the source's answers with the target's.
 */
import assert from 'node:assert/strict';
import pg from 'pg';
import { startCluster, type Cluster, PG_VERSIONS, type PgMajor } from '../dev/testbed';
import { RENTAL_APP, RENTAL_OWNER, rentalRolesSql, rentalSchemaSql, rentalSeedSql, runAppStatements, APP_STATEMENTS, type AppResult } from './fixtures/rental';

const APP_PASSWORD = 'rental-app-pw';

/**
 * Objects in schemas rental and reporting whose owner is not rental_owner
 * (expected: none). Routines made with a type (a range's constructors) are
 * left out: PostgreSQL gives them to the bootstrap superuser.
 */
const FOREIGN_OWNED_SQL = `
SELECT kind, name FROM (
  SELECT 'relation' AS kind, c.oid::regclass::text AS name, c.relowner AS owner, c.relnamespace AS ns FROM pg_class c
  UNION ALL SELECT 'routine', p.oid::regprocedure::text, p.proowner, p.pronamespace FROM pg_proc p
    WHERE NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'i')
  UNION ALL SELECT 'type', t.oid::regtype::text, t.typowner, t.typnamespace FROM pg_type t
  UNION ALL SELECT 'operator', o.oid::regoperator::text, o.oprowner, o.oprnamespace FROM pg_operator o
  UNION ALL SELECT 'ts config', cfg.cfgname, cfg.cfgowner, cfg.cfgnamespace FROM pg_ts_config cfg
  UNION ALL SELECT 'ts dictionary', d.dictname, d.dictowner, d.dictnamespace FROM pg_ts_dict d
  UNION ALL SELECT 'statistics', s.stxname, s.stxowner, s.stxnamespace FROM pg_statistic_ext s
) o
WHERE ns IN ('rental'::regnamespace, 'reporting'::regnamespace) AND owner <> '${RENTAL_OWNER}'::regrole
ORDER BY 1, 2`;

/** What the fixture promises to contain, counted from the catalogs. */
const INVENTORY_SQL = `
SELECT
  (SELECT count(*) FROM pg_type WHERE typnamespace = 'rental'::regnamespace AND typtype = 'd') AS domains,
  (SELECT count(*) FROM pg_type WHERE typnamespace = 'rental'::regnamespace AND typtype = 'e') AS enums,
  (SELECT count(*) FROM pg_type t JOIN pg_class c ON c.oid = t.typrelid WHERE t.typnamespace = 'rental'::regnamespace AND c.relkind = 'c') AS composites,
  (SELECT count(*) FROM pg_range r JOIN pg_type t ON t.oid = r.rngtypid WHERE t.typnamespace = 'rental'::regnamespace) AS ranges,
  (SELECT count(*) FROM pg_proc WHERE pronamespace = 'rental'::regnamespace AND prokind = 'a') AS aggregates,
  (SELECT count(*) FROM pg_proc WHERE pronamespace = 'rental'::regnamespace AND prokind = 'p') AS procedures,
  (SELECT count(*) FROM pg_operator WHERE oprnamespace = 'rental'::regnamespace) AS operators,
  (SELECT count(*) FROM pg_cast WHERE castsource = 'rental.address_t'::regtype AND casttarget = 'text'::regtype) AS casts,
  (SELECT count(*) FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class WHERE c.relnamespace = 'rental'::regnamespace AND r.rulename <> '_RETURN') AS rules,
  (SELECT count(*) FROM pg_policy) AS policies,
  (SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = 'rental.customer'::regclass) AS customer_rls_forced,
  (SELECT count(*) FROM pg_statistic_ext WHERE stxnamespace = 'rental'::regnamespace) AS statistics,
  (SELECT count(*) FROM pg_class WHERE relnamespace = 'reporting'::regnamespace AND relkind = 'm') AS matviews,
  (SELECT count(*) FROM pg_class WHERE relnamespace = 'rental'::regnamespace AND relkind = 'v') AS rental_views,
  (SELECT count(*) FROM pg_largeobject_metadata) AS large_objects,
  (SELECT array_agg(extname::text ORDER BY extname) FROM pg_extension WHERE extname <> 'plpgsql') AS extensions,
  (SELECT count(*) FROM pg_default_acl) AS default_acls,
  (SELECT attstorage::text FROM pg_attribute WHERE attrelid = 'rental.film'::regclass AND attname = 'description') AS description_storage,
  (SELECT reloptions FROM pg_class WHERE oid = 'rental.rental'::regclass) AS rental_options,
  (SELECT array_agg(tgname::text || '=' || tgenabled::text ORDER BY tgname) FROM pg_trigger
    WHERE tgname IN ('payment_audit', 'customer_replicated', 'rental_refuse_overdue') AND tgrelid::regclass::text NOT LIKE '%payment\\_%') AS trigger_states`;

/** Tables (plain and partitioned) with neither a primary key nor REPLICA IDENTITY FULL (expected: none). */
const NO_IDENTITY_SQL = `
SELECT c.oid::regclass::text AS name FROM pg_class c
 WHERE c.relnamespace IN ('rental'::regnamespace, 'reporting'::regnamespace) AND c.relkind IN ('r', 'p')
   AND c.relreplident <> 'f' AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'p')`;

const rowsOf = (results: AppResult[], name: string) => {
  const r = results.find((x) => x.name === name);
  assert.ok(r, `no result named "${name}"`);
  return r.rows as Record<string, unknown>[];
};

describe('rental fixture: an application database for the migration tests', function () {
  const resultsByVersion = new Map<PgMajor, AppResult[]>();

  for (const version of PG_VERSIONS) {
    describe(`PostgreSQL ${version}`, function () {
      let cluster: Cluster;
      let app: pg.Client;
      before(async function () {
        cluster = await startCluster({ version, fast: true });
        await cluster.query(rentalRolesSql(APP_PASSWORD));
        await cluster.query(rentalSchemaSql(version));
        await cluster.query(rentalSeedSql());
        app = new pg.Client({ ...cluster.endpoint(), user: RENTAL_APP, password: APP_PASSWORD });
        await app.connect();
      });
      after(async function () {
        await app?.end().catch(() => undefined);
        await cluster?.stop();
      });

      it('owns every object of rental and reporting by rental_owner, and keys every table', async function () {
        assert.deepEqual((await cluster.query(FOREIGN_OWNED_SQL)).rows, []);
        assert.deepEqual((await cluster.query(NO_IDENTITY_SQL)).rows, []);
      });

      it('holds every object class it covers, with the stated trigger states and storage', async function () {
        const [inv] = (await cluster.query(INVENTORY_SQL)).rows;
        assert.deepEqual(inv, {
          domains: '3',
          enums: '2',
          composites: '1',
          ranges: '1',
          aggregates: '1',
          procedures: '1',
          operators: '1',
          casts: '1',
          rules: '1',
          policies: '5',
          customer_rls_forced: true,
          statistics: '1',
          matviews: '1',
          rental_views: '3',
          large_objects: '5',
          extensions: ['citext', 'pg_trgm'],
          default_acls: '2',
          description_storage: 'e',
          rental_options: ['fillfactor=80'],
          trigger_states: ['customer_replicated=R', 'payment_audit=A', 'rental_refuse_overdue=D'],
        });
      });

      it(version >= 14 ? 'gives two functions a SQL-standard body' : 'gives every SQL function a quoted body', async function () {
        const r = await cluster.query(
          version >= 14
            ? "SELECT proname FROM pg_proc WHERE pronamespace = 'rental'::regnamespace AND prosqlbody IS NOT NULL ORDER BY 1"
            : "SELECT proname FROM pg_proc WHERE pronamespace = 'rental'::regnamespace AND proname IN ('film_in_stock', 'late_fee') AND prosrc <> '' ORDER BY 1",
        );
        assert.deepEqual(
          r.rows.map((x) => x.proname),
          ['film_in_stock', 'late_fee'],
        );
      });

      it('refuses rental_app what it was not granted', async function () {
        await assert.rejects(app.query('SELECT * FROM rental.setting'), { code: '42501' });
        await assert.rejects(app.query("UPDATE rental.film SET title = 'x' WHERE film_id = 1"), { code: '42501' });
        await assert.rejects(app.query('REFRESH MATERIALIZED VIEW reporting.sales_by_store'), { code: '42501' });
      });

      it('runs every application statement as rental_app, and a second run gives the same rows', async function () {
        const first = await runAppStatements(app);
        const second = await runAppStatements(app);
        assert.deepEqual(
          first.map((r) => r.name),
          APP_STATEMENTS.map((s) => s.name),
        );
        assert.deepEqual(second, first);
        resultsByVersion.set(version, first);
      });

      it("reads what the application's objects do: row security, cast, citext, triggers, rule, search", function () {
        const results = resultsByVersion.get(version);
        if (!results) this.skip();
        const customers = rowsOf(results, 'row security: customer rows');
        assert.ok(customers.length > 0 && customers.every((c) => c.store_id === 1 && c.active === true));
        assert.ok(
          rowsOf(results, 'customer_list').some((c) => c.store_id === 2),
          'the view (run as its owner) shows store 2',
        );
        assert.deepEqual(rowsOf(results, 'domain over citext: email lookup ignores case'), [{ customer_id: 10, email: 'Katia.Almeida10@example.org' }]);
        assert.equal(rowsOf(results, 'cast composite to text')[0].label, 'Rua dos Correeiros 41, 1100-163 Lisboa, Portugal');
        const film = rowsOf(results, 'insert film: last_updated, full-text trigger, default from a function, generated column');
        assert.deepEqual([film[0].touched, film[0].rental_days, film[0].length_hours, film[1]], [true, 3, '2.18', { title: 'The Dragons of Harbor 2049' }]);
        assert.match(String(film[0].fulltext), /'lighthouse-keepers':\d+ .*'long-awaited'/);
        assert.deepEqual(rowsOf(results, 'insert customer: domain, CHECK function, row security, no replica trigger')[1], { audit_rows: '0' });
        assert.deepEqual(rowsOf(results, 'update film rate: the DO ALSO rule logs it')[0], {
          film_id: 7,
          old_rate: '0.99',
          new_rate: '5.49',
          changed_by: RENTAL_APP,
        });
        const call = rowsOf(results, 'CALL rent_film: overdue customer (guard trigger disabled), payment audited');
        assert.deepEqual(call[2], { table_name: 'payment_2026_q2', action: 'INSERT', amount: '0.99', logged_by: RENTAL_APP });
        assert.deepEqual(rowsOf(results, 'large object (poster)')[0], { film_id: 1, poster: 'POSTER SILENT HARBOR (1972)' });
      });
    });
  }

  describe('across versions', function () {
    it('gives the same rows for every application statement on 13, 14 and 17', function () {
      if (resultsByVersion.size !== PG_VERSIONS.length) this.skip();
      const [base, ...others] = PG_VERSIONS.map((v) => resultsByVersion.get(v) as AppResult[]);
      for (const [i, other] of others.entries()) {
        for (const [j, r] of other.entries()) {
          assert.deepEqual(r, base[j], `"${r.name}" differs between PostgreSQL ${PG_VERSIONS[0]} and ${PG_VERSIONS[i + 1]}`);
        }
      }
    });
  });
});
