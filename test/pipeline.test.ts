/**
 * The apply stage's pipeline (agent/engine/pipeline.ts) against a real server:
 * parts of several statements, COPY data included, sent without waiting for
 * each other; transactions queued behind one another; a failure names its
 * statement, nothing sent after it runs (later transactions and pipelines
 * queued behind included), and the connection is usable afterwards.
 */
import assert from 'node:assert/strict';
import type pg from 'pg';
import { Pipeline, PipelineError, PipelineSkipped, type PipelineStatement } from '../agent/engine/pipeline';
import { startCluster, type Cluster } from '../dev/testbed';

/** A binary text[] parameter, as apply-plan builds them. */
function textArray(values: string[]): Buffer {
  const parts = values.map((v) => {
    const b = Buffer.from(v);
    const l = Buffer.alloc(4);
    l.writeInt32BE(b.length);
    return Buffer.concat([l, b]);
  });
  const h = Buffer.alloc(20);
  h.writeInt32BE(1, 0);
  h.writeInt32BE(0, 4);
  h.writeInt32BE(25, 8);
  h.writeInt32BE(values.length, 12);
  h.writeInt32BE(1, 16);
  return Buffer.concat([h, ...parts]);
}

const sql = (text: string, name = ''): PipelineStatement => ({ text, name, values: [] });
const failure = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: unknown) => e,
  );

describe('pipeline: statements sent without waiting for each other (PostgreSQL 17)', function () {
  let cluster: Cluster;
  let client: pg.Client;
  let readyForQuery = 0;

  before(async function () {
    cluster = await startCluster({ version: 17, fast: true });
    client = await cluster.client();
    (client as unknown as { connection: NodeJS.EventEmitter }).connection.on('readyForQuery', () => readyForQuery++);
  });
  after(async function () {
    await client?.end().catch(() => undefined);
    await cluster?.stop();
  });
  beforeEach(async function () {
    await client.query('DROP TABLE IF EXISTS t; DROP SEQUENCE IF EXISTS s; CREATE TABLE t (id int PRIMARY KEY, v text); CREATE SEQUENCE s');
  });

  const update: PipelineStatement = {
    name: 'upd',
    text: 'UPDATE t SET v = u.v FROM unnest($1::text[], $2::text[]) AS u(id, v) WHERE t.id = u.id::int',
    values: [],
  };

  it('runs BEGIN, COPY with its data, an UPDATE with binary arrays and an INSERT with text parameters as one part, and ends with one ReadyForQuery', async function () {
    const prepared = new Set<string>();
    const before = readyForQuery;
    const p = new Pipeline(client, prepared);
    const r = await p.send([
      sql('BEGIN'),
      { name: 'copy', text: 'COPY t (id, v) FROM STDIN', values: [], copyData: Buffer.from('1\ta\n2\tb\\tc\n3\t\\N\n') },
      { ...update, values: [textArray(['1', '3']), textArray(['x', 'y'])] },
      { name: '', text: 'INSERT INTO t VALUES ($1::text::int, $2)', values: [4, null] },
      sql("SELECT 'first', NULL UNION ALL SELECT 'second', 'x'"),
    ]);
    assert.deepEqual(r.counts, [null, 3, 2, 1, 2]);
    assert.deepEqual(r.rows[4], ['first', null], "a statement's first row");
    await p.ended;
    assert.equal(p.open, false, 'a pipeline whose parts are all answered ends');
    assert.equal(readyForQuery - before, 1, 'one Sync');
    assert.deepEqual([...prepared].sort(), ['copy', 'upd']);
    await client.query('COMMIT');
    const rows = (await client.query('SELECT id, v FROM t ORDER BY id')).rows;
    assert.deepEqual(rows, [
      { id: 1, v: 'x' },
      { id: 2, v: 'b\tc' },
      { id: 3, v: 'y' },
      { id: 4, v: null },
    ]);
  });

  it('sends a second transaction behind the first before either is answered; a name parsed in the first is not parsed again', async function () {
    const prepared = new Set<string>();
    const ins = (id: number): PipelineStatement => ({ name: 'ins', text: 'INSERT INTO t VALUES ($1::int, $2)', values: [id, `v${id}`] });
    const before = readyForQuery;
    const p = new Pipeline(client, prepared);
    const a = p.send([sql('BEGIN'), ins(1), ins(2), sql('COMMIT')]);
    const b = p.send([sql('BEGIN'), ins(3), sql('COMMIT'), sql('SELECT count(*) FROM t')]);
    assert.deepEqual((await a).counts, [null, 1, 1, null]);
    const rb = await b;
    assert.deepEqual(rb.rows[3], ['3'], 'the second transaction sees the first committed');
    await p.ended;
    assert.equal(readyForQuery - before, 1, 'both parts in one pipeline: one Sync');
    const next = new Pipeline(client, prepared);
    assert.deepEqual((await next.send([ins(4)])).counts, [1], 'a later pipeline binds the prepared name without parsing it');
    assert.equal((await client.query('SELECT count(*)::int AS n FROM t')).rows[0].n, 4);
  });

  it('fails naming the failed statement; nothing after it runs, neither in its part nor in the transactions behind it, nor in a pipeline queued behind; the connection is usable afterwards', async function () {
    await client.query("INSERT INTO t VALUES (1, 'a')");
    const prepared = new Set<string>();
    const p = new Pipeline(client, prepared);
    const first = failure(
      p.send([
        sql('BEGIN'),
        sql("INSERT INTO t VALUES (2, 'b')"),
        sql("INSERT INTO t VALUES (1, 'duplicate')"),
        sql("SELECT nextval('s')"), // not transactional: would show if it ran
        { name: '', text: 'COPY t (id, v) FROM STDIN', values: [], copyData: Buffer.from('5\te\n') },
        sql('COMMIT'),
      ]),
    );
    const second = failure(p.send([sql('BEGIN'), { name: 'late', text: "INSERT INTO t VALUES (6, 'f')", values: [] }, sql('COMMIT')]));
    p.end();
    const behind = new Pipeline(client, prepared, p);
    const third = failure(behind.send([sql("SELECT nextval('s')")]));
    const err = await first;
    assert.ok(err instanceof PipelineError, `expected a PipelineError, got ${String(err)}`);
    assert.equal(err.index, 2);
    assert.equal((err.cause as { code?: string }).code, '23505');
    assert.ok((await second) instanceof PipelineSkipped, 'the transaction behind it did not run');
    const skipped = await third;
    assert.ok(skipped instanceof PipelineSkipped, 'the pipeline queued behind sent nothing');
    assert.equal((skipped.cause as { code?: string }).code, '23505', "a skipped part's cause is the failure itself");
    assert.equal(prepared.has('late'), false, 'a name whose Parse was skipped is not taken as prepared');
    await client.query('ROLLBACK');
    assert.deepEqual((await client.query('SELECT id FROM t ORDER BY id')).rows, [{ id: 1 }]);
    assert.equal((await client.query('SELECT is_called FROM s')).rows[0].is_called, false, 'no statement after the failed one ran');
  });

  it('fails on bad COPY data at the COPY statement, and the statements after it do not run', async function () {
    const p = new Pipeline(client, new Set());
    const err = await failure(
      p.send([{ name: '', text: 'COPY t (id, v) FROM STDIN', values: [], copyData: Buffer.from('1\ta\nnot-a-number\tb\n') }, sql("SELECT nextval('s')")]),
    );
    assert.ok(err instanceof PipelineError);
    assert.equal(err.index, 0);
    assert.equal((err.cause as { code?: string }).code, '22P02');
    assert.equal((await client.query('SELECT count(*)::int AS n FROM t')).rows[0].n, 0, 'the failed COPY left nothing');
    assert.equal((await client.query('SELECT is_called FROM s')).rows[0].is_called, false);
  });

  it('a pipeline behind one that ended well runs; end() on a pipeline with nothing sent frees the connection', async function () {
    const p = new Pipeline(client, new Set());
    await p.send([sql("INSERT INTO t VALUES (1, 'a')")]);
    const q = new Pipeline(client, new Set(), p);
    assert.deepEqual((await q.send([sql("INSERT INTO t VALUES (2, 'b')")])).counts, [1]);
    const idle = new Pipeline(client, new Set());
    await idle.end();
    assert.equal((await client.query('SELECT count(*)::int AS n FROM t')).rows[0].n, 2);
  });
});
