/**
 * Every type and table shape of test/fixtures/types.ts, through the whole
 * engine: schema from the catalog, snapshot copy, then the same values again
 * as streamed INSERTs, UPDATEs and DELETEs — and both sides must print every
 * row identically.
 */
import assert from 'node:assert/strict';
import { startCluster, type Cluster, type PgMajor } from '../dev/testbed';
import { AgentClient } from '../api/client';
import { ALL_TYPES_DDL, ALL_TYPES_ROWS, NUMERIC_INFINITY_ROWS, SCHEMA_FEATURES_DDL, SCHEMA_FEATURES_ROWS } from './fixtures/types';
import { startAgent, type AgentProcess } from './support/agent';
import { assertSameData, waitFor } from './support/compare';

const PAIRS: Array<{ source: PgMajor; target: PgMajor }> = [
  { source: 14, target: 17 },
  { source: 13, target: 17 },
];

for (const pair of PAIRS) {
  describe(`type and shape round trip through the engine: PostgreSQL ${pair.source} → ${pair.target}`, function () {
    this.timeout(240_000);
    let source: Cluster;
    let target: Cluster;
    let agent: AgentProcess;
    let client: AgentClient;
    const DB = 'types';

    before(async function () {
      [source, target] = await Promise.all([startCluster({ version: pair.source, fast: true }), startCluster({ version: pair.target, fast: true })]);
      await source.createDatabase(DB);
      await target.createDatabase(DB);
      const c = await source.client(DB);
      await c.query(ALL_TYPES_DDL);
      await c.query(ALL_TYPES_ROWS);
      if (pair.source >= 14) await c.query(NUMERIC_INFINITY_ROWS);
      await c.query(SCHEMA_FEATURES_DDL);
      await c.query(SCHEMA_FEATURES_ROWS);
      // "Sales".events has no primary key: its leaves replicate with REPLICA IDENTITY FULL.
      for (const leaf of ['events_eu_0', 'events_eu_1', 'events_us', 'events_other']) {
        await c.query(`ALTER TABLE "Sales".${leaf} REPLICA IDENTITY FULL`);
      }
      await c.end();
      agent = await startAgent();
      client = new AgentClient({ endpoint: agent.endpoint });
    });
    after(async function () {
      client?.close();
      await agent?.stop();
      await Promise.all([source?.stop(), target?.stop()]);
    });

    it('copies every value exactly', async function () {
      await client.startMigration({
        id: 'types',
        source: source.endpoint(DB),
        target: target.endpoint(DB),
        tables: { include: ['typesdemo.*', '"Sales".*'] },
      });
      await waitFor('syncing', async () => {
        const m = await client.getMigration('types');
        if (m.phase === 'failed') throw new Error(`${m.errorCode}: ${m.errorMessage}`);
        return m.phase === 'syncing';
      });
      await assertSameData(source, target, DB);
    });

    it('streams the same values as inserts, updates and deletes, exactly', async function () {
      const cols = await source.query(
        `SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) AS list FROM pg_attribute
        WHERE attrelid = 'typesdemo."AllTypes"'::regclass AND attnum > 1 AND NOT attisdropped AND attidentity = '' AND attgenerated = ''`,
        [],
        DB,
      );
      const list = cols.rows[0].list as string;
      await source.query(
        `
        INSERT INTO typesdemo."AllTypes" (id, ${list}) SELECT id + 100, ${list} FROM typesdemo."AllTypes" WHERE id < 100;
        -- a run long enough for the bulk (COPY) insert path, tabs, newlines and backslashes included
        INSERT INTO typesdemo."AllTypes" (id, ${list}) SELECT id + 1000 * g, ${list} FROM typesdemo."AllTypes", generate_series(1, 20) g WHERE id < 100;
        UPDATE typesdemo."AllTypes" AS a SET (${list}) = (SELECT ${list} FROM typesdemo."AllTypes" b WHERE b.id = a.id % 100 + 1 AND b.id < 100)
          WHERE a.id > 100 AND a.id < 105;
        DELETE FROM typesdemo."AllTypes" WHERE id = 103;
        UPDATE "Sales".events SET payload = '{"changed": true}' WHERE id IN (SELECT id FROM "Sales".events ORDER BY id LIMIT 2);
        DELETE FROM "Sales".events WHERE id = (SELECT max(id) FROM "Sales".events);`,
        [],
        DB,
      );
      await waitFor(
        'target to equal source',
        async () => {
          await assertSameData(source, target, DB);
          return true;
        },
        60_000,
      );
      const n = await target.query('SELECT count(*)::int AS n FROM typesdemo."AllTypes" WHERE id > 1000', [], DB);
      assert.ok(n.rows[0].n >= 80);
      await client.deleteMigration('types');
    });
  });
}
