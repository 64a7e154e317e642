/**
 * The `pgferry` CLI as an operator uses it against a real agent and a
 * running migration (PostgreSQL 14 → 17): status for scripts and for
 * people, spec files, usage errors and failures with their exit codes, and
 * the cutover and delete that finish the story.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../dev/testbed';
import { renderCutback, renderCutover, renderList, renderMigration, renderPreflight } from '../agent/cli/status-view';
import { loadSpecFile } from '../agent/cli/commands';
import type { MigrationMessage } from '../api/client';
import { CLI } from './support/agent';
import { haveTerminalRunner, runCli, runCliInTerminal } from './support/cli';
import { pollUntil, startShop, type RunningShop } from './support/running';

const WIDTH = 80;

function assertFits(lines: string[], width = WIDTH): void {
  assert.ok(lines.length > 0);
  for (const l of lines) assert.ok(l.length <= width, `${l.length} columns: ${JSON.stringify(l)}`);
}

/** A migration in the middle of its load, with awkward names and big numbers. */
function loadingMigration(): MigrationMessage {
  const table = (schema: string, name: string, phase: string, rows: number, of: number) => ({
    schema,
    name,
    phase,
    rowsCopied: rows,
    bytesCopied: rows * 120,
    rowsEstimated: of,
    bytesEstimated: of * 120,
  });
  return {
    id: 'a_rather_long_migration_identifier_40ch',
    phase: 'loading',
    errorCode: '',
    errorMessage: '',
    errorRemedy: '',
    createdAt: '',
    updatedAt: '',
    tablesTotal: 40,
    tablesCopied: 12,
    rowsCopied: 123_456_789,
    bytesCopied: 14_814_814_680,
    bytesEstimated: 40_000_000_000,
    progress: 0.37,
    etaSeconds: 4_321,
    lagBytes: 987_654_321,
    lagSeconds: 1234.5,
    retainedWalBytes: 55_000_000_000,
    applyRate: 0,
    appliedLsn: '',
    slotName: 'pgferry_a_rather_long_migration_identifier_40ch',
    publicationName: 'pgferry_x',
    specFingerprint: 'f',
    cutover: null,
    activeEndpoint: 'source',
    changesApplied: 0,
    sourceVersion: '14.17',
    targetVersion: '17.5',
    paused: false,
    pausedAt: '',
    fence: null,
    verification: null,
    schemaChanges: null,
    reverse: null,
    cutback: null,
    tables: [
      table('billing_and_accounting_schema', 'invoice_line_items_with_a_very_long_name', 'copying', 98_765_432, 150_000_000),
      table('public', 'orders', 'copied', 3_000_000, 3_000_000),
      table('"Mixed Schema"', '"Mixed Case Table"', 'queued', 0, 20_000),
      ...Array.from({ length: 37 }, (_, i) => table('public', `t${i}`, i % 2 ? 'queued' : 'copied', i % 2 ? 0 : 20_000, 20_000)),
    ],
  };
}

describe('cli: rendering fits an 80-column terminal', () => {
  it('renders a loading migration with per-table bars, the list and a failed one within 80 columns', () => {
    const m = loadingMigration();
    const detail = renderMigration(m, { width: WIDTH });
    assertFits(detail);
    assert.ok(
      detail.some((l) => l.includes('invoice_line_items') || l.includes('billing_and')),
      'the copying table is listed first',
    );
    assert.ok(detail.filter((l) => l.includes('█') || l.includes('░')).length >= 10, 'per-table bars');
    assert.ok(detail.length < 30, 'long table lists are summarised');
    assertFits(renderMigration(m, { width: 60 }), 60);
    assertFits(renderList([m, { ...m, id: 'b', phase: 'failed', errorCode: 'COPY_FAILED' }], { width: WIDTH }));
    const paused = { ...m, phase: 'syncing', paused: true, pausedAt: '2026-11-29T10:00:00.000Z' };
    const pausedLines = renderMigration(paused, { width: WIDTH });
    assertFits(pausedLines);
    assert.match(pausedLines[0], /SYNCING \(PAUSED\)/);
    assert.match(
      pausedLines.join(' ').replace(/\s+/g, ' '),
      /since 2026-11-29T10:00:00\.000Z; .* pgferry resume a_rather_long_migration_identifier_40ch/,
      'when, and the whole command to resume',
    );
    assert.match(renderList([paused], { width: WIDTH })[1], /paused/);
    const failed = {
      ...m,
      phase: 'failed',
      errorCode: 'APPLY_FAILED',
      errorMessage: `Applying a change to "billing"."invoices" failed: ${'duplicate key value violates unique constraint '.repeat(4)}`,
      errorRemedy: 'ALTER TABLE billing.invoices REPLICA IDENTITY FULL; then pgferry start --spec FILE to resume where it stopped.',
    };
    const lines = renderMigration(failed, { width: WIDTH });
    assertFits(lines);
    assert.ok(lines.join(' ').replace(/\s+/g, ' ').includes('REPLICA IDENTITY FULL;'), 'the fix is wrapped, not cut');
    assertFits(
      renderPreflight(
        {
          ok: false,
          sourceVersion: '14.1',
          targetVersion: '17.2',
          tableCount: 3,
          checks: [
            {
              name: 'replica_identity',
              verdict: 'fail',
              message: 'Tables without a primary key or replica identity: '.repeat(3),
              remedy: 'ALTER TABLE public.a REPLICA IDENTITY FULL; '.repeat(4),
              objects: ['public.a', 'public.b'],
            },
          ],
        },
        { width: WIDTH },
      ),
    );
  });
});

/** A completed cutover's report, as an agent with the continuous verification gives it. */
function completedCutover(m: MigrationMessage): MigrationMessage {
  const check = (table: string, mode: string, rowsChecked: number, rows: number, match = true) => ({
    table,
    sourceRows: rows,
    targetRows: rows,
    sourceChecksum: '',
    targetChecksum: '',
    match,
    mode,
    rowsChecked,
  });
  return {
    ...m,
    phase: 'completed',
    activeEndpoint: 'target',
    verification: null,
    schemaChanges: null,
    cutover: {
      state: 'completed',
      fenceStartedAt: '2026-12-01T10:00:00.100Z',
      fenceEndedAt: '2026-12-01T10:00:00.520Z',
      writeDowntimeMs: 420,
      fenceLsn: '1A/2B3C4D5E',
      tables: [
        check('billing_and_accounting_schema.invoice_line_items_with_a_very_long_name', 'changes', 1_250, 1_249),
        check('public.orders', 'unchanged', 0, 0),
        check('public.audit', 'full', 3_000_000, 3_000_000),
      ],
      sequences: [{ sequence: 'public.orders_id_seq', value: 3_000_001 }],
      warnings: [],
      validation: 'changes',
      validationOk: true,
      completedAt: '2026-12-01T10:00:00.520Z',
      error: '',
      attempts: 1,
      largeObjects: null,
      schemaCheck: null,
      outageMs: 420,
      outageParts: [
        { part: 'grace', ms: 250 },
        { part: 'terminate', ms: 2 },
        { part: 'drain', ms: 40 },
        { part: 'sequences', ms: 8 },
        { part: 'large-objects', ms: 3 },
        { part: 'schema', ms: 90 },
        { part: 'verification', ms: 22 },
        { part: 'completing', ms: 5 },
      ],
    },
  };
}

describe('cli: the verification and the cutover outage', () => {
  const now = Date.parse('2026-12-01T10:05:00.000Z');
  const verification = {
    state: 'verifying',
    tablesTotal: 40,
    tablesVerified: 38,
    rowsVerified: 1_234_567,
    rowsEstimated: 1_500_000,
    lastVerifiedAt: '2026-12-01T10:04:57.000Z',
    oldestVerifiedAt: '',
    tablesChanged: 4,
    keysChanged: 120,
    rangesRepaired: 1,
    rowsRepaired: 2,
    repairs: [
      '2026-12-01T09:00:00.000Z public.old: 1 row(s) rewritten from the source, key (1)',
      '2026-12-01T10:00:00.000Z billing_and_accounting_schema.invoice_line_items_with_a_very_long_name: 2 row(s) rewritten from the source, key (17), (42)',
    ],
    lastError: 'the target closed the connection (57P01); the next round tries again in 5 s',
  };
  const syncing = (v: Partial<typeof verification> = {}): MigrationMessage => ({
    ...loadingMigration(),
    phase: 'syncing',
    progress: 1,
    verification: { ...verification, ...v },
  });

  it('status shows how much is verified and how recently, what changed since, the repairs and the last error', () => {
    const lines = renderMigration(syncing(), { width: WIDTH, now });
    assertFits(lines);
    const text = lines.join('\n');
    const flat = text.replace(/\s+/g, ' ');
    assert.match(text, /^Verify {3}verifying: 38\/40 tables · 1\.2M of ~1\.5M rows · last 3s ago$/m);
    assert.match(flat, /120 row\(s\) in 4 table\(s\) changed since verified \(checked again at the fence\)/);
    assert.match(flat, /repaired 2 row\(s\) in all \(1 repair\(s\) since the agent started\)/);
    assert.ok(
      text.replace(/\s+/g, '').includes('invoice_line_items_with_a_very_long_name:2row(s)rewrittenfromthesource,key(17),(42)'),
      'the latest repair, wrapped, not cut',
    );
    assert.match(flat, /error \(retrying\): the target closed the connection \(57P01\); the next round tries again in 5 s/);
    assertFits(renderMigration(syncing(), { width: 60, now }), 60);

    const verified = renderMigration(syncing({ state: 'verified', tablesVerified: 40, oldestVerifiedAt: '2026-12-01T09:25:00.000Z', lastError: '' }), {
      width: WIDTH,
      now,
    });
    assert.match(verified.join(' ').replace(/\s+/g, ' '), /verified: 40\/40 tables · .* · every table within 40m 00s/);
    const off = renderMigration(syncing({ state: 'off' }), { width: WIDTH, now }).join('\n');
    assert.match(off, /^Verify {3}off \(verification\.disabled\): the cutover checks every row in full$/m);
  });

  it('the cutover report gives the application outage with its parts, and per table how it was checked and the rows read', () => {
    const m = completedCutover(loadingMigration());
    const report = renderCutover(m, { width: WIDTH });
    assertFits(report);
    const text = report.join('\n');
    assert.match(text, /application outage 420 ms · fence LSN 1A\/2B3C4D5E/);
    assert.match(
      text.replace(/\s+/g, ' '),
      /in ms: grace 250 · terminate 2 · drain 40 · sequences 8 · large-objects 3 · schema 90 · verification 22 · completing 5/,
    );
    assert.match(text, /table +checked +rows read +source rows +target rows result/);
    assert.match(text, /public\.orders +unchanged +0 +- +- match/);
    assert.match(text, /public\.audit +full +3000000 +3000000 +3000000 match/);
    assert.match(text, /billing_and_accounting_sc… changes +1250 +1249 +1249 match/);
    assert.match(text, /changes: source\/target rows are the changed keys found on each side/);
    const summary = renderMigration(m, { width: WIDTH }).join('\n');
    assert.match(summary.replace(/\s+/g, ' '), /completed · application outage 420 ms · fence 1A\/2B3C4D5E · changes match/);
    assert.match(summary.replace(/\s+/g, ' '), /grace 250 · .* · completing 5 \(ms\)/);
    // A report from an agent before the verification: no mode, the write downtime as the outage.
    const older = completedCutover(loadingMigration());
    older.cutover = {
      ...older.cutover!,
      outageMs: 0,
      outageParts: [],
      validation: 'checksums',
      tables: older.cutover!.tables.map((t) => ({ ...t, mode: '' })),
    };
    const olderText = renderCutover(older, { width: WIDTH }).join('\n');
    assert.match(olderText, /application outage 420 ms/);
    assert.match(olderText, /public\.orders +full/);
  });
});

describe('cli: the schema changes followed', () => {
  const now = Date.parse('2026-12-01T10:05:00.000Z');
  const schemaChanges = {
    mode: 'follow',
    applied: 12,
    lastAppliedAt: '2026-12-01T10:04:50.000Z',
    recent: [
      { at: '2026-12-01T10:01:00.000Z', object: 'public.orders.old', change: 'column dropped', statement: 'ALTER TABLE public.orders DROP COLUMN old' },
      { at: '2026-12-01T10:02:00.000Z', object: 'public.audit', change: 'table dropped on the source, kept', statement: '' },
      {
        at: '2026-12-01T10:03:00.000Z',
        object: 'billing_and_accounting_schema.invoice_line_items_with_a_very_long_name.amount',
        change: 'type changed to numeric(12,2)',
        statement: 'ALTER TABLE … ALTER COLUMN amount TYPE numeric(12,2)',
      },
      { at: '2026-12-01T10:04:50.000Z', object: 'public.orders.note', change: 'column added', statement: 'ALTER TABLE public.orders ADD COLUMN note text' },
    ],
    keptTables: ['public.audit'],
    lastReconciledAt: '2026-12-01T10:04:30.000Z',
    lastError: 'index public.orders_note_idx: could not create (53100); the next reconciliation tries again',
  };
  const syncing = (c: Partial<typeof schemaChanges> | null = {}): MigrationMessage => ({
    ...loadingMigration(),
    phase: 'syncing',
    progress: 1,
    schemaChanges: c ? { ...schemaChanges, ...c } : null,
  });

  it('status shows the mode, how many changes and when, the latest ones, the tables kept and the last error', () => {
    const lines = renderMigration(syncing(), { width: WIDTH, now });
    assertFits(lines);
    assertFits(renderMigration(syncing(), { width: 60, now }), 60);
    const text = lines.join('\n');
    const flat = text.replace(/\s+/g, ' ');
    assert.match(text, /^Schema {3}follow · 12 change\(s\) applied · last 10s ago · reconciled 30s ago$/m);
    assert.doesNotMatch(text, /public\.orders\.old/, 'only the last three');
    assert.match(text, /^ {11}10:02:00Z {2}public\.audit: table dropped on the source, kept$/m);
    assert.ok(
      text.replace(/\s+/g, '').includes('invoice_line_items_with_a_very_long_name.amount:typechangedtonumeric(12,2)'),
      'a long object wrapped, not cut',
    );
    assert.match(text, /^ {11}10:04:50Z {2}public\.orders\.note: column added$/m);
    assert.match(flat, /kept on the target, dropped on the source: public\.audit/);
    assert.match(flat, /error \(retrying\): index public\.orders_note_idx: could not create \(53100\)/);

    const stop = renderMigration(syncing({ mode: 'stop', applied: 0, lastAppliedAt: '', recent: [], keptTables: [] }), { width: WIDTH, now }).join('\n');
    assert.match(stop, /^Schema {3}stop: a schema change on the source stops the sync \(SCHEMA_DRIFT\)$/m);
    assert.doesNotMatch(renderMigration(syncing(null), { width: WIDTH, now }).join('\n'), /^Schema/m, 'no block before the sync');
  });
});

describe('cli: the way back (reverse sync and cutback)', () => {
  const now = Date.parse('2026-12-04T10:00:00.000Z');
  const reverse = {
    state: 'streaming',
    slotName: 'pgferry_a_rather_long_migration_identifier_40ch_reverse',
    publicationName: 'pgferry_a_rather_long_migration_identifier_40ch_reverse',
    startLsn: '1A/2B3C4D5E',
    appliedLsn: '1A/2B3C9000',
    lagBytes: 4096,
    lagSeconds: 1.5,
    changesApplied: 12_345,
    windowEndsAt: '2026-12-07T10:00:00.000Z',
    droppedAt: '',
    dropReason: '',
    lastError: '',
    fence: null,
  };
  const after = (r: Partial<typeof reverse> | null): MigrationMessage => ({
    ...completedCutover(loadingMigration()),
    reverse: r ? { ...reverse, ...r } : null,
  });

  it('status shows the reverse sync: its lag, when the window ends and the command to cut back before', () => {
    const lines = renderMigration(after({}), { width: WIDTH, now });
    assertFits(lines);
    assertFits(renderMigration(after({}), { width: 60, now }), 60);
    const text = lines.join('\n');
    const flat = text.replace(/\s+/g, ' ');
    assert.match(text, /^Reverse {2}sync streaming · 4\.0 KiB · 1\.5s behind the target/m);
    assert.match(flat, /behind the target · 12k change\(s\) applied/);
    assert.match(flat, /window ends 2026-12-07T10:00:00\.000Z \(in 3d 0h\): then pgferry_\S+_reverse and pgferry_\S+_reverse are dropped on the target/);
    assert.ok(flat.replace(/ /g, '').includes('cutbackbefore:pgferrycutbacka_rather_long_migration_identifier_40ch'), 'the whole command');
    assert.doesNotMatch(text, /^Lag /m, "after the cutover the forward lag means nothing; the reverse sync's is shown");

    const failed = renderMigration(after({ state: 'failed', lastError: 'the old source refused the connection (57P03); retrying in 5 s' }), {
      width: WIDTH,
      now,
    });
    assertFits(failed);
    assert.match(failed.join('\n'), /^Reverse {2}sync FAILED \(retrying\) · 4\.0 KiB/m);
    assert.match(failed.join(' ').replace(/\s+/g, ' '), /error \(retrying\): the old source refused the connection \(57P03\)/);

    const prepared = renderMigration(after({ state: 'prepared' }), { width: WIDTH, now })
      .join(' ')
      .replace(/\s+/g, ' ');
    assert.match(prepared, /sync prepared at the cutover's fence \(from 1A\/2B3C4D5E\); it streams once the cutover completed/);

    const dropped = renderMigration(after({ state: 'dropped', droppedAt: '2026-12-07T10:00:01.000Z', dropReason: 'the rollback window ended' }), {
      width: WIDTH,
      now,
    }).join(' ');
    assert.match(
      dropped.replace(/\s+/g, ' '),
      /sync dropped 2026-12-07T10:00:01\.000Z \(the rollback window ended\): its slot and publication on the target are gone/,
    );
    assert.doesNotMatch(dropped, /window ends|pgferry cutback/, 'no way back to offer once dropped');
    assert.doesNotMatch(renderMigration(after(null), { width: WIDTH, now }).join('\n'), /^Reverse/m, 'no block without a rollback window');
  });

  it('after a cutback: the list marks CUT-BACK, status and the report give its outage, the source is active again', () => {
    const done = completedCutover(loadingMigration());
    const m: MigrationMessage = {
      ...done,
      phase: 'cut-back',
      activeEndpoint: 'source',
      reverse: {
        ...reverse,
        state: 'dropped',
        droppedAt: '2026-12-04T10:00:00.900Z',
        dropReason: 'the cutback completed',
        fence: { state: 'kept', database: 'shop', since: '2026-12-04T10:00:00.100Z', liftAttempts: 0, lastLiftError: '', liftStatement: '' },
      },
      cutback: {
        ...done.cutover!,
        fenceStartedAt: '2026-12-04T10:00:00.100Z',
        fenceEndedAt: '2026-12-04T10:00:00.800Z',
        completedAt: '2026-12-04T10:00:00.800Z',
        validation: 'full',
        outageMs: 700,
        writeDowntimeMs: 700,
        outageParts: [
          { part: 'drain', ms: 120 },
          { part: 'sequences', ms: 30 },
          { part: 'verification', ms: 550 },
        ],
      },
    };
    const list = renderList([m], { width: WIDTH });
    assertFits(list);
    assert.match(list[1], /^a_rather_long_mig… CUT-BACK +37% +- /, 'no lag once cut back');
    const streaming = renderList([{ ...done, reverse }], { width: WIDTH });
    assert.match(streaming[1], / completed +37% +back 4\.0 KiB\/1\.5s /, "after the cutover, the reverse sync's lag");
    const status = renderMigration(m, { width: WIDTH, now });
    assertFits(status);
    const flat = status.join(' ').replace(/\s+/g, ' ');
    assert.match(renderMigration(m, { width: 120, now })[0], / {2}CUT-BACK {2}· .* · {2}active: source$/);
    assert.match(flat, /Cutover completed · application outage 420 ms/);
    assert.match(flat, /target fence KEPT since 2026-12-04T10:00:00\.100Z: database shop starts every new session read-only/);
    assert.match(flat, /Cutback completed · application outage 700 ms · fence 1A\/2B3C4D5E · full match drain 120 · sequences 30 · verification 550 \(ms\)/);
    const report = renderCutback(m, { width: WIDTH });
    assertFits(report);
    const text = report.join('\n');
    assert.match(renderCutback(m, { width: 120 })[0], /^Cutback of a_rather_long_migration_identifier_40ch: COMPLETED · active endpoint: source$/);
    assert.match(text, /application outage 700 ms/);
    assert.match(text, /1 sequence\(s\) set on the source/);
    assert.match(renderCutback({ ...done, cutback: null }, { width: 120 }).join(''), /has no cutback report \(phase completed\)/);
  });
});

describe('cli: spec files', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'pgferry-specs-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('resolves {"env"} and {"file"} references, accepts migrationId and ignores Pulumi-only keys', () => {
    writeFileSync(join(dir, 'pw'), 'from-a-file\n');
    const f = join(dir, 'spec.json');
    writeFileSync(
      f,
      JSON.stringify({
        migrationId: 'orders',
        agent: { endpoint: 'x:1' },
        cutover: false,
        source: { host: 'h', database: 'd', user: 'u', password: { env: 'SRC_PW' } },
        target: { connectionString: { file: 'pw' } },
        copy: { workers: 3 },
        // A role named `env` is a role, not a reference.
        roles: { map: { env: 'app', app_owner: 'tgt_owner' }, missing: 'skip' },
        verification: { rowsPerSecond: 20000, disabled: false },
      }),
    );
    const spec = loadSpecFile(f, { SRC_PW: 'from-the-env' });
    assert.deepEqual(spec.roles, { map: { env: 'app', app_owner: 'tgt_owner' }, missing: 'skip' });
    assert.equal(spec.id, 'orders');
    assert.equal(spec.source.password, 'from-the-env');
    assert.equal(spec.target.connectionString, 'from-a-file');
    assert.equal((spec as unknown as Record<string, unknown>).agent, undefined);
    assert.equal(spec.copy?.workers, 3);
    assert.deepEqual(spec.verification, { rowsPerSecond: 20000, disabled: false });
  });

  it('refuses a bad `verification` naming the field and the fix', () => {
    const cases: Array<[unknown, RegExp]> = [
      [{ rowsPerSecond: 500 }, /`verification\.rowsPerSecond` .* must be a whole number from 1000 to 4294967295, got 500[\s\S]*e\.g\. 100000/],
      [{ rangeRows: 2_000_000 }, /`verification\.rangeRows` .* from 100 to 1000000, got 2000000[\s\S]*e\.g\. 50000/],
      [{ rangeRows: 1000.5 }, /`verification\.rangeRows` .* must be a whole number/],
      [{ disabled: 'yes' }, /`verification\.disabled` .* must be a boolean/],
      [{ rowsPerSec: 1 }, /`verification\.rowsPerSec` .* is not a spec field[\s\S]*rowsPerSecond, rangeRows, disabled/],
      ['fast', /`verification` .* must be an object/],
    ];
    for (const [i, [verification, expected]] of cases.entries()) {
      const f = join(dir, `verification${i}.json`);
      writeFileSync(f, JSON.stringify({ id: 'a', source: { host: 'h' }, target: { host: 'h' }, verification }));
      assert.throws(
        () => loadSpecFile(f, {}),
        (e: { code?: string; message: string; remedy: string }) => e.code === 'INVALID_SPEC' && expected.test(`${e.message} ${e.remedy}`),
        JSON.stringify(verification),
      );
    }
  });

  it('takes `schemaChanges` as given and refuses another value, naming follow and stop', () => {
    const f = join(dir, 'schema-changes.json');
    writeFileSync(f, JSON.stringify({ id: 'a', source: { host: 'h' }, target: { host: 'h' }, schemaChanges: 'stop' }));
    assert.equal(loadSpecFile(f, {}).schemaChanges, 'stop');
    writeFileSync(f, JSON.stringify({ id: 'a', source: { host: 'h' }, target: { host: 'h' }, schemaChanges: 'ignore' }));
    assert.throws(
      () => loadSpecFile(f, {}),
      (e: { code?: string; message: string; remedy: string }) =>
        e.code === 'INVALID_SPEC' &&
        /`schemaChanges` .* must be one of 'follow', 'stop', got 'ignore'[\s\S]*"follow" \(the default/.test(`${e.message} ${e.remedy}`),
    );
  });

  it('rejects unset variables, unknown fields and wrong types with INVALID_SPEC', () => {
    const cases: unknown[] = [
      { id: 'a', source: { host: 'h', password: { env: 'NOT_SET_ANYWHERE' } }, target: {} },
      { id: 'a', source: { host: 'h', pasword: 'x' }, target: {} },
      { id: 'a', source: { host: 'h', port: '5432' }, target: {} },
      { id: 'a', source: {}, target: {}, tables: { include: 'public.*' } },
      { id: 'a', source: {} },
      { id: 'a', source: {}, target: {}, roles: { map: { app_owner: 7 } } },
      { id: 'a', source: {}, target: {}, roles: { mapping: {} } },
    ];
    for (const [i, c] of cases.entries()) {
      const f = join(dir, `bad${i}.json`);
      writeFileSync(f, JSON.stringify(c));
      assert.throws(
        () => loadSpecFile(f, {}),
        (e: { code?: string }) => e.code === 'INVALID_SPEC',
        JSON.stringify(c),
      );
    }
  });
});

describe('cli: against a running migration (PostgreSQL 14 → 17)', function () {
  this.timeout(300_000);
  let shop: RunningShop;
  let dir: string;
  const token = `cli-test-token-${process.pid}-0123456789`;
  let conn: string[];

  before(async function () {
    shop = await startShop({ token });
    conn = ['--agent', shop.agent.endpoint, '--token-file', shop.agent.tokenFile!];
    dir = mkdtempSync(join(tmpdir(), 'pgferry-cli-'));
  });
  after(async function () {
    await shop?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('status --json prints the status message: phase, lag and tables', async () => {
    const r = await runCli(['status', 'shop', '--json', ...conn]);
    assert.equal(r.code, 0, r.stderr);
    const m = JSON.parse(r.stdout) as MigrationMessage;
    assert.equal(m.id, 'shop');
    assert.equal(m.phase, 'syncing');
    assert.equal(typeof m.lagBytes, 'number');
    assert.equal(typeof m.lagSeconds, 'number');
    assert.ok(m.lagBytes >= 0 && m.lagSeconds >= 0);
    assert.ok(m.tables.length > 0 && m.tablesCopied === m.tablesTotal);
    assert.equal(m.progress, 1);
    const all = await runCli(['status', '--json', ...conn], { env: { PGFERRY_AGENT: undefined } });
    assert.equal(all.code, 0, all.stderr);
    assert.deepEqual(
      (JSON.parse(all.stdout) as { migrations: MigrationMessage[] }).migrations.map((x) => x.id),
      ['shop'],
    );
  });

  it('status for people fits 80 columns and shows the phase, lag, slot and verification', async () => {
    for (const args of [['status', 'shop'], ['status', 'shop', '--tables'], ['status']]) {
      const r = await runCli([...args, ...conn]);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout.replace(/\n$/, '').split('\n');
      assertFits(lines);
      assert.match(r.stdout, /syncing/i);
    }
    const one = await runCli(['status', 'shop', ...conn]);
    assert.ok(one.stdout.includes('pgferry_shop'), 'names the slot');
    await pollUntil('every table verified', async () => ((await shop.client.getMigration('shop')).verification?.state === 'verified' ? true : undefined));
    const verified = await runCli(['status', 'shop', ...conn]);
    assert.match(verified.stdout, /^Verify {3}verified: (\d+)\/\1 tables · .* · last .* ago/m, 'how much is verified and how recently');
  });

  it('status on a terminal fits its width (80 by default, 60 when narrower)', async function () {
    if (!haveTerminalRunner()) this.skip();
    for (const columns of [undefined, 60]) {
      const r = await runCliInTerminal(['status', 'shop', '--tables', ...conn], { columns });
      assert.equal(r.code, 0, r.stdout);
      assertFits(r.stdout.replace(/\n$/, '').split('\n'), columns ?? WIDTH);
      assert.match(r.stdout, /SYNCING/);
    }
  });

  it('status --watch --json streams updates until Ctrl-C, then exits 0', async () => {
    const child = spawn(process.execPath, [CLI, 'status', 'shop', '--watch', '--json', '--interval-ms', '200', ...conn], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    const exited = new Promise<number | null>((r) => child.once('close', (code) => r(code)));
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('\n')) resolve();
      });
      child.once('close', () => reject(new Error(`watch ended early: ${err}`)));
    });
    const first = JSON.parse(out.split('\n')[0]) as MigrationMessage;
    assert.equal(first.phase, 'syncing');
    child.kill('SIGINT');
    assert.equal(await exited, 0, err);
  });

  it('exits 2 with a clear message for a malformed --agent, and 1 for an agent that is not there', async () => {
    const bad = await runCli(['status', '--agent', 'not-an-address']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--agent/);
    assert.equal(bad.stdout, '');
    const port = await freePort();
    const gone = await runCli(['status', '--agent', `127.0.0.1:${port}`]);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /AGENT_UNREACHABLE/);
    assert.ok(gone.stderr.includes(`127.0.0.1:${port}`), 'names the address');
    const viaEnv = await runCli(['status'], { env: { PGFERRY_AGENT: `127.0.0.1:${port}` } });
    assert.equal(viaEnv.code, 1);
    assert.ok(viaEnv.stderr.includes(`127.0.0.1:${port}`));
  });

  it('reports refusals and unknown ids as failures (exit 1) and bad input as usage errors (exit 2)', async () => {
    const noToken = await runCli(['status', '--agent', shop.agent.endpoint]);
    assert.equal(noToken.code, 1);
    assert.match(noToken.stderr, /UNAUTHENTICATED/);
    const missing = await runCli(['status', 'no_such_migration', ...conn]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /MIGRATION_NOT_FOUND/);
    const badChoice = await runCli(['cutover', 'shop', '--validation', 'bogus', ...conn]);
    assert.equal(badChoice.code, 2);
    const badNumber = await runCli(['cutover', 'shop', '--max-lag-bytes', 'lots', ...conn]);
    assert.equal(badNumber.code, 2);
    const unknownCmd = await runCli(['stauts']);
    assert.equal(unknownCmd.code, 2);
    const notJson = join(dir, 'broken.json');
    writeFileSync(notJson, '{ "id": ');
    const broken = await runCli(['start', '--spec', notJson, ...conn]);
    assert.equal(broken.code, 2);
    assert.match(broken.stderr, /INVALID_SPEC/);
    // Valid JSON, invalid for the agent: the agent's INVALID_SPEC is an input error too.
    const invalid = join(dir, 'invalid.json');
    writeFileSync(invalid, JSON.stringify({ ...shop.spec, id: 'Not-Valid' }));
    const refused = await runCli(['preflight', '--spec', invalid, ...conn]);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /INVALID_SPEC/);
  });

  it('cutback before a cutover is refused with the reason and the fix (exit 1), nothing fenced; a bad flag is a usage error', async () => {
    const early = await runCli(['cutback', 'shop', '--timeout-ms', '20000', ...conn]);
    assert.equal(early.code, 1, early.stderr);
    assert.match(early.stderr, /CUTOVER_FAILED/);
    assert.match(early.stderr, /only after a completed cutover/);
    assert.match(early.stderr, /fix: /);
    assert.equal((await runCli(['cutback', 'shop', '--accept-schema-difference', 'x', ...conn])).code, 2, 'a cutover-only flag');
    const json = JSON.parse((await runCli(['status', 'shop', '--json', ...conn])).stdout) as MigrationMessage;
    assert.equal(json.phase, 'syncing');
    assert.equal(json.cutback, null);
  });

  it('preflight and start take a spec file; start is idempotent', async () => {
    const f = join(dir, 'shop.json');
    const { password, ...source } = shop.spec.source;
    writeFileSync(f, JSON.stringify({ ...shop.spec, source: { ...source, password: { env: 'SHOP_SRC_PW' } } }));
    const env = { SHOP_SRC_PW: password };
    const pre = await runCli(['preflight', '--spec', f, '--json', ...conn], { env });
    assert.equal(pre.code, 0, pre.stderr);
    assert.equal((JSON.parse(pre.stdout) as { ok: boolean }).ok, true);
    const human = await runCli(['preflight', '--spec', f, ...conn], { env });
    assert.equal(human.code, 0, human.stderr);
    assertFits(human.stdout.replace(/\n$/, '').split('\n'));
    const again = await runCli(['start', '--spec', f, '--json', ...conn], { env });
    assert.equal(again.code, 0, again.stderr);
    assert.equal((JSON.parse(again.stdout) as MigrationMessage).phase, 'syncing');
  });

  it('pause and resume: the status says paused, a cutover is refused with the way out, resume goes on', async () => {
    const p = await runCli(['pause', 'shop', ...conn]);
    assert.equal(p.code, 0, p.stderr);
    assert.match(p.stdout, /Paused migration shop/);
    assert.match(p.stdout, /pgferry resume shop/);
    assertFits(p.stdout.replace(/\n$/, '').split('\n'));
    const s = await runCli(['status', 'shop', '--json', ...conn]);
    assert.equal((JSON.parse(s.stdout) as MigrationMessage).paused, true);
    const refused = await runCli(['cutover', 'shop', ...conn]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /WRONG_PHASE[\s\S]*paused[\s\S]*pgferry resume shop/);
    const r = await runCli(['resume', 'shop', '--json', ...conn]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as MigrationMessage).paused, false);
  });

  it('cutover completes and prints the report; delete drops the slot', async () => {
    // On a terminal (when `script` is there) the cutover also narrates its states on stderr.
    const args = ['cutover', 'shop', '--validation', 'counts', '--max-lag-bytes', String(4 * 1024 * 1024), '--timeout-ms', '120000', ...conn];
    const r = haveTerminalRunner() ? await runCliInTerminal(args, { timeoutMs: 180_000 }) : await runCli(args, { timeoutMs: 180_000 });
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /COMPLETED/);
    assert.match(r.stdout, /application outage \d+ ms · fence LSN/);
    assert.match(r.stdout, /table +checked +rows read/);
    assert.match(r.stdout, /public\.orders +counts /, 'each table says how it was checked');
    assertFits(r.stdout.replace(/\n$/, '').split('\n'));
    const after = await shop.client.getMigration('shop');
    assert.equal(after.phase, 'completed');
    assert.equal(after.cutover?.state, 'completed');
    const again = await runCli(['cutover', 'shop', '--json', ...conn]);
    assert.equal(again.code, 0, 'a second cutover returns the completed one');
    const del = await runCli(['delete', 'shop', '--json', ...conn]);
    assert.equal(del.code, 0, del.stderr);
    assert.ok((JSON.parse(del.stdout) as { dropped: string[] }).dropped.length > 0);
    const slots = await shop.source.query("SELECT count(*)::int AS n FROM pg_replication_slots WHERE slot_name LIKE 'pgferry_shop%'", [], 'shop');
    assert.equal(slots.rows[0].n, 0);
    const gone = await runCli(['status', 'shop', ...conn]);
    assert.equal(gone.code, 1);
  });
});
