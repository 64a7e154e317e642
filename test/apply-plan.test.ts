/**
 * apply-plan without a server: which changes share a statement, in which
 * order the statements run, and the bytes they carry (COPY text escapes,
 * binary text[] parameters). The statements themselves run against real
 * servers in sync.test.ts and roundtrip.test.ts.
 */
import assert from 'node:assert/strict';
import {
  BufferPool,
  Bytes,
  COPY_MIN_ROWS,
  KeyHashes,
  Plan,
  ArrayParam,
  TextModeNeeded,
  type Group,
  type RelMap,
  type Single,
  type Step,
  type TargetTable,
} from '../agent/engine/apply-plan';
import { PgferryError } from '../agent/engine/errors';
import { TupleData, type RelationMessage } from '../agent/engine/pgoutput';

/** A pgoutput TupleData of these values (undefined = unchanged TOAST; a Buffer = a binary 'b' value). */
function tuple(values: (string | Buffer | null | undefined)[]): TupleData {
  const parts: Buffer[] = [];
  for (const v of values) {
    if (v === null) parts.push(Buffer.from('n'));
    else if (v === undefined) parts.push(Buffer.from('u'));
    else {
      const b = Buffer.isBuffer(v) ? v : Buffer.from(v);
      const h = Buffer.alloc(5);
      h.write(Buffer.isBuffer(v) ? 'b' : 't');
      h.writeUInt32BE(b.length, 1);
      parts.push(h, b);
    }
  }
  const buf = Buffer.concat([Buffer.from('padding'), ...parts]);
  return new TupleData(buf, 7, buf.length, values.length);
}

function relMap(name: string, columns: string[], key: number[], castType = 'text'): RelMap {
  const rel: RelationMessage = {
    tag: 'relation',
    relationOid: name.length,
    schema: 'public',
    name,
    replicaIdentity: 'd',
    columns: columns.map((c, i) => ({ name: c, isKey: key.includes(i), typeOid: 25, typeMod: -1 })),
    keyIndexes: key,
  };
  const target: TargetTable = { schema: 'public', name, quoted: `public.${name}`, partitioned: false, countsHere: false, columns: new Map() };
  const cols = columns.map((c) => ({
    name: c,
    castType,
    generated: false,
    identityAlways: false,
    collate: '',
    collatable: castType === 'text',
    castOid: 25,
    typeOid: 25,
    typmod: -1,
    binaryOk: true,
  }));
  for (const c of cols) target.columns.set(c.name, c);
  return { rel, target, cols, writeIdx: columns.map((_, i) => i), keyIdx: key, full: false, overriding: false, syncLsn: 0n, binary: false, shapes: new Map() };
}

const describeStep = (s: Step) => (s.kind === 'group' ? `${s.op} ${s.map.rel.name} x${s.rows}` : `single ${s.op}`);

describe('apply-plan: grouping changes into statements', function () {
  const a = relMap('a', ['id', 'v'], [0]);
  const b = relMap('b', ['id', 'v'], [0]);

  it('replica mode: one lane per table, each in source order', function () {
    const p = new Plan(true);
    p.insert(a, tuple(['1', 'x']), 1n);
    p.insert(b, tuple(['1', 'x']), 1n);
    p.update(a, tuple(['1', 'y']), 2n);
    p.insert(a, tuple(['2', 'x']), 2n);
    p.insert(b, tuple(['2', 'x']), 3n);
    assert.deepEqual(p.steps().map(describeStep), ['INSERT a x1', 'UPDATE a x1', 'INSERT a x1', 'INSERT b x2']);
  });

  it('ordered mode: a group grows only while consecutive changes hit the same table and operation', function () {
    const p = new Plan(false);
    p.insert(a, tuple(['1', 'x']), 1n);
    p.insert(a, tuple(['2', 'x']), 1n);
    p.insert(b, tuple(['1', 'x']), 1n);
    p.insert(a, tuple(['3', 'x']), 2n);
    assert.deepEqual(p.steps().map(describeStep), ['INSERT a x2', 'INSERT b x1', 'INSERT a x1']);
  });

  it('starts a new UPDATE group for a key already in the group, and for another set of sent columns', function () {
    const p = new Plan(true);
    p.update(a, tuple(['1', 'x']), 1n);
    p.update(a, tuple(['2', 'x']), 1n);
    p.update(a, tuple(['1', 'y']), 2n); // key 1 again: a statement of its own, after the first
    p.update(a, tuple(['3', undefined]), 3n); // v not sent (unchanged TOAST): another shape
    const steps = p.steps() as Group[];
    assert.deepEqual(steps.map(describeStep), ['UPDATE a x2', 'UPDATE a x1', 'UPDATE a x1']);
    assert.equal(steps[2].shape.text, null, 'nothing to SET when the only non-key column was not sent');
    assert.match(
      steps[0].shape.text!,
      /^UPDATE public\.a AS t SET v = v\.c1::text FROM unnest\(\$1::text\[\], \$2::text\[\]\) AS v\(c0, c1\) WHERE t\.id = v\.c0::text$/,
    );
  });

  it('probes a key without text-like columns in key order (sorted before the join); a text key in arrival order', function () {
    const n = relMap('n', ['id', 'day', 'v'], [0, 1], 'bigint');
    const p = new Plan(true);
    p.update(n, tuple(['2', '5', 'x']), 1n);
    p.delete(n, tuple(['1', '5', null]), 2n);
    const [upd, del] = p.steps() as Group[];
    assert.equal(
      upd.shape.text,
      'UPDATE public.n AS t SET v = v.c2::bigint FROM (SELECT v.c0::bigint AS k0, v.c1::bigint AS k1, v.c2 FROM unnest($1::text[], $2::text[], $3::text[]) AS v(c0, c1, c2) ORDER BY k0, k1) AS v WHERE t.id = v.k0 AND t.day = v.k1',
    );
    assert.equal(
      del.shape.text,
      'DELETE FROM public.n AS t USING (SELECT v.c0::bigint AS k0, v.c1::bigint AS k1 FROM unnest($1::text[], $2::text[]) AS v(c0, c1) ORDER BY k0, k1) AS v WHERE t.id = v.k0 AND t.day = v.k1',
    );
    const q = new Plan(true);
    q.delete(a, tuple(['1', null]), 1n);
    assert.equal((q.steps()[0] as Group).shape.text, 'DELETE FROM public.a AS t USING unnest($1::text[]) AS v(c0) WHERE t.id = v.c0::text');
  });

  it('keeps keys apart exactly: NULL, empty and multi-column keys do not collide', function () {
    const ab = relMap('ab', ['k1', 'k2', 'v'], [0, 1]);
    const p = new Plan(true);
    p.delete(ab, tuple(['x', '', null]), 1n);
    p.delete(ab, tuple(['x', null, null]), 1n);
    p.delete(ab, tuple(['', 'x', null]), 1n);
    p.delete(ab, tuple(['x\u0001', '', null]), 1n);
    assert.deepEqual(p.steps().map(describeStep), ['DELETE ab x4']);
  });

  it('runs a barrier after everything before it and before everything after it', function () {
    const p = new Plan(true);
    p.insert(a, tuple(['1', 'x']), 1n);
    p.insert(b, tuple(['1', 'x']), 1n);
    const truncate: Single = {
      kind: 'single',
      op: 'TRUNCATE',
      change: { op: 'TRUNCATE', maps: [a], restartIdentity: false, lsn: 2n },
      form: null,
      safe: false,
    };
    p.addBarrier(truncate);
    p.insert(a, tuple(['2', 'x']), 3n);
    assert.deepEqual(p.steps().map(describeStep), ['INSERT a x1', 'INSERT b x1', 'single TRUNCATE', 'INSERT a x1']);
    assert.equal(p.changes, 4);
  });

  it(`switches an INSERT group to COPY at ${COPY_MIN_ROWS} rows, escaping what COPY text reads`, function () {
    const p = new Plan(true);
    const values = ['plain', 'tab\there', 'new\nline', 'cr\rhere', 'back\\slash', '\\N', ''];
    for (let i = 0; i < COPY_MIN_ROWS - 1; i++) p.insert(a, tuple([String(i), values[i % values.length]]), 1n);
    const short = p.steps()[0] as Group;
    assert.equal(short.copy, null);
    assert.equal(short.refs!.length, COPY_MIN_ROWS - 1);

    const q = new Plan(true);
    for (let i = 0; i < COPY_MIN_ROWS + 2; i++) q.insert(a, tuple([String(i), i === 3 ? null : values[i % values.length]]), 1n);
    const g = q.steps()[0] as Group;
    assert.equal(g.refs, null);
    const lines = g.copy!.view().toString('utf8').split('\n');
    assert.equal(lines.pop(), '');
    assert.equal(lines.length, COPY_MIN_ROWS + 2);
    assert.equal(lines[0], '0\tplain');
    assert.equal(lines[1], '1\ttab\\there');
    assert.equal(lines[2], '2\tnew\\nline');
    assert.equal(lines[3], '3\t\\N', 'NULL');
    assert.equal(lines[4], '4\tback\\\\slash');
    assert.equal(lines[5], '5\t\\\\N', 'the text \\N is not NULL');
    assert.equal(lines[6], '6\t', 'empty string');
    assert.equal(lines[10], '10\tcr\\rhere');
    assert.equal(g.shape.copyText, 'COPY public.a (id, v) FROM STDIN');
  });

  it('leaves out of a COPY row the columns the target generates, and keeps multi-byte text intact', function () {
    const m = relMap('g', ['id', 'gen', 'v', 'last'], [0]);
    m.cols[1] = null;
    m.writeIdx = [0, 2, 3];
    const p = new Plan(true);
    for (let i = 0; i < COPY_MIN_ROWS; i++) p.insert(m, tuple([String(i), `generated ${i}`, i === 1 ? null : `ünï\u{1F600}\t${i}`, 'end']), 1n);
    const g = p.steps()[0] as Group;
    assert.equal(g.shape.copyText, 'COPY public.g (id, v, last) FROM STDIN');
    const lines = g.copy!.view().toString('utf8').split('\n');
    assert.equal(lines[0], '0\tünï\u{1F600}\\t0\tend');
    assert.equal(lines[1], '1\t\\N\tend');
    assert.equal(lines.length, COPY_MIN_ROWS + 1);
  });

  describe('binary values (a stream started with pgoutput binary)', function () {
    /** A big-endian int8, as int8send writes it. */
    const i8 = (n: number) => {
      const b = Buffer.alloc(8);
      b.writeBigInt64BE(BigInt(n));
      return b;
    };
    const bin = () => {
      const m = relMap('bn', ['id', 'gen', 'v'], [0], 'bigint');
      m.cols.forEach((c) => {
        c!.castOid = 20;
      });
      m.cols[1] = null; // generated on the target: not written
      m.writeIdx = [0, 2];
      m.binary = true;
      return m;
    };

    it('writes binary COPY rows straight from the values: header, Int16 field count, Int32 length + bytes, -1 for NULL, one trailer', function () {
      const m = bin();
      const p = new Plan(true);
      for (let i = 0; i < COPY_MIN_ROWS + 1; i++) p.insert(m, tuple([i8(i), i8(-1), i === 2 ? null : i8(1000 + i)]), 1n);
      const g = p.steps()[0] as Group;
      assert.equal(g.shape.copyText, 'COPY public.bn (id, v) FROM STDIN (FORMAT binary)');
      const data = p.copyData(g);
      assert.equal(p.copyData(g).length, data.length, 'the trailer is written once');
      assert.equal(data.subarray(0, 11).toString('latin1'), 'PGCOPY\n\xff\r\n\0');
      assert.deepEqual([data.readInt32BE(11), data.readInt32BE(15)], [0, 0], 'flags, header extension');
      let o = 19;
      for (let i = 0; i < COPY_MIN_ROWS + 1; i++) {
        assert.equal(data.readInt16BE(o), 2, `row ${i}: two fields (the generated column left out)`);
        assert.equal(data.readInt32BE(o + 2), 8);
        assert.equal(data.readBigInt64BE(o + 6), BigInt(i));
        if (i === 2) {
          assert.equal(data.readInt32BE(o + 14), -1);
          o += 18;
          continue;
        }
        assert.equal(data.readInt32BE(o + 14), 8);
        assert.equal(data.readBigInt64BE(o + 18), BigInt(1000 + i));
        o += 26;
      }
      assert.equal(data.readInt16BE(o), -1, 'trailer');
      assert.equal(data.length, o + 2);
    });

    it('types array parameters by the column (unnest of bigint[], element OID 20) and keeps the casts as no-ops', function () {
      const m = bin();
      const p = new Plan(true);
      p.update(m, tuple([i8(7), null, i8(70)]), 1n);
      p.insert(m, tuple([i8(8), null, null]), 1n);
      const [upd, ins] = p.steps() as Group[];
      assert.equal(
        upd.shape.text,
        'UPDATE public.bn AS t SET v = v.c1::bigint FROM (SELECT v.c0::bigint AS k0, v.c1 FROM unnest($1::bigint[], $2::bigint[]) AS v(c0, c1) ORDER BY k0) AS v WHERE t.id = v.k0',
      );
      const [keys, vals] = upd.arrays!.map((x) => x.finish());
      assert.deepEqual([keys.readInt32BE(8), keys.readInt32BE(12), keys.readInt32BE(20)], [20, 1, 8]);
      assert.equal(keys.readBigInt64BE(24), 7n);
      assert.equal(vals.readBigInt64BE(24), 70n);
      assert.match(ins.shape.text!, /FROM unnest\(\$1::bigint\[\], \$2::bigint\[\]\) AS v\(c0, c1\)$/);
      const arrays = p.insertArrays(ins);
      assert.equal(arrays[0].readInt32BE(8), 20);
      assert.deepEqual([arrays[1].readInt32BE(4), arrays[1].readInt32BE(20)], [1, -1], 'a NULL element');
    });

    it('asks for a text stream (TextModeNeeded) when a value of a binary table comes as text, before writing it anywhere', function () {
      const m = bin();
      const p = new Plan(true);
      assert.throws(
        () => p.update(m, tuple([i8(1), null, '12345678']), 1n),
        (e: unknown) => e instanceof TextModeNeeded && e.table === 'public.bn' && e.column === 'v',
      );
      for (let i = 0; i < COPY_MIN_ROWS; i++) p.insert(m, tuple([i8(i), null, i8(i)]), 1n);
      assert.throws(() => p.insert(m, tuple([i8(99), null, '12345678']), 1n), TextModeNeeded);
      const g = p.steps().find((s) => s.kind === 'group' && s.op === 'INSERT') as Group;
      assert.equal(g.copy!.len, 19 + COPY_MIN_ROWS * 26, 'the refused row left nothing behind');
    });
  });

  it('refuses, naming table, column and transaction, a needed value that was not sent (unchanged TOAST key)', function () {
    const p = new Plan(true);
    assert.throws(
      () => p.update(a, tuple([undefined, 'x']), 0x1_0000_0010n),
      (e: unknown) =>
        e instanceof PgferryError && e.code === 'APPLY_FAILED' && /UPDATE on public\.a \(source transaction at 1\/10\): column id is needed/.test(e.message),
    );
  });
});

describe('apply-plan: parameter encodings', function () {
  it('builds a binary text[] as array_recv reads it', function () {
    const arr = new ArrayParam();
    const src = Buffer.from('héllo');
    arr.add(src, 0, src.length);
    arr.add(src, 0, -1);
    arr.add(src, 0, 0);
    const b = arr.finish();
    assert.deepEqual([b.readInt32BE(0), b.readInt32BE(4), b.readInt32BE(8), b.readInt32BE(12), b.readInt32BE(16)], [1, 1, 25, 3, 1]);
    assert.equal(b.readInt32BE(20), src.length);
    assert.equal(b.subarray(24, 24 + src.length).toString(), 'héllo');
    assert.equal(b.readInt32BE(24 + src.length), -1);
    assert.equal(b.readInt32BE(28 + src.length), 0);
    assert.equal(b.length, 32 + src.length);
  });

  it('keeps a set of key hashes across its growth, 0 and the largest hash included', function () {
    const k = new KeyHashes();
    const hashes = [0, 0x3fffffff, 64, 128, 1];
    for (let i = 0; i < 5000; i++) hashes.push((Math.imul(i, 0x9e3779b1) >>> 0) & 0x3fffffff);
    const unique = [...new Set(hashes)];
    for (const h of unique) {
      assert.equal(k.has(h), false, `${h} before add`);
      k.add(h);
    }
    assert.equal(k.size, unique.length);
    for (const h of unique) assert.equal(k.has(h), true, `${h} after add`);
    assert.equal(k.has(2), false);
    assert.equal(k.has(0x3ffffffe), false);
  });

  it('grows a byte buffer across its capacity without losing bytes', function () {
    const out = new Bytes(4);
    const src = Buffer.from('0123456789abcdefghijklmnopqrstuvwxyz'.repeat(5));
    for (let i = 0; i < 20; i++) out.copyFrom(src, i, i + 40);
    const expect = Buffer.concat(Array.from({ length: 20 }, (_, i) => src.subarray(i, i + 40)));
    assert.deepEqual(out.view(), expect);
  });

  it('lends the buffers of a released plan to the next one, and keeps no more than its limit', function () {
    const pool = new BufferPool(1 << 20);
    const a = relMap('a', ['id', 'v'], [0]);
    const rows = (p: Plan, from: number) => {
      for (let i = from; i < from + 200; i++) p.insert(a, tuple([String(i), 'v'.repeat(300)]), 1n);
    };
    const first = new Plan(true, pool);
    rows(first, 0);
    assert.ok(pool.size > 0, 'a growing COPY buffer hands back what it outgrew');
    first.update(a, tuple(['1', 'x']), 2n);
    const [copy1, upd1] = first.steps() as Group[];
    const copyBuf = copy1.copy!.buf;
    const arrayBytes = upd1.arrays!.reduce((n, x) => n + x.finish().buffer.byteLength, 0);
    const before = pool.size;
    first.release();
    const waiting = pool.size;
    assert.ok(waiting >= before + copyBuf.length + arrayBytes, 'released buffers (COPY data and parameter arrays) wait in the pool');

    // The next plan writes into the same memory, and its data is its own.
    const second = new Plan(true, pool);
    rows(second, 1000);
    const copy2 = (second.steps()[0] as Group).copy!;
    assert.equal(copy2.buf, copyBuf, 'the COPY buffer of the first plan is lent again');
    assert.ok(pool.size < waiting);
    assert.match(copy2.view().toString(), /^1000\tv{300}\n1001\t/);
    assert.equal(copy2.view().toString().split('\n').length - 1, 200);

    // The limit: what would exceed it is left to the garbage collector.
    const small = new BufferPool(1000);
    small.give(Buffer.alloc(600));
    small.give(Buffer.alloc(600));
    assert.equal(small.size, 600);
    assert.equal(small.take(700).length, 700, 'nothing that fits: a new buffer');
    assert.equal(small.take(500).length, 600, 'the smallest that fits');
    assert.equal(small.size, 0);
  });
});
