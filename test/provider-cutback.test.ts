/**
 * The way back in the Migration provider, without an agent, through the real
 * dynamic-provider host: what `pulumi preview` says of `rollbackWindow` and
 * `cutback` (Check refuses a cutback before a completed cutover, without a
 * window or after it ended, and a cutback undone; Diff makes both in-place
 * updates), what Update refuses, and the outputs after a cutback
 * (`activeConnection` on the source again, `reverseSync`, `cutbackReport`).
 */
import assert from 'node:assert/strict';
import { freePort } from '../dev/testbed';
import { parseSpec } from '../agent/engine/spec';
import { isPgferryError } from '../agent/engine/errors';
import { UNKNOWN, type MigrationInputs } from '../provider/args';
import { buildOutputs, echoArgs, secretPartsFromInputs, toSpec } from '../provider/outputs';
import type { CutoverReportMessage, MigrationMessage, ReverseSyncStatusMessage } from '../api/client';
import { migrationStatus } from './support/status-fixture';
import { ProviderHost, declareMigration, urnOf, type Declared, type Props } from './support/provider-host';

const SOURCE_PW = 'src-Secret-4711';
const TARGET_PW = 'tgt-Secret-0815';

const clone = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T;
/** Three days from now: the window is open. */
const WINDOW_ENDS_AT = new Date(Date.now() + 72 * 3_600_000).toISOString();

const report = (over: Partial<CutoverReportMessage> = {}): CutoverReportMessage => ({
  state: 'completed',
  fenceStartedAt: '2026-12-01T10:00:00.000Z',
  fenceEndedAt: '2026-12-01T10:00:00.400Z',
  writeDowntimeMs: 400,
  fenceLsn: '0/3000060',
  tables: [],
  sequences: [],
  warnings: [],
  validation: 'changes',
  validationOk: true,
  completedAt: '2026-12-01T10:00:00.400Z',
  error: '',
  attempts: 1,
  largeObjects: null,
  schemaCheck: null,
  outageMs: 400,
  outageParts: [
    { part: 'drain', ms: 300 },
    { part: 'sequences', ms: 100 },
  ],
  ...over,
});

const reverse = (over: Partial<ReverseSyncStatusMessage> = {}): ReverseSyncStatusMessage => ({
  state: 'streaming',
  slotName: 'pgferry_orders_reverse',
  publicationName: 'pgferry_orders_reverse',
  startLsn: '0/3000060',
  appliedLsn: '0/3000100',
  lagBytes: 160,
  lagSeconds: 0.2,
  changesApplied: 42,
  windowEndsAt: WINDOW_ENDS_AT,
  droppedAt: '',
  dropReason: '',
  lastError: '',
  fence: null,
  ...over,
});

/** A status as the agent reports it, after the cutover by default. */
function status(over: Partial<MigrationMessage> = {}): MigrationMessage {
  return migrationStatus({ phase: 'completed', etaSeconds: 0, cutover: report(), activeEndpoint: 'target', reverse: reverse(), ...over });
}

describe('provider: the way back (rollbackWindow, cutback) through the real host', function () {
  this.timeout(60_000);
  let host: ProviderHost;
  let declared: Declared;
  let news: Props;
  const urn = urnOf('orders');

  before(async function () {
    // No agent listens there: Check judges by the old outputs, as when the agent cannot be asked.
    declared = await declareMigration('orders', {
      agent: { endpoint: `127.0.0.1:${await freePort()}` },
      source: { host: '127.0.0.1', port: 5433, database: 'shop', user: 'postgres', password: SOURCE_PW, sslMode: 'disable' },
      target: { host: '127.0.0.1', port: 5434, database: 'shop', user: 'postgres', password: TARGET_PW, sslMode: 'disable' },
      rollbackWindow: '72h',
      cutover: true,
    });
    news = declared.plainInputs;
    host = await ProviderHost.start();
  });
  after(async function () {
    await host?.stop();
  });

  /** The arguments with `over` applied; an `undefined` there removes the argument (a Struct holds no undefined). */
  const with_ = (over: Props): Props => {
    const n: Props = { ...clone(news), ...over };
    for (const k of Object.keys(n)) if (n[k] === undefined) delete n[k];
    return n;
  };
  /** The old outputs of the migration in state `m` (what the engine hands Check's olds, diff() and update()). */
  const olds = (m: MigrationMessage = status(), over: Props = {}): Props => {
    const a = with_(over) as unknown as MigrationInputs;
    return { ...buildOutputs(echoArgs(a), secretPartsFromInputs(a), m), __provider: declared.providerText };
  };
  const failuresOf = async (o: Props, n: Props) => (await host.check(urn, o, n)).failures;

  it('Check takes a rollbackWindow the agent takes and refuses, in the agent’s words, one it refuses', async function () {
    for (const good of ['72h', '90m', '3d', '1h30m', '10s']) {
      // All known at creation: the preflight runs too (and finds the agent down); nothing is said of the window.
      const failures = await failuresOf({}, with_({ rollbackWindow: good, cutover: false }));
      assert.deepEqual(
        failures.filter((f) => f.property === 'rollbackWindow'),
        [],
        good,
      );
    }
    for (const bad of ['72', '3 days', '5s', '', 'h', '1h-30m']) {
      const failures = await failuresOf({}, with_({ rollbackWindow: bad, cutover: false }));
      const mine = failures.filter((f) => f.property === 'rollbackWindow');
      assert.equal(mine.length, 1, `${bad}: ${JSON.stringify(failures)}`);
      // The agent refuses the same value with the same words.
      const spec = { ...toSpec(with_({ rollbackWindow: bad }) as unknown as MigrationInputs) };
      assert.throws(
        () => parseSpec(spec),
        (e: unknown) =>
          isPgferryError(e) && e.code === 'INVALID_SPEC' && mine[0]!.reason.includes(e.message.replace(/^.*`rollbackWindow` /, '').replace(/\.$/, '')),
      );
    }
    assert.deepEqual(await failuresOf({}, with_({ rollbackWindow: UNKNOWN, cutover: false })), [], 'unknown in a preview');
  });

  it('Diff: rollbackWindow and cutback are in-place updates, never a replacement', async function () {
    const o = olds();
    for (const n of [with_({ cutback: true }), with_({ rollbackWindow: '24h' }), with_({ rollbackWindow: undefined }), with_({ cutback: UNKNOWN })]) {
      assert.deepEqual(await host.diff('orders', urn, o, n), { changes: 'some', replaces: [], deleteBeforeReplace: false });
    }
    assert.deepEqual(await host.diff('orders', urn, o, with_({ cutback: false })), { changes: 'none', replaces: [], deleteBeforeReplace: false });
  });

  it('Check passes `cutback: true` after a completed cutover while the window is open', async function () {
    assert.deepEqual(await failuresOf(olds(), with_({ cutback: true })), []);
  });

  it('Check refuses `cutback: true` before a completed cutover, on `cutback`, saying to cut over first', async function () {
    const syncing = olds(status({ phase: 'syncing', activeEndpoint: 'source', cutover: null, reverse: null }), { cutover: false });
    for (const [o, n] of [
      [syncing, with_({ cutover: false, cutback: true })],
      [syncing, with_({ cutover: true, cutback: true })], // both at once: the cutover must complete first
      [{}, with_({ cutback: true })], // at creation
    ] as const) {
      const failures = await failuresOf(o, n);
      assert.deepEqual(
        failures.map((f) => f.property),
        ['cutback'],
      );
      assert.match(failures[0]!.reason, /`cutback: true` needs a completed cutover/);
      assert.match(failures[0]!.reason, /Fix: cut over first \(`cutover: true`, with `rollbackWindow` set\)/);
    }
  });

  it('Check refuses `cutback: true` without a rollbackWindow, or when this change removes it', async function () {
    const without = await failuresOf(olds(status({ reverse: null }), { rollbackWindow: undefined }), with_({ rollbackWindow: undefined, cutback: true }));
    assert.equal(without[0]?.property, 'cutback');
    assert.match(without[0]!.reason, /was cut over without one, so the old source did not follow the target/);
    const removed = await failuresOf(olds(), with_({ rollbackWindow: undefined, cutback: true }));
    assert.equal(removed[0]?.property, 'cutback');
    assert.match(removed[0]!.reason, /which this change removes/);
  });

  it('Check refuses `cutback: true` once the window ended: dropped, or its end passed since the last refresh', async function () {
    const dropped = status({ reverse: reverse({ state: 'dropped', droppedAt: '2026-12-04T10:00:00.000Z', dropReason: 'the rollback window ended' }) });
    const a = await failuresOf(olds(dropped), with_({ cutback: true }));
    assert.equal(a[0]?.property, 'cutback');
    assert.match(a[0]!.reason, /the rollback window of migration 'orders' is over \(the rollback window ended, at 2026-12-04T10:00:00\.000Z\)/);
    const passed = status({ reverse: reverse({ windowEndsAt: new Date(Date.now() - 60_000).toISOString() }) });
    const b = await failuresOf(olds(passed), with_({ cutback: true }));
    assert.equal(b[0]?.property, 'cutback');
    assert.match(b[0]!.reason, /ended at/);
  });

  it('Check and Update refuse `cutback` true → false after a completed cutback, and a second cutover', async function () {
    const back = status({
      phase: 'cut-back',
      activeEndpoint: 'source',
      cutback: report(),
      reverse: reverse({ state: 'dropped', dropReason: 'the cutback completed' }),
    });
    const o = olds(back, { cutback: true });
    const undo = await failuresOf(o, with_({ cutback: false }));
    assert.equal(undo[0]?.property, 'cutback');
    assert.match(undo[0]!.reason, /`cutback` cannot go back to `false`: migration 'orders' cut back to the source at 2026-12-01T10:00:00\.400Z/);
    await assert.rejects(host.update('orders', urn, o, with_({ cutback: false })), /`cutback` cannot go back to `false`/);
    assert.deepEqual(await failuresOf(o, with_({ cutback: true })), [], 'unchanged: fine');
    // `cutover: false` after a cutback says what is true (the application is on the source): taken.
    assert.deepEqual(await failuresOf(o, with_({ cutback: true, cutover: false })), []);
    const again = await failuresOf(olds(back, { cutback: true, cutover: false }), with_({ cutback: true, cutover: true }));
    assert.equal(again[0]?.property, 'cutover');
    assert.match(again[0]!.reason, /a migration is cut over once/);
  });

  it('a refused `cutover: true → false` with the window open says to set `cutback: true` instead', async function () {
    await assert.rejects(host.update('orders', urn, olds(), with_({ cutover: false })), (e: Error) => {
      assert.match(e.message, /`cutover` cannot go back to `false`/);
      assert.match(e.message, /keep `cutover: true` and set `cutback: true`/);
      return true;
    });
  });

  it('Check refuses a rollbackWindow added after the cutover completed: the reverse sync is made by the cutover', async function () {
    const failures = await failuresOf(olds(status({ reverse: null }), { rollbackWindow: undefined }), with_({ rollbackWindow: '24h' }));
    assert.equal(failures[0]?.property, 'rollbackWindow');
    assert.match(failures[0]!.reason, /comes too late/);
  });

  it('outputs after a cutback: activeConnection on the source again, the reverse sync dropped, the cutback report', function () {
    const during = olds();
    assert.equal(during.activeEndpoint, 'target');
    assert.equal((during.activeConnection as { port: number }).port, 5434);
    assert.equal((during.reverseSync as { state: string }).state, 'streaming');
    assert.equal((during.reverseSync as { lagBytes: number }).lagBytes, 160);
    assert.equal(during.cutbackReport, undefined);

    const back = olds(
      status({
        phase: 'cut-back',
        activeEndpoint: 'source',
        cutback: report({ outageMs: 700, writeDowntimeMs: 700, validation: 'full' }),
        reverse: reverse({ state: 'dropped', droppedAt: '2026-12-01T10:00:01.000Z', dropReason: 'the cutback completed' }),
      }),
      { cutback: true },
    );
    assert.equal(back.activeEndpoint, 'source');
    assert.equal((back.activeConnection as { port: number }).port, 5433);
    assert.deepEqual(back.reverseSync, {
      state: 'dropped',
      lagBytes: 160,
      lagSeconds: 0.2,
      windowEndsAt: (during.reverseSync as { windowEndsAt: string }).windowEndsAt,
      droppedAt: '2026-12-01T10:00:01.000Z',
      dropReason: 'the cutback completed',
    });
    assert.deepEqual(back.cutbackReport, {
      state: 'completed',
      outageMs: 700,
      outageParts: { drain: 300, sequences: 100 },
      validation: 'full',
      validationOk: true,
      fenceLsn: '0/3000060',
      completedAt: '2026-12-01T10:00:00.400Z',
    });
    assert.equal(back.cutback, true);
    assert.equal(back.rollbackWindow, '72h');
  });
});
