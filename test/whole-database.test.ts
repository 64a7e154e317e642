/**
 * The whole database: an application's schema (test/fixtures/rental.ts:
 * views, a materialized view, functions and a procedure, an aggregate, an
 * operator and a cast, triggers in every enabled state, a rule, row
 * security, text search, statistics, comments, an application role that is
 * not the owner, large objects) migrated from 13 and from 14 to 17 under a
 * live writer and cut over; then the application's own statements, run as
 * the application role, give the target the same answers as the source.
 * Real clusters, a real agent process.
 */
import assert from 'node:assert/strict';
import type pg from 'pg';
import { startCluster, type Cluster, type PgMajor } from '../dev/testbed';
import { AgentClient, isAgentError, type MigrationMessage } from '../api/client';
import { startAgent, type AgentProcess } from './support/agent';
import { assertSameData, waitFor } from './support/compare';
import { RENTAL_APP, rentalRolesSql, rentalSchemaSql, rentalSeedSql, runAppStatements } from './fixtures/rental';
import { largeObjectsEqual } from '../agent/engine/large-objects';

const DB = 'rental';
const APP_PASSWORD = 'rental-app-pw';

/** The application's writes during the sync: payments (an ALWAYS audit trigger on the source), customer updates (a last_updated trigger), large objects. */
function appWriter(connect: () => Promise<pg.Client>) {
  let stop = false;
  const payments: number[] = [];
  let errors = 0;
  const done = (async () => {
    const c = await connect();
    try {
      for (let i = 0; !stop; i++) {
        try {
          const r = await c.query(
            `INSERT INTO rental.payment (customer_id, staff_id, amount, paid_at) VALUES (1 + $1 % 20, 1, 1.5 + $1 % 7, '2026-05-01'::timestamptz + $1 * interval '1 minute') RETURNING payment_id`,
            [i],
          );
          payments.push(Number(r.rows[0].payment_id));
          await c.query(`UPDATE rental.customer SET phone = NULL WHERE customer_id = 1 + $1 % 30`, [i]);
          if (i % 10 === 0) {
            // a large object created, one changed, one unlinked
            await c.query(`SELECT lo_from_bytea(0, convert_to('memo ' || $1::text, 'UTF8'))`, [i]);
            await c.query(`SELECT lo_put(poster, 0, convert_to('CHANGED ' || $1::text, 'UTF8')) FROM rental.film WHERE film_id = 1`, [i]);
          }
          if (i === 5) await c.query(`SELECT lo_unlink(poster) FROM rental.film WHERE film_id = 2; UPDATE rental.film SET poster = NULL WHERE film_id = 2`);
        } catch {
          errors++;
          if (stop) break;
        }
        await new Promise((r) => setTimeout(r, 15));
      }
    } finally {
      await c.end().catch(() => undefined);
    }
  })();
  return {
    payments,
    get errors() {
      return errors;
    },
    async stop() {
      stop = true;
      await done;
    },
  };
}

async function appClient(c: Cluster): Promise<pg.Client> {
  const { default: pgmod } = await import('pg');
  const client = new pgmod.Client({ host: c.host, port: c.port, user: RENTAL_APP, password: APP_PASSWORD, database: DB });
  await client.connect();
  return client;
}

for (const sourceVersion of [13, 14] as PgMajor[]) {
  describe(`whole database: the rental application, PostgreSQL ${sourceVersion} → 17`, function () {
    this.timeout(600_000);
    let source: Cluster;
    let target: Cluster;
    let agent: AgentProcess;
    let client: AgentClient;
    const id = `rental${sourceVersion}`;

    before(async function () {
      [source, target] = await Promise.all([startCluster({ version: sourceVersion, fast: true }), startCluster({ version: 17, fast: true })]);
      for (const c of [source, target]) {
        await c.query(rentalRolesSql(APP_PASSWORD));
        await c.createDatabase(DB);
      }
      await source.query(`${rentalSchemaSql(sourceVersion)};\n${rentalSeedSql()}`, [], DB);
      agent = await startAgent({ env: { PGFERRY_LARGE_OBJECT_PASS_MS: '1000' } });
      client = new AgentClient({ endpoint: agent.endpoint });
    });
    afterEach(function () {
      // The agent's log tail explains a failure better than the RPC error.
      if (this.currentTest?.state === 'failed' && agent) console.error(agent.logs().split('\n').slice(-30).join('\n'));
    });
    after(async function () {
      client?.close();
      await agent?.stop();
      await Promise.all([source?.stop(), target?.stop()]);
    });

    it('carries every object, keeps triggers quiet for replicated rows, and hands a working application over', async function () {
      await client.startMigration({ id, source: source.endpoint(DB), target: target.endpoint(DB), tables: { include: ['rental.*', 'reporting.*'] } });
      const w = appWriter(() => source.client(DB));
      let done: MigrationMessage;
      try {
        await waitFor('syncing', async () => {
          const m = await client.getMigration(id);
          if (m.phase === 'failed') throw new Error(`${m.errorCode}: ${m.errorMessage} ${m.errorRemedy}`);
          return m.phase === 'syncing' ? m : undefined;
        });
        await waitFor('writes flowing', async () => w.payments.length > 40);
        // During the sync: the target's triggers and rules are off and row security is not on yet (pgferry's own
        // write guard, verify-guard.ts, is on: it only notes writes by others, and leaves with the cutover).
        const t = await target.query(
          `SELECT count(*) FILTER (WHERE g.tgenabled <> 'D')::int AS live FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'rental' AND NOT g.tgisinternal AND c.relkind IN ('r', 'p')
              AND g.tgname <> 'pgferry_write_guard'`,
          [],
          DB,
        );
        assert.equal(t.rows[0].live, 0, 'no trigger of a table is enabled on the target during the sync');
        // The comparison before the cutover: nothing missing; the switched-off triggers and row security are accepted.
        const early = await client.schemaDiff(id);
        assert.equal(early.equal, true, early.text);
        assert.ok(
          early.differences.some((d) => d.what === 'enabled' && d.accepted),
          early.text,
        );
        // A difference nobody accepted fails the cutover, names the object, lifts the fence, and switches nothing on.
        // A comment taken off on the target is put back (schemaChanges 'follow' reconciles what it can); a sequence
        // only the target has is not dropped (pgferry never drops one: it holds values), so it stays a difference.
        await target.query('COMMENT ON TABLE rental.customer IS NULL', [], DB);
        await target.query('CREATE SEQUENCE rental.extra_seq', [], DB);
        await assert.rejects(client.cutover({ id, timeoutMs: 120_000 }), (e: unknown) => {
          assert.ok(isAgentError(e), String(e));
          assert.equal(e.code, 'CUTOVER_FAILED');
          assert.match(e.message, /sequence rental\.extra_seq: on the target only/);
          assert.doesNotMatch(e.message, /table rental\.customer: comment differs/);
          assert.match(e.message, /The fence was lifted and verified/);
          assert.match(e.remedy, /pgferry schema diff .*acceptSchemaDifferences/);
          return true;
        });
        const still = await target.query(`SELECT tgenabled::text AS e FROM pg_trigger WHERE tgname = 'customer_touch'`, [], DB);
        assert.equal(still.rows[0].e, 'D', 'the failed handover switched nothing on');
        // Accepted, the same difference lets the cutover complete (and the report says it was accepted).
        const comment = await target.query(`SELECT obj_description('rental.customer'::regclass, 'pg_class') AS c`, [], DB);
        assert.notEqual(comment.rows[0].c, null, 'the comment taken off on the target was put back');
        done = await client.cutover({ id, timeoutMs: 120_000, acceptSchemaDifferences: ['sequence rental.extra_seq'] });
      } finally {
        await w.stop();
      }
      assert.equal(done!.phase, 'completed', done!.cutover?.error);
      const rep = done!.cutover!;
      assert.equal(rep.validationOk, true);
      const guards = await target.query(`SELECT count(*)::int AS n FROM pg_trigger WHERE tgname = 'pgferry_write_guard'`, [], DB);
      assert.equal(guards.rows[0].n, 0, "pgferry's write guards left with the cutover");
      assert.ok(rep.schemaCheck?.ok, `schema check: ${rep.schemaCheck?.differences.join('\n')}`);
      assert.ok((rep.schemaCheck?.objects ?? 0) > 100, `objects compared: ${rep.schemaCheck?.objects}`);
      assert.ok(rep.largeObjects && rep.largeObjects.objects > 0, 'the large objects had their last pass inside the fence');

      // Replicated rows fired nothing: every table (audit log included) equals the source's.
      await assertSameData(source, target, DB);
      const paid = await target.query('SELECT payment_id FROM rental.payment WHERE payment_id = ANY($1::bigint[])', [w.payments], DB);
      assert.equal(paid.rows.length, w.payments.length, 'every acknowledged payment is on the target');
      const [s, t] = [await source.client(DB), await target.client(DB)];
      try {
        const lo = await largeObjectsEqual(s, t);
        assert.ok(lo.equal, lo.differences.join('\n'));
      } finally {
        await s.end();
        await t.end();
      }
      assert.ok(
        rep.schemaCheck!.differences.some((d) => /sequence rental\.extra_seq: on the target only.*\[accepted\]/.test(d)),
        rep.schemaCheck!.differences.join('\n'),
      );
      let diff = await client.schemaDiff(id);
      assert.deepEqual(
        diff.differences.map((d) => `${d.object} ${d.what}`),
        ['sequence rental.extra_seq extra-on-target'],
      );
      await target.query('DROP SEQUENCE rental.extra_seq', [], DB);
      diff = await client.schemaDiff(id);
      assert.equal(diff.equal, true, diff.text);

      // The application's statements, as the application role: same answers on both sides.
      await client.unfence(id, { afterCutover: true }); // so the source can run them too (writes are rolled back)
      for (const c of [source, target]) await c.query('REFRESH MATERIALIZED VIEW reporting.sales_by_store', [], DB);
      const [sa, ta] = [await appClient(source), await appClient(target)];
      try {
        const [a, b] = [await runAppStatements(sa), await runAppStatements(ta)];
        for (let i = 0; i < a.length; i++) assert.deepEqual(b[i], a[i], `statement "${a[i].name}" differs`);
      } finally {
        await sa.end();
        await ta.end();
      }

      // After the handover the target's triggers act for the application's writes.
      const before = Number((await target.query('SELECT count(*) AS n FROM rental.audit_log', [], DB)).rows[0].n);
      await target.query(`INSERT INTO rental.payment (customer_id, staff_id, amount, paid_at) VALUES (1, 1, 9.99, '2026-05-02')`, [], DB);
      const after = Number((await target.query('SELECT count(*) AS n FROM rental.audit_log', [], DB)).rows[0].n);
      assert.equal(after, before + 1, 'the ENABLE ALWAYS audit trigger fires on the target after the handover');
      const touched = await target.query(
        `UPDATE rental.customer SET last_updated = '2000-01-01' WHERE customer_id = 3 RETURNING last_updated > '2020-01-01' AS touched`,
        [],
        DB,
      );
      assert.equal(touched.rows[0].touched, true, 'the last_updated trigger fires on the target after the handover');
    });

    if (sourceVersion === 13) {
      it('fails the schema stage naming a function the target rejects, creates nothing, and succeeds once it is fixed', async function () {
        // vacuum_cleanup_index_scale_factor exists in 13 and not in 17: a function SET to it cannot be created there.
        await source.createDatabase('bad');
        await source.query(
          `CREATE TABLE t (id int PRIMARY KEY);
           CREATE FUNCTION f() RETURNS int LANGUAGE sql SET vacuum_cleanup_index_scale_factor = 0.2 AS 'SELECT 1';`,
          [],
          'bad',
        );
        await target.createDatabase('bad');
        const spec = { id: 'bad', source: source.endpoint('bad'), target: target.endpoint('bad') };
        await client.startMigration(spec);
        const failed = await waitFor('failed', async () => {
          const m = await client.getMigration('bad');
          return m.phase === 'failed' ? m : m.phase === 'syncing' ? assert.fail('expected the schema stage to fail') : undefined;
        });
        assert.equal(failed.errorCode, 'SCHEMA_FAILED');
        assert.match(failed.errorMessage, /function public\.f\(\)/);
        assert.match(failed.errorMessage, /vacuum_cleanup_index_scale_factor/);
        const left = await target.query(`SELECT count(*)::int AS n FROM pg_class WHERE relname = 't' AND relnamespace = 'public'::regnamespace`, [], 'bad');
        assert.equal(left.rows[0].n, 0, 'nothing of the schema was created');
        await source.query('ALTER FUNCTION f() RESET vacuum_cleanup_index_scale_factor', [], 'bad');
        await client.deleteMigration('bad').catch((e) => assert.ok(isAgentError(e), String(e)));
        await client.startMigration(spec);
        await waitFor('syncing', async () => {
          const m = await client.getMigration('bad');
          if (m.phase === 'failed') throw new Error(`${m.errorCode}: ${m.errorMessage}`);
          return m.phase === 'syncing' ? m : undefined;
        });
        // A migration an older agent started has no finish on its target: the cutover hands over its tables and says so.
        await target.query(`DELETE FROM pgferry.migration_state WHERE migration_id = 'bad' AND marker = 'finish'`, [], 'bad');
        const done = await client.cutover({ id: 'bad', timeoutMs: 60_000 });
        assert.equal(done.phase, 'completed', done.cutover?.error);
        assert.ok(!done.cutover?.schemaCheck, 'the schema was not compared');
        assert.ok(
          done.cutover?.warnings.some((w) => /started before pgferry carried the whole schema/.test(w)),
          done.cutover?.warnings.join('\n'),
        );
      });
    }
  });
}
