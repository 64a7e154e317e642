/**
 * The apply commits asynchronously on the target and confirms to the source
 * only what the target has FLUSHED. Crash the target server (kill -9: its
 * unwritten WAL is lost) while changes stream in, start it again, and every
 * row must still arrive: the source keeps what the target lost.
 */
import assert from 'node:assert/strict';
import { startCluster, type Cluster } from '../dev/testbed';
import { SHOP_SCHEMA, startWriter } from '../dev/sample';
import { AgentClient } from '../api/client';
import { startAgent, type AgentProcess } from './support/agent';
import { assertSameData, waitFor } from './support/compare';

describe('durability: the target crashes mid-stream (PostgreSQL 17 → 17)', function () {
  this.timeout(300_000);
  let source: Cluster;
  let target: Cluster;
  let agent: AgentProcess;
  let client: AgentClient;

  before(async function () {
    // The target keeps its default durability settings: a crash loses only
    // what was committed asynchronously and not yet written.
    [source, target] = await Promise.all([startCluster({ version: 17, fast: true }), startCluster({ version: 17 })]);
    await source.createDatabase('shop');
    await target.createDatabase('shop');
    await source.query(SHOP_SCHEMA, [], 'shop');
    await source.query(
      "INSERT INTO customers (id, email, name) SELECT g, 'c' || g, 'n' || g FROM generate_series(1, 10) g; INSERT INTO products (sku, price) SELECT 's' || g, g FROM generate_series(1, 200) g",
      [],
      'shop',
    );
    agent = await startAgent();
    client = new AgentClient({ endpoint: agent.endpoint });
    await client.startMigration({
      id: 'crash',
      source: source.endpoint('shop'),
      target: target.endpoint('shop'),
      tables: { include: ['public.*'] },
      apply: { batchChanges: 200, batchMs: 20 },
    });
    await waitFor('syncing', async () => (await client.getMigration('crash')).phase === 'syncing');
  });
  after(async function () {
    client?.close();
    await agent?.stop();
    await Promise.all([source?.stop(), target?.stop()]);
  });

  it('loses no row when the target server is killed while changes stream in', async function () {
    const writer = startWriter(() => source.client('shop'));
    try {
      for (let crash = 0; crash < 3; crash++) {
        const before = writer.stats.commits;
        await waitFor('changes streaming', async () => writer.stats.commits > before + 150 && (await client.getMigration('crash')).changesApplied > 0);
        await target.crashAndRestart();
      }
      const before = writer.stats.commits;
      await waitFor('more commits after the last crash', async () => writer.stats.commits > before + 100);
    } finally {
      const stats = await writer.stop();
      assert.ok(stats.commits > 450, `writer: ${stats.commits} commits, last error ${stats.lastError}`);
    }
    await waitFor(
      'target to equal source after the crashes',
      async () => {
        await assertSameData(source, target, 'shop');
        return true;
      },
      120_000,
    );
    const m = await client.getMigration('crash');
    assert.equal(m.phase, 'syncing');
  });
});
