/**
 * verify-changes `binaryKeyText`: a key value the stream sent in binary form
 * becomes text that PostgreSQL reads back as the very same value — checked
 * against the server's own send functions, edge values included.
 */
import assert from 'node:assert/strict';
import type pg from 'pg';
import { connect } from '../agent/engine/conn';
import { binaryKeyText } from '../agent/engine/verify-changes';
import { startCluster, type Cluster } from '../dev/testbed';

/** Type, its OID, and values (as SQL literals) to send and read back. */
const CASES: Array<{ type: string; oid: number; values: string[] }> = [
  { type: 'bool', oid: 16, values: ['true', 'false'] },
  { type: 'int2', oid: 21, values: ['0', '-32768', '32767'] },
  { type: 'int4', oid: 23, values: ['0', '-2147483648', '2147483647'] },
  { type: 'int8', oid: 20, values: ['0', '-9223372036854775808', '9223372036854775807', '9007199254740993'] },
  { type: 'oid', oid: 26, values: ['0', '4294967295'] },
  { type: 'text', oid: 25, values: [`''`, `'it''s, "quoted" \\ ünïcödé 🚀'`, `E'tab\\there\\nnewline'`] },
  { type: 'varchar', oid: 1043, values: [`'abc'`] },
  { type: 'bpchar', oid: 1042, values: [`'ab   '::char(5)`] },
  { type: 'name', oid: 19, values: [`'a name'`] },
  { type: 'uuid', oid: 2950, values: [`'00000000-0000-0000-0000-000000000000'`, `'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'`] },
  { type: 'date', oid: 1082, values: [`'2000-01-01'`, `'1999-12-31'`, `'0001-01-01'`, `'9999-12-31'`, `'infinity'`, `'-infinity'`, `'2024-02-29'`] },
  {
    type: 'timestamp',
    oid: 1114,
    values: [
      `'2000-01-01 00:00:00'`,
      `'1999-12-31 23:59:59.999999'`,
      `'1970-01-01 00:00:00.000001'`,
      `'2026-12-03 14:05:06.123456'`,
      `'infinity'`,
      `'-infinity'`,
    ],
  },
  {
    type: 'timestamptz',
    oid: 1184,
    values: [`'2000-01-01 00:00:00+00'`, `'1960-06-15 12:34:56.5+02'`, `'2026-12-03 14:05:06.000007+00'`, `'infinity'`],
  },
];

/** Send functions not named `<type>send`. */
const SEND: Record<string, string> = { uuid: 'uuid_send', date: 'date_send', timestamp: 'timestamp_send', timestamptz: 'timestamptz_send' };

describe('verify: key values sent in binary form, as text', function () {
  let cluster: Cluster;
  let db: pg.Client;
  before(async function () {
    cluster = await startCluster({ version: 17 });
    db = await connect('target', cluster.endpoint('postgres'));
  });
  after(async function () {
    await db?.end();
    await cluster?.stop();
  });

  for (const c of CASES) {
    it(`${c.type}: every value reads back equal`, async function () {
      for (const v of c.values) {
        const r = await db.query(`SELECT ${SEND[c.type] ?? `${c.type}send`}((${v})::${c.type}) AS b`);
        const text = binaryKeyText(c.oid, r.rows[0].b as Buffer);
        assert.notEqual(text, null, `${c.type} ${v} was not decoded`);
        const back = await db.query(`SELECT ($1::${c.type} = (${v})::${c.type}) AS same`, [text]);
        assert.equal(back.rows[0].same, true, `${c.type} ${v} came back as ${text}`);
      }
    });
  }

  it('a type it does not decode, or a value of the wrong length, gives null (the table then counts as changed whole)', async function () {
    const r = await db.query(`SELECT numeric_send(1.5) AS n, int4send(7) AS i`);
    assert.equal(binaryKeyText(1700, r.rows[0].n as Buffer), null);
    assert.equal(binaryKeyText(20, r.rows[0].i as Buffer), null);
    const bc = await db.query(`SELECT date_send('0044-03-15 BC'::date) AS d`);
    assert.equal(binaryKeyText(1082, bc.rows[0].d as Buffer), null);
  });
});
