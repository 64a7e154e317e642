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
import { renderList, renderMigration, renderPreflight } from '../agent/cli/status-view';
import { loadSpecFile } from '../agent/cli/commands';
import type { MigrationMessage } from '../api/client';
import { CLI } from './support/agent';
import { haveTerminalRunner, runCli, runCliInTerminal } from './support/cli';
import { startShop, type RunningShop } from './support/running';

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
      }),
    );
    const spec = loadSpecFile(f, { SRC_PW: 'from-the-env' });
    assert.deepEqual(spec.roles, { map: { env: 'app', app_owner: 'tgt_owner' }, missing: 'skip' });
    assert.equal(spec.id, 'orders');
    assert.equal(spec.source.password, 'from-the-env');
    assert.equal(spec.target.connectionString, 'from-a-file');
    assert.equal((spec as unknown as Record<string, unknown>).agent, undefined);
    assert.equal(spec.copy?.workers, 3);
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

  it('status for people fits 80 columns and shows the phase, lag and slot', async () => {
    for (const args of [['status', 'shop'], ['status', 'shop', '--tables'], ['status']]) {
      const r = await runCli([...args, ...conn]);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout.replace(/\n$/, '').split('\n');
      assertFits(lines);
      assert.match(r.stdout, /syncing/i);
    }
    const one = await runCli(['status', 'shop', ...conn]);
    assert.ok(one.stdout.includes('pgferry_shop'), 'names the slot');
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
