/**
 * pgoutput parser against real bytes: each server version encodes a known
 * set of changes, we read them back with pg_logical_slot_peek_binary_changes
 * (the same payloads START_REPLICATION sends) and check every field.
 */
import assert from 'node:assert/strict';
import type pg from 'pg';
import { parseLsn } from '../agent/engine/lsn';
import {
  PgoutputDecodeError,
  PgoutputParser,
  TupleData,
  PgoutputPlugin,
  UNCHANGED_TOAST,
  type CommitMessage,
  type DeleteMessage,
  type InsertMessage,
  type PgoutputMessage,
  type RelationMessage,
  type TruncateMessage,
  type UpdateMessage,
} from '../agent/engine/pgoutput';
import { PG_VERSIONS, startCluster, type Cluster } from '../dev/testbed';

async function peek(c: pg.Client, slot: string, binary = false): Promise<{ lsn: bigint; data: Buffer }[]> {
  const r = await c.query(
    `SELECT lsn::text AS lsn, data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', 'p'${binary ? ", 'binary', 'true'" : ''})`,
    [slot],
  );
  return r.rows.map((row) => ({ lsn: parseLsn(row.lsn), data: row.data as Buffer }));
}

describe('pgoutput: decoding real server bytes', function () {
  for (const version of PG_VERSIONS) {
    describe(`PostgreSQL ${version}`, function () {
      let cluster: Cluster;
      let c: pg.Client;
      let messages: PgoutputMessage[] = [];
      let raw: Buffer[] = [];
      let bigValue = '';
      before(async function () {
        cluster = await startCluster({ version, fast: true });
        c = await cluster.client();
        // Value text depends on the decoding session's settings, as on a replication connection.
        await c.query("SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET bytea_output = 'hex'");
        await c.query(`
          CREATE TABLE "Mixed Case" (id int PRIMARY KEY, t text, big text, ts timestamptz, n numeric, b bytea, flag bool, f float8);
          CREATE TABLE full_t (a int, b text) ;
          ALTER TABLE full_t REPLICA IDENTITY FULL;
          CREATE PUBLICATION p FOR TABLE "Mixed Case", full_t;`);
        await c.query("SELECT pg_create_logical_replication_slot('s', 'pgoutput')");
        // Random base64 does not compress: stored out of line, sent as 'u' when untouched.
        const r = await c.query("SELECT encode(decode(string_agg(md5(random()::text), ''), 'hex'), 'base64') AS v FROM generate_series(1, 1000)");
        bigValue = r.rows[0].v;
        await c.query(`INSERT INTO "Mixed Case" VALUES (1, 'héllo "q" \\ ''x''', $1, '2024-02-29 12:34:56.123456+00', 'NaN', '\\xdeadbeef', true, 0.1)`, [
          bigValue,
        ]);
        await c.query(`UPDATE "Mixed Case" SET t = NULL WHERE id = 1`);
        await c.query(`UPDATE "Mixed Case" SET id = 2 WHERE id = 1`);
        await c.query(`DELETE FROM "Mixed Case" WHERE id = 2`);
        await c.query(`INSERT INTO full_t VALUES (1, 'dup'), (1, 'dup')`);
        await c.query(`DELETE FROM full_t WHERE ctid = (SELECT ctid FROM full_t LIMIT 1)`);
        await c.query(`TRUNCATE "Mixed Case", full_t RESTART IDENTITY CASCADE`);
        const parser = new PgoutputParser();
        raw = (await peek(c, 's')).map((m) => m.data);
        messages = raw.map((d) => parser.parse(d));
      });
      after(async function () {
        await c?.end();
        await cluster?.stop();
      });

      it('frames every transaction with Begin/Commit whose LSNs agree', function () {
        const rowTags = messages.filter((m) => m.tag !== 'relation' && m.tag !== 'type').map((m) => m.tag);
        assert.deepEqual(rowTags, [
          'begin',
          'insert',
          'commit',
          'begin',
          'update',
          'commit',
          'begin',
          'update',
          'commit',
          'begin',
          'delete',
          'commit',
          'begin',
          'insert',
          'insert',
          'commit',
          'begin',
          'delete',
          'commit',
          'begin',
          'truncate',
          'commit',
        ]);
        let begin: bigint | null = null;
        for (const m of messages) {
          if (m.tag === 'begin') {
            begin = m.finalLsn;
            assert.ok(m.xid > 0);
            assert.ok(m.commitTimeMicros > 0n);
          }
          if (m.tag === 'commit') {
            assert.equal(m.commitLsn, begin);
            assert.ok(m.endLsn > m.commitLsn);
          }
        }
        const commits = messages.filter((m): m is CommitMessage => m.tag === 'commit');
        for (let i = 1; i < commits.length; i++) assert.ok(commits[i].commitLsn >= commits[i - 1].endLsn);
      });

      it('decodes Relation: schema, quoted name, key flags, type OIDs', function () {
        const rel = messages.find((m): m is RelationMessage => m.tag === 'relation' && m.name === 'Mixed Case')!;
        assert.equal(rel.schema, 'public');
        assert.equal(rel.replicaIdentity, 'd');
        assert.deepEqual(
          rel.columns.map((c) => c.name),
          ['id', 't', 'big', 'ts', 'n', 'b', 'flag', 'f'],
        );
        assert.deepEqual(rel.keyIndexes, [0]);
        assert.deepEqual(
          rel.columns.map((c) => c.typeOid),
          [23, 25, 25, 1184, 1700, 17, 16, 701],
        );
        const full = messages.find((m): m is RelationMessage => m.tag === 'relation' && m.name === 'full_t')!;
        assert.equal(full.replicaIdentity, 'f');
        assert.deepEqual(full.keyIndexes, [0, 1]);
      });

      it('keeps values as the exact text the server sent', function () {
        const ins = messages.find((m): m is InsertMessage => m.tag === 'insert')!;
        assert.deepEqual(ins.newTuple.values(), ['1', 'héllo "q" \\ \'x\'', bigValue, '2024-02-29 12:34:56.123456+00', 'NaN', '\\xdeadbeef', 't', '0.1']);
      });

      if (version >= 14) {
        it("in a binary stream, gives each value as the bytes of its type's send function (NULL and unchanged TOAST as in text)", async function () {
          const parser = new PgoutputParser();
          const msgs = (await peek(c, 's', true)).map((m) => parser.parse(m.data));
          const ins = msgs.find((m): m is InsertMessage => m.tag === 'insert')!;
          const sent = (
            await c.query(
              `SELECT int4send(1) AS id, textsend($1) AS t, textsend($2) AS big, timestamptz_send('2024-02-29 12:34:56.123456+00') AS ts,
              numeric_send('NaN') AS n, byteasend('\\xdeadbeef') AS b, boolsend(true) AS flag, float8send(0.1) AS f`,
              ['héllo "q" \\ \'x\'', bigValue],
            )
          ).rows[0];
          assert.deepEqual(ins.newTuple.values(), [sent.id, sent.t, sent.big, sent.ts, sent.n, sent.b, sent.flag, sent.f]);
          const [u1] = msgs.filter((m): m is UpdateMessage => m.tag === 'update');
          assert.deepEqual(u1.newTuple.values(), [sent.id, null, UNCHANGED_TOAST, sent.ts, sent.n, sent.b, sent.flag, sent.f]);
        });
      }

      it('marks an untouched out-of-line value as UNCHANGED_TOAST, and sends the old key only when it changes', function () {
        const [u1, u2] = messages.filter((m): m is UpdateMessage => m.tag === 'update');
        assert.equal(u1.oldKind, null);
        assert.equal(u1.oldTuple, null);
        assert.equal(u1.newTuple.values()[1], null);
        assert.equal(u1.newTuple.values()[2], UNCHANGED_TOAST);
        assert.equal(u1.newTuple.values()[3], '2024-02-29 12:34:56.123456+00');
        assert.equal(u2.oldKind, 'K');
        assert.deepEqual(u2.oldTuple!.values(), ['1', null, null, null, null, null, null, null]);
        assert.equal(u2.newTuple.values()[0], '2');
        const [d1, d2] = messages.filter((m): m is DeleteMessage => m.tag === 'delete');
        assert.equal(d1.oldKind, 'K');
        assert.equal(d1.oldTuple.values()[0], '2');
        assert.equal(d2.relation.name, 'full_t');
        assert.equal(d2.oldKind, 'O');
        assert.deepEqual(d2.oldTuple.values(), ['1', 'dup']);
      });

      it('decodes Truncate with its options and relations', function () {
        const t = messages.find((m): m is TruncateMessage => m.tag === 'truncate')!;
        assert.equal(t.cascade, true);
        assert.equal(t.restartIdentity, true);
        assert.deepEqual(t.relations.map((r) => r.name).sort(), ['Mixed Case', 'full_t']);
      });

      it('with reuse, gives each row message in one object per kind, the same as fresh ones until the next parse; copy() keeps a row', function () {
        const reuse = new PgoutputParser(true);
        const rows = (x: PgoutputMessage): (TupleData | null)[] =>
          x.tag === 'insert' ? [x.newTuple] : x.tag === 'update' ? [x.oldTuple, x.newTuple] : x.tag === 'delete' ? [x.oldTuple] : [];
        const seen = new Map<string, PgoutputMessage>();
        let kept: { copy: TupleData; values: unknown } | undefined;
        raw.forEach((d, i) => {
          const m = reuse.parse(d);
          const fresh = messages[i];
          assert.equal(m.tag, fresh.tag);
          if (m.tag !== 'insert' && m.tag !== 'update' && m.tag !== 'delete') return;
          if (seen.has(m.tag)) assert.equal(m, seen.get(m.tag), `${m.tag} reuses its object`);
          seen.set(m.tag, m);
          assert.deepEqual(m.relation, (fresh as InsertMessage | UpdateMessage | DeleteMessage).relation);
          if (m.tag !== 'insert') assert.equal(m.oldKind, (fresh as UpdateMessage | DeleteMessage).oldKind);
          assert.deepEqual(
            rows(m).map((t) => t?.values() ?? null),
            rows(fresh).map((t) => t?.values() ?? null),
          );
          if (m.tag === 'insert' && !kept) kept = { copy: m.newTuple.copy(), values: (fresh as InsertMessage).newTuple.values() };
        });
        assert.equal(seen.size, 3);
        assert.ok(kept);
        assert.deepEqual(kept.copy.values(), kept.values, 'a copy outlives the reused object');
      });

      it('rejects truncated and unknown messages instead of guessing', async function () {
        const raw = await peek(c, 's');
        const parser = new PgoutputParser();
        let insert: Buffer | null = null;
        for (const m of raw) {
          parser.parse(m.data);
          if (m.data[0] === 0x49 && !insert) insert = m.data;
        }
        assert.throws(() => parser.parse(insert!.subarray(0, insert!.length - 3)), PgoutputDecodeError);
        assert.throws(() => parser.parse(Buffer.from('Z')), PgoutputDecodeError);
        assert.throws(() => new PgoutputParser().parse(insert!), PgoutputDecodeError); // Insert before its Relation
      });
    });
  }

  it('quotes slot and publication names in START_REPLICATION', function () {
    const plugin = new PgoutputPlugin(['Pub "x"', "o'k"]);
    assert.equal(
      plugin.startCommand('My Slot', 0x100000010n),
      `START_REPLICATION SLOT "My Slot" LOGICAL 1/10 (proto_version '1', publication_names '"Pub ""x""","o''k"')`,
    );
    assert.equal(
      plugin.startCommand('s', 0n, true),
      `START_REPLICATION SLOT "s" LOGICAL 0/0 (proto_version '1', publication_names '"Pub ""x""","o''k"', binary 'true')`,
    );
  });
});
