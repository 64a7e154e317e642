/**
 * Continuous sync, as a user lives it: the app keeps writing to the source,
 * pgferry keeps the target equal, survives stops and lost connections without
 * losing or doubling a change, and says exactly what to fix when it cannot go on.
 *
 * Each test gets its own database pair (same DDL on both sides), a
 * publication and a pgoutput slot; the initial copy is not part of this stage,
 * so tables start empty. We wait until the sync's appliedLsn passes the
 * source's WAL insert position taken after the writes, then compare every table.
 */
import { assertSameTables, waitFor } from './support/compare';
import assert from 'node:assert/strict';
import pg from 'pg';
import { SESSION_OPTIONS } from '../agent/engine/conn';
import { isPgferryError, type PgferryError } from '../agent/engine/errors';
import { formatLsn, parseLsn, PG_EPOCH_MS, type Lsn } from '../agent/engine/lsn';
import { PgoutputParser, type PgoutputMessage } from '../agent/engine/pgoutput';
import { ReplicationStream } from '../agent/engine/receive';
import { encodeStandbyStatus, parseKeepalive, runSync, type SyncOptions, type SyncProgress } from '../agent/engine/sync';
import { startCluster, type Cluster, type PgMajor } from '../dev/testbed';
import { ALL_TYPES_DDL, ALL_TYPES_ROWS, NUMERIC_INFINITY_ROWS, SCHEMA_FEATURES_DDL, SCHEMA_FEATURES_ROWS } from './fixtures/types';

const PAIRS: { source: PgMajor; target: PgMajor }[] = [
  { source: 14, target: 17 },
  { source: 17, target: 17 },
];

type LogEntry = { level: string; msg: string; fields?: Record<string, unknown> };

/** A running `runSync` with helpers to wait on its progress. */
class SyncRun {
  readonly ac = new AbortController();
  readonly done: Promise<void>;
  progress: SyncProgress | null = null;
  /** Every report, in order. */
  readonly reports: SyncProgress[] = [];
  error: unknown = null;
  readonly logs: LogEntry[] = [];
  private waiters: { lsn: Lsn; resolve: () => void; reject: (e: unknown) => void }[] = [];

  constructor(opts: Omit<SyncOptions, 'signal' | 'onProgress' | 'log'>) {
    this.done = runSync({
      ...opts,
      signal: this.ac.signal,
      onProgress: (p) => {
        this.progress = p;
        this.reports.push(p);
        this.waiters = this.waiters.filter((w) => (p.appliedLsn >= w.lsn ? (w.resolve(), false) : true));
      },
      log: (level, msg, fields) => {
        this.logs.push({ level, msg, fields: fields as Record<string, unknown> });
      },
    });
    this.done.then(
      () => {
        for (const w of this.waiters) w.reject(new Error('sync stopped before reaching the LSN'));
        this.waiters = [];
      },
      (e) => {
        this.error = e;
        for (const w of this.waiters) w.reject(e);
        this.waiters = [];
      },
    );
  }

  /**
   * Resolves once everything the source committed before `lsn` is committed
   * on the target; fails after 90 s with the sync's position and last log
   * lines (a stall then says where the sync was, instead of a bare mocha timeout).
   */
  waitApplied(lsn: Lsn): Promise<void> {
    if (this.progress && this.progress.appliedLsn >= lsn) return Promise.resolve();
    if (this.error) return Promise.reject(this.error);
    const waiting = new Promise<void>((resolve, reject) => this.waiters.push({ lsn, resolve, reject }));
    return this.within(waiting, 90_000, `the target to apply up to ${formatLsn(lsn)}`);
  }

  private within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const at = this.progress ? `applied ${formatLsn(this.progress.appliedLsn)}, ${this.progress.changesApplied} changes` : 'no progress reported';
        reject(
          new Error(
            `timed out after ${ms} ms waiting for ${what} (${at}); the sync's last log lines:\n${this.logs
              .slice(-15)
              .map((l) => `  ${l.level} ${l.msg} ${JSON.stringify(l.fields ?? {})}`)
              .join('\n')}`,
          ),
        );
      }, ms);
    });
    return Promise.race([p, late]).finally(() => clearTimeout(timer));
  }

  /** Resolves once at least `n` changes have been committed on the target. */
  async waitChanges(n: number): Promise<void> {
    while (!this.progress || this.progress.changesApplied < n) {
      if (this.error) throw this.error;
      await new Promise<void>((resolve, reject) => this.waiters.push({ lsn: (this.progress?.appliedLsn ?? 0n) + 1n, resolve, reject }));
    }
  }

  async stop(): Promise<void> {
    this.ac.abort();
    await this.done;
  }

  /**
   * `done`, or an error carrying the run's last log lines once `ms` passed
   * (a hang then says where the sync was, instead of a bare mocha timeout).
   */
  doneWithin(ms: number): Promise<void> {
    return this.within(this.done, ms, 'the sync to end');
  }
}

async function sessionClient(c: Cluster, database: string, user?: { user: string; password: string }): Promise<pg.Client> {
  const client = new pg.Client({ ...c.endpoint(database), ...(user ?? {}), ssl: false, options: SESSION_OPTIONS });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

/**
 * The source's WAL insert position: past every commit so far. (The test
 * clusters commit asynchronously, so pg_current_wal_lsn(), the write
 * position, can still be behind the last commit record.)
 */
async function currentLsn(client: pg.Client): Promise<Lsn> {
  return parseLsn((await client.query('SELECT pg_current_wal_insert_lsn()::text AS l')).rows[0].l);
}

/** Every data table (ordinary tables and leaf partitions) of the source equals its target twin. */
const assertSameData = assertSameTables;

async function rows(client: pg.Client, sql: string): Promise<unknown[]> {
  return (await client.query(sql)).rows;
}

for (const pair of PAIRS) {
  describe(`sync: PostgreSQL ${pair.source} source → ${pair.target} target`, function () {
    let src: Cluster;
    let dst: Cluster;
    let dbCounter = 0;
    const open: pg.Client[] = [];
    const runs: SyncRun[] = [];

    before(async function () {
      [src, dst] = await Promise.all([startCluster({ version: pair.source, fast: true }), startCluster({ version: pair.target, fast: true })]);
    });
    after(async function () {
      for (const r of runs) await r.stop().catch(() => undefined);
      for (const c of open) await c.end().catch(() => undefined);
      await Promise.all([src?.stop(), dst?.stop()]);
    });

    afterEach(async function () {
      // Stop the test's syncs and drop its slot, so it retains no WAL for the next tests.
      for (const r of runs.splice(0)) await r.stop().catch(() => undefined);
      await src
        .query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active AND slot_name LIKE 's\\_%'")
        .catch(() => undefined);
    });

    /** A fresh database pair with `ddl` on both sides, a publication `p` (all tables, via partition root) and slot `s`. */
    async function setup(ddl: string, opts: { targetDdl?: string; targetOwner?: { user: string; password: string } } = {}) {
      const db = `sync_${++dbCounter}`;
      await src.createDatabase(db);
      if (opts.targetOwner) {
        await dst.query(
          `DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${opts.targetOwner.user}') THEN CREATE ROLE ${opts.targetOwner.user} LOGIN PASSWORD '${opts.targetOwner.password}'; END IF; END $$`,
        );
        await dst.query(`CREATE DATABASE ${db} OWNER ${opts.targetOwner.user}`);
      } else {
        await dst.createDatabase(db);
      }
      const s = await sessionClient(src, db);
      const t = await sessionClient(dst, db, opts.targetOwner);
      open.push(s, t);
      await s.query(ddl);
      await t.query(opts.targetDdl ?? ddl);
      await s.query('CREATE PUBLICATION p FOR ALL TABLES WITH (publish_via_partition_root = true)');
      const slotName = `s_${db}`; // slots are cluster-wide
      await s.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [slotName]);
      const start = (extra: Partial<SyncOptions> = {}) => {
        const r = new SyncRun({
          migrationId: 'm1',
          source: src.endpoint(db),
          target: { ...dst.endpoint(db), ...(opts.targetOwner ?? {}) },
          slotName,
          publicationName: 'p',
          tableSyncLsn: new Map(),
          batchChanges: 500,
          batchMs: 50,
          ...extra,
        });
        runs.push(r);
        return r;
      };
      /** Wait until the target has applied everything written so far, then compare every table. */
      const converge = async (run: SyncRun) => {
        await run.waitApplied(await currentLsn(s));
        return assertSameData(s, t);
      };
      return { db, s, t, slotName, start, converge };
    }

    it('applies inserts, updates and deletes from many small transactions, incl. one key updated again and again in a batch', async function () {
      const env = await setup(`
        CREATE TABLE acct (id int PRIMARY KEY, balance numeric NOT NULL, note text);
        CREATE SCHEMA "Mixed Case";
        CREATE TABLE "Mixed Case"."Order Items" ("Id" bigint PRIMARY KEY, "Qty" int, "select" text);
        CREATE TABLE events (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
        CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
        CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');`);
      // As a migration starts it: every table known up front, its target columns read in one go.
      const run = env.start({
        tableSyncLsn: new Map([
          ['public.acct', 0n],
          ['"Mixed Case"."Order Items"', 0n],
          ['public.events', 0n],
        ]),
      });
      await env.s.query(`DO $$ BEGIN
        FOR i IN 1..300 LOOP
          INSERT INTO acct VALUES (i, i * 10, 'n' || i);
          INSERT INTO "Mixed Case"."Order Items" VALUES (i, i, 'x');
          INSERT INTO events VALUES (i, CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, i);
          UPDATE acct SET balance = balance + 1 WHERE id = greatest(1, i - 5);
          UPDATE acct SET balance = balance * 2, note = NULL WHERE id = 1;
          IF i % 7 = 0 THEN DELETE FROM acct WHERE id = i - 3; DELETE FROM "Mixed Case"."Order Items" WHERE "Id" = i - 1; END IF;
          IF i % 11 = 0 THEN UPDATE events SET region = 'eu' WHERE id = i AND region = 'us'; END IF;
          COMMIT;
        END LOOP;
      END $$`);
      // One transaction updating the same key 50 times.
      await env.s.query(
        `BEGIN; ${Array.from({ length: 50 }, (_, i) => `UPDATE acct SET balance = ${i}, note = 'round ${i}' WHERE id = 2;`).join(' ')} COMMIT;`,
      );
      await env.converge(run);
      assert.deepEqual(
        (await rows(env.t, 'SELECT balance::text AS b, note FROM acct WHERE id = 2'))[0],
        (await rows(env.s, 'SELECT balance::text AS b, note FROM acct WHERE id = 2'))[0],
      );
      assert.ok(run.progress!.transactionsApplied >= 301);
      assert.ok(run.progress!.changesApplied >= 300 * 5);
      assert.ok(run.logs.some((l) => l.fields?.event === 'apply-mode' && l.fields.mode === 'replica'));
      assert.ok(
        run.logs.some((l) => l.fields?.event === 'target-tables' && l.fields.found === 3 && l.fields.expected === 3),
        'all three tables read up front, the quoted one too',
      );
      await run.stop();
    });

    it('applies a primary-key update by the old key, and a unique-value rotation', async function () {
      const env = await setup(`
        CREATE TABLE k (id int PRIMARY KEY, v text);
        CREATE TABLE u (id int PRIMARY KEY, code text UNIQUE);`);
      const run = env.start();
      await env.s.query("INSERT INTO k SELECT g, 'v' || g FROM generate_series(1, 100) g; INSERT INTO u SELECT g, 'c' || g FROM generate_series(1, 200) g");
      await env.s.query('UPDATE k SET id = id + 1000 WHERE id <= 10');
      await env.s.query('BEGIN; UPDATE k SET id = -id WHERE id = 50; UPDATE k SET id = 50 WHERE id = 51; UPDATE k SET id = 51 WHERE id = -50; COMMIT');
      // Each code moves to the next row: valid one by one, in this order only.
      await env.s.query(`DO $$ BEGIN
        UPDATE u SET code = 'tmp' WHERE id = 200;
        FOR i IN REVERSE 199..1 LOOP UPDATE u SET code = 'c' || (i + 1) WHERE id = i; END LOOP;
        UPDATE u SET code = 'c1' WHERE id = 200;
      END $$`);
      await env.converge(run);
      assert.deepEqual(await rows(env.t, 'SELECT id, v FROM k WHERE id IN (50, 51, 1001) ORDER BY id'), [
        { id: 50, v: 'v51' },
        { id: 51, v: 'v50' },
        { id: 1001, v: 'v1' },
      ]);
      await run.stop();
    });

    it('re-applies a batch one change per statement when the set-based statement fails, then carries on', async function () {
      // An ALWAYS trigger (it fires even as replica) that rejects any UPDATE
      // statement touching more than one row: only the fallback can apply.
      const ddl = 'CREATE TABLE w (id int PRIMARY KEY, v int)';
      const env = await setup(ddl, {
        targetDdl: `${ddl};
          CREATE FUNCTION one_row_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF (SELECT count(*) FROM nt) > 1 THEN RAISE EXCEPTION 'more than one row'; END IF; RETURN NULL; END $$;
          CREATE TRIGGER one_row_only AFTER UPDATE ON w REFERENCING NEW TABLE AS nt FOR EACH STATEMENT EXECUTE FUNCTION one_row_only();
          ALTER TABLE w ENABLE ALWAYS TRIGGER one_row_only;`,
      });
      const run = env.start({ batchChanges: 1000, batchMs: 1000 });
      await env.s.query('INSERT INTO w SELECT g, 0 FROM generate_series(1, 50) g');
      await env.s.query('UPDATE w SET v = v + 1');
      await env.converge(run);
      await env.s.query('UPDATE w SET v = v + 1 WHERE id <= 25');
      await env.converge(run);
      assert.ok(run.logs.some((l) => l.fields?.event === 'safe-replay'));
      assert.deepEqual(await rows(env.t, 'SELECT sum(v)::int AS s FROM w'), [{ s: 75 }]);
      await run.stop();
    });

    /** A target trigger (ALWAYS: it fires as replica too) that fails any UPDATE statement touching more than one row, after `sleepS`. */
    const oneRowOnly = (ddl: string, sleepS: number) => `${ddl};
      CREATE FUNCTION one_row_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF (SELECT count(*) FROM nt) > 1 THEN PERFORM pg_sleep(${sleepS}); RAISE EXCEPTION 'more than one row'; END IF; RETURN NULL; END $$;
      CREATE TRIGGER one_row_only AFTER UPDATE ON w REFERENCING NEW TABLE AS nt FOR EACH STATEMENT EXECUTE FUNCTION one_row_only();
      ALTER TABLE w ENABLE ALWAYS TRIGGER one_row_only;`;

    it('replays again, not fails, when a grouped statement after a one-change-per-statement replay fails too', async function () {
      // The second transaction arrives while the first one's failing batch is
      // still executing, so the replay session sees both: the replayed range
      // must not share a batch with the grouped one (and a grouped statement
      // failing next to a replayed one is replayed in turn, never fatal).
      const ddl = 'CREATE TABLE w (id int PRIMARY KEY, v int)';
      const env = await setup(ddl, { targetDdl: oneRowOnly(ddl, 1) });
      await env.s.query('INSERT INTO w SELECT g, 0 FROM generate_series(1, 50) g');
      const run = env.start({ batchChanges: 1000, batchMs: 5000 });
      await env.converge(run);
      await env.s.query('UPDATE w SET v = v + 1');
      await new Promise((r) => setTimeout(r, 400));
      await env.s.query('UPDATE w SET v = v + 1 WHERE id <= 25');
      await env.converge(run);
      assert.equal(run.error, null);
      assert.ok(run.logs.some((l) => l.fields?.event === 'safe-replay'));
      assert.deepEqual(await rows(env.t, 'SELECT sum(v)::int AS s FROM w'), [{ s: 75 }]);
      await run.stop();
    });

    it('counts a batch with nothing to write only after the batch sent ahead of it has committed (which fails here, and is replayed)', async function () {
      const ddl = 'CREATE TABLE w (id int PRIMARY KEY, v int); CREATE TABLE big (id int PRIMARY KEY, doc text)';
      const env = await setup(ddl, {
        targetDdl: `${oneRowOnly('CREATE TABLE w (id int PRIMARY KEY, v int)', 1)}; CREATE TABLE big (id int PRIMARY KEY, doc text)`,
      });
      await env.s.query(
        "INSERT INTO w SELECT g, 0 FROM generate_series(1, 50) g; INSERT INTO big SELECT 1, string_agg(md5(g::text), '') FROM generate_series(1, 3000) g",
      );
      const run = env.start({ batchChanges: 1000, batchMs: 5000 });
      await env.converge(run);
      await env.s.query('UPDATE w SET v = v + 1'); // its batch fails after 1 s on the target; replayed one by one
      const fence = await currentLsn(env.s); // past that transaction's end: only claimed once it is applied
      await new Promise((r) => setTimeout(r, 300));
      // Only the key, unchanged, and an unchanged TOAST value: a batch with no statement, flushed while the one above executes.
      await env.s.query('UPDATE big SET id = id');
      const early: string[] = [];
      const listen = setInterval(() => {
        const p = run.progress;
        if (p && p.appliedLsn >= fence && !run.logs.some((l) => l.fields?.event === 'safe-replay')) early.push(formatLsn(p.appliedLsn));
      }, 5);
      try {
        await env.converge(run);
      } finally {
        clearInterval(listen);
      }
      assert.deepEqual(early, [], 'no position past the failing batch before it was applied');
      assert.deepEqual(await rows(env.t, 'SELECT sum(v)::int AS s FROM w'), [{ s: 50 }]);
      await run.stop();
    });

    it('queues no batch behind one whose row counts are checked before its COMMIT (a trigger table): each stays its own transaction, and a restart applies nothing twice', async function () {
      const ddl = 'CREATE TABLE k (id int PRIMARY KEY, v text); CREATE TABLE q (id int PRIMARY KEY)';
      const env = await setup(ddl, {
        targetDdl: `${ddl};
          CREATE FUNCTION slow_k() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.01); RETURN NEW; END $$;
          CREATE TRIGGER slow_k BEFORE INSERT ON k FOR EACH ROW EXECUTE FUNCTION slow_k();
          ALTER TABLE k ENABLE ALWAYS TRIGGER slow_k;`,
      });
      const run = env.start({ batchChanges: 50, batchMs: 50 }); // k's 50 rows close a batch
      await env.s.query("INSERT INTO k VALUES (0, 'x'); INSERT INTO q VALUES (0)");
      await env.converge(run); // streaming, both tables' target columns known
      await env.s.query("INSERT INTO k SELECT g, 'x' FROM generate_series(1, 50) g"); // ≈ 0.5 s on the target (the trigger)
      await new Promise((r) => setTimeout(r, 100));
      await env.s.query('INSERT INTO q SELECT g FROM generate_series(1, 20) g'); // the next batch, flushed while that one executes
      await env.converge(run);
      // Queued inside k's still open transaction, q's BEGIN would have been a no-op and its COMMIT k's too.
      assert.deepEqual(await rows(env.t, 'SELECT count(DISTINCT xmin::text)::int AS n FROM k WHERE id > 0'), [{ n: 1 }]);
      assert.deepEqual(await rows(env.t, 'SELECT (SELECT min(xmin::text) FROM k WHERE id > 0) <> (SELECT min(xmin::text) FROM q WHERE id > 0) AS separate'), [
        { separate: true },
      ]);
      await run.stop();
      // The restart resumes from the position recorded on the target.
      await env.s.query('INSERT INTO q VALUES (21)');
      const again = env.start({ batchChanges: 50, batchMs: 50 });
      await env.converge(again);
      assert.equal(again.error, null);
      assert.equal(again.logs.filter((l) => l.fields?.event === 'safe-replay').length, 0, 'nothing was applied twice');
      await again.stop();
    });

    it('sends no batch behind one that failed before its COMMIT (counts checked here): the failed one is replayed, none is skipped', async function () {
      const ddl = 'CREATE TABLE w (id int PRIMARY KEY, v int); CREATE TABLE q (id int PRIMARY KEY)';
      // w: row counts checked by the agent (a BEFORE INSERT trigger), and a multi-row UPDATE fails after 1 s.
      const env = await setup(ddl, {
        targetDdl: `${oneRowOnly(ddl, 1)}
          CREATE FUNCTION keep_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
          CREATE TRIGGER keep_row BEFORE INSERT ON w FOR EACH ROW EXECUTE FUNCTION keep_row();
          ALTER TABLE w ENABLE ALWAYS TRIGGER keep_row;`,
      });
      await env.s.query('INSERT INTO w SELECT g, 0 FROM generate_series(1, 50) g; INSERT INTO q VALUES (0)');
      const run = env.start({ batchChanges: 1000, batchMs: 50 });
      await env.converge(run);
      await env.s.query('UPDATE w SET v = v + 1'); // fails on the target after 1 s; its COMMIT waits for the counts
      await new Promise((r) => setTimeout(r, 300));
      await env.s.query('INSERT INTO q SELECT g FROM generate_series(1, 20) g'); // the next batch, waiting for that one to be sent
      await env.converge(run);
      assert.ok(run.logs.some((l) => l.fields?.event === 'safe-replay'));
      assert.deepEqual(await rows(env.t, 'SELECT (SELECT sum(v)::int FROM w) AS w, (SELECT count(*)::int FROM q) AS q'), [{ w: 50, q: 21 }]);
      await run.stop();
    });

    it('keeps a failed batch counted as pending: no report claims "all decoded, nothing pending" before it is applied', async function () {
      const ddl = 'CREATE TABLE w (id int PRIMARY KEY, v int)';
      const env = await setup(ddl, { targetDdl: oneRowOnly(ddl, 0.5) });
      await env.s.query('INSERT INTO w SELECT g, 0 FROM generate_series(1, 50) g');
      const run = env.start({ batchChanges: 1000, batchMs: 5000 });
      await env.converge(run);
      const reports: SyncProgress[] = [];
      const listen = setInterval(() => {
        if (run.progress) reports.push(run.progress);
      }, 1);
      await env.s.query('UPDATE w SET v = v + 1');
      const fence = await currentLsn(env.s);
      try {
        await env.converge(run);
      } finally {
        clearInterval(listen);
      }
      const early = reports.filter((p) => p.pendingChanges === 0 && p.decodedLsn >= fence && p.appliedLsn < fence);
      assert.deepEqual(
        early.map((p) => `decoded ${formatLsn(p.decodedLsn)} applied ${formatLsn(p.appliedLsn)}`),
        [],
      );
      assert.ok(reports.length > 10);
      await run.stop();
    });

    it('never writes an unchanged TOAST value: large text and jsonb stay intact when another column changes', async function () {
      const env = await setup('CREATE TABLE docs (id int PRIMARY KEY, counter int, body text, meta jsonb)');
      const run = env.start();
      // Random base64 does not compress: > 8 kB out of line.
      await env.s.query(`INSERT INTO docs SELECT g, 0, b, jsonb_build_object('blob', b, 'g', g)
        FROM generate_series(1, 4) g, LATERAL (SELECT encode(decode(string_agg(md5(random()::text || g || k), ''), 'hex'), 'base64') AS b FROM generate_series(1, 1000) k) x`);
      await env.converge(run);
      const before = await rows(env.s, 'SELECT id, md5(body) AS b, md5(meta::text) AS m FROM docs ORDER BY id');
      // Row 1: only the counter; row 2: counter and body; row 3: counter and meta; row 4: counter, many times.
      await env.s.query(`BEGIN;
        UPDATE docs SET counter = counter + 1 WHERE id = 1;
        UPDATE docs SET counter = counter + 1, body = body || 'x' WHERE id = 2;
        UPDATE docs SET counter = counter + 1, meta = meta || '{"k": 1}' WHERE id = 3;
        UPDATE docs SET counter = counter + 1 WHERE id = 4; UPDATE docs SET counter = counter + 1 WHERE id = 4;
        COMMIT`);
      await env.converge(run);
      const after = (await rows(env.t, 'SELECT id, counter, md5(body) AS b, md5(meta::text) AS m FROM docs ORDER BY id')) as {
        id: number;
        counter: number;
        b: string;
        m: string;
      }[];
      const b = before as { b: string; m: string }[];
      assert.equal(after[0].b, b[0].b);
      assert.equal(after[0].m, b[0].m);
      assert.equal(after[0].counter, 1);
      assert.notEqual(after[1].b, b[1].b);
      assert.equal(after[1].m, b[1].m);
      assert.equal(after[2].b, b[2].b);
      assert.notEqual(after[2].m, b[2].m);
      assert.equal(after[3].b, b[3].b);
      assert.equal(after[3].counter, 2);
      await run.stop();
    });

    it('REPLICA IDENTITY FULL: deletes and updates exactly one of two identical rows', async function () {
      const env = await setup(`CREATE TABLE dups (a int, b text, flag bool, c char(4), ip inet, j json, bits bit(3), cs char(2)[]);
        ALTER TABLE dups REPLICA IDENTITY FULL;`);
      const run = env.start();
      await env.s
        .query(`INSERT INTO dups VALUES (1, 'x', true, 'ab', '10.0.0.1', '{"a": 1}', '101', '{a,bc}'), (1, 'x', true, 'ab', '10.0.0.1', '{"a": 1}', '101', '{a,bc}'),
        (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL), (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL), (3, 'z', false, 'zz', '::1', '[]', '000', '{}')`);
      await env.converge(run);
      await env.s.query('DELETE FROM dups WHERE ctid = (SELECT ctid FROM dups WHERE a = 1 LIMIT 1)');
      await env.s.query("UPDATE dups SET b = 'y' WHERE ctid = (SELECT ctid FROM dups WHERE a = 2 LIMIT 1)");
      await env.s.query('UPDATE dups SET flag = true WHERE a = 3');
      await env.converge(run);
      assert.deepEqual(await rows(env.t, 'SELECT a, count(*)::int AS n FROM dups GROUP BY a ORDER BY a'), [
        { a: 1, n: 1 },
        { a: 2, n: 2 },
        { a: 3, n: 1 },
      ]);
      await run.stop();
    });

    it('reports a committed batch as no longer pending in the very report that counts it applied (the cutover drain waits for that report)', async function () {
      const env = await setup('CREATE TABLE q (id int PRIMARY KEY, v text);');
      const run = env.start({ batchChanges: 1000, batchMs: 50 });
      await env.s.query("INSERT INTO q SELECT g, 'x' FROM generate_series(1, 10) g");
      await waitFor('the batch applied', async () => (run.progress?.changesApplied ?? 0) >= 10, 60_000);
      const first = run.reports.find((p) => p.changesApplied >= 10)!;
      // Before, the batch stayed counted as pending until the stream's next event, up to 10 s later, with the source fenced.
      assert.equal(first.pendingChanges, 0);
      await run.stop();
    });

    it('TRUNCATE empties exactly the tables truncated on the source', async function () {
      const env = await setup(`
        CREATE TABLE t1 (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text);
        CREATE TABLE t2 (id int PRIMARY KEY, v text);
        CREATE TABLE t3 (id int PRIMARY KEY);
        CREATE TABLE nocols (); ALTER TABLE nocols REPLICA IDENTITY FULL;
        CREATE TABLE pt (id int, k int, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
        CREATE TABLE pt_a PARTITION OF pt FOR VALUES FROM (0) TO (10);
        CREATE TABLE pt_b PARTITION OF pt FOR VALUES FROM (10) TO (20);`);
      const run = env.start();
      await env.s.query(
        "INSERT INTO t1 (v) SELECT 'a' FROM generate_series(1, 20); INSERT INTO t2 SELECT g, 'b' FROM generate_series(1, 20) g; INSERT INTO t3 VALUES (1); INSERT INTO pt SELECT g, g FROM generate_series(0, 19) g; INSERT INTO nocols SELECT FROM generate_series(1, 3)",
      );
      await env.s.query('DELETE FROM nocols WHERE ctid = (SELECT ctid FROM nocols LIMIT 1)');
      await env.s.query("BEGIN; TRUNCATE t1 RESTART IDENTITY; INSERT INTO t1 (v) VALUES ('after'); COMMIT");
      await env.s.query('TRUNCATE t2, pt');
      await env.s.query("INSERT INTO t2 VALUES (7, 'back'); INSERT INTO pt VALUES (1, 15)");
      await env.converge(run);
      assert.deepEqual(
        await rows(
          env.t,
          'SELECT (SELECT count(*) FROM t1)::int AS t1, (SELECT count(*) FROM t2)::int AS t2, (SELECT count(*) FROM t3)::int AS t3, (SELECT count(*) FROM pt)::int AS pt, (SELECT count(*) FROM nocols)::int AS nocols',
        ),
        [{ t1: 1, t2: 1, t3: 1, pt: 1, nocols: 2 }],
      );
      await run.stop();
    });

    it('applies a 200 000-row transaction in bounded memory', async function () {
      this.timeout(600_000);
      const env = await setup('CREATE TABLE big (id int PRIMARY KEY, pad text)');
      const run = env.start({ batchChanges: 2000 });
      await env.converge(run);
      // Live (retained) heap, not garbage: collect before every sample when
      // the runner exposes gc (.mocharc: --expose-gc), so other suites' garbage
      // in this shared process cannot make the bound flaky.
      const growthMb = await liveMemoryGrowthMb(async () => {
        // ~1 kB per row: holding the transaction would take > 200 MB.
        await env.s.query('INSERT INTO big SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 200000) g');
        await env.converge(run);
      });
      assert.ok(growthMb < 150, `memory grew by ${growthMb.toFixed(0)} MB while applying the transaction`);
      assert.deepEqual(await rows(env.t, 'SELECT count(*)::int AS n FROM big'), [{ n: 200000 }]);
      await run.stop();
    });

    it('bounds memory by bytes too: a transaction of few, very wide rows is applied in chunks', async function () {
      this.timeout(600_000);
      const env = await setup('CREATE TABLE wide (id int PRIMARY KEY, pad text)');
      // The change count never reaches a batch: only the byte bounds (the
      // stream's queue, the batch's row data) keep the 1 MB rows from piling up.
      const run = env.start({ batchChanges: 100_000 });
      await env.converge(run);
      const growthMb = await liveMemoryGrowthMb(async () => {
        await env.s.query('INSERT INTO wide SELECT g, repeat(md5(g::text), 32768) FROM generate_series(1, 320) g');
        await env.converge(run);
      });
      // Holding it would take > 320 MB (540 MB with the byte bounds removed; ~85 MB with them).
      assert.ok(growthMb < 200, `memory grew by ${growthMb.toFixed(0)} MB while applying a 320 MB transaction`);
      assert.deepEqual(await rows(env.t, 'SELECT count(*)::int AS n, sum(length(pad))::bigint AS len FROM wide'), [{ n: 320, len: String(320 * 1024 * 1024) }]);
      await run.stop();
    });

    it('round-trips every type exactly (fixture: all built-in families, enums, domains, ranges, partitions, identity, generated)', async function () {
      const ddl = `${ALL_TYPES_DDL}\n${SCHEMA_FEATURES_DDL}`;
      const env = await setup(ddl);
      const run = env.start();
      await env.s.query(ALL_TYPES_ROWS);
      if (pair.source >= 14) await env.s.query(NUMERIC_INFINITY_ROWS);
      await env.s.query(SCHEMA_FEATURES_ROWS);
      await env.s.query(`
        UPDATE typesdemo."AllTypes" SET c_text = c_text || '!', c_numeric = c_numeric * 2 WHERE id IN (1, 3);
        UPDATE typesdemo."AllTypes" SET c_double = '-0', c_timestamptz = '2000-01-01 00:00:00.000001+00' WHERE id = 4;
        DELETE FROM typesdemo."AllTypes" WHERE id = 2;
        UPDATE typesdemo.customers SET code = 'Z9' WHERE code = 'B2';
        UPDATE "Sales"."Orders" SET ordered_at = '2023-02-02' WHERE note = 'mid';
        DELETE FROM typesdemo.audit_log WHERE ctid = (SELECT ctid FROM typesdemo.audit_log WHERE actor = 'alice' LIMIT 1);`);
      const tables = await env.converge(run);
      assert.ok(tables.length >= 10);
      const textOf = 'SELECT t::text AS r FROM typesdemo."AllTypes" t ORDER BY id';
      assert.deepEqual(await rows(env.t, textOf), await rows(env.s, textOf));
      await run.stop();
    });

    it('round-trips tricky values of its own small type table (NaN, ±Infinity, µs, intervals, bytea, jsonb, arrays, ranges, enum, domain)', async function () {
      const env = await setup(`
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE DOMAIN posint AS int CHECK (VALUE > 0);
        CREATE TABLE ty (id int PRIMARY KEY, n numeric, f8 float8, f4 real, ts timestamptz, iv interval, b bytea, j jsonb,
          ia int[], ta text[], r int8range, tr tstzrange, m mood, d posint, u uuid, t time(3), c varchar(5), bits bit varying);`);
      const run = env.start();
      await env.s.query(`INSERT INTO ty VALUES
        (1, 'NaN', 'NaN', '-Infinity', '2024-02-29 23:59:59.999999+00', '-1 year 2 mons -3 days 04:05:06.000007', '\\x00ff', '{"a": [1, 2.50, null], "b": "\\u00e9"}',
          '{1,NULL,3}', '{"a,b","c\\"d",NULL,""}', '[1,5)', '[2024-01-01 00:00:00.000001+00,infinity)', 'happy', 7, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '12:34:56.789', 'abcde', '101'),
        (2, 'Infinity', '-0', 'Infinity', '-infinity', '0', '\\x', 'null', '{}', '{}', 'empty', '(,)', 'sad', 1, NULL, '00:00', '', ''),
        (3, '-Infinity', 1e-310, 1.17549435e-38, 'infinity', '178000000 years', NULL, '{}', NULL, '{{a,b},{c,d}}', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (4, 0.000000000000000000000000000001, 0.1, 0.1, '1999-12-31 23:59:59.999999+00', '1 mon', '\\xdeadbeef', '[]', '{2147483647}', '{NULL}', '(,10]', 'empty', 'ok', 2147483647, NULL, '23:59:59.999', 'x', '0')`);
      await env.s.query(`UPDATE ty SET n = n * 3, ts = ts + interval '1 microsecond', ta = ta || '{e}'::text[] WHERE id IN (1, 4);
        UPDATE ty SET m = 'ok', r = '[3,4]' WHERE id = 2; DELETE FROM ty WHERE id = 3`);
      await env.converge(run);
      const textOf = 'SELECT t::text AS r FROM ty t ORDER BY id';
      assert.deepEqual(await rows(env.t, textOf), await rows(env.s, textOf));
      await run.stop();
    });

    /** The "streaming changes" log entries of a run: how each session asked for values. */
    const valueForms = (run: SyncRun) => run.logs.filter((l) => typeof l.fields?.values === 'string').map((l) => l.fields!.values);

    it('binary values: built-in types round-trip exactly through COPY, short INSERTs, UPDATE and DELETE groups, key moves, unchanged TOAST and the one-by-one replay', async function () {
      const ddl = `CREATE TABLE bt (id bigint PRIMARY KEY, n numeric, n2 numeric(12,2), f8 float8, f4 real, ts timestamptz, tsn timestamp, d date, t time, tz timetz,
          iv interval, b bytea, j jsonb, js json, u uuid, tx text, vc varchar(5), c char(4), bo bool, i2 smallint, i4 int, ip inet, cid cidr, mac macaddr,
          o oid, ch "char", nm name, vb bit varying, big text);
        CREATE TABLE w (id int PRIMARY KEY, v int)`;
      const env = await setup(ddl, { targetDdl: oneRowOnly(ddl, 0) });
      const run = env.start({
        tableSyncLsn: new Map([
          ['public.bt', 0n],
          ['public.w', 0n],
        ]),
      });
      // Three rows alone (a short INSERT … unnest), then 40 in one statement (COPY).
      const tricky = `(1, 'NaN', 12.5, 'NaN', '-Infinity', '2024-02-29 23:59:59.999999+00', 'infinity', '-infinity', '24:00', '23:59:59.999999-14:59',
          '-1 year 2 mons -3 days 04:05:06.000007', '\\x00ff090a5c', '{"a": [1, 2.50, null], "b": "\\u00e9"}', '{ "kept":  "as written" }', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
          E'tab\there\nnew\\line ünï 😀', 'abcde', 'ab', true, -32768, 2147483647, '10.0.0.1/8', '10.0.0.0/8', '08:00:2b:01:02:03', 4294967295, 'x', 'a name', '10101', NULL),
        (2, 'Infinity', NULL, '-0', 1.17549435e-38, '-infinity', '2000-01-01 00:00:00.000001', 'infinity', '00:00', '00:00+00', '0', '\\x', 'null', '[]', NULL,
          '', '', '', false, 0, 0, '::1', '::/0', '00:00:00:00:00:00', 0, '', '', '', NULL),
        (3, 0.000000000000000000000000000001, -999999999.99, 1e-310, 'Infinity', '1999-12-31 23:59:59.999999+00', '4713-01-01 00:00:00 BC', '5874897-12-31', '12:34:56.789', '12:34:56+05:30',
          '178000000 years', NULL, '{}', '{}', NULL, 'x', 'x', 'x', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)`;
      await env.s.query(`INSERT INTO bt VALUES ${tricky}`);
      await env.converge(run);
      await env.s
        .query(`INSERT INTO bt SELECT g, g * 1.5, g, g / 7.0, g / 3.0, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1.000001 s', '2024-01-01'::timestamp - g * interval '1 day',
          '2024-01-01'::date + g, '00:00'::time + g * interval '1 min', '00:00+01'::timetz, g * interval '1 h', decode(md5(g::text), 'hex'), jsonb_build_object('g', g),
          json_build_object('g', g), md5(g::text)::uuid, repeat(E'\t', g % 3) || g, left(g::text, 5), left(g::text, 4), g % 2 = 0, g, -g, '192.168.0.1'::inet + g, '10.0.0.0/8',
          '08:00:2b:01:02:03', g, 'y', 'n' || g, (g % 8)::bit(3)::varbit,
          CASE WHEN g = 10 THEN (SELECT string_agg(md5(k::text), '') FROM generate_series(1, 400) k) END
        FROM generate_series(10, 49) g`);
      await env.converge(run);
      // UPDATE and DELETE groups, a key move, an UPDATE that leaves the TOASTed value unsent.
      await env.s.query(`BEGIN;
        UPDATE bt SET n = n + 1, ts = ts + interval '1 microsecond', tx = tx || E'\\\\', j = j || '{"u": true}' WHERE id BETWEEN 20 AND 40;
        DELETE FROM bt WHERE id BETWEEN 41 AND 45;
        UPDATE bt SET id = id + 1000, f8 = -f8 WHERE id IN (2, 46);
        UPDATE bt SET i4 = 1 WHERE id = 10;
        COMMIT`);
      // One change per statement: a multi-row UPDATE of w fails on the target.
      await env.s.query('INSERT INTO w SELECT g, 0 FROM generate_series(1, 20) g');
      await env.s.query(
        "BEGIN; UPDATE w SET v = v + 1; UPDATE bt SET vc = NULL, c = 'q', n2 = n2 * 2 WHERE id IN (1, 3, 30); DELETE FROM bt WHERE id = 31; COMMIT",
      );
      await env.converge(run);
      // Once, for the last transaction: a grouped statement failing anywhere else would show as a replay of its own.
      assert.equal(run.logs.filter((l) => l.fields?.event === 'safe-replay').length, 1, 'the one-by-one replay ran, for the last transaction only');
      assert.deepEqual(
        valueForms(run),
        valueForms(run).map(() => 'binary'),
      );
      assert.ok(valueForms(run).length >= 2, 'every session, the replay one included, streamed binary values');
      const textOf = 'SELECT t::text AS r FROM bt t ORDER BY id';
      assert.deepEqual(await rows(env.t, textOf), await rows(env.s, textOf));
      assert.deepEqual(await rows(env.t, 'SELECT sum(v)::int AS s FROM w'), [{ s: 20 }]);
      await run.stop();
    });

    it('values as text when a column cannot travel in binary: another type on the target, a reg* type, no replica identity key (checked before streaming), a type changed mid-stream on the source or the target', async function () {
      const other = await setup('CREATE TABLE x (id int PRIMARY KEY, v int); CREATE TABLE y (id int PRIMARY KEY, v text)', {
        targetDdl: 'CREATE TABLE x (id int PRIMARY KEY, v bigint); CREATE TABLE y (id int PRIMARY KEY, v text)',
      });
      let run = other.start({
        tableSyncLsn: new Map([
          ['public.x', 0n],
          ['public.y', 0n],
        ]),
      });
      await other.s.query("INSERT INTO x SELECT g, g FROM generate_series(1, 30) g; INSERT INTO y VALUES (1, 'a')");
      await other.converge(run);
      assert.deepEqual(valueForms(run), ['text']);
      assert.ok(
        run.logs.some((l) => /values as text \(public\.x\.v has another type on the target \(bigint\)\)/.test(l.msg)),
        'the log says which column keeps the values text',
      );
      await run.stop();

      const full = await setup('CREATE TABLE f (a int, b text); ALTER TABLE f REPLICA IDENTITY FULL; CREATE TABLE nk (a int, b text)');
      run = full.start({
        tableSyncLsn: new Map([
          ['public.f', 0n],
          ['public.nk', 0n],
        ]),
      });
      await full.s.query("INSERT INTO f VALUES (1, 'a'), (1, 'a'); DELETE FROM f WHERE ctid = (SELECT min(ctid) FROM f); INSERT INTO nk VALUES (1, 'x')");
      await full.converge(run);
      assert.deepEqual(valueForms(run), ['text']);
      assert.ok(!run.logs.some((l) => l.fields?.event === 'text-values'), 'decided before streaming, not by a restart');
      await run.stop();

      // A reg* value in binary form is an object's OID, which names something else (or nothing) on the target.
      const reg = await setup('CREATE TABLE r (id int PRIMARY KEY, cfg regconfig, cls regclass)');
      run = reg.start({ tableSyncLsn: new Map([['public.r', 0n]]) });
      await reg.s.query("INSERT INTO r SELECT g, 'english', 'r' FROM generate_series(1, 20) g");
      await reg.converge(run);
      assert.deepEqual(valueForms(run), ['text']);
      assert.deepEqual(await rows(reg.t, 'SELECT DISTINCT cfg::text AS cfg, cls::text AS cls FROM r'), [{ cfg: 'english', cls: 'r' }]);
      await run.stop();

      // The target's column changes type under a binary session: a binary COPY would read int8 bytes as float8.
      const retyped = await setup('CREATE TABLE rt (id bigint PRIMARY KEY, v bigint)');
      run = retyped.start({ tableSyncLsn: new Map([['public.rt', 0n]]) });
      await retyped.s.query('INSERT INTO rt SELECT g, g * 1000 FROM generate_series(1, 20) g');
      await retyped.converge(run);
      await retyped.t.query('ALTER TABLE rt ALTER COLUMN v TYPE double precision');
      await retyped.s.query('INSERT INTO rt SELECT g, g * 1000 FROM generate_series(21, 40) g');
      await retyped.converge(run);
      assert.equal(run.error, null);
      assert.ok(run.logs.some((l) => l.fields?.event === 'safe-replay' && /column type of public\.rt changed on the target/.test(String(l.fields.cause))));
      assert.deepEqual(valueForms(run), ['binary', 'text']);
      assert.deepEqual(await rows(retyped.t, 'SELECT count(*)::int AS n, sum(v)::float8 AS s FROM rt'), [{ n: 40, s: 820_000 }]);
      await run.stop();

      const drift = await setup('CREATE TABLE z (id int PRIMARY KEY, v int)');
      run = drift.start({ tableSyncLsn: new Map([['public.z', 0n]]) });
      await drift.s.query('INSERT INTO z SELECT g, g FROM generate_series(1, 30) g');
      await drift.converge(run);
      // The source's column becomes bigint, the target's stays int: binary int8 values would not fit int4's receive function.
      await drift.s.query('ALTER TABLE z ALTER COLUMN v TYPE bigint');
      await drift.s.query('INSERT INTO z SELECT g, g * 2 FROM generate_series(31, 60) g; UPDATE z SET v = -v WHERE id <= 10');
      await drift.converge(run);
      assert.equal(run.error, null);
      assert.deepEqual(valueForms(run), ['binary', 'text']);
      assert.ok(run.logs.some((l) => l.fields?.event === 'text-values' && l.fields.table === 'public.z' && l.fields.column === 'v'));
      assert.deepEqual(await rows(drift.t, 'SELECT count(*)::int AS n, sum(v)::int AS s FROM z'), [{ n: 60, s: 465 - 2 * 55 + 2 * 1365 }]);
      await run.stop();
    });

    it('applies a table only from its own start LSN (its copy holds the earlier transactions)', async function () {
      const env = await setup('CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);');
      await env.s.query('DO $$ BEGIN FOR i IN 1..10 LOOP INSERT INTO a VALUES (i); INSERT INTO b VALUES (i); COMMIT; END LOOP; END $$');
      const copyLsn = await currentLsn(env.s);
      await env.s.query('DO $$ BEGIN FOR i IN 11..20 LOOP INSERT INTO a VALUES (i); INSERT INTO b VALUES (i); COMMIT; END LOOP; END $$');
      const run = env.start({ tableSyncLsn: new Map([['public.a', copyLsn]]) });
      await run.waitApplied(await currentLsn(env.s));
      assert.deepEqual(await rows(env.t, 'SELECT (SELECT array_agg(id ORDER BY id) FROM a) AS a, (SELECT count(*)::int FROM b) AS b'), [
        { a: Array.from({ length: 10 }, (_, i) => i + 11), b: 20 },
      ]);
      await run.stop();
    });

    it('stops with APPLY_FAILED when a change cannot apply even one by one (target diverged)', async function () {
      const env = await setup('CREATE TABLE c (id int PRIMARY KEY, v text)');
      await env.t.query("INSERT INTO c VALUES (2, 'written on the target')");
      const run = env.start();
      await env.s.query("INSERT INTO c VALUES (1, 'a'), (2, 'b'), (3, 'c')");
      await assert.rejects(
        run.done,
        (e: unknown) => isPgferryError(e) && e.code === 'APPLY_FAILED' && e.message.includes('public.c') && e.message.includes('INSERT') && e.remedy.length > 0,
      );
      // Nothing of the failed transaction is on the target; its position is not recorded.
      assert.deepEqual(await rows(env.t, 'SELECT id FROM c ORDER BY id'), [{ id: 2 }]);
      assert.equal(run.logs.filter((l) => l.fields?.event === 'safe-replay').length, 1);
    });

    it('commits nothing of a batch whose UPDATE finds a row missing on the target (checked on the server, in the same round trip as COMMIT)', async function () {
      const env = await setup('CREATE TABLE c (id int PRIMARY KEY, v text)');
      await env.s.query("INSERT INTO c SELECT g, 'a' FROM generate_series(1, 20) g");
      const run = env.start({ batchChanges: 1000, batchMs: 1000 });
      await env.converge(run);
      await env.t.query('DELETE FROM c WHERE id = 7'); // the target diverges
      await env.s.query("UPDATE c SET v = 'b'; INSERT INTO c VALUES (21, 'new')");
      await assert.rejects(
        run.doneWithin(60_000),
        (e: unknown) =>
          isPgferryError(e) &&
          e.code === 'APPLY_FAILED' &&
          e.message.includes('UPDATE on public.c') &&
          e.message.includes('=(7)') &&
          e.message.includes('does not exist on the target'),
      );
      assert.deepEqual(await rows(env.t, "SELECT count(*)::int AS n FROM c WHERE v <> 'a'"), [{ n: 0 }], 'no row of the failed transaction was committed');
      assert.equal(run.logs.filter((l) => l.fields?.event === 'safe-replay').length, 1);
    });

    it('checks row counts before COMMIT when a target trigger may skip rows of a COPY', async function () {
      // An ALWAYS trigger (it fires as replica too) that drops every row with v = 'skip'.
      const ddl = 'CREATE TABLE k (id int PRIMARY KEY, v text)';
      const env = await setup(ddl, {
        targetDdl: `${ddl};
          CREATE FUNCTION skip_some() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.v = 'skip' THEN RETURN NULL; END IF; RETURN NEW; END $$;
          CREATE TRIGGER skip_some BEFORE INSERT ON k FOR EACH ROW EXECUTE FUNCTION skip_some();
          ALTER TABLE k ENABLE ALWAYS TRIGGER skip_some;`,
      });
      const run = env.start({ batchChanges: 1000, batchMs: 1000 });
      await env.s.query("INSERT INTO k SELECT g, CASE WHEN g = 30 THEN 'skip' ELSE 'keep' END FROM generate_series(1, 40) g"); // 40 rows: one COPY
      await assert.rejects(run.doneWithin(60_000), (e: unknown) => isPgferryError(e) && e.code === 'APPLY_FAILED' && e.message.includes('INSERT on public.k'));
      assert.deepEqual(await rows(env.t, 'SELECT count(*)::int AS n FROM k'), [{ n: 0 }], 'the COPY that lost a row was not committed');
    });

    it('exactly once: stopping mid-stream, writing while stopped and losing connections neither loses nor doubles a change', async function () {
      this.timeout(300_000);
      const env = await setup(`
        CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL);
        CREATE TABLE log (seq int NOT NULL, note text);
        INSERT INTO counter SELECT g, 0 FROM generate_series(1, 5) g;`);
      // The counter rows exist on both sides before the slot, as after a copy.
      const writer = await sessionClient(src, env.db);
      open.push(writer);
      const write = (from: number, to: number) =>
        writer.query(`DO $$ BEGIN FOR i IN ${from}..${to} LOOP
          UPDATE counter SET n = n + 1 WHERE id = i % 5 + 1; INSERT INTO log VALUES (i, 'row ' || i); COMMIT;
        END LOOP; END $$`);
      // Invariant, sampled all along: the slot is never told more than the
      // target has committed (the slot's confirmed position, read first, must
      // not pass the applied position reported afterwards).
      let run = env.start({ batchChanges: 50, batchMs: 20 });
      const violations: string[] = [];
      let sampling = true;
      const monitor = await sessionClient(src, env.db);
      open.push(monitor);
      const sampler = (async () => {
        while (sampling) {
          const r = await monitor.query('SELECT confirmed_flush_lsn::text AS l FROM pg_replication_slots WHERE slot_name = $1', [env.slotName]);
          const confirmed = r.rows[0]?.l ? parseLsn(r.rows[0].l) : 0n;
          const applied = run.progress?.appliedLsn ?? 0n;
          if (confirmed > applied && run.progress) violations.push(`slot confirmed ${formatLsn(confirmed)} > applied ${formatLsn(applied)}`);
        }
      })();
      const writing = write(1, 3000);
      await run.waitChanges(500);
      await run.stop(); // mid-stream: the writer is still going
      await writing;
      await write(3001, 3500); // while stopped
      run = env.start({ batchChanges: 50, batchMs: 20 });
      const writing2 = write(3501, 6000);
      await run.waitChanges(1000);
      // Lose both connections mid-stream: the sync reconnects by itself.
      await env.t.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgferry-apply'");
      await env.s.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgferry-sync'");
      await writing2;
      await env.converge(run);
      sampling = false;
      await sampler;
      assert.deepEqual(violations, []);
      assert.deepEqual(await rows(env.t, 'SELECT count(*)::int AS n, count(DISTINCT seq)::int AS d, min(seq) AS lo, max(seq) AS hi FROM log'), [
        { n: 6000, d: 6000, lo: 1, hi: 6000 },
      ]);
      assert.deepEqual(await rows(env.t, 'SELECT sum(n)::int AS s FROM counter'), [{ s: 6000 }]);
      assert.ok(run.logs.some((l) => l.level === 'warn' && l.fields?.event === 'reconnect'));
      // The target's recorded position is what the slot was told.
      const applied = (await rows(env.t, "SELECT applied_lsn::text AS l FROM pgferry.apply_state WHERE migration_id = 'm1'")) as { l: string }[];
      assert.ok(parseLsn(applied[0].l) <= run.progress!.appliedLsn);
      await run.stop();
      const slot = (await env.s.query('SELECT confirmed_flush_lsn::text AS l FROM pg_replication_slots WHERE slot_name = $1', [env.slotName])).rows as {
        l: string;
      }[];
      assert.ok(parseLsn(slot[0].l) <= run.progress!.appliedLsn);
    });

    it('stops with SCHEMA_DRIFT when the source gains a column the target lacks, and resumes once it is added', async function () {
      const env = await setup('CREATE TABLE drift (id int PRIMARY KEY, a text)');
      let run = env.start();
      await env.s.query("INSERT INTO drift VALUES (1, 'before')");
      await env.converge(run);
      await env.s.query("ALTER TABLE drift ADD COLUMN b int; INSERT INTO drift VALUES (2, 'after', 42)");
      await assert.rejects(
        run.doneWithin(60_000),
        (e: unknown) => isPgferryError(e) && (e as PgferryError).code === 'SCHEMA_DRIFT' && /drift/.test(e.message) && /\bb\b/.test(e.message),
      );
      await env.t.query("SET lock_timeout = '30s'");
      await env.t.query('ALTER TABLE drift ADD COLUMN b int').catch(async (e) => {
        const who = await env.t.query(
          'SELECT pid, application_name, state, xact_start, query FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()',
        );
        throw new Error(`${(e as Error).message}; other sessions: ${JSON.stringify(who.rows)}`);
      });
      run = env.start();
      await env.converge(run);
      assert.deepEqual(await rows(env.t, 'SELECT id, a, b FROM drift ORDER BY id'), [
        { id: 1, a: 'before', b: null },
        { id: 2, a: 'after', b: 42 },
      ]);
      await run.stop();
    });

    it('applies in source order when the target user may not set session_replication_role (non-superuser, foreign keys live)', async function () {
      const owner = { user: 'app_owner', password: 'app-owner-pw' };
      const env = await setup(
        `
        CREATE TABLE parent (id int PRIMARY KEY, name text);
        CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent (id), v int);`,
        { targetOwner: owner },
      );
      const run = env.start();
      await env.s.query(`DO $$ BEGIN
        FOR i IN 1..200 LOOP
          INSERT INTO parent VALUES (i, 'p' || i);
          INSERT INTO child VALUES (i, i, 0);
          UPDATE child SET v = v + 1 WHERE id = i;
          IF i % 3 = 0 THEN DELETE FROM child WHERE id = i; DELETE FROM parent WHERE id = i; END IF;
          IF i % 5 = 0 THEN UPDATE parent SET id = id + 1000 WHERE id = i - 4 AND NOT EXISTS (SELECT 1 FROM child WHERE parent_id = i - 4); END IF;
          COMMIT;
        END LOOP;
      END $$`);
      await env.converge(run);
      assert.ok(run.logs.some((l) => l.fields?.event === 'apply-mode' && l.fields.mode === 'ordered'));
      await run.stop();
    });
  });
}

describe('receive: standby status updates and keepalives against a real server', function () {
  let c: Cluster;
  before(async function () {
    c = await startCluster({ version: 17, fast: true });
  });
  after(async function () {
    await c?.stop();
  });

  it('confirms exactly the LSN sent (not lsn+1) with a clock on the PostgreSQL epoch', async function () {
    const s = await sessionClient(c, 'postgres');
    try {
      await s.query('CREATE TABLE r (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE r');
      await s.query("SELECT pg_create_logical_replication_slot('s', 'pgoutput')");
      await s.query('INSERT INTO r VALUES (1)');
      await s.query('INSERT INTO r VALUES (2)');
      const parser = new PgoutputParser();
      const stream = await ReplicationStream.open<PgoutputMessage>({
        source: c.endpoint('postgres'),
        slotName: 's',
        publicationName: 'p',
        startLsn: 0n,
        decode: (b, o, e) => parser.parse(b, o, e),
      });
      try {
        const ends: Lsn[] = [];
        let keepaliveEnd: Lsn | null = null;
        while (ends.length < 2 || keepaliveEnd === null) {
          const ev = await stream.next(60_000);
          assert.ok(ev, 'stream ended');
          if (ev.tag === 'commit') ends.push(ev.endLsn);
          if (ev.tag === 'keepalive' && ends.length === 2) keepaliveEnd = ev.walEnd;
        }
        assert.ok(keepaliveEnd >= ends[1]);
        // Confirm the end of the first transaction: the slot must record exactly it.
        stream.sendStatus(ends[0]);
        const confirmed = async () =>
          parseLsn((await s.query("SELECT confirmed_flush_lsn::text AS l FROM pg_replication_slots WHERE slot_name = 's'")).rows[0].l);
        while ((await confirmed()) !== ends[0]) {
          assert.ok((await confirmed()) < ends[0], 'confirmed past what was sent');
          await stream.next(50);
        }
        const reply = await s.query(
          "SELECT extract(epoch FROM now() - reply_time)::float8 AS skew_s FROM pg_stat_replication WHERE application_name = 'pgferry-sync'",
        );
        // A clock on the wrong epoch (the library's 946080000000) would be 7 days off.
        assert.ok(Math.abs(reply.rows[0].skew_s) < 3600, `reply_time is ${reply.rows[0].skew_s} s away from now`);
      } finally {
        await stream.close();
      }
    } finally {
      await s.end();
    }
  });

  it('encodes the status update and parses keepalives byte for byte', function () {
    const nowMs = PG_EPOCH_MS + 86_400_000; // one day after the PostgreSQL epoch
    const b = encodeStandbyStatus(0x1_0000_0010n, nowMs, true);
    assert.equal(b.length, 34);
    assert.equal(b[0], 0x72);
    for (const off of [1, 9, 17]) assert.equal(b.readBigUInt64BE(off), 0x1_0000_0010n);
    assert.equal(b.readBigInt64BE(25), 86_400_000_000n);
    assert.equal(b[33], 1);
    const k = Buffer.alloc(18);
    k[0] = 0x6b;
    k.writeBigUInt64BE(0x2_0000_0020n, 1);
    k.writeBigInt64BE(5n, 9);
    k[17] = 1;
    assert.deepEqual(parseKeepalive(k), { tag: 'keepalive', walEnd: 0x2_0000_0020n, sendTimeMicros: 5n, replyRequested: true });
    assert.equal(formatLsn(parseKeepalive(k).walEnd), '2/20');
  });
});

/**
 * Peak growth of live memory — the JavaScript heap plus Buffers (row data
 * lives off-heap) — while `work` runs, in MB. Collects before every sample
 * when the runner exposes gc (.mocharc: --expose-gc), so garbage (also other
 * suites' in this shared process) cannot make a bound flaky.
 */
async function liveMemoryGrowthMb(work: () => Promise<void>): Promise<number> {
  const gc = (globalThis as { gc?: () => void }).gc;
  const live = () => {
    const m = process.memoryUsage();
    return m.heapUsed + m.arrayBuffers;
  };
  gc?.();
  const baseline = live();
  let peak = baseline;
  const sampler = setInterval(
    () => {
      gc?.();
      peak = Math.max(peak, live());
    },
    gc ? 100 : 20,
  );
  try {
    await work();
  } finally {
    clearInterval(sampler);
  }
  return (Math.max(peak, live()) - baseline) / 1e6;
}
