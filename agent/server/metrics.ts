/**
 * metrics — the agent's Prometheus endpoint (`--metrics-listen HOST:PORT`,
 * off by default), plain HTTP on node:http with a prom-client registry.
 *
 * Input: the migrations' status (the same `MigrationStatus` the gRPC API
 * returns), read once per scrape so that every gauge of one scrape describes
 * the same instant; plus counters the agent feeds as things happen (errors by
 * code, RPCs by method and status). Output: the text exposition format on
 * `GET /metrics`.
 *
 * Every metric is documented in docs/metrics.md and used by
 * grafana/pgferry-dashboard.json; `METRIC_NAMES` is the list both are checked
 * against. Labels never hold secrets: migration ids, table names, slot names,
 * phases and error codes only.
 */
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { PHASES, type CutoverReport, type VerificationStatus } from '../engine/state';
import { parseListenAddress } from './auth';
import type { LogFn } from '../engine/log-fn';
import type { MigrationStatus } from '../engine/migration';
import type { ReverseStatus } from '../engine/migration-status';

/** The states a cutover report goes through (agent/engine/cutover.ts). */
export const CUTOVER_STATES = [
  'waiting-for-lag',
  'waiting-for-verification',
  'fencing',
  'draining',
  'sequences',
  'large-objects',
  'schema',
  'validating',
  'completed',
  'failed',
] as const satisfies readonly CutoverReport['state'][];

/** The continuous verification's states (agent/engine/verify.ts). */
export const VERIFICATION_STATES = ['off', 'waiting', 'verifying', 'verified', 'paused'] as const satisfies readonly VerificationStatus['state'][];

// Both lists are complete (a state the engine gains and the list lacks fails the build).
const _everyCutoverState: [Exclude<CutoverReport['state'], (typeof CUTOVER_STATES)[number]>] extends [never] ? true : never = true;
const _everyVerificationState: [Exclude<VerificationStatus['state'], (typeof VERIFICATION_STATES)[number]>] extends [never] ? true : never = true;

/** Where an error counted in `pgferry_errors_total` came from. */
export const ERROR_ORIGINS = ['rpc', 'migration'] as const;
export type ErrorOrigin = (typeof ERROR_ORIGINS)[number];

/** Every pgferry metric (process and Node.js runtime metrics come on top, with their standard names). */
export const METRIC_NAMES = [
  'pgferry_build_info',
  'pgferry_migrations',
  'pgferry_migration_phase',
  'pgferry_migration_info',
  'pgferry_migration_error_info',
  'pgferry_migration_paused',
  'pgferry_tables_total',
  'pgferry_tables_copied',
  'pgferry_copy_rows_total',
  'pgferry_copy_bytes_total',
  'pgferry_copy_rows_estimated',
  'pgferry_copy_bytes_estimated',
  'pgferry_load_progress_ratio',
  'pgferry_load_eta_seconds',
  'pgferry_apply_changes_total',
  'pgferry_apply_changes_per_second',
  'pgferry_lag_bytes',
  'pgferry_lag_seconds',
  'pgferry_slot_retained_wal_bytes',
  'pgferry_verification_state',
  'pgferry_verification_tables_total',
  'pgferry_verification_tables_verified',
  'pgferry_verification_rows_verified',
  'pgferry_verification_keys_changed',
  'pgferry_verification_rows_repaired_total',
  'pgferry_verification_oldest_verified_timestamp_seconds',
  'pgferry_schema_changes_applied_total',
  'pgferry_schema_changes_kept_tables',
  'pgferry_cutover_state',
  'pgferry_cutover_outage_milliseconds',
  'pgferry_cutover_outage_part_milliseconds',
  'pgferry_cutover_write_downtime_milliseconds',
  'pgferry_cutover_validation_ok',
  'pgferry_source_fence_up',
  'pgferry_source_fence_lift_pending',
  'pgferry_reverse_sync_streaming',
  'pgferry_reverse_sync_lag_bytes',
  'pgferry_reverse_sync_lag_seconds',
  'pgferry_reverse_sync_window_ends_timestamp_seconds',
  'pgferry_cutback_outage_milliseconds',
  'pgferry_cutback_outage_part_milliseconds',
  'pgferry_errors_total',
  'pgferry_rpc_calls_total',
  'pgferry_tls_certificate_expiry_timestamp_seconds',
] as const;
export type MetricName = (typeof METRIC_NAMES)[number];

/** The gauges of the cutover, the source's fence, the reverse sync and the cutback. */
function declareCutoverGauges(gauge: (name: MetricName, help: string, labelNames: string[]) => void): void {
  gauge('pgferry_cutover_state', '1 for the state the last cutover is in, 0 for the others (absent before a cutover).', ['migration', 'state']);
  gauge(
    'pgferry_cutover_outage_milliseconds',
    'Application outage of the last completed cutover: from the fence until the target was ready for the application, ms.',
    ['migration'],
  );
  gauge('pgferry_cutover_outage_part_milliseconds', "The parts of the last completed cutover's outage, ms (they add up to the outage).", ['migration', 'part']);
  gauge(
    'pgferry_cutover_write_downtime_milliseconds',
    'Write downtime of the last completed cutover, ms: the same figure as pgferry_cutover_outage_milliseconds (its older name).',
    ['migration'],
  );
  gauge(
    'pgferry_source_fence_up',
    '1 while the write fence is up on the source database (during a cutover, lift pending, or kept after a completed one), 0 otherwise.',
    ['migration'],
  );
  gauge(
    'pgferry_source_fence_lift_pending',
    '1 while a cutover that did not complete left the fence up and its lift is not verified yet (the source refuses writes; the agent keeps retrying), 0 otherwise.',
    ['migration'],
  );
  gauge(
    'pgferry_reverse_sync_streaming',
    "1 while the reverse sync streams the target's changes back into the old source (rollbackWindow), 0 while it is prepared, failed or dropped (absent without one).",
    ['migration'],
  );
  gauge('pgferry_reverse_sync_lag_bytes', "The target's WAL not yet applied to the old source by the reverse sync, bytes (absent without one).", ['migration']);
  gauge('pgferry_reverse_sync_lag_seconds', 'How far the old source is behind the target, seconds (absent without a reverse sync).', ['migration']);
  gauge(
    'pgferry_reverse_sync_window_ends_timestamp_seconds',
    'When the rollback window ends and the reverse slot and publication on the target are dropped, Unix seconds (absent once dropped).',
    ['migration'],
  );
  gauge(
    'pgferry_cutback_outage_milliseconds',
    'Application outage of the last completed cutback: from the fence on the target until the old source was ready for the application, ms.',
    ['migration'],
  );
  gauge('pgferry_cutback_outage_part_milliseconds', "The parts of the last completed cutback's outage, ms (they add up to the outage).", ['migration', 'part']);
  gauge('pgferry_cutover_validation_ok', '1 when the cutover validation matched, 0 when it did not (absent until validated).', ['migration']);
}

export interface MetricsOptions {
  /** The agent's version, for `pgferry_build_info`. */
  version: string;
  /** Expiry of the agent's TLS certificate; absent without TLS. */
  tlsNotAfter?: Date;
  /** Also export the standard `process_*` and `nodejs_*` metrics. Default: true. */
  defaultMetrics?: boolean;
}

/** The metrics of one agent. `render()` is what a scrape returns. */
export class AgentMetrics {
  readonly registry = new Registry();
  private readonly g: Record<string, Gauge<string>> = {};
  private readonly c: Record<string, Counter<string>> = {};
  private readonly errors: Counter<string>;
  private readonly rpcs: Counter<string>;

  constructor(
    private readonly source: () => Promise<MigrationStatus[]>,
    opts: MetricsOptions,
  ) {
    const r = this.registry;
    const gauge = (name: MetricName, help: string, labelNames: string[] = []) => {
      this.g[name] = new Gauge({ name, help, labelNames, registers: [r] });
    };
    const fromStatus = (name: MetricName, help: string, labelNames: string[]) => {
      this.c[name] = new Counter({ name, help, labelNames, registers: [r] });
    };
    const build = new Gauge({
      name: 'pgferry_build_info',
      help: 'Always 1; the labels say which pgferry and Node.js run.',
      labelNames: ['version', 'node_version'],
      registers: [r],
    });
    build.set({ version: opts.version, node_version: process.version }, 1);
    gauge('pgferry_migrations', 'Migrations the agent knows, by phase.', ['phase']);
    gauge('pgferry_migration_phase', '1 for the phase the migration is in, 0 for the others.', ['migration', 'phase']);
    gauge('pgferry_migration_info', 'Always 1; the labels describe the migration.', [
      'migration',
      'slot',
      'publication',
      'source_version',
      'target_version',
      'active_endpoint',
    ]);
    gauge('pgferry_migration_error_info', '1 while the migration holds an error (phase failed); `code` is the error code.', ['migration', 'code']);
    gauge('pgferry_migration_paused', '1 while an operator has paused the migration (pgferry pause): nothing is applied and the slot keeps WAL; 0 otherwise.', [
      'migration',
    ]);
    gauge('pgferry_tables_total', 'Tables the migration copies.', ['migration']);
    gauge('pgferry_tables_copied', 'Tables whose initial copy finished.', ['migration']);
    fromStatus('pgferry_copy_rows_total', 'Rows copied by the initial load, per table (this agent process).', ['migration', 'table']);
    fromStatus('pgferry_copy_bytes_total', 'Bytes copied by the initial load, per table (this agent process).', ['migration', 'table']);
    gauge('pgferry_copy_rows_estimated', "Rows the initial load expects per table (the source's estimate, at least the rows copied).", ['migration', 'table']);
    gauge('pgferry_copy_bytes_estimated', 'Bytes the initial load expects per table (on-disk size of the source table).', ['migration', 'table']);
    gauge('pgferry_load_progress_ratio', 'Progress of the initial load, 0..1 (1 once the load is done).', ['migration']);
    gauge('pgferry_load_eta_seconds', 'Estimated seconds until the initial load is done (absent while unknown).', ['migration']);
    fromStatus('pgferry_apply_changes_total', 'Source row changes applied to the target by the change stream (this agent process).', ['migration']);
    gauge('pgferry_apply_changes_per_second', 'Recent apply rate of the change stream, row changes per second.', ['migration']);
    gauge('pgferry_lag_bytes', "WAL of the migration's database not yet applied to the target, bytes.", ['migration']);
    gauge('pgferry_lag_seconds', 'How far the target is behind the source, seconds (0 when caught up).', ['migration']);
    gauge('pgferry_slot_retained_wal_bytes', "WAL the source keeps for the migration's replication slot, bytes.", ['migration', 'slot']);
    gauge('pgferry_verification_state', '1 for the state the continuous verification is in, 0 for the others (absent while it does not run).', [
      'migration',
      'state',
    ]);
    gauge('pgferry_verification_tables_total', 'Tables the continuous verification covers (the migrated tables that hold data).', ['migration']);
    gauge('pgferry_verification_tables_verified', 'Tables verified against the source whose verification still holds.', ['migration']);
    gauge('pgferry_verification_rows_verified', 'Rows of the verified tables, as of their last pass.', ['migration']);
    gauge('pgferry_verification_keys_changed', "Rows applied since their table's verification: what the cutover checks again inside the fence.", ['migration']);
    fromStatus('pgferry_verification_rows_repaired_total', 'Rows the verification found different on the target and copied again (this run of the sync).', [
      'migration',
    ]);
    gauge(
      'pgferry_verification_oldest_verified_timestamp_seconds',
      'Every table was verified at or after this time, Unix seconds (absent until every table was).',
      ['migration'],
    );
    fromStatus(
      'pgferry_schema_changes_applied_total',
      'Source schema changes applied on the target during the sync (since the migration started: the count survives restarts; absent before the sync).',
      ['migration'],
    );
    gauge(
      'pgferry_schema_changes_kept_tables',
      'Tables dropped on the source during the sync whose target copies were kept (drop them by hand once unneeded).',
      ['migration'],
    );
    declareCutoverGauges(gauge);
    this.errors = new Counter({
      name: 'pgferry_errors_total',
      help: 'Errors by pgferry code: failed RPCs (origin rpc) and migration failures (origin migration).',
      labelNames: ['code', 'origin'],
      registers: [r],
    });
    this.rpcs = new Counter({
      name: 'pgferry_rpc_calls_total',
      help: 'Finished gRPC calls by method and gRPC status.',
      labelNames: ['method', 'status'],
      registers: [r],
    });
    if (opts.tlsNotAfter) {
      const tls = new Gauge({
        name: 'pgferry_tls_certificate_expiry_timestamp_seconds',
        help: "When the agent's TLS certificate expires, Unix seconds (renew and restart before).",
        registers: [r],
      });
      tls.set(Math.floor(opts.tlsNotAfter.getTime() / 1000));
    }
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: r });
  }

  /** Count an error by its pgferry code. */
  recordError(code: string, origin: ErrorOrigin): void {
    this.errors.inc({ code: code || 'INTERNAL', origin });
  }

  /** Count a finished RPC by method and gRPC status name (e.g. `OK`, `UNAUTHENTICATED`). */
  recordRpc(method: string, status: string): void {
    this.rpcs.inc({ method, status });
  }

  /** Refresh the status-derived metrics from one status read, then expose all. */
  async render(): Promise<string> {
    const all = await this.source();
    for (const m of Object.values(this.g)) m.reset();
    for (const m of Object.values(this.c)) m.reset();
    const g = this.g;
    const c = this.c;
    const byPhase = new Map<string, number>(PHASES.map((p) => [p, 0]));
    for (const s of all) {
      const migration = s.id;
      byPhase.set(s.phase, (byPhase.get(s.phase) ?? 0) + 1);
      for (const p of PHASES) g.pgferry_migration_phase.set({ migration, phase: p }, s.phase === p ? 1 : 0);
      g.pgferry_migration_info.set(
        {
          migration,
          slot: s.slotName,
          publication: s.publicationName,
          source_version: s.sourceVersion,
          target_version: s.targetVersion,
          active_endpoint: s.activeEndpoint,
        },
        1,
      );
      if (s.errorCode) g.pgferry_migration_error_info.set({ migration, code: s.errorCode }, 1);
      g.pgferry_migration_paused.set({ migration }, s.paused ? 1 : 0);
      g.pgferry_tables_total.set({ migration }, s.tablesTotal);
      g.pgferry_tables_copied.set({ migration }, s.tablesCopied);
      for (const t of s.tables) {
        const table = `${t.schema}.${t.name}`;
        c.pgferry_copy_rows_total.inc({ migration, table }, t.rowsCopied);
        c.pgferry_copy_bytes_total.inc({ migration, table }, t.bytesCopied);
        g.pgferry_copy_rows_estimated.set({ migration, table }, t.rowsEstimated);
        g.pgferry_copy_bytes_estimated.set({ migration, table }, t.bytesEstimated);
      }
      g.pgferry_load_progress_ratio.set({ migration }, s.progress);
      if (s.etaSeconds >= 0) g.pgferry_load_eta_seconds.set({ migration }, s.etaSeconds);
      c.pgferry_apply_changes_total.inc({ migration }, s.changesApplied);
      g.pgferry_apply_changes_per_second.set({ migration }, s.applyRate);
      g.pgferry_lag_bytes.set({ migration }, s.lagBytes);
      g.pgferry_lag_seconds.set({ migration }, s.lagSeconds);
      g.pgferry_slot_retained_wal_bytes.set({ migration, slot: s.slotName }, s.retainedWalBytes);
      const fence = s.fence?.state ?? 'none';
      g.pgferry_source_fence_up.set({ migration }, fence === 'none' ? 0 : 1);
      g.pgferry_source_fence_lift_pending.set({ migration }, fence === 'lift-pending' ? 1 : 0);
      // After the cutover the target is the database of record: nothing is left to verify.
      if (s.verification && s.phase !== 'completed' && s.phase !== 'deleted') this.renderVerification(migration, s.verification);
      if (s.schemaChanges) {
        c.pgferry_schema_changes_applied_total.inc({ migration }, s.schemaChanges.applied);
        g.pgferry_schema_changes_kept_tables.set({ migration }, s.schemaChanges.keptTables.length);
      }
      if (s.cutover?.state) this.renderCutover(migration, s.cutover);
      if (s.reverse) this.renderReverse(migration, s.reverse);
      if (s.cutback?.state === 'completed') {
        const outageMs = s.cutback.outageMs ?? s.cutback.writeDowntimeMs;
        if (typeof outageMs === 'number') g.pgferry_cutback_outage_milliseconds.set({ migration }, outageMs);
        for (const p of s.cutback.outageParts ?? []) g.pgferry_cutback_outage_part_milliseconds.inc({ migration, part: p.part }, p.ms);
      }
    }
    for (const [phase, n] of byPhase) g.pgferry_migrations.set({ phase }, n);
    return this.registry.metrics();
  }

  private renderVerification(migration: string, v: VerificationStatus): void {
    const g = this.g;
    for (const st of VERIFICATION_STATES) g.pgferry_verification_state.set({ migration, state: st }, v.state === st ? 1 : 0);
    g.pgferry_verification_tables_total.set({ migration }, v.tablesTotal);
    g.pgferry_verification_tables_verified.set({ migration }, v.tablesVerified);
    g.pgferry_verification_rows_verified.set({ migration }, v.rowsVerified);
    g.pgferry_verification_keys_changed.set({ migration }, v.keysChanged);
    this.c.pgferry_verification_rows_repaired_total.inc({ migration }, v.rowsRepaired);
    const oldest = Date.parse(v.oldestVerifiedAt);
    if (v.oldestVerifiedAt && Number.isFinite(oldest)) g.pgferry_verification_oldest_verified_timestamp_seconds.set({ migration }, oldest / 1000);
  }

  private renderReverse(migration: string, r: ReverseStatus): void {
    const g = this.g;
    g.pgferry_reverse_sync_streaming.set({ migration }, r.state === 'streaming' ? 1 : 0);
    if (r.state === 'dropped') return;
    g.pgferry_reverse_sync_lag_bytes.set({ migration }, r.lagBytes);
    g.pgferry_reverse_sync_lag_seconds.set({ migration }, r.lagSeconds);
    const ends = Date.parse(r.windowEndsAt);
    if (r.windowEndsAt && Number.isFinite(ends)) g.pgferry_reverse_sync_window_ends_timestamp_seconds.set({ migration }, ends / 1000);
  }

  private renderCutover(migration: string, cut: CutoverReport): void {
    const g = this.g;
    for (const st of CUTOVER_STATES) g.pgferry_cutover_state.set({ migration, state: st }, cut.state === st ? 1 : 0);
    if (cut.state !== 'completed') return;
    // A report written before the outage existed has only the write downtime (the same span then).
    const outageMs = cut.outageMs ?? cut.writeDowntimeMs;
    if (typeof outageMs === 'number') g.pgferry_cutover_outage_milliseconds.set({ migration }, outageMs);
    for (const p of cut.outageParts ?? []) g.pgferry_cutover_outage_part_milliseconds.inc({ migration, part: p.part }, p.ms);
    if (typeof cut.writeDowntimeMs === 'number') g.pgferry_cutover_write_downtime_milliseconds.set({ migration }, cut.writeDowntimeMs);
    if (cut.validation && cut.validation !== 'none') g.pgferry_cutover_validation_ok.set({ migration }, cut.validationOk ? 1 : 0);
  }
}

export interface MetricsServer {
  port: number;
  close(): Promise<void>;
}

/** Serve `GET /metrics` on `address` (HOST:PORT; port 0 picks a free one). */
export function serveMetrics(metrics: AgentMetrics, address: string, log: LogFn): Promise<MetricsServer> {
  const { host, port } = parseListenAddress(address, '--metrics-listen');
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('pgferry: metrics are at /metrics\n');
      return;
    }
    metrics.render().then(
      (text) => {
        res.writeHead(200, { 'content-type': metrics.registry.contentType });
        res.end(req.method === 'HEAD' ? undefined : text);
      },
      (e: unknown) => {
        log('warn', `metrics scrape failed: ${(e as Error)?.message ?? String(e)}`);
        res.writeHead(500, { 'content-type': 'text/plain' }).end('pgferry: the metrics could not be collected; see the agent log\n');
      },
    );
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const addr = server.address();
      resolve({
        port: typeof addr === 'object' && addr ? addr.port : port,
        close: () =>
          new Promise((r) => {
            server.close(() => r());
            server.closeAllConnections();
          }),
      });
    });
  });
}
