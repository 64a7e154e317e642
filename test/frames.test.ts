/**
 * The receive stage's byte-level parts, without a server: cutting a protocol
 * stream into messages whatever the socket chunking, and decoding a pgoutput
 * message that sits inside a larger buffer (as it does in a socket chunk).
 */
import assert from 'node:assert/strict';
import { FrameSplitter } from '../agent/engine/receive';
import {
  PgoutputDecodeError,
  PgoutputParser,
  SCAN_NULL,
  SCAN_UNCHANGED,
  UNCHANGED_TOAST,
  type InsertMessage,
  type UpdateMessage,
} from '../agent/engine/pgoutput';

function frame(type: string, body: Buffer): Buffer {
  const h = Buffer.alloc(5);
  h.write(type, 0, 'latin1');
  h.writeUInt32BE(4 + body.length, 1);
  return Buffer.concat([h, body]);
}

/** Split `stream` at the given offsets and collect the frames the splitter reports. */
function splitAt(stream: Buffer, cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  const f = new FrameSplitter((buf, start, end) => out.push(Buffer.from(buf.subarray(start, end))));
  let prev = 0;
  for (const c of [...cuts, stream.length]) {
    f.push(stream.subarray(prev, c));
    prev = c;
  }
  return out;
}

describe('receive: cutting the protocol stream into messages', function () {
  const frames = [
    frame('d', Buffer.from('w' + 'x'.repeat(40))),
    frame('c', Buffer.alloc(0)), // an empty body (CopyDone)
    frame('d', Buffer.alloc(3000, 7)), // larger than the cuts below
    frame('E', Buffer.from('SERROR\0\0')),
    frame('d', Buffer.from('k')),
  ];
  const stream = Buffer.concat(frames);

  it('reports every message whole, in order, for every single cut position', function () {
    for (let cut = 0; cut <= stream.length; cut++) {
      assert.deepEqual(splitAt(stream, [cut]), frames, `cut at byte ${cut}`);
    }
  });

  it('survives a stream delivered one byte at a time, and in random chunk sizes', function () {
    assert.deepEqual(
      splitAt(
        stream,
        Array.from({ length: stream.length - 1 }, (_, i) => i + 1),
      ),
      frames,
    );
    let seed = 42;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let round = 0; round < 50; round++) {
      const cuts: number[] = [];
      for (let at = Math.floor(rnd() * 9); at < stream.length; at += 1 + Math.floor(rnd() * 700)) cuts.push(at);
      assert.deepEqual(splitAt(stream, cuts), frames, `cuts ${cuts.join(',')}`);
    }
  });

  it('passes a message that fits in its chunk as a range of that chunk (no copy)', function () {
    const seen: Buffer[] = [];
    new FrameSplitter((buf) => seen.push(buf)).push(stream);
    assert.ok(seen.every((b) => b === stream));
  });

  it('rejects a malformed length instead of guessing', function () {
    const bad = Buffer.from([0x64, 0, 0, 0, 2]);
    assert.throws(() => new FrameSplitter(() => undefined).push(bad), /malformed protocol message/);
    const f = new FrameSplitter(() => undefined);
    f.push(bad.subarray(0, 2));
    assert.throws(() => f.push(bad.subarray(2)), /malformed protocol message/);
  });
});

describe('pgoutput: decoding a message inside a larger buffer', function () {
  // Relation 16384 "public"."t" (id int4 key, v text, big text), then an Insert and an Update of it.
  const rel = Buffer.concat([
    Buffer.from('R'),
    u32(16384),
    Buffer.from('public\0t\0'),
    Buffer.from('d'),
    u16(3),
    Buffer.from([1]),
    Buffer.from('id\0'),
    u32(23),
    i32(-1),
    Buffer.from([0]),
    Buffer.from('v\0'),
    u32(25),
    i32(-1),
    Buffer.from([0]),
    Buffer.from('big\0'),
    u32(25),
    i32(-1),
  ]);
  const insert = Buffer.concat([Buffer.from('I'), u32(16384), Buffer.from('N'), u16(3), val('7'), val('tab\there'), Buffer.from('n')]);
  const update = Buffer.concat([Buffer.from('U'), u32(16384), Buffer.from('N'), u16(3), val('7'), Buffer.from('n'), Buffer.from('u')]);

  function inside(msg: Buffer): { buf: Buffer; start: number; end: number } {
    // What follows decodes as NULL columns ('n'): a parser that read past `end` would not notice.
    const buf = Buffer.concat([Buffer.from('garbage before'), msg, Buffer.alloc(64, 'n')]);
    return { buf, start: 14, end: 14 + msg.length };
  }

  it('reads only between offset and end, and keeps the values as the bytes sent', function () {
    const p = new PgoutputParser();
    const r = inside(rel);
    assert.equal(p.parse(r.buf, r.start, r.end).tag, 'relation');
    const i = inside(insert);
    const ins = p.parse(i.buf, i.start, i.end) as InsertMessage;
    assert.deepEqual(ins.newTuple.values(), ['7', 'tab\there', null]);
    const starts = new Int32Array(3);
    const lens = new Int32Array(3);
    ins.newTuple.scan(starts, lens);
    assert.equal(i.buf.toString('utf8', starts[1], starts[1] + lens[1]), 'tab\there');
    assert.equal(lens[2], SCAN_NULL);
    const u = inside(update);
    const upd = p.parse(u.buf, u.start, u.end) as UpdateMessage;
    assert.deepEqual(upd.newTuple.values(), ['7', null, UNCHANGED_TOAST]);
    upd.newTuple.scan(starts, lens);
    assert.deepEqual([lens[1], lens[2]], [SCAN_NULL, SCAN_UNCHANGED]);
  });

  it('treats the end bound as the end of the message: a cut message is truncated even when bytes follow', function () {
    const p = new PgoutputParser();
    const r = inside(rel);
    p.parse(r.buf, r.start, r.end);
    const i = inside(insert);
    for (let cut = 1; cut < insert.length; cut++) {
      assert.throws(() => p.parse(i.buf, i.start, i.start + cut), PgoutputDecodeError, `insert cut after ${cut} bytes`);
    }
  });
});

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}
function i32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
}
function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}
function val(s: string): Buffer {
  const v = Buffer.from(s);
  return Buffer.concat([Buffer.from('t'), u32(v.length), v]);
}
