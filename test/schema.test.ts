/**
 * schema stage — a source schema on an older major version is recreated on a
 * newer target from the catalog alone: same columns, types, constraints,
 * indexes, partitions and replica identities, and every row round-trips.
 */
import assert from 'node:assert/strict';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { dataColumns, selectTables, type TableInfo } from '../agent/engine/catalog';
import { connect, qi, qn } from '../agent/engine/conn';
import { isPgferryError } from '../agent/engine/errors';
import { applyPostDataStatement, applyPreData, listSequences, planSchema, verifyExistingSchema, type SchemaPlan } from '../agent/engine/schema';
import { startCluster, type Cluster, type PgMajor } from '../dev/testbed';
import { ALL_TYPES_DDL, ALL_TYPES_ROWS, NUMERIC_INFINITY_ROWS, SCHEMA_FEATURES_DDL, SCHEMA_FEATURES_ROWS } from './fixtures/types';

const PAIRS: Array<{ source: PgMajor; target: PgMajor }> = [
  { source: 13, target: 17 },
  { source: 14, target: 17 },
];

/** Source-only extras: an extension type, a user collation, triggers, policies, a FK to an unselected table. */
const EXTRAS_DDL = `
CREATE SCHEMA exts;
CREATE EXTENSION citext WITH SCHEMA exts;
CREATE COLLATION typesdemo.nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE typesdemo.tagged (id integer PRIMARY KEY, tag exts.citext NOT NULL UNIQUE, label text COLLATE typesdemo.nocase);
CREATE TABLE typesdemo.unselected (id integer PRIMARY KEY);
CREATE TABLE typesdemo.refs_unselected (id integer PRIMARY KEY, u integer CONSTRAINT refs_unselected_u_fkey REFERENCES typesdemo.unselected (id));
CREATE FUNCTION typesdemo.audit_touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER audit_touch BEFORE INSERT ON typesdemo.audit_log FOR EACH ROW EXECUTE FUNCTION typesdemo.audit_touch();
CREATE POLICY customers_all ON typesdemo.customers USING (true);
-- An operator class from an extension, used only by an index: the extension must still come along.
CREATE EXTENSION pg_trgm WITH SCHEMA exts;
CREATE INDEX tagged_label_trgm ON typesdemo.tagged USING gin ((label::text COLLATE "C") exts.gin_trgm_ops);
-- What a partition holds differently from its parent.
ALTER TABLE "Sales"."Orders_2024" ALTER COLUMN note SET DEFAULT 'n/a';
ALTER TABLE "Sales"."Orders_2024" ALTER COLUMN note SET NOT NULL;
CREATE UNLOGGED TABLE typesdemo.scratch (id integer PRIMARY KEY, v text) WITH (fillfactor = 70);
ALTER TABLE typesdemo.bookings REPLICA IDENTITY USING INDEX bookings_pkey;
ALTER DOMAIN typesdemo.posint ADD CONSTRAINT posint_not_13 CHECK (VALUE <> 13) NOT VALID;
INSERT INTO typesdemo.tagged VALUES (1, 'Hello', 'World'), (2, 'hello2', 'WORLD');
INSERT INTO typesdemo.scratch VALUES (1, 'unlogged');
INSERT INTO typesdemo.unselected VALUES (1);
INSERT INTO typesdemo.refs_unselected VALUES (1, 1);
`;
const SELECTION = { include: ['typesdemo.*', '"Sales".*'], exclude: ['typesdemo.unselected'] };
const IN_SCOPE = `n.nspname IN ('typesdemo', 'Sales') AND NOT (n.nspname = 'typesdemo' AND c.relname = 'unselected')`;

/**
 * What the schema stage must reproduce, read the same way on both sides
 * (search_path = pg_catalog, so every name is schema-qualified).
 */
async function describeSchema(c: pg.Client) {
  await c.query('SET search_path = pg_catalog');
  const rows = async (sql: string) => (await c.query(sql)).rows.map((r) => JSON.stringify(r)).sort();
  try {
    return {
      relations: await rows(`
        SELECT n.nspname, c.relname, c.relkind, c.relpersistence, c.relispartition, c.reloptions,
               CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS partkey,
               pg_get_expr(c.relpartbound, c.oid) AS bound,
               (SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE i.inhrelid = c.oid) AS parent
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND ${IN_SCOPE}`),
      // Identity on partitions: 17 propagates a partitioned table's identity
      // to its partitions (attidentity set on them), 13/14 keep it on the
      // parent only; the parent's flag is compared, the partitions' are not.
      columns: await rows(`
        SELECT n.nspname, c.relname, row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) AS position, a.attname,
               format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
               CASE WHEN c.relispartition THEN NULL ELSE a.attidentity END AS identity, a.attgenerated,
               pg_get_expr(d.adbin, d.adrelid) AS default_expr, a.attcollation::regcollation::text AS collation
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relkind IN ('r', 'p') AND ${IN_SCOPE}`),
      constraints: await rows(`
        SELECT n.nspname, c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid) AS def
          FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE ${IN_SCOPE} AND k.conname <> 'refs_unselected_u_fkey'`),
      indexes: await rows(`
        SELECT n.nspname, c.relname, ic.relname AS index, pg_get_indexdef(i.indexrelid) AS def, i.indisvalid
          FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class c ON c.oid = i.indrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE ${IN_SCOPE}`),
      replicaIdentity: await rows(`
        SELECT n.nspname, c.relname, c.relreplident,
               (SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = c.oid AND i.indisreplident) AS index
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND ${IN_SCOPE}`),
      enums: await rows(`
        SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)::text AS labels
          FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname = 'typesdemo' GROUP BY t.typname`),
      domains: await rows(`
        SELECT t.typname, format_type(t.typbasetype, t.typtypmod) AS base, t.typnotnull, pg_get_expr(t.typdefaultbin, 0) AS default_expr,
               t.typcollation::regcollation::text AS collation,
               (SELECT array_agg(k.conname || ': ' || pg_get_constraintdef(k.oid) ORDER BY k.conname) FROM pg_constraint k
                 WHERE k.contypid = t.oid AND k.contype = 'c')::text AS checks
          FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname = 'typesdemo' AND t.typtype = 'd'`),
      composites: await rows(`
        SELECT t.typname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type
          FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
          JOIN pg_class rc ON rc.oid = t.typrelid AND rc.relkind = 'c'
          JOIN pg_attribute a ON a.attrelid = rc.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE n.nspname = 'typesdemo'`),
      collations: await rows(`
        SELECT co.collname, co.collprovider, co.collisdeterministic
          FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace WHERE n.nspname = 'typesdemo'`),
      ranges: await rows(`
        SELECT t.typname, format_type(r.rngsubtype, NULL) AS subtype, r.rngsubdiff::regproc::text AS subdiff,
               r.rngcanonical::regproc::text AS canonical, r.rngcollation
          FROM pg_range r JOIN pg_type t ON t.oid = r.rngtypid JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname = 'typesdemo'`),
      sequences: await rows(`
        SELECT n.nspname, c.relname, format_type(s.seqtypid, NULL) AS type, s.seqstart, s.seqincrement, s.seqmin,
               s.seqmax, s.seqcache, s.seqcycle,
               (SELECT d.deptype::text || ' ' || d.refobjid::regclass::text || '.' || a.attname
                  FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                 WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass
                   AND d.deptype IN ('a', 'i')) AS owner
          FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname IN ('typesdemo', 'Sales')`),
    };
  } finally {
    await c.query('RESET search_path');
  }
}

/** The initial load, as simply as possible: a text COPY pipe per table that holds rows. */
async function copyTable(source: pg.Client, target: pg.Client, t: TableInfo): Promise<void> {
  const cols = dataColumns(t)
    .map((col) => qi(col.name))
    .join(', ');
  const out = source.query(copyTo(`COPY (SELECT ${cols} FROM ONLY ${qn(t.schema, t.name)}) TO STDOUT`));
  const into = target.query(copyFrom(`COPY ${qn(t.schema, t.name)} (${cols}) FROM STDIN`));
  await pipeline(out, into);
}

async function rowsAsText(c: pg.Client, t: TableInfo): Promise<string[]> {
  const r = await c.query(`SELECT t::text AS row FROM ONLY ${qn(t.schema, t.name)} AS t`);
  return r.rows.map((row) => row.row as string).sort();
}

/** Run post-data the way the orchestrator does; returns how many statements ran (the rest were skipped). */
async function runPostData(target: pg.Client, plan: SchemaPlan): Promise<number> {
  let ran = 0;
  for (const wave of [plan.postData.filter((s) => s.kind !== 'foreign-key'), plan.postData.filter((s) => s.kind === 'foreign-key')]) {
    for (const s of wave) if (await applyPostDataStatement(target, s)) ran++;
  }
  return ran;
}

async function expectCode(p: Promise<unknown>, code: string): Promise<Error> {
  try {
    await p;
  } catch (e) {
    assert.ok(isPgferryError(e), `expected a PgferryError, got ${String(e)}`);
    assert.equal(e.code, code);
    return e;
  }
  assert.fail(`expected ${code}, but it succeeded`);
}

for (const pair of PAIRS) {
  describe(`schema: PostgreSQL ${pair.source} source → ${pair.target} target`, function () {
    let srcCluster: Cluster;
    let tgtCluster: Cluster;
    let source: pg.Client;
    let target: pg.Client;
    let tables: TableInfo[];
    let plan: SchemaPlan;
    const extraClients: pg.Client[] = [];
    const targetDb = async (name: string) => {
      await tgtCluster.createDatabase(name);
      const c = await connect('target', tgtCluster.endpoint(name));
      extraClients.push(c);
      return c;
    };

    before(async function () {
      [srcCluster, tgtCluster] = await Promise.all([startCluster({ version: pair.source, fast: true }), startCluster({ version: pair.target, fast: true })]);
      source = await connect('source', srcCluster.endpoint());
      target = await connect('target', tgtCluster.endpoint());
      await source.query(ALL_TYPES_DDL);
      await source.query(ALL_TYPES_ROWS);
      if (pair.source >= 14) await source.query(NUMERIC_INFINITY_ROWS);
      await source.query(SCHEMA_FEATURES_DDL);
      await source.query(SCHEMA_FEATURES_ROWS);
      await source.query(EXTRAS_DDL);
      // A search_path that would leave names unqualified if the stage did not pin its own.
      await source.query('SET search_path = typesdemo, "Sales", exts, public');
      tables = (await selectTables(source, SELECTION)).tables;
      plan = await planSchema(source, tables);
    });

    after(async function () {
      for (const c of [source, target, ...extraClients]) await c?.end().catch(() => undefined);
      await Promise.all([srcCluster?.stop(), tgtCluster?.stop()]);
    });

    it('plans dependencies before their users and leaves the source session as it found it', function () {
      const at = (sql: RegExp) => plan.preData.findIndex((s) => sql.test(s.sql));
      assert.ok(at(/^CREATE SCHEMA IF NOT EXISTS exts/) < at(/CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA exts/));
      assert.ok(at(/^CREATE TYPE typesdemo\.mood AS ENUM/) < at(/^CREATE TYPE typesdemo\.pair AS/));
      assert.ok(at(/^CREATE TYPE typesdemo\.pair AS/) < at(/^CREATE TABLE typesdemo\."AllTypes"/));
      assert.ok(at(/^CREATE SEQUENCE typesdemo\.alltypes_id_seq/) < at(/^CREATE TABLE typesdemo\."AllTypes"/));
      assert.ok(at(/^CREATE COLLATION IF NOT EXISTS typesdemo\.nocase/) < at(/^CREATE TABLE typesdemo\.tagged/));
      assert.ok(at(/^CREATE TABLE "Sales"\.events \(/) < at(/^CREATE TABLE "Sales"\.events_eu PARTITION OF/));
      assert.ok(at(/^CREATE TABLE "Sales"\.events_eu PARTITION OF/) < at(/^CREATE TABLE "Sales"\.events_eu_0 PARTITION OF/));
      assert.equal(plan.preData.filter((s) => /CREATE TABLE "Sales"\."Orders_default" PARTITION OF "Sales"\."Orders" DEFAULT/.test(s.sql)).length, 1);
      for (const s of plan.postData) assert.ok(s.existsSql, `${s.kind} ${s.object} has no existsSql`);
      return source.query('SHOW search_path').then((r) => assert.equal(r.rows[0].search_path, 'typesdemo, "Sales", exts, public'));
    });

    it('skips a foreign key to an unselected table and warns about it; carries triggers (off until the handover) and policies', function () {
      assert.ok(!plan.postData.some((s) => s.sql.includes('refs_unselected_u_fkey')));
      assert.ok(plan.warnings.some((w) => w.includes('refs_unselected_u_fkey')));
      const onAudit = plan.finish.filter((s) => s.kind === 'trigger' && s.object.endsWith('on typesdemo.audit_log'));
      assert.ok(onAudit.some((s) => /^CREATE TRIGGER/.test(s.sql)) && onAudit.some((s) => / DISABLE TRIGGER /.test(s.sql)), 'created, then disabled');
      assert.ok(
        plan.handover.some((s) => /^ALTER TABLE typesdemo\.audit_log ENABLE/.test(s.sql)),
        'switched on at the handover',
      );
      assert.ok(plan.finish.some((s) => s.kind === 'policy' && s.object.endsWith('on typesdemo.customers')));
      assert.ok(!plan.warnings.some((w) => /trigger|polic/.test(w)), plan.warnings.join('\n'));
    });

    it('lists every sequence the tables use: default-referenced, serial-owned and identity', async function () {
      const expected = [
        { schema: 'Sales', name: 'Orders_id_seq', ownedBy: '"Sales"."Orders".id' },
        { schema: 'Sales', name: 'events_id_seq', ownedBy: '"Sales".events.id' },
        { schema: 'typesdemo', name: 'AllTypes_c_ident_seq', ownedBy: 'typesdemo."AllTypes".c_ident' },
        { schema: 'typesdemo', name: 'alltypes_id_seq' },
        { schema: 'typesdemo', name: 'customers_id_seq', ownedBy: 'typesdemo.customers.id' },
      ];
      const key = (a: { schema: string; name: string }) => `${a.schema}.${a.name}`;
      const byName = (a: { schema: string; name: string }, b: { schema: string; name: string }) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0);
      assert.deepEqual([...plan.sequences].sort(byName), expected);
      assert.deepEqual([...(await listSequences(source, tables))].sort(byName), expected);
    });

    it('applyPreData creates every table, column, type, sequence, partition and pre-data constraint exactly as on the source', async function () {
      await applyPreData(target, plan);
      const [s, t] = [await describeSchema(source), await describeSchema(target)];
      assert.deepEqual(t.relations, s.relations);
      assert.deepEqual(t.columns, s.columns);
      assert.deepEqual(t.enums, s.enums);
      assert.ok(
        t.enums.some((e) => e.includes('{sad,meh,ok,happy}')),
        'enum labels in sort order',
      );
      assert.deepEqual(t.domains, s.domains);
      assert.deepEqual(t.composites, s.composites);
      assert.deepEqual(t.ranges, s.ranges);
      assert.deepEqual(t.collations, s.collations);
      assert.equal(t.collations.length, 1);
      assert.deepEqual(t.sequences, s.sequences);
      const preKinds = (rows: string[]) => rows.filter((r) => ['"p"', '"u"', '"c"'].some((k) => r.includes(`"contype":${k}`)));
      assert.deepEqual(preKinds(t.constraints), preKinds(s.constraints));
      const ext = await target.query(`SELECT e.extname, n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname IN ('citext', 'pg_trgm') ORDER BY 1`);
      assert.deepEqual(ext.rows, [
        { extname: 'citext', nspname: 'exts' },
        { extname: 'pg_trgm', nspname: 'exts' },
      ]);
    });

    it('round-trips every row of every table (text COPY), including NaN, ±Infinity, extremes, arrays, ranges and NULLs', async function () {
      const leaves = tables.filter((t) => t.kind === 'r');
      for (const t of leaves) await copyTable(source, target, t);
      for (const t of leaves) {
        const [s, d] = [await rowsAsText(source, t), await rowsAsText(target, t)];
        assert.ok(s.length > 0 || t.name === 'Orders_2023' || t.name.startsWith('events_'), `${t.name} has rows to compare`);
        assert.deepEqual(d, s, `rows of ${qn(t.schema, t.name)}`);
      }
      const ordered = 'SELECT t::text AS row FROM typesdemo."AllTypes" AS t ORDER BY id';
      const [s, d] = [(await source.query(ordered)).rows, (await target.query(ordered)).rows];
      assert.equal(s.length, pair.source >= 14 ? 6 : 4);
      assert.deepEqual(d, s);
    });

    it('post-data builds the same indexes, EXCLUDE and FOREIGN KEY constraints and replica identities', async function () {
      const ran = await runPostData(target, plan);
      assert.equal(ran, plan.postData.length);
      const [s, t] = [await describeSchema(source), await describeSchema(target)];
      assert.deepEqual(t.indexes, s.indexes);
      assert.deepEqual(t.constraints, s.constraints);
      assert.deepEqual(t.replicaIdentity, s.replicaIdentity);
      assert.ok(t.replicaIdentity.some((r) => r.includes('"relname":"customers","relreplident":"i","index":"customers_code_uq"')));
      assert.ok(t.replicaIdentity.some((r) => r.includes('"relname":"audit_log","relreplident":"f"')));
    });

    it('running post-data again is harmless: every statement is found built and skipped', async function () {
      const before = await describeSchema(target);
      assert.equal(await runPostData(target, plan), 0);
      assert.deepEqual(await describeSchema(target), before);
    });

    it('verifyExistingSchema accepts the created schema and reports a missing column with SCHEMA_DRIFT', async function () {
      await verifyExistingSchema(target, tables);
      const drift = await targetDb('drift');
      await applyPreData(drift, plan);
      await verifyExistingSchema(drift, tables);
      await drift.query('ALTER TABLE typesdemo."AllTypes" DROP COLUMN "MixedCase Col"');
      const e = await expectCode(verifyExistingSchema(drift, tables), 'SCHEMA_DRIFT');
      assert.ok(e.message.includes('typesdemo."AllTypes"."MixedCase Col"'));
      // Generated columns are not loaded, so their absence is not drift.
      await drift.query('ALTER TABLE typesdemo."AllTypes" ADD COLUMN "MixedCase Col" text, DROP COLUMN c_generated');
      await verifyExistingSchema(drift, tables);
    });

    it('applyPreData runs beforeCommit inside its transaction: a failure there leaves nothing created', async function () {
      const hook = await targetDb('hook');
      let seen = -1;
      const e = await expectCode(
        applyPreData(hook, plan, {
          beforeCommit: async (c) => {
            seen = (await c.query('SELECT count(*)::int AS n FROM typesdemo."AllTypes"')).rows[0].n;
            throw new Error('marker write failed');
          },
        }),
        'SCHEMA_FAILED',
      );
      assert.ok(e instanceof Error);
      assert.equal(seen, 0, 'the hook saw the uncommitted tables');
      const left = await hook.query("SELECT nspname FROM pg_namespace WHERE nspname IN ('typesdemo', 'Sales', 'exts')");
      assert.deepEqual(left.rows, []);
    });

    it('applyPreData fails with SCHEMA_FAILED and creates nothing when a table already exists on the target', async function () {
      const clash = await targetDb('clash_table');
      await clash.query('CREATE SCHEMA typesdemo; CREATE TABLE typesdemo.bookings (id integer)');
      await expectCode(applyPreData(clash, plan), 'SCHEMA_FAILED');
      const left = await clash.query(`SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('typesdemo', 'Sales', 'exts')`);
      assert.deepEqual(left.rows, [{ nspname: 'typesdemo', relname: 'bookings' }]);
    });

    it('applyPreData rolls back everything when a statement fails midway (a type already exists)', async function () {
      const clash = await targetDb('clash_type');
      await clash.query("CREATE SCHEMA typesdemo; CREATE TYPE typesdemo.mood AS ENUM ('x')");
      await expectCode(applyPreData(clash, plan), 'SCHEMA_FAILED');
      const schemas = await clash.query(`SELECT nspname FROM pg_namespace WHERE nspname IN ('typesdemo', 'Sales', 'exts') ORDER BY 1`);
      assert.deepEqual(schemas.rows, [{ nspname: 'typesdemo' }]);
      const objects = await clash.query(`SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'typesdemo' ORDER BY 1`);
      assert.deepEqual(objects.rows, [{ typname: '_mood' }, { typname: 'mood' }], 'only the pre-existing enum and its array type');
      const ext = await clash.query("SELECT 1 FROM pg_extension WHERE extname = 'citext'");
      assert.equal(ext.rows.length, 0);
    });
  });
}
