import assert from 'node:assert/strict';
import { startCluster, type Cluster, PG_VERSIONS } from '../dev/testbed';

describe('testbed: throwaway clusters', function () {
  for (const version of PG_VERSIONS) {
    describe(`PostgreSQL ${version}`, function () {
      let c: Cluster;
      before(async function () {
        c = await startCluster({ version, fast: true });
      });
      after(async function () {
        await c?.stop();
      });
      it('starts with wal_level=logical and the requested major version', async function () {
        const r = await c.query("SELECT current_setting('wal_level') AS wal, current_setting('server_version_num')::int / 10000 AS major");
        assert.equal(r.rows[0].wal, 'logical');
        assert.equal(r.rows[0].major, version);
      });
    });
  }
});
