/**
 * One odd table or schema name must not stop a migration (issue 23). A
 * source database holds every edge at once: a schema whose name holds a
 * double quote, tables without columns (none declared, every one dropped,
 * every one generated), dropped columns, a table whose only key is an
 * expression index, names of exactly 63 bytes (multi-byte too), reserved
 * words, mixed case, spaces and other scripts. The preflight names the
 * tables that need a replica identity, with a fix that runs as written;
 * then the migration runs through the real agent under a live writer, cuts
 * over, and every table is equal on both sides.
 */
import assert from 'node:assert/strict';
import type pg from 'pg';
import { startCluster, type Cluster } from '../dev/testbed';
import { AgentClient, isAgentError, type MigrationMessage, type MigrationSpecMessage } from '../api/client';
import { startAgent, type AgentProcess } from './support/agent';
import { assertSameData, waitFor } from './support/compare';
import { LEDGER_SCHEMA, assertLedgerHolds, ledgerWriter } from './support/ledger';

/** SQL for a name: always quoted, `"` doubled. */
const q = (name: string) => `"${name.replace(/"/g, '""')}"`;

const SPECIAL = 'SPECIAL "@/\\#~_-';
/** 63 bytes each: the longest names PostgreSQL keeps. */
const LONG_SCHEMA = `${'ü'.repeat(31)}s`;
const LONG_TABLE = `${'ж'.repeat(31)}t`;
const LONG_COLUMN = `${'é'.repeat(31)}c`;
const LONG_ASCII = 't'.repeat(63);
/** Column names that are keywords of each kind, or hold a quote, a backslash, a newline. */
const ODD_COLUMNS = ['between', 'int', 'values', 'row', 'left', 'time', 'it\'s "x" \\ y', 'two\nlines'];

const SCHEMA_SQL = `
  ${LEDGER_SCHEMA}
  CREATE SCHEMA ${q(SPECIAL)};
  CREATE TABLE ${q(SPECIAL)}.t (id int PRIMARY KEY, v text);
  CREATE TABLE public.empty ();
  CREATE TABLE public.all_generated (a int GENERATED ALWAYS AS (1) STORED, b text GENERATED ALWAYS AS ('x') STORED);
  CREATE TABLE public.all_dropped (a int, b text);
  ALTER TABLE public.all_dropped DROP COLUMN a, DROP COLUMN b;
  CREATE TABLE public.some_dropped (gone0 int, id int PRIMARY KEY, gone1 text, v text, gone2 int);
  ALTER TABLE public.some_dropped DROP COLUMN gone0, DROP COLUMN gone1, DROP COLUMN gone2;
  CREATE TABLE public.expr_key (email text NOT NULL, n int NOT NULL DEFAULT 0);
  CREATE UNIQUE INDEX expr_key_email ON public.expr_key (lower(email));
  CREATE TABLE public.generated_key (x int NOT NULL, k int GENERATED ALWAYS AS (x * 2) STORED PRIMARY KEY);
  CREATE TABLE public.odd_columns (${ODD_COLUMNS.map((c, i) => `${q(c)} ${i === 0 ? 'int PRIMARY KEY' : 'text'}`).join(', ')});
  CREATE TABLE public."select" ("order" int PRIMARY KEY, "user" text, "from" int, "table" boolean);
  CREATE SCHEMA "user";
  CREATE TABLE "user"."order" ("group" int PRIMARY KEY, "limit" text);
  CREATE SCHEMA "Odd Schema";
  CREATE TABLE "Odd Schema"."Mixed Case" ("Id" int PRIMARY KEY, "Some Value" text);
  CREATE SCHEMA données;
  CREATE TABLE données.журнал (id int PRIMARY KEY, значение text);
  CREATE SCHEMA ${q(LONG_SCHEMA)};
  CREATE TABLE ${q(LONG_SCHEMA)}.${q(LONG_TABLE)} (id int PRIMARY KEY, ${q(LONG_COLUMN)} text);
  CREATE TABLE public.${LONG_ASCII} (id serial PRIMARY KEY, v text);
`;

/** Rows every table holds before the load. */
const SEED_SQL = `
  INSERT INTO ledger (client_seq, note) SELECT -g, 'seed' FROM generate_series(1, 500) g;
  INSERT INTO ${q(SPECIAL)}.t SELECT g, 'seed ' || g FROM generate_series(1, 300) g;
  INSERT INTO public.empty SELECT FROM generate_series(1, 20000);
  INSERT INTO public.all_generated SELECT FROM generate_series(1, 200);
  INSERT INTO public.all_dropped SELECT FROM generate_series(1, 200);
  INSERT INTO public.some_dropped (id, v) SELECT g, 'seed ' || g FROM generate_series(1, 300) g;
  INSERT INTO public.expr_key (email) SELECT 'User' || g || '@Example.com' FROM generate_series(1, 300) g;
  INSERT INTO public.generated_key (x) SELECT g FROM generate_series(1, 300) g;
  INSERT INTO public.odd_columns SELECT g, ${ODD_COLUMNS.slice(1)
    .map((_, j) => `'v${j} ' || g`)
    .join(', ')} FROM generate_series(1, 300) g;
  INSERT INTO public."select" SELECT g, 'u' || g, -g, g % 2 = 0 FROM generate_series(1, 300) g;
  INSERT INTO "user"."order" SELECT g, 'l' || g FROM generate_series(1, 300) g;
  INSERT INTO "Odd Schema"."Mixed Case" SELECT g, 'v' || g FROM generate_series(1, 300) g;
  INSERT INTO données.журнал SELECT g, 'знач ' || g FROM generate_series(1, 300) g;
  INSERT INTO ${q(LONG_SCHEMA)}.${q(LONG_TABLE)} SELECT g, 'long ' || g FROM generate_series(1, 300) g;
  INSERT INTO public.${LONG_ASCII} (v) SELECT 'seed ' || g FROM generate_series(1, 300) g;
`;

/** One writer transaction touching every odd table: inserts, updates, deletes (by ctid where rows have no key), now and then a TRUNCATE. */
function oddWrites(i: number): string[] {
  const id = 1000 + i;
  const oneRow = (t: string) => `ctid = (SELECT ctid FROM ${t} LIMIT 1)`;
  const w = [
    `INSERT INTO ${q(SPECIAL)}.t VALUES (${id}, 'w ${i}')`,
    `UPDATE ${q(SPECIAL)}.t SET v = v || '+' WHERE id = ${id - 1}`,
    `DELETE FROM ${q(SPECIAL)}.t WHERE id = ${id - 3}`,
    'INSERT INTO public.empty DEFAULT VALUES',
    'INSERT INTO public.empty DEFAULT VALUES',
    `DELETE FROM public.empty WHERE ${oneRow('public.empty')}`,
    'INSERT INTO public.all_generated DEFAULT VALUES',
    `UPDATE public.all_generated SET a = DEFAULT WHERE ${oneRow('public.all_generated')}`,
    'INSERT INTO public.all_dropped DEFAULT VALUES',
    `INSERT INTO public.some_dropped (id, v) VALUES (${id}, 'w ${i}')`,
    `UPDATE public.some_dropped SET v = v || '+' WHERE id = ${id - 1}`,
    `DELETE FROM public.some_dropped WHERE id = ${id - 3}`,
    `INSERT INTO public.expr_key (email) VALUES ('Writer${i}@Example.com')`,
    `UPDATE public.expr_key SET n = n + 1 WHERE lower(email) = 'writer${i - 1}@example.com'`,
    `DELETE FROM public.expr_key WHERE lower(email) = 'writer${i - 3}@example.com'`,
    `INSERT INTO public.generated_key (x) VALUES (${id})`,
    `UPDATE public.generated_key SET x = -x WHERE x = ${id - 1}`,
    `DELETE FROM public.generated_key WHERE x = ${id - 3}`,
    `INSERT INTO public.odd_columns (${q(ODD_COLUMNS[0])}, ${q(ODD_COLUMNS[6])}) VALUES (${id}, 'w ${i}')`,
    `UPDATE public.odd_columns SET ${ODD_COLUMNS.slice(1)
      .map((c) => `${q(c)} = '+${i}'`)
      .join(', ')} WHERE ${q(ODD_COLUMNS[0])} = ${id - 1}`,
    `UPDATE public.odd_columns SET ${q(ODD_COLUMNS[0])} = -${q(ODD_COLUMNS[0])} WHERE ${q(ODD_COLUMNS[0])} = ${id - 2}`,
    `INSERT INTO public."select" VALUES (${id}, 'w${i}', ${i}, true)`,
    `UPDATE public."select" SET "user" = "user" || '+', "table" = NOT "table" WHERE "order" = ${id - 1}`,
    `DELETE FROM public."select" WHERE "order" = ${id - 3}`,
    `INSERT INTO "user"."order" VALUES (${id}, 'w${i}')`,
    `UPDATE "user"."order" SET "group" = -"group" WHERE "group" = ${id - 1}`,
    `INSERT INTO "Odd Schema"."Mixed Case" VALUES (${id}, 'w${i}')`,
    `DELETE FROM "Odd Schema"."Mixed Case" WHERE "Id" = ${id - 2}`,
    `INSERT INTO données.журнал VALUES (${id}, 'w ${i}')`,
    `UPDATE données.журнал SET значение = значение || '+' WHERE id = ${id - 1}`,
    `INSERT INTO ${q(LONG_SCHEMA)}.${q(LONG_TABLE)} VALUES (${id}, 'w ${i}')`,
    `UPDATE ${q(LONG_SCHEMA)}.${q(LONG_TABLE)} SET ${q(LONG_COLUMN)} = ${q(LONG_COLUMN)} || '+' WHERE id = ${id - 1}`,
    `INSERT INTO public.${LONG_ASCII} (v) VALUES ('w ${i}')`,
  ];
  if (i % 3 === 0)
    w.push(`DELETE FROM public.all_generated WHERE ${oneRow('public.all_generated')}`, `DELETE FROM public.all_dropped WHERE ${oneRow('public.all_dropped')}`);
  if (i % 40 === 39) w.push('TRUNCATE public.all_dropped');
  return w;
}

/** Writes oddWrites(i) in its own transaction, i = 1, 2, …, every 10 ms until stopped; `committed` counts the acknowledged ones. */
function oddWriter(connect: () => Promise<pg.Client>) {
  let running = true;
  let committed = 0;
  let failed = 0;
  let lastError = '';
  const loop = (async () => {
    let c: pg.Client | null = null;
    for (let i = 1; running;) {
      try {
        c ??= await connect();
        await c.query(['BEGIN', ...oddWrites(i), 'COMMIT'].join(';\n'));
        committed++;
        i++;
        // Paced, unlike the ledger writer: changes to tables without a key are applied one statement each,
        // and a writer at full speed on a shared machine could outrun the apply and never let the lag fall.
        await new Promise((r) => setTimeout(r, 10));
      } catch (e) {
        failed++; // the fence (read-only) or a lost connection: retried with the same i
        lastError = (e as Error).message;
        await c?.end().catch(() => undefined);
        c = null;
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    await c?.end().catch(() => undefined);
  })();
  return {
    get committed() {
      return committed;
    },
    get failed() {
      return failed;
    },
    get lastError() {
      return lastError;
    },
    stop: async () => {
      running = false;
      await loop;
    },
  };
}

for (const from of [13, 14] as const) {
  describe(`odd names: every table PostgreSQL can hold migrates (PostgreSQL ${from} → 17)`, function () {
    this.timeout(300_000);
    const DB = 'odd';
    const ID = 'odd';
    let source: Cluster;
    let target: Cluster;
    let agent: AgentProcess;
    let client: AgentClient;

    const spec = (): MigrationSpecMessage => ({
      id: ID,
      source: source.endpoint(DB),
      target: target.endpoint(DB),
      tables: {
        // Unquoted names fold (Public → public); quoted ones are exact.
        include: ['Public.*', `${q(SPECIAL)}.*`, '"user".*', '"Odd Schema"."Mixed Case"', 'données.*', `${q(LONG_SCHEMA)}.*`],
      },
      copy: { workers: 2, splitBytes: 64 * 1024, indexJobs: 2 },
      apply: { batchChanges: 500, batchMs: 20 },
    });

    before(async function () {
      [source, target] = await Promise.all([startCluster({ version: from, fast: true }), startCluster({ version: 17, fast: true })]);
      await source.createDatabase(DB);
      await target.createDatabase(DB);
      await source.query(`${SCHEMA_SQL}\n${SEED_SQL}`, [], DB);
      agent = await startAgent();
      client = new AgentClient({ endpoint: agent.endpoint });
    });
    after(async function () {
      client?.close();
      await agent?.stop();
      await Promise.all([source?.stop(), target?.stop()]);
    });

    it('preflight names each table without a usable key, and a fix that runs as written', async function () {
      const report = await client.preflight(spec());
      assert.equal(report.ok, false);
      const failed = report.checks.filter((c) => c.verdict === 'fail');
      assert.deepEqual(
        failed.map((c) => c.name),
        ['replica_identity'],
        failed.map((c) => `${c.name}: ${c.message}`).join('\n'),
      );
      const ri = failed[0];
      assert.deepEqual([...ri.objects].sort(), ['public.all_dropped', 'public.all_generated', 'public.empty', 'public.expr_key', 'public.generated_key']);
      // Each with its own reason.
      assert.match(ri.message, /public\.empty \(no columns/);
      assert.match(ri.message, /public\.all_dropped \(no columns/);
      assert.match(ri.message, /public\.all_generated \(only generated columns/);
      assert.match(ri.message, /public\.generated_key \(its key holds generated column\(s\) k,/);
      assert.match(ri.message, /public\.expr_key \(no primary key; its unique index\(es\) expr_key_email are on an expression/);
      const fix = /run: (.*)$/.exec(ri.remedy)?.[1];
      assert.ok(fix, ri.remedy);
      await source.query(fix, [], DB);
      const again = await client.preflight(spec());
      assert.equal(
        again.ok,
        true,
        again.checks
          .filter((c) => c.verdict === 'fail')
          .map((c) => c.message)
          .join('\n'),
      );
      const sel = again.checks.find((c) => c.name === 'table_selection' && c.verdict === 'pass');
      assert.equal(sel?.objects.length, 16, sel?.objects.join(', '));
    });

    it('loads, streams and cuts over under a live writer, every table equal', async function () {
      await client.startMigration(spec());
      const ledger = ledgerWriter(() => source.client(DB));
      const odd = oddWriter(() => source.client(DB));
      let done: MigrationMessage;
      try {
        const m = await waitFor('syncing', async () => {
          const s = await client.getMigration(ID);
          return s.phase === 'syncing' || s.phase === 'failed' ? s : undefined;
        });
        assert.equal(m.phase, 'syncing', `${m.errorCode}: ${m.errorMessage}`);
        // Changes made during the sync, on every odd table, are applied.
        const streamedFrom = odd.committed;
        await waitFor('writes after the load', async () => odd.committed > streamedFrom + 60 && ledger.committed.size > 100);
        assert.equal(odd.failed, 0, odd.lastError);
        done = await client.cutover({ id: ID, validation: 'checksums', timeoutMs: 120_000 });
      } catch (e) {
        if (isAgentError(e) || e instanceof Error) (e as Error).message += `\nagent log tail:\n${agent.logs().slice(-3000)}`;
        throw e;
      } finally {
        await ledger.stop();
        await odd.stop();
      }
      assert.equal(done!.phase, 'completed');
      const rep = done!.cutover!;
      assert.equal(rep.validationOk, true);
      const validated = rep.tables.map((t) => t.table).sort();
      assert.equal(validated.length, 16, validated.join(', '));
      assert.ok(
        rep.tables.every((t) => t.match),
        rep.tables
          .filter((t) => !t.match)
          .map((t) => t.table)
          .join(', '),
      );
      const empty = rep.tables.find((t) => t.table === 'public.empty');
      assert.ok(empty && empty.sourceRows > 20000 && empty.targetRows === empty.sourceRows, JSON.stringify(empty));
      const t = await target.client(DB);
      try {
        await assertLedgerHolds(t, ledger);
      } finally {
        await t.end();
      }
      const compared = await assertSameData(source, target, DB);
      assert.equal(compared.length, 16, compared.join(', '));
      // The sequence of a 63-byte table name (PostgreSQL cut its name) is set too.
      const lastValue = async (c: Cluster) => {
        const r = await c.query(`SELECT pg_get_serial_sequence('public.${LONG_ASCII}', 'id') AS seq`, [], DB);
        assert.ok(r.rows[0].seq, `no sequence owned by public.${LONG_ASCII}.id`);
        return BigInt((await c.query(`SELECT last_value FROM ${r.rows[0].seq}`, [], DB)).rows[0].last_value);
      };
      const [a, b] = await Promise.all([lastValue(source), lastValue(target)]);
      assert.ok(b >= a, `target ${b} < source ${a}`);
    });
  });
}
