/**
 * cutover — the short, fenced, verified switch from source to target.
 *
 *   waiting-for-lag → fencing → draining → sequences → validating → completed
 *
 * Input: a migration in phase `syncing` and the caller's options.
 * Output: the migration in phase `completed` with its report (fence times,
 * write downtime, fence LSN, per-table counts/checksums, sequences set), or —
 * on any failure before completion — the fence lifted, the source writable,
 * sync still running, and an error saying what failed and what to do.
 *
 * The fence (method `default_transaction_read_only`, the only one so far):
 *  1. `ALTER DATABASE <db> SET default_transaction_read_only = on` — every
 *     NEW session on the source database starts read-only, whatever its role;
 *  2. grace: transactions that already wrote (hold an xid) get `graceMs` to
 *     commit;
 *  3. every other client session of that database is terminated (in-flight
 *     transactions abort; applications reconnect into read-only sessions and
 *     their writes are refused with SQLSTATE 25006);
 *  4. the fence LSN is read after the terminated sessions are gone: every
 *     transaction that committed on the source is below it.
 * The fence state is saved in the agent's state file BEFORE the ALTER, so a
 * crash anywhere lets the restarted agent lift it (restoring the database's
 * previous setting exactly). After completion the fence stays: the source
 * must not take writes the target will never see. `RESET` it yourself when
 * you need the old database writable again.
 *
 * Write downtime = from the fence start until the target was ready (changes
 * drained and sequences set). Validation follows while the source is still
 * fenced; it is reported separately (`validationMs`).
 */
import type pg from 'pg';
import { connect, qi, qn, resolveEndpoint } from './conn';
import { PgferryError, asPgferryError, isPgferryError } from './errors';
import { formatLsn, parseLsn, type Lsn } from './lsn';
import { dataColumns, dataTables, selectTables, tableKey } from './catalog';
import { migratableTables } from './preflight';
import { listSequences } from './schema';
import { tableFingerprint, tableRowCount } from './checksum';
import { setMarker } from './target-state';
import type { MigrationRunner } from './migration';

export const FENCE_METHODS = ['default_transaction_read_only'] as const;
export type FenceMethod = (typeof FENCE_METHODS)[number];
export const VALIDATIONS = ['none', 'counts', 'checksums'] as const;
export type Validation = (typeof VALIDATIONS)[number];

export interface CutoverOptions {
  /** Wait until lag is at most this many bytes before fencing (default 1 MiB). */
  maxLagBytes?: number;
  /** …and at most this many seconds (default 5). */
  maxLagSeconds?: number;
  /** The whole cutover, in ms (default 300 000). */
  timeoutMs?: number;
  fenceMethod?: FenceMethod;
  /** Grace for transactions in flight at the fence, in ms (default 500). */
  graceMs?: number;
  skipSequences?: boolean;
  /** Default `checksums` (row counts + checksums). */
  validation?: Validation;
}

export interface TableValidation { table: string; sourceRows: number; targetRows: number; sourceChecksum: string; targetChecksum: string; match: boolean }

export interface CutoverReport {
  state: 'waiting-for-lag' | 'fencing' | 'draining' | 'sequences' | 'validating' | 'completed' | 'failed';
  startedAt: string;
  fenceStartedAt: string;
  fenceEndedAt: string;
  writeDowntimeMs: number;
  validationMs: number;
  fenceLsn: string;
  tables: TableValidation[];
  sequences: Array<{ sequence: string; value: number }>;
  warnings: string[];
  validation: Validation;
  validationOk: boolean;
  completedAt: string;
  error: string;
  attempts: number;
  /** Durable fence bookkeeping (to lift it after a crash). */
  fence?: { active: boolean; database: string; previous: string | null };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function newReport(prev: CutoverReport | undefined, validation: Validation): CutoverReport {
  return {
    state: 'waiting-for-lag', startedAt: new Date().toISOString(), fenceStartedAt: '', fenceEndedAt: '',
    writeDowntimeMs: 0, validationMs: 0, fenceLsn: '', tables: [], sequences: [], warnings: [],
    validation, validationOk: false, completedAt: '', error: '', attempts: (prev?.attempts ?? 0) + 1,
  };
}

/** Lift a fence left behind (agent crash during a cutover). Safe to call any time. */
export async function liftFence(runner: MigrationRunner, conn?: pg.Client): Promise<boolean> {
  const report = runner.rec.cutover as CutoverReport | undefined;
  const fence = report?.fence;
  if (!fence?.active) return false;
  // A fenced database starts every new session read-only, this one included.
  const c = conn ?? await connect('source', runner.spec.source, { applicationName: `pgferry cutover ${runner.rec.id}`, extraOptions: '-c default_transaction_read_only=off' });
  try {
    if (fence.previous === null) {
      await c.query(`ALTER DATABASE ${qi(fence.database)} RESET default_transaction_read_only`);
    } else {
      await c.query(`ALTER DATABASE ${qi(fence.database)} SET default_transaction_read_only = ${fence.previous === 'on' ? 'on' : 'off'}`);
    }
    fence.active = false;
    runner.save();
    return true;
  } finally {
    if (!conn) await c.end().catch(() => undefined);
  }
}

/**
 * Run the cutover. Resolves with the completed report; rejects with
 * CUTOVER_FAILED / CUTOVER_TIMEOUT / CUTOVER_CANCELLED after lifting the fence.
 */
export async function runCutover(runner: MigrationRunner, opts: CutoverOptions, signal: AbortSignal): Promise<CutoverReport> {
  const maxLagBytes = opts.maxLagBytes ?? 1024 * 1024;
  const maxLagSeconds = opts.maxLagSeconds ?? 5;
  const timeoutMs = opts.timeoutMs ?? 300_000;
  const graceMs = opts.graceMs ?? 500;
  const validation = opts.validation ?? 'checksums';
  const deadline = Date.now() + timeoutMs;
  const report = newReport(runner.rec.cutover as CutoverReport | undefined, validation);
  const log = (level: 'info' | 'warn' | 'error', msg: string) => runner.logFn(level, msg, { migration: runner.rec.id, step: report.state });
  const setState = (s: CutoverReport['state']) => { report.state = s; runner.rec.cutover = report as unknown as Record<string, unknown>; runner.save(); log('info', `cutover: ${s}`); };
  const remaining = () => deadline - Date.now();
  const timedOut = (what: string) => new PgferryError('CUTOVER_TIMEOUT', `The cutover timed out after ${timeoutMs} ms while ${what}.`,
    'Retry when the write load is lower, or raise `cutoverOptions.timeoutMs` / `maxLagBytes`.');

  runner.rec.phase = 'cutting-over';
  setState('waiting-for-lag');
  const database = resolveEndpoint(runner.spec.source).database;
  let src: pg.Client | undefined;
  let tgt: pg.Client | undefined;
  try {
    src = await connect('source', runner.spec.source, { applicationName: `pgferry cutover ${runner.rec.id}`, extraOptions: '-c default_transaction_read_only=off' });
    tgt = await connect('target', runner.spec.target, { applicationName: `pgferry cutover ${runner.rec.id}` });
    await checkFencePrivileges(src, database);
    const prepared = await src.query('SELECT gid FROM pg_prepared_xacts WHERE database = current_database()');
    if (prepared.rows.length) {
      throw new PgferryError('CUTOVER_FAILED', `The source database has ${prepared.rows.length} prepared transaction(s) (${prepared.rows.map((r) => r.gid).join(', ')}) that could commit after the fence.`,
        'COMMIT PREPARED or ROLLBACK PREPARED them, then retry the cutover.');
    }

    // 1. Lag under the thresholds, without fencing (cancellable).
    for (;;) {
      if (signal.aborted) throw new PgferryError('CUTOVER_CANCELLED', 'The cutover was cancelled while waiting for lag; nothing was fenced.', 'Start the cutover again when ready.');
      if ((runner.rec.phase as string) === 'failed') throw new PgferryError('CUTOVER_FAILED', `Sync failed while waiting for lag: ${runner.rec.error?.message}`, runner.rec.error?.remedy ?? '');
      const s = await runner.status();
      if (runner.sync && s.lagBytes <= maxLagBytes && s.lagSeconds <= maxLagSeconds) break;
      if (remaining() <= 0) throw timedOut(`waiting for lag (now ${s.lagBytes} bytes, ${s.lagSeconds.toFixed(1)} s)`);
      await sleep(100);
    }

    // 2. Fence. Saved first so that a crash after the ALTER can lift it.
    setState('fencing');
    const prev = await src.query(`SELECT (SELECT split_part(x, '=', 2) FROM unnest(s.setconfig) x WHERE x LIKE 'default\\_transaction\\_read\\_only=%') AS v
      FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = $1 AND s.setrole = 0`, [database]);
    report.fence = { active: true, database, previous: prev.rows[0]?.v ?? null };
    runner.save();
    const fenceStart = Date.now();
    report.fenceStartedAt = new Date(fenceStart).toISOString();
    await src.query(`ALTER DATABASE ${qi(database)} SET default_transaction_read_only = on`);
    // Grace for transactions that already wrote.
    const graceEnd = Date.now() + graceMs;
    while (Date.now() < graceEnd) {
      const w = await src.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
        AND backend_type = 'client backend' AND backend_xid IS NOT NULL AND coalesce(application_name, '') NOT LIKE 'pgferry%'`);
      if (w.rows[0].n === 0) break;
      await sleep(20);
    }
    const killed = await src.query(`SELECT pid, pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
        AND backend_type = 'client backend' AND coalesce(application_name, '') NOT LIKE 'pgferry%'`);
    const pids = killed.rows.map((r) => r.pid as number);
    while (pids.length) {
      const left = await src.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ANY($1::int[])', [pids]);
      if (left.rows[0].n === 0) break;
      if (remaining() <= 0) throw timedOut('waiting for terminated sessions to exit');
      await sleep(10);
    }
    // The INSERT position, not pg_current_wal_lsn() (the write position): with
    // synchronous_commit=off an acknowledged commit can sit above the latter.
    const fenceLsn: Lsn = parseLsn((await src.query('SELECT pg_current_wal_insert_lsn()::text AS l')).rows[0].l);
    report.fenceLsn = formatLsn(fenceLsn);
    log('info', `cutover: fenced at ${report.fenceLsn}; ended ${pids.length} session(s)`);

    // 3. Drain: the target has committed everything below the fence.
    setState('draining');
    for (;;) {
      if ((runner.rec.phase as string) === 'failed') throw new PgferryError('CUTOVER_FAILED', `Sync failed during the drain: ${runner.rec.error?.message}`, runner.rec.error?.remedy ?? '');
      const s = runner.sync;
      // Everything below the fence committed on the target: either applied
      // past it, or decoded past it (at a transaction boundary) with nothing
      // pending — a batch that failed stays pending, and a new session
      // reports only what it decoded itself (sync.ts).
      if (s && s.pendingChanges === 0 && (s.appliedLsn >= fenceLsn || s.decodedLsn >= fenceLsn)) break;
      if (remaining() <= 0) throw timedOut(`draining to the fence LSN ${report.fenceLsn} (applied ${s ? formatLsn(s.appliedLsn) : 'nothing yet'})`);
      await sleep(5);
    }

    // The apply commits asynchronously; make everything it committed durable
    // before the target takes over (a synchronous commit flushes all WAL before it).
    await tgt.query('SET synchronous_commit = on');
    await setMarker(tgt, runner.rec.id, 'cutover-drained', report.fenceLsn);

    // 4. Sequences: after the last change, so the first insert on the target cannot collide.
    setState('sequences');
    const sel = await selectTables(src, runner.spec.tables);
    const tables = migratableTables(sel.tables);
    if (!opts.skipSequences) {
      const seqs = await listSequences(src, tables);
      for (const sq of seqs) {
        const v = await src.query(`SELECT last_value::text AS v, is_called FROM ${qn(sq.schema, sq.name)}`);
        const value = v.rows[0].v as string;
        await tgt.query('SELECT setval($1::regclass, $2::bigint, $3)', [qn(sq.schema, sq.name), value, v.rows[0].is_called]);
        report.sequences.push({ sequence: qn(sq.schema, sq.name), value: Number(value) });
      }
    }
    const ready = Date.now();
    report.writeDowntimeMs = ready - fenceStart;

    // 5. Validation (source still fenced, so both sides are still).
    setState('validating');
    const v0 = Date.now();
    report.validationOk = true;
    if (validation !== 'none') {
      for (const t of dataTables(tables)) {
        const key = tableKey(t);
        if (validation === 'counts') {
          const [a, b] = await Promise.all([tableRowCount(src, t.schema, t.name), tableRowCount(tgt, t.schema, t.name)]);
          report.tables.push({ table: key, sourceRows: a, targetRows: b, sourceChecksum: '', targetChecksum: '', match: a === b });
        } else {
          const cols = dataColumns(t).map((c) => c.name);
          const [a, b] = await Promise.all([tableFingerprint(src, t.schema, t.name, cols), tableFingerprint(tgt, t.schema, t.name, cols)]);
          report.tables.push({ table: key, sourceRows: a.rows, targetRows: b.rows, sourceChecksum: a.checksum, targetChecksum: b.checksum, match: a.rows === b.rows && a.checksum === b.checksum });
        }
      }
      const bad = report.tables.filter((x) => !x.match);
      if (bad.length) {
        report.validationOk = false;
        throw new PgferryError('CUTOVER_FAILED', `Validation found ${bad.length} table(s) that differ between source and target: ${bad.map((x) => `${x.table} (source ${x.sourceRows} rows, target ${x.targetRows})`).join(', ')}.`,
          'Something changed the target behind pgferry\'s back, or rows were lost. Inspect those tables; the source stays writable and sync continues. Re-create the migration to reload them.');
      }
    }
    report.validationMs = Date.now() - v0;

    // 6. Completed: stop streaming; the slot stays until the migration is deleted.
    report.fenceEndedAt = new Date(ready).toISOString();
    report.completedAt = new Date().toISOString();
    report.state = 'completed';
    runner.rec.phase = 'completed';
    runner.rec.cutover = report as unknown as Record<string, unknown>;
    runner.save();
    await runner.stopSync();
    log('info', `cutover completed: write downtime ${report.writeDowntimeMs} ms, fence LSN ${report.fenceLsn}`);
    return report;
  } catch (e) {
    const err = isPgferryError(e) ? e : asPgferryError(e, 'CUTOVER_FAILED', `cutover step '${report.state}'`);
    report.error = err.detail;
    const step = report.state;
    report.state = 'failed';
    try {
      if (await liftFence(runner, src)) log('warn', 'cutover failed: the fence was lifted, the source accepts writes again');
    } catch (liftErr) {
      log('error', `cutover failed AND lifting the fence failed: ${(liftErr as Error).message}`);
      report.warnings.push(`The source database '${database}' may still be read-only: run ALTER DATABASE ${qi(database)} RESET default_transaction_read_only;`);
    }
    if (runner.rec.phase === 'cutting-over') runner.rec.phase = 'syncing';
    runner.rec.cutover = report as unknown as Record<string, unknown>;
    runner.save();
    if (err.code === 'CUTOVER_TIMEOUT' || err.code === 'CUTOVER_CANCELLED' || err.code === 'CUTOVER_FAILED') throw err;
    throw new PgferryError('CUTOVER_FAILED', `The cutover failed while ${step}: ${err.message}`, err.remedy || 'Fix the cause and run the cutover again; the source accepts writes and sync continues.', { cause: e });
  } finally {
    await src?.end().catch(() => undefined);
    await tgt?.end().catch(() => undefined);
  }
}

async function checkFencePrivileges(src: pg.Client, database: string): Promise<void> {
  const r = await src.query(`SELECT r.rolsuper AS su,
      pg_has_role(current_user, d.datdba, 'USAGE') AS owner,
      pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') AS signal
    FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = $1`, [database]);
  const row = r.rows[0];
  if (!row) return;
  if (!row.su && !row.owner) {
    throw new PgferryError('INSUFFICIENT_PRIVILEGE', `The source role cannot fence writers: it does not own database '${database}' (ALTER DATABASE … SET default_transaction_read_only needs that).`,
      `Connect the migration's source as the database owner or a superuser, or run ALTER DATABASE ${qi(database)} OWNER TO <source user>;`);
  }
  if (!row.su && !row.signal) {
    throw new PgferryError('INSUFFICIENT_PRIVILEGE', 'The source role cannot end the sessions still writing at the fence.',
      'GRANT pg_signal_backend TO <source user>; (on Azure: the server admin has it).');
  }
}
