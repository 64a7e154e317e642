/**
 * The Prometheus endpoint as a monitoring system scrapes it, during a real
 * migration (PostgreSQL 14 → 17) and after its cutover: the exposition text
 * parses line by line, every documented metric is there with values that
 * agree with the migration's status, and docs/metrics.md and the Grafana
 * dashboard use exactly these names.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AgentMetrics, METRIC_NAMES } from '../agent/server/metrics';
import type { MigrationStatus } from '../agent/engine/migration';
import { PHASES } from '../agent/engine/state';
import { isAgentError } from '../api/client';
import { makeTestCerts, type TestCerts } from './support/certs';
import { pollUntil, startShop, type RunningShop } from './support/running';
import { parseExposition, pick, one, sum, family, type Exposition } from './support/metrics-text';

describe('metrics: the Prometheus endpoint (PostgreSQL 14 → 17)', function () {
  this.timeout(300_000);
  let certs: TestCerts;
  let shop: RunningShop;
  const token = `metrics-test-token-${process.pid}-abcdef`;

  const scrape = async (): Promise<Exposition> => {
    const res = await fetch(`http://127.0.0.1:${shop.agent.metricsPort}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
    const e = parseExposition(await res.text());
    for (const s of e.samples) assert.ok(e.type.has(family(e, s.name)), `${s.name} has a TYPE line`);
    return e;
  };

  before(async function () {
    certs = await makeTestCerts();
    shop = await startShop({ token, metrics: true, tls: { cert: certs.serverCert, key: certs.serverKey }, caCert: certs.caCert });
  });
  after(async function () {
    await shop?.stop();
    certs?.remove();
  });

  it('exposes every documented metric with values that agree with the status while syncing', async () => {
    try {
      await shop.client.getMigration('no_such_migration');
      assert.fail('expected NOT_FOUND');
    } catch (e) {
      assert.ok(isAgentError(e) && e.code === 'MIGRATION_NOT_FOUND');
    }
    const before = Number((await shop.source.query('SELECT count(*)::int AS n FROM orders', [], 'shop')).rows[0].n);
    await shop.source.query('INSERT INTO orders (customer_id, status, total) SELECT customer_id, status, total FROM orders LIMIT 100', [], 'shop');
    await shop.source.query("UPDATE customers SET name = name || ' (updated)' WHERE id <= 20", [], 'shop');
    await pollUntil('the new orders on the target', async () => {
      const n = Number((await shop.target.query('SELECT count(*)::int AS n FROM orders', [], 'shop')).rows[0].n);
      return n === before + 100 ? n : undefined;
    });
    const status = await pollUntil('the agent to count the applied changes and verify every table', async () => {
      const m = await shop.client.getMigration('shop');
      return m.changesApplied >= 120 && m.verification?.state === 'verified' ? m : undefined;
    });

    const e = await scrape();
    const ours = new Set(e.samples.map((s) => family(e, s.name)).filter((n) => n.startsWith('pgferry_')));
    for (const n of ours) assert.ok((METRIC_NAMES as readonly string[]).includes(n), `${n} is documented in METRIC_NAMES`);
    const absentUntilCutover = [
      'pgferry_cutover_state',
      'pgferry_cutover_outage_milliseconds',
      'pgferry_cutover_outage_part_milliseconds',
      'pgferry_cutover_write_downtime_milliseconds',
      'pgferry_cutover_validation_ok',
      'pgferry_migration_error_info',
      // Only with a rollbackWindow, after the cutover (and the cutback's, after a cutback).
      'pgferry_reverse_sync_streaming',
      'pgferry_reverse_sync_lag_bytes',
      'pgferry_reverse_sync_lag_seconds',
      'pgferry_reverse_sync_window_ends_timestamp_seconds',
      'pgferry_cutback_outage_milliseconds',
      'pgferry_cutback_outage_part_milliseconds',
    ];
    for (const n of METRIC_NAMES) {
      if (absentUntilCutover.includes(n)) continue;
      assert.ok(ours.has(n), `${n} is exposed`);
      assert.ok(e.help.get(n), `${n} has HELP`);
    }
    assert.ok(pick(e, 'process_resident_memory_bytes').length === 1, 'the standard process metrics');

    const mig = { migration: 'shop' };
    assert.equal(one(e, 'pgferry_migration_phase', { ...mig, phase: 'syncing' }), 1);
    assert.equal(sum(e, 'pgferry_migration_phase', mig), 1, 'exactly one phase is current');
    assert.equal(pick(e, 'pgferry_migration_phase', mig).length, PHASES.length, 'every phase is listed');
    assert.equal(one(e, 'pgferry_migrations', { phase: 'syncing' }), 1);
    assert.equal(one(e, 'pgferry_migration_paused', mig), 0);
    assert.equal(one(e, 'pgferry_migration_info', { ...mig, slot: 'pgferry_shop', active_endpoint: 'source' }), 1);
    const total = one(e, 'pgferry_tables_total', mig);
    assert.ok(total > 0);
    assert.equal(total, status.tablesTotal);
    assert.equal(one(e, 'pgferry_tables_copied', mig), total);
    assert.equal(pick(e, 'pgferry_copy_rows_total', mig).length, total, 'one series per table');
    assert.equal(sum(e, 'pgferry_copy_rows_total', mig), status.rowsCopied);
    assert.ok(one(e, 'pgferry_copy_rows_total', { ...mig, table: 'public.orders' }) >= 5000);
    assert.ok(one(e, 'pgferry_copy_bytes_total', { ...mig, table: 'public.orders' }) > 0);
    assert.ok(
      one(e, 'pgferry_copy_rows_estimated', { ...mig, table: 'public.orders' }) >= one(e, 'pgferry_copy_rows_total', { ...mig, table: 'public.orders' }),
    );
    assert.ok(one(e, 'pgferry_copy_bytes_estimated', { ...mig, table: 'public.orders' }) > 0);
    assert.equal(one(e, 'pgferry_load_progress_ratio', mig), 1);
    assert.equal(one(e, 'pgferry_load_eta_seconds', mig), 0);
    assert.ok(one(e, 'pgferry_apply_changes_total', mig) >= 120);
    assert.ok(one(e, 'pgferry_apply_changes_per_second', mig) >= 0);
    assert.ok(one(e, 'pgferry_lag_bytes', mig) >= 0);
    assert.ok(one(e, 'pgferry_lag_seconds', mig) >= 0);
    assert.ok(one(e, 'pgferry_slot_retained_wal_bytes', { ...mig, slot: 'pgferry_shop' }) >= 0);
    const v = status.verification!;
    assert.equal(one(e, 'pgferry_verification_state', { ...mig, state: 'verified' }), 1);
    assert.equal(sum(e, 'pgferry_verification_state', mig), 1, 'exactly one verification state is current');
    assert.equal(one(e, 'pgferry_verification_tables_total', mig), v.tablesTotal);
    assert.equal(one(e, 'pgferry_verification_tables_verified', mig), v.tablesTotal, 'a table once verified stays verified');
    assert.ok(one(e, 'pgferry_verification_rows_verified', mig) >= 5000, 'the orders at least');
    assert.ok(one(e, 'pgferry_verification_keys_changed', mig) >= 0);
    assert.equal(one(e, 'pgferry_verification_rows_repaired_total', mig), 0, 'nobody wrote to the target behind the agent');
    const oldest = one(e, 'pgferry_verification_oldest_verified_timestamp_seconds', mig);
    assert.ok(oldest <= Date.now() / 1000 && oldest >= Date.parse(status.createdAt) / 1000, 'every table verified since the migration started');
    assert.ok(one(e, 'pgferry_errors_total', { code: 'MIGRATION_NOT_FOUND', origin: 'rpc' }) >= 1);
    assert.ok(one(e, 'pgferry_rpc_calls_total', { method: 'StartMigration', status: 'OK' }) >= 1);
    assert.ok(one(e, 'pgferry_rpc_calls_total', { method: 'GetMigration', status: 'NOT_FOUND' }) >= 1);
    assert.ok(one(e, 'pgferry_tls_certificate_expiry_timestamp_seconds') > Date.now() / 1000);
    assert.equal(one(e, 'pgferry_build_info', { version: JSON.parse(readFileSync(join(__dirname, '..', '..', 'package.json'), 'utf8')).version }), 1);
  });

  it('shows a paused migration as paused, with no apply rate, until it is resumed', async () => {
    await shop.client.pauseMigration('shop');
    const e = await scrape();
    assert.equal(one(e, 'pgferry_migration_paused', { migration: 'shop' }), 1);
    assert.equal(one(e, 'pgferry_apply_changes_per_second', { migration: 'shop' }), 0);
    assert.equal(one(e, 'pgferry_migration_phase', { migration: 'shop', phase: 'syncing' }), 1, 'a pause keeps the phase');
    await shop.client.resumeMigration('shop');
    assert.equal(one(await scrape(), 'pgferry_migration_paused', { migration: 'shop' }), 0);
  });

  it('counts a migration failure once under its code, and shows the error', async () => {
    await shop.target.createDatabase('shop2');
    const spec = { ...shop.spec, id: 'broken', target: { ...shop.spec.target, database: 'shop2' }, tables: { include: ['public.products'] } };
    await shop.client.startMigration(spec);
    await shop.waitPhase('syncing', 'broken');
    // The target loses the table; the next change for it cannot be applied.
    await shop.target.query('DROP TABLE products CASCADE', [], 'shop2');
    await shop.source.query('UPDATE products SET price = price + 1 WHERE id = 1', [], 'shop');
    const failed = await shop.waitPhase('failed', 'broken');
    assert.ok(failed.errorCode);
    const e = await scrape();
    assert.equal(one(e, 'pgferry_migration_phase', { migration: 'broken', phase: 'failed' }), 1);
    assert.equal(one(e, 'pgferry_migration_error_info', { migration: 'broken', code: failed.errorCode }), 1);
    assert.equal(one(e, 'pgferry_errors_total', { code: failed.errorCode, origin: 'migration' }), 1);
    await shop.client.deleteMigration('broken');
    const after = await scrape();
    assert.equal(pick(after, 'pgferry_migration_phase', { migration: 'broken' }).length, 0, 'a deleted migration leaves no series behind');
  });

  it('after the cutover: its state, outage with its parts, write downtime and validation', async () => {
    const done = await shop.client.cutover({ id: 'shop', validation: 'counts', maxLagBytes: 4 * 1024 * 1024, timeoutMs: 120_000 });
    assert.equal(done.phase, 'completed');
    const e = await scrape();
    const mig = { migration: 'shop' };
    assert.equal(one(e, 'pgferry_migration_phase', { ...mig, phase: 'completed' }), 1);
    assert.equal(one(e, 'pgferry_cutover_state', { ...mig, state: 'completed' }), 1);
    assert.equal(sum(e, 'pgferry_cutover_state', mig), 1);
    const outageMs = done.cutover!.outageMs;
    assert.equal(one(e, 'pgferry_cutover_outage_milliseconds', mig), outageMs);
    assert.equal(one(e, 'pgferry_cutover_write_downtime_milliseconds', mig), outageMs, 'the older name of the same figure');
    assert.deepEqual(
      pick(e, 'pgferry_cutover_outage_part_milliseconds', mig).map((s) => s.labels.part),
      done.cutover!.outageParts.map((p) => p.part),
      'one series per part, in order',
    );
    assert.equal(sum(e, 'pgferry_cutover_outage_part_milliseconds', mig), outageMs, 'the parts add up to the outage');
    assert.equal(pick(e, 'pgferry_verification_state', mig).length, 0, 'no verification after the cutover');
    assert.equal(one(e, 'pgferry_cutover_validation_ok', mig), 1);
    assert.equal(one(e, 'pgferry_migration_info', { ...mig, active_endpoint: 'target' }), 1);
  });

  it('docs/metrics.md documents every metric and the Grafana dashboard uses only those names', () => {
    const root = join(__dirname, '..', '..');
    const doc = readFileSync(join(root, 'docs', 'metrics.md'), 'utf8');
    for (const n of METRIC_NAMES) assert.ok(doc.includes(`\`${n}\``), `docs/metrics.md documents ${n}`);
    const dashboard = JSON.parse(readFileSync(join(root, 'grafana', 'pgferry-dashboard.json'), 'utf8')) as {
      panels: Array<{ targets?: Array<{ expr: string }> }>;
      templating: { list: Array<{ definition?: string }> };
    };
    const exprs = [...dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)), ...dashboard.templating.list.map((v) => v.definition ?? '')].join(
      '\n',
    );
    const used = new Set(exprs.match(/pgferry_[a-z_]+/g) ?? []);
    for (const n of used) assert.ok((METRIC_NAMES as readonly string[]).includes(n), `the dashboard's ${n} is a real metric`);
    for (const n of METRIC_NAMES) assert.ok(used.has(n), `the dashboard shows ${n}`);
  });
});

describe('metrics: the schema changes followed, as the status gives them', function () {
  /** A syncing migration's status with only what the metrics read filled in. */
  const status = (id: string, schemaChanges: MigrationStatus['schemaChanges']): MigrationStatus =>
    ({
      id,
      phase: 'syncing',
      slotName: `pgferry_${id}`,
      publicationName: `pgferry_${id}`,
      sourceVersion: '14.0',
      targetVersion: '17.0',
      activeEndpoint: 'source',
      errorCode: '',
      paused: false,
      tables: [],
      tablesTotal: 0,
      tablesCopied: 0,
      progress: 1,
      etaSeconds: -1,
      changesApplied: 0,
      applyRate: 0,
      lagBytes: 0,
      lagSeconds: 0,
      retainedWalBytes: 0,
      fence: null,
      verification: null,
      schemaChanges,
    }) as unknown as MigrationStatus;

  it('counts the changes applied since the migration started and the tables kept, absent before the sync', async () => {
    const followed = {
      mode: 'follow' as const,
      applied: 7,
      lastAppliedAt: '2026-12-01T10:00:02.000Z',
      recent: [],
      keptTables: ['public.audit', 'public."Old Log"'],
      lastReconciledAt: '',
      lastError: '',
    };
    const metrics = new AgentMetrics(async () => [status('shop', followed), status('early', null)], { version: '0.0.0', defaultMetrics: false });
    const e = parseExposition(await metrics.render());
    assert.equal(e.type.get('pgferry_schema_changes_applied_total'), 'counter');
    assert.equal(one(e, 'pgferry_schema_changes_applied_total', { migration: 'shop' }), 7, "the status's count, which survives restarts");
    assert.equal(one(e, 'pgferry_schema_changes_kept_tables', { migration: 'shop' }), 2);
    assert.equal(pick(e, 'pgferry_schema_changes_applied_total', { migration: 'early' }).length, 0, 'no series before the sync');
    assert.equal(pick(e, 'pgferry_schema_changes_kept_tables', { migration: 'early' }).length, 0);
  });
});

describe('metrics: the way back (reverse sync and cutback), as the status gives them', function () {
  const base = {
    slotName: 'pgferry_shop',
    publicationName: 'pgferry_shop',
    sourceVersion: '14.0',
    targetVersion: '17.0',
    errorCode: '',
    paused: false,
    tables: [],
    tablesTotal: 0,
    tablesCopied: 0,
    progress: 1,
    etaSeconds: 0,
    changesApplied: 0,
    applyRate: 0,
    lagBytes: 0,
    lagSeconds: 0,
    retainedWalBytes: 0,
    fence: null,
    verification: null,
    schemaChanges: null,
  };
  const reverse = (state: 'streaming' | 'dropped', windowEndsAt: string) => ({
    state,
    slotName: 'pgferry_shop_reverse',
    publicationName: 'pgferry_shop_reverse',
    startLsn: '0/3000000',
    appliedLsn: '0/3000100',
    lagBytes: 4096,
    lagSeconds: 1.5,
    changesApplied: 12,
    windowEndsAt,
    droppedAt: state === 'dropped' ? '2026-12-04T10:00:00.000Z' : '',
    dropReason: state === 'dropped' ? 'the cutback completed' : '',
    lastError: '',
  });
  const cutback = {
    state: 'completed',
    fenceStartedAt: '2026-12-04T10:00:00.000Z',
    fenceEndedAt: '2026-12-04T10:00:00.420Z',
    writeDowntimeMs: 420,
    outageMs: 420,
    outageParts: [
      { part: 'drain', ms: 300 },
      { part: 'sequences', ms: 120 },
    ],
    tables: [],
    sequences: [],
    warnings: [],
    validation: 'changes',
    validationOk: true,
    fenceLsn: '0/3000100',
    completedAt: '2026-12-04T10:00:00.420Z',
    attempts: 1,
  };

  it('shows a streaming reverse sync with its lag and window end, and a completed cutback with its outage and parts', async () => {
    const windowEndsAt = '2026-12-07T10:00:00.000Z';
    const streaming = { ...base, id: 'shop', phase: 'completed', activeEndpoint: 'target', reverse: reverse('streaming', windowEndsAt) };
    const back = { ...base, id: 'back', phase: 'cut-back', activeEndpoint: 'source', reverse: reverse('dropped', windowEndsAt), cutback };
    const plain = { ...base, id: 'plain', phase: 'completed', activeEndpoint: 'target', reverse: null };
    const all = [streaming, back, plain] as unknown as MigrationStatus[];
    const metrics = new AgentMetrics(async () => all, { version: '0.0.0', defaultMetrics: false });
    const e = parseExposition(await metrics.render());

    assert.equal(one(e, 'pgferry_reverse_sync_streaming', { migration: 'shop' }), 1);
    assert.equal(one(e, 'pgferry_reverse_sync_lag_bytes', { migration: 'shop' }), 4096);
    assert.equal(one(e, 'pgferry_reverse_sync_lag_seconds', { migration: 'shop' }), 1.5);
    assert.equal(one(e, 'pgferry_reverse_sync_window_ends_timestamp_seconds', { migration: 'shop' }), Date.parse(windowEndsAt) / 1000);
    assert.equal(pick(e, 'pgferry_cutback_outage_milliseconds', { migration: 'shop' }).length, 0, 'no cutback yet');

    assert.equal(one(e, 'pgferry_reverse_sync_streaming', { migration: 'back' }), 0, 'dropped');
    assert.equal(pick(e, 'pgferry_reverse_sync_window_ends_timestamp_seconds', { migration: 'back' }).length, 0, 'no window once dropped');
    assert.equal(pick(e, 'pgferry_reverse_sync_lag_bytes', { migration: 'back' }).length, 0);
    assert.equal(one(e, 'pgferry_cutback_outage_milliseconds', { migration: 'back' }), 420);
    assert.equal(one(e, 'pgferry_cutback_outage_part_milliseconds', { migration: 'back', part: 'drain' }), 300);
    assert.equal(sum(e, 'pgferry_cutback_outage_part_milliseconds', { migration: 'back' }), 420, 'the parts add up to the outage');
    assert.equal(one(e, 'pgferry_migration_phase', { migration: 'back', phase: 'cut-back' }), 1);
    assert.equal(one(e, 'pgferry_migration_info', { migration: 'back', active_endpoint: 'source' }), 1);

    assert.equal(pick(e, 'pgferry_reverse_sync_streaming', { migration: 'plain' }).length, 0, 'absent without a rollback window');
  });
});
