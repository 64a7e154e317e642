/**
 * The apply stage's pipeline (agent/pipeline.ts) against a real server:
 * several statements, COPY data included, in one round trip; a failure names
 * its statement, stops everything after it and leaves the connection usable.
 */
import assert from 'node:assert/strict';
import type pg from 'pg';
import { PipelineError, runPipeline, type PipelineStatement } from '../agent/pipeline';
import { startCluster, type Cluster } from '../agent/testbed';

/** A binary text[] parameter, as apply-plan builds them. */
function textArray(values: string[]): Buffer {
  const parts = values.map((v) => { const b = Buffer.from(v); const l = Buffer.alloc(4); l.writeInt32BE(b.length); return Buffer.concat([l, b]); });
  const h = Buffer.alloc(20);
  h.writeInt32BE(1, 0); h.writeInt32BE(0, 4); h.writeInt32BE(25, 8); h.writeInt32BE(values.length, 12); h.writeInt32BE(1, 16);
  return Buffer.concat([h, ...parts]);
}

describe('pipeline: statements in one round trip (PostgreSQL 17)', function () {
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

  const update: PipelineStatement = { name: 'upd', text: 'UPDATE t SET v = u.v FROM unnest($1::text[], $2::text[]) AS u(id, v) WHERE t.id = u.id::int', values: [] };

  it('runs BEGIN, COPY with its data, an UPDATE with binary arrays and an INSERT with text parameters, answered by one ReadyForQuery', async function () {
    const prepared = new Set<string>();
    const before = readyForQuery;
    const counts = await runPipeline(client, [
      { name: '', text: 'BEGIN', values: [] },
      { name: 'copy', text: 'COPY t (id, v) FROM STDIN', values: [], copyData: Buffer.from('1\ta\n2\tb\\tc\n3\t\\N\n') },
      { ...update, values: [textArray(['1', '3']), textArray(['x', 'y'])] },
      { name: '', text: 'INSERT INTO t VALUES ($1::text::int, $2)', values: [4, null] },
    ], prepared);
    assert.equal(readyForQuery - before, 1, 'one Sync, one round trip');
    assert.deepEqual(counts, [null, 3, 2, 1]);
    assert.deepEqual([...prepared].sort(), ['copy', 'upd'], 'named statements are remembered once they ran');
    await client.query('COMMIT');
    const rows = (await client.query('SELECT id, v FROM t ORDER BY id')).rows;
    assert.deepEqual(rows, [{ id: 1, v: 'x' }, { id: 2, v: 'b\tc' }, { id: 3, v: 'y' }, { id: 4, v: null }]);
  });

  it('parses a statement named twice in one pipeline once, and not again in the next pipeline', async function () {
    const prepared = new Set<string>();
    const twice = { ...update, name: 'upd_twice' }; // a name this session has not prepared yet
    await client.query("INSERT INTO t VALUES (1, 'a'), (2, 'b')");
    const once = await runPipeline(client, [
      { ...twice, values: [textArray(['1']), textArray(['x'])] },
      { ...twice, values: [textArray(['1', '2']), textArray(['y', 'z'])] },
    ], prepared);
    assert.deepEqual(once, [1, 2]);
    const again = await runPipeline(client, [{ ...twice, values: [textArray(['2']), textArray(['w'])] }], prepared);
    assert.deepEqual(again, [1]);
    assert.deepEqual((await client.query('SELECT v FROM t ORDER BY id')).rows.map((r) => r.v), ['y', 'w']);
  });

  it('fails naming the failed statement; nothing after it runs, and the connection is usable afterwards', async function () {
    await client.query("INSERT INTO t VALUES (1, 'a')");
    const err = await runPipeline(client, [
      { name: '', text: 'BEGIN', values: [] },
      { name: '', text: "INSERT INTO t VALUES (2, 'b')", values: [] },
      { name: '', text: "INSERT INTO t VALUES (1, 'duplicate')", values: [] },
      { name: '', text: "SELECT nextval('s')", values: [] },   // not transactional: would show if it ran
      { name: '', text: 'COPY t (id, v) FROM STDIN', values: [], copyData: Buffer.from('5\te\n') },
    ], new Set()).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof PipelineError, `expected a PipelineError, got ${String(err)}`);
    assert.equal(err.index, 2);
    assert.equal((err.cause as { code?: string }).code, '23505');
    await client.query('ROLLBACK');
    assert.deepEqual((await client.query('SELECT id FROM t ORDER BY id')).rows, [{ id: 1 }]);
    assert.equal((await client.query('SELECT is_called FROM s')).rows[0].is_called, false, 'the statement after the failed one did not run');
  });

  it('fails on bad COPY data at the COPY statement, and the statements after it do not run', async function () {
    const err = await runPipeline(client, [
      { name: '', text: 'COPY t (id, v) FROM STDIN', values: [], copyData: Buffer.from('1\ta\nnot-a-number\tb\n') },
      { name: '', text: "SELECT nextval('s')", values: [] },
    ], new Set()).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof PipelineError);
    assert.equal(err.index, 0);
    assert.equal((err.cause as { code?: string }).code, '22P02');
    assert.equal((await client.query('SELECT count(*)::int AS n FROM t')).rows[0].n, 0, 'the failed COPY left nothing');
    assert.equal((await client.query('SELECT is_called FROM s')).rows[0].is_called, false);
  });
});
