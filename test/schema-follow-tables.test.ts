/**
 * Tables created on the source during the sync reach the target: created
 * there, added to the publication, copied in their own snapshot, and the
 * stream applies exactly the changes the copy lacks — also when the agent
 * stops at any step of the follow and starts again. PostgreSQL 14 → 17, real
 * clusters, a real publication and main slot; no agent: the main slot's
 * stream is read with pg_logical_slot_peek_binary_changes and decoded by
 * pgoutput.ts, and the applier's gate rule is applied to it here.
 */
import assert from 'node:assert/strict';
import type pg from 'pg';
import { startCluster, type Cluster } from '../dev/testbed';
import { selectTables, tableKey, type TableInfo } from '../agent/engine/catalog';
import { parseSpec, type MigrationSpec } from '../agent/engine/spec';
import { createPublication, createSlotWithSnapshot } from '../agent/engine/snapshot';
import { ensureTargetState, readCopyState, readMarkers } from '../agent/engine/target-state';
import { PgoutputParser } from '../agent/engine/pgoutput';
import { formatLsn, type Lsn } from '../agent/engine/lsn';
import type { TableCopyProgress } from '../agent/engine/copy';
import { TableGates, followNewTables, recopyTables, unfinishedFollowedTables, type FollowTablesContext } from '../agent/engine/schema-follow-tables';
import { failpointsFile, type Failpoints } from './support/failpoints';
import { pollUntil } from './support/running';

/** A failpoint pause that outlasts the test step (the follow is stopped meanwhile). */
const HOLD_MS = 600_000;

describe('schema follow: tables created during the sync (PostgreSQL 14 → 17)', function () {
  let source: Cluster;
  let target: Cluster;
  let fp: Failpoints;
  let n = 0;
  const open: pg.Client[] = [];

  before(async function () {
    [source, target] = await Promise.all([startCluster({ version: 14, fast: true }), startCluster({ version: 17, fast: true })]);
    fp = failpointsFile();
    process.env.PGFERRY_FAILPOINTS_FILE = fp.path;
  });
  after(async function () {
    delete process.env.PGFERRY_FAILPOINTS_FILE;
    await Promise.all(open.map((c) => c.end().catch(() => undefined)));
    await Promise.all([source?.stop(), target?.stop()]);
    fp?.remove();
  });
  afterEach(() => fp.set({}));

  /** What a migration has once it is syncing: a database on each side, `base` copied, the publication and the main slot. */
  interface Syncing {
    db: string;
    spec: MigrationSpec;
    src: pg.Client;
    tgt: pg.Client;
    known: TableInfo[];
    slot: string;
    pub: string;
    /** A context as the runner would build it, with fresh gates and map (a restarted agent has nothing else). */
    ctx(o?: { signal?: AbortSignal; progress?: Map<string, TableCopyProgress> }): FollowTablesContext;
  }

  async function syncing(copy: Partial<MigrationSpec['copy']> = {}): Promise<Syncing> {
    const db = `f${++n}`;
    await Promise.all([source.createDatabase(db), target.createDatabase(db)]);
    await source.query(
      `CREATE TABLE base (id int PRIMARY KEY, v text); INSERT INTO base SELECT g, 'b' || g FROM generate_series(1, 100) g;
       CREATE TYPE mood AS ENUM ('calm', 'busy');`,
      [],
      db,
    );
    await target.query(
      `CREATE TABLE base (id int PRIMARY KEY, v text); INSERT INTO base SELECT g, 'b' || g FROM generate_series(1, 100) g;
       CREATE TYPE mood AS ENUM ('calm', 'busy');`,
      [],
      db,
    );
    const src = await source.client(db);
    const tgt = await target.client(db);
    open.push(src, tgt);
    await ensureTargetState(tgt);
    const spec = parseSpec({
      id: db,
      source: source.endpoint(db),
      target: target.endpoint(db),
      tables: { include: ['public.*'] },
      copy: { workers: 2, ...copy },
    });
    const known = (await selectTables(src, spec.tables)).tables;
    const pub = `pgferry_${db}`;
    const slot = `pgferry_${db}`;
    await createPublication(src, db, pub, known, 14);
    const main = await createSlotWithSnapshot(spec.source, slot);
    await main.release();
    const log = (level: string, msg: string) => process.env.PGFERRY_TEST_LOG && console.log(level, msg);
    return {
      db,
      spec,
      src,
      tgt,
      known,
      slot,
      pub,
      ctx: (o = {}) => ({
        migrationId: db,
        spec,
        publicationName: pub,
        slotName: slot,
        known,
        tableSyncLsn: new Map(),
        gates: new TableGates(),
        signal: o.signal ?? new AbortController().signal,
        log,
        progress: o.progress,
      }),
    };
  }

  const ids = async (c: pg.Client, table: string): Promise<number[]> => (await c.query(`SELECT id FROM ${table} ORDER BY id`)).rows.map((r) => Number(r.id));
  const published = async (s: Syncing): Promise<string[]> =>
    (await s.src.query('SELECT schemaname || $2 || tablename AS t FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1', [s.pub, '.'])).rows.map(
      (r) => r.t,
    );

  /**
   * The main slot's inserts into `table` (its `id`s), each with its source transaction's commit LSN, decoded from
   * the slot's stream since it was created (peeked: the slot does not move).
   */
  async function streamedInserts(s: Syncing, table: string): Promise<Array<{ id: number; commitLsn: Lsn }>> {
    // The clusters commit asynchronously (fast: true) and decoding stops at the flushed WAL: a WAL switch flushes it all.
    await s.src.query('SELECT pg_switch_wal()');
    const r = await s.src.query(`SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)`, [
      s.slot,
      s.pub,
    ]);
    const parser = new PgoutputParser();
    const out: Array<{ id: number; commitLsn: Lsn }> = [];
    let commitLsn: Lsn = 0n;
    for (const row of r.rows) {
      const m = parser.parse(row.data as Buffer);
      if (m.tag === 'begin') commitLsn = m.finalLsn;
      if (m.tag === 'insert' && m.relation.name === table) out.push({ id: Number(m.newTuple.values()[0]), commitLsn });
    }
    return out;
  }

  /**
   * No row lost or doubled: the rows the copy holds, and the streamed inserts the applier applies (committed at or
   * after the table's start LSN; earlier ones are skipped by the gate), are the source's rows, each exactly once;
   * every insert the applier skips is in the copy.
   */
  async function assertExactlyOnce(s: Syncing, table: string, startLsn: Lsn): Promise<{ copied: number; applied: number; skipped: number }> {
    const copied = await ids(s.tgt, table);
    const stream = await streamedInserts(s, table);
    const applied = stream.filter((x) => x.commitLsn >= startLsn).map((x) => x.id);
    const skipped = stream.filter((x) => x.commitLsn < startLsn).map((x) => x.id);
    const inCopy = new Set(copied);
    assert.deepEqual(
      applied.filter((id) => inCopy.has(id)),
      [],
      'a streamed insert the applier applies is in the copy too (doubled)',
    );
    assert.deepEqual(
      skipped.filter((id) => !inCopy.has(id)),
      [],
      'a streamed insert the gate skips is missing from the copy (lost)',
    );
    assert.deepEqual(
      [...copied, ...applied].sort((a, b) => a - b),
      await ids(s.src, table),
      'copy + applied stream = the source',
    );
    return { copied: copied.length, applied: applied.length, skipped: skipped.length };
  }

  it('TableGates: a closed gate holds the table until it opens, and closing it again keeps the waiters', async () => {
    const gates = new TableGates();
    assert.equal(gates.size, 0);
    assert.equal(gates.get('public.t'), undefined);
    const g = gates.close('public.t');
    assert.equal(g.lsn, null);
    assert.equal(gates.size, 1);
    assert.equal(gates.get('public.t'), g);
    gates.setLsn('public.t', 0x1000n);
    assert.equal(g.lsn, 0x1000n);
    let opened = false;
    const waiting = g.ready.then(() => (opened = true));
    // Closed again (a copy that failed starts over): the same gate, its lsn unknown again.
    assert.equal(gates.close('public.t'), g);
    assert.equal(g.lsn, null);
    await Promise.resolve();
    assert.equal(opened, false);
    gates.open('public.t');
    await waiting;
    assert.equal(opened, true);
    assert.equal(gates.size, 0);
    assert.equal(gates.get('public.t'), undefined);
    gates.open('public.t'); // nothing to open: no error
    assert.throws(() => gates.setLsn('public.other', 1n), /No gate/);
  });

  it('copies a new table with its type, keys, index and foreign key, adds it to the publication and sets its start LSN', async () => {
    const s = await syncing();
    await s.src.query(`CREATE TYPE size AS ENUM ('s', 'm', 'l');
      CREATE TABLE fresh (id serial PRIMARY KEY, base_id int REFERENCES base, m mood, sz size, note text UNIQUE, CHECK (id > 0));
      CREATE INDEX fresh_base ON fresh (base_id);
      INSERT INTO base VALUES (101, 'new');
      INSERT INTO fresh (base_id, m, sz, note) SELECT 1 + g % 101, 'busy', 'm', 'n' || g FROM generate_series(1, 1000) g;`);
    const ctx = s.ctx();
    const res = await followNewTables(ctx);
    assert.deepEqual(res.skipped, []);
    assert.deepEqual(
      res.added.map((a) => [tableKey(a.table), a.rows]),
      [['public.fresh', 1000]],
    );
    const lsn = res.added[0].lsn;
    assert.equal(ctx.tableSyncLsn.get('public.fresh'), lsn);
    assert.equal(ctx.gates.size, 0);
    assert.deepEqual(await published(s), ['public.base', 'public.fresh']);
    const copied = (await readCopyState(s.tgt, s.db)).get('public.fresh');
    assert.equal(copied?.partsDone, copied?.parts);
    assert.equal(copied?.rows, 1000);
    assert.equal(copied?.lastSnapshotLsn, lsn);
    assert.deepEqual(
      (await s.tgt.query(`SELECT id, base_id, m::text, sz::text, note FROM fresh ORDER BY id`)).rows,
      (await s.src.query(`SELECT id, base_id, m::text, sz::text, note FROM fresh ORDER BY id`)).rows,
    );
    const constraints = async () =>
      (await s.tgt.query(`SELECT contype, convalidated FROM pg_constraint WHERE conrelid = 'public.fresh'::regclass ORDER BY conname`)).rows.map((r) => [
        r.contype,
        r.convalidated,
      ]);
    const record = async () => [...(await readMarkers(s.tgt, s.db, 'follow-table:')).values()].map((v) => JSON.parse(v!));
    // The foreign key names base row 101, which the apply has not brought to the target yet: added NOT VALID for now.
    assert.deepEqual(await constraints(), [
      ['f', false],
      ['c', true],
      ['u', true],
      ['p', true],
    ]);
    assert.equal((await s.tgt.query(`SELECT 1 FROM pg_indexes WHERE indexname = 'fresh_base'`)).rows.length, 1);
    assert.deepEqual(await record(), [{ origin: 'created', indexed: false }]);
    // The apply catches up; the next check finds nothing new and validates the foreign key.
    await s.tgt.query(`INSERT INTO base VALUES (101, 'new')`);
    const again = await followNewTables(s.ctx());
    assert.deepEqual(again, { added: [], skipped: [] });
    assert.deepEqual((await constraints())[0], ['f', true]);
    assert.deepEqual(await record(), [{ origin: 'created', indexed: true }]);
    // Rows written after the copy arrive in the stream, from its start LSN on.
    await s.src.query(`INSERT INTO fresh (base_id, note) SELECT 1, 'late' || g FROM generate_series(1, 25) g`);
    const once = await assertExactlyOnce(s, 'fresh', lsn);
    assert.deepEqual([once.copied, once.applied], [1000, 25]);
  });

  it('builds no index or foreign key while another table is gated (the apply may wait there holding locks), then at the next check', async () => {
    const s = await syncing();
    await s.src.query(`CREATE TABLE fresh (id int PRIMARY KEY, base_id int REFERENCES base); CREATE INDEX fresh_base ON fresh (base_id);
      INSERT INTO fresh SELECT g, g FROM generate_series(1, 50) g`);
    const ctx = s.ctx();
    ctx.gates.close('public.other');
    const res = await followNewTables(ctx);
    assert.deepEqual(
      res.added.map((a) => [tableKey(a.table), a.rows, ctx.tableSyncLsn.get('public.fresh') === a.lsn]),
      [['public.fresh', 50, true]],
    );
    assert.equal(ctx.gates.get('public.fresh'), undefined, 'its own gate is open');
    const built = async () =>
      (
        await s.tgt.query(`SELECT count(*)::int AS n FROM pg_class WHERE relname IN ('fresh_base', 'fresh_base_id_fkey') UNION ALL
        SELECT count(*)::int FROM pg_constraint WHERE conname = 'fresh_base_id_fkey'`)
      ).rows.map((r) => r.n);
    assert.deepEqual(await built(), [0, 0]);
    ctx.gates.open('public.other');
    assert.deepEqual(await followNewTables(ctx), { added: [], skipped: [] });
    assert.deepEqual(await built(), [1, 1]);
  });

  it('skips what it cannot follow, with the reason, and never empties a table it did not create', async () => {
    const s = await syncing();
    await s.src.query(`CREATE TABLE nokey (v text); INSERT INTO nokey VALUES ('x');
      CREATE TABLE theirs (id int PRIMARY KEY); INSERT INTO theirs VALUES (1), (2);
      CREATE TABLE adopt (id int PRIMARY KEY, v text); INSERT INTO adopt SELECT g, 'a' FROM generate_series(1, 50) g;
      CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id); CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);`);
    await s.tgt.query(`CREATE TABLE theirs (id int PRIMARY KEY); INSERT INTO theirs VALUES (7); CREATE TABLE adopt (id int PRIMARY KEY, v text);`);
    const ctx = s.ctx();
    const res = await followNewTables(ctx);
    assert.deepEqual(res.skipped.map((x) => x.table).sort(), ['public.nokey', 'public.parted', 'public.theirs']);
    for (const x of res.skipped) assert.match(x.reason, /Fix: /);
    assert.match(res.skipped.find((x) => x.table === 'public.theirs')!.reason, /TRUNCATE public\.theirs/);
    assert.deepEqual(await ids(s.tgt, 'theirs'), [7], "the user's table is left as it was");
    // An empty table of that name with the same columns is loaded into.
    assert.deepEqual(
      res.added.map((a) => [tableKey(a.table), a.rows]),
      [['public.adopt', 50]],
    );
    assert.deepEqual(await ids(s.tgt, 'adopt'), await ids(s.src, 'adopt'));
    assert.deepEqual(await published(s), ['public.adopt', 'public.base']);
  });

  it('streams from exactly the snapshot: a transaction committed between the publication and the snapshot is copied, not applied', async () => {
    const s = await syncing();
    await s.src.query(`CREATE TABLE fresh (id int PRIMARY KEY, v text); INSERT INTO fresh SELECT g, 'x' FROM generate_series(1, 500) g`);
    // A transaction open before the follow: the snapshot waits for it, so it commits between the publication (P) and the snapshot (L).
    const writer = await source.client(s.db);
    open.push(writer);
    await writer.query(`BEGIN; INSERT INTO fresh SELECT g, 'open' FROM generate_series(501, 600) g`);
    // A writer all along: each insert its own transaction.
    let stop = false;
    const background = (async () => {
      const w = await source.client(s.db);
      open.push(w);
      for (let id = 10_000; !stop; id++) await w.query(`INSERT INTO fresh VALUES ($1, 'bg')`, [id]);
    })();
    const ctx = s.ctx();
    const following = followNewTables(ctx);
    await pollUntil('fresh in the publication', async () => ((await published(s)).includes('public.fresh') ? true : undefined));
    const gate = ctx.gates.get('public.fresh');
    assert.ok(gate, 'the gate is closed while the table is added');
    await writer.query('COMMIT');
    const res = await following;
    stop = true;
    await background;
    await s.src.query(`INSERT INTO fresh SELECT g, 'after' FROM generate_series(601, 650) g`);
    const lsn = res.added[0].lsn;
    assert.equal(gate.lsn, lsn);
    const once = await assertExactlyOnce(s, 'fresh', lsn);
    assert.ok(once.skipped >= 100, `the open transaction's 100 rows are streamed before the snapshot and skipped (skipped ${once.skipped})`);
    assert.ok(once.applied >= 50, `the rows inserted after the copy are applied (applied ${once.applied})`);
  });

  it('a table half copied when the agent died is emptied and copied again in a new snapshot: exact rows', async () => {
    const s = await syncing({ workers: 1, splitBytes: 64 * 1024 });
    await s.src.query(
      `CREATE TABLE big (id int PRIMARY KEY, pad text); INSERT INTO big SELECT g, repeat('p', 200) FROM generate_series(1, 20000) g; ANALYZE big`,
    );
    // The agent "dies" as soon as the first part of the copy is committed: the signal stops the copy there.
    const died = new AbortController();
    const progress = new Map<string, TableCopyProgress>([['public.big', trap(died)]]);
    await assert.rejects(followNewTables(s.ctx({ signal: died.signal, progress })));
    const half = (await readCopyState(s.tgt, s.db)).get('public.big')!;
    assert.ok(half.parts > 1 && half.partsDone < half.parts, `half copied: ${half.partsDone} of ${half.parts} parts`);
    const firstLsn = half.firstSnapshotLsn;
    assert.ok((await ids(s.tgt, 'big')).length > 0);
    assert.deepEqual(await published(s), ['public.base', 'public.big']);
    // Written while the agent was down.
    await s.src.query(`INSERT INTO big SELECT g, 'down' FROM generate_series(20001, 20100) g; DELETE FROM big WHERE id <= 10`);
    // The restart: nothing in memory, the gate closed before the sync applies anything.
    const ctx = s.ctx();
    const unfinished = await unfinishedFollowedTables(ctx);
    assert.deepEqual(unfinished.map(tableKey), ['public.big']);
    assert.equal(ctx.gates.get('public.big')?.lsn, null);
    const [again] = await recopyTables(ctx, unfinished);
    assert.ok(again.lsn > firstLsn, `a new snapshot: ${formatLsn(again.lsn)} > ${formatLsn(firstLsn)}`);
    assert.equal(ctx.tableSyncLsn.get('public.big'), again.lsn);
    assert.equal(ctx.gates.size, 0);
    assert.deepEqual(await ids(s.tgt, 'big'), await ids(s.src, 'big'));
    const copied = (await readCopyState(s.tgt, s.db)).get('public.big')!;
    assert.deepEqual([copied.partsDone === copied.parts, copied.firstSnapshotLsn, copied.rows], [true, again.lsn, 20090]);
    assert.deepEqual(await unfinishedFollowedTables(s.ctx()), []);
    await s.src.query(`INSERT INTO big SELECT g, 'later' FROM generate_series(20101, 20110) g`);
    await assertExactlyOnce(s, 'big', again.lsn);
  });

  for (const point of ['follow.table-created', 'follow.published', 'follow.snapshot', 'follow.copied']) {
    it(`the agent stopped at ${point}: after the restart the table ends with exactly the source's rows`, async () => {
      const s = await syncing();
      await s.src.query(`CREATE TABLE fresh (id int PRIMARY KEY, v text); CREATE INDEX fresh_v ON fresh (v);
        INSERT INTO fresh SELECT g, 'x' || g FROM generate_series(1, 300) g`);
      fp.set({ [point]: HOLD_MS });
      const died = new AbortController();
      const following = followNewTables(s.ctx({ signal: died.signal }));
      await pollUntil(`${point} paused`, async () => (fp.paused(point) > 0 ? true : undefined));
      died.abort();
      await assert.rejects(following);
      fp.set({});
      await s.src.query(`INSERT INTO fresh SELECT g, 'down' FROM generate_series(301, 320) g; UPDATE fresh SET v = 'u' WHERE id = 1`);
      const ctx = s.ctx();
      const unfinished = await unfinishedFollowedTables(ctx);
      const recopied = await recopyTables(ctx, unfinished);
      // The copy was committed before the stop: the table is done, its start LSN in its copy state (the sync reads it there).
      const done = point === 'follow.copied';
      assert.deepEqual(unfinished.map(tableKey), done ? [] : ['public.fresh']);
      const copied = (await readCopyState(s.tgt, s.db)).get('public.fresh')!;
      const start = done ? copied.lastSnapshotLsn : recopied[0].lsn;
      if (!done) assert.equal(ctx.tableSyncLsn.get('public.fresh'), start);
      assert.equal(ctx.gates.size, 0);
      // The next check finds nothing new, and builds what the stopped follow left of the post-data.
      assert.deepEqual(await followNewTables(s.ctx()), { added: [], skipped: [] });
      assert.equal((await s.tgt.query(`SELECT 1 FROM pg_indexes WHERE indexname = 'fresh_v'`)).rows.length, 1);
      await s.src.query(`INSERT INTO fresh SELECT g, 'later' FROM generate_series(321, 330) g`);
      await assertExactlyOnce(s, 'fresh', start);
    });
  }
});

/** Copy figures whose setter stops the copy (aborts `died`) once the first part is committed. */
function trap(died: AbortController): TableCopyProgress {
  let partsDone = 0;
  return {
    schema: 'public',
    name: 'big',
    phase: 'queued',
    parts: 1,
    rowsCopied: 0,
    bytesCopied: 0,
    rowsEstimated: 0,
    bytesEstimated: 0,
    get partsDone() {
      return partsDone;
    },
    set partsDone(v: number) {
      partsDone = v;
      if (v >= 1) died.abort();
    },
  };
}
