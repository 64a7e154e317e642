/**
 * copy — the initial load: a supervisor feeds a queue of copy tasks (whole
 * tables, or block ranges of large ones) to N workers that stream
 * `COPY … TO STDOUT` on the source into `COPY … FROM STDIN` on the target.
 *
 * Input: the tables to load, an exported snapshot, worker count.
 * Output: rows in the target tables and, committed in the SAME target
 * transaction as each task's rows, a copy_state row (table, part, snapshot
 * LSN; target-state.ts). A rerun skips tables whose every part is recorded
 * ("already copied on a previous run") and truncates and re-copies partly
 * copied ones.
 *
 * Copy guards 1–4 (one snapshot for every worker, bounded memory, binary COPY
 * only between equal built-in types, TID ranges only where they can be scanned)
 * are described in docs/architecture.md ("The guards").
 */
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { connect, qi, qn } from './conn';
import { dataColumns, tableKey, type TableInfo } from './catalog';
import { PgferryError, asPgferryError } from './errors';
import type { Lsn } from './lsn';
import { forgetCopiedTables, readCopyState, recordCopiedPart } from './target-state';
import type { Endpoint } from './spec';

export type TableCopyPhase = 'queued' | 'copying' | 'copied';

export interface TableCopyProgress {
  schema: string;
  name: string;
  phase: TableCopyPhase;
  partsDone: number;
  parts: number;
  rowsCopied: number;
  bytesCopied: number;
  rowsEstimated: number;
  bytesEstimated: number;
  /** LSN of the snapshot the table was copied in. */
  snapshotLsn?: Lsn;
}

export interface CopyTask {
  table: TableInfo;
  part: number;
  parts: number;
  /** First block (inclusive) and last (exclusive, undefined = to the end). */
  fromBlock?: number;
  toBlock?: number;
}

export interface LoadOptions {
  migrationId: string;
  source: Endpoint;
  target: Endpoint;
  /** Data tables (ordinary tables and leaf partitions). */
  tables: TableInfo[];
  snapshotName: string;
  snapshotLsn: Lsn;
  /** Called once every worker holds the snapshot. */
  onSnapshotImported: () => Promise<void>;
  workers: number;
  splitBytes: number;
  sourceMajor: number;
  progress: Map<string, TableCopyProgress>;
  signal: AbortSignal;
  log: (level: 'info' | 'warn' | 'error', msg: string, fields?: object) => void;
}

export interface CopyPlan {
  /** Tables already fully copied on a previous run, with their snapshot LSN. */
  done: Map<string, Lsn>;
  /** Tables to copy now. */
  todo: TableInfo[];
}

/**
 * Read what earlier runs committed and make partly copied tables empty again
 * (their rows came from a snapshot that no longer exists).
 */
export async function planLoad(target: pg.Client, migrationId: string, tables: TableInfo[], log: LoadOptions['log']): Promise<CopyPlan> {
  const state = await readCopyState(target, migrationId);
  const done = new Map<string, Lsn>();
  const todo: TableInfo[] = [];
  for (const t of tables) {
    const key = tableKey(t);
    const s = state.get(key);
    if (s && s.partsDone === s.parts) {
      log('info', `Skipping table ${key}, already copied on a previous run`, { table: key });
      done.set(key, s.firstSnapshotLsn);
      continue;
    }
    if (s) {
      log('warn', `Table ${key} was partly copied when the previous run stopped; emptying it to copy it again`, { table: key });
      await resetTables(target, migrationId, [t]);
    }
    todo.push(t);
  }
  return { done, todo };
}

/**
 * Empty `tables` on the target and forget their copied parts, in one
 * transaction, so that they are copied again from their start.
 */
export async function resetTables(target: pg.Client, migrationId: string, tables: TableInfo[]): Promise<void> {
  await target.query('BEGIN');
  await forgetCopiedTables(target, migrationId, tables.map(tableKey));
  for (const t of tables) await target.query(`TRUNCATE ONLY ${tableKey(t)}`);
  await target.query('COMMIT');
}

/** Split tables into tasks, largest first. */
export async function planTasks(src: pg.Client, tables: TableInfo[], workers: number, splitBytes: number, sourceMajor: number): Promise<CopyTask[]> {
  const tasks: CopyTask[] = [];
  const sorted = [...tables].sort((a, b) => b.bytes - a.bytes);
  for (const t of sorted) {
    const parts = sourceMajor >= 14 && t.bytes > splitBytes ? Math.min(Math.ceil(t.bytes / splitBytes), Math.max(workers * 4, 4), 64) : 1;
    if (parts === 1) {
      tasks.push({ table: t, part: 0, parts: 1 });
      continue;
    }
    const r = await src.query(`SELECT (pg_relation_size($1::oid) / current_setting('block_size')::int)::bigint AS blocks`, [t.oid]);
    const blocks = Number(r.rows[0].blocks);
    const step = Math.ceil(blocks / parts);
    for (let i = 0; i < parts; i++) {
      tasks.push({ table: t, part: i, parts, fromBlock: i * step, toBlock: i === parts - 1 ? undefined : (i + 1) * step });
    }
  }
  return tasks;
}

/** Run the load. Resolves when every task is committed on the target. */
export async function runLoad(opts: LoadOptions, tasks: CopyTask[]): Promise<void> {
  const queue = [...tasks];
  const n = Math.max(1, Math.min(opts.workers, queue.length));
  const workers: Array<{ src: pg.Client; tgt: pg.Client }> = [];
  let failed: unknown;
  try {
    // Copy guard 1: all workers import the snapshot before it is released.
    for (let i = 0; i < n; i++) {
      const src = await connect('source', opts.source, { applicationName: `pgferry copy ${opts.migrationId}` });
      const tgt = await connect('target', opts.target, { applicationName: `pgferry copy ${opts.migrationId}`, extraOptions: '-c synchronous_commit=off' });
      workers.push({ src, tgt });
      await src.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      await src.query(`SET TRANSACTION SNAPSHOT '${opts.snapshotName.replace(/'/g, "''")}'`);
      // Existing target schemas may carry foreign keys and triggers; loading
      // in any table order needs them quiet, as PostgreSQL's own apply does.
      await tgt.query('SET session_replication_role = replica').catch(() => undefined);
    }
    await opts.onSnapshotImported();
    await Promise.all(
      workers.map(async (w, i) => {
        for (;;) {
          if (opts.signal.aborted || failed) return;
          const task = queue.shift();
          if (!task) return;
          try {
            await copyTask(w.src, w.tgt, task, opts);
          } catch (e) {
            failed ??= e;
            opts.log('error', `copy worker ${i} failed on ${tableKey(task.table)}`, { error: (e as Error).message });
            return;
          }
        }
      }),
    );
    if (failed) throw failed;
    if (opts.signal.aborted) throw new PgferryError('INTERNAL', 'The load was stopped.', '');
  } catch (e) {
    throw asPgferryError(e, 'COPY_FAILED', 'initial load');
  } finally {
    // STOP: every worker's connections are closed, whatever happened. No
    // ROLLBACK first: a COPY … TO STDOUT cut off by a stop (pause, shutdown)
    // leaves its connection mid-COPY, pg-copy-streams cannot end it, and a
    // query sent behind it would wait forever. Closing the connection ends
    // the read-only snapshot transaction just as well.
    await Promise.all(
      workers.map(async (w) => {
        await w.src.end().catch(() => undefined);
        await w.tgt.end().catch(() => undefined);
      }),
    );
  }
}

/** Every copied column of `t` has the source's type on the target (built-in types have the same OIDs everywhere). */
async function sameTypesOnTarget(tgt: pg.Client, t: TableInfo): Promise<boolean> {
  const r = await tgt.query(
    `SELECT attname AS name, atttypid::int AS type FROM pg_catalog.pg_attribute
      WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`,
    [qn(t.schema, t.name)],
  );
  const types = new Map(r.rows.map((row) => [row.name as string, row.type as number]));
  return dataColumns(t).every((c) => types.get(c.name) === c.typeOid);
}

async function copyTask(src: pg.Client, tgt: pg.Client, task: CopyTask, opts: LoadOptions): Promise<void> {
  const t = task.table;
  const key = tableKey(t);
  const prog = opts.progress.get(key)!;
  prog.phase = 'copying';
  const cols = dataColumns(t)
    .map((c) => qi(c.name))
    .join(', ');
  // Copy guard 3: binary only when every column type is built in and the target's is the same.
  const format = t.columns.some((c) => c.userType) || !(await sameTypesOnTarget(tgt, t)) ? 'text' : 'binary';
  const where: string[] = [];
  if (task.fromBlock !== undefined && task.fromBlock > 0) where.push(`ctid >= '(${task.fromBlock},0)'::tid`);
  if (task.toBlock !== undefined) where.push(`ctid < '(${task.toBlock},0)'::tid`);
  // A table without data columns (none declared, all dropped or generated) still has rows: it is
  // copied as a query (`SELECT FROM`, no column), into COPY's default list, its non-generated columns: none.
  const source =
    where.length || !cols
      ? `(SELECT ${cols} FROM ONLY ${qn(t.schema, t.name)}${where.length ? ` WHERE ${where.join(' AND ')}` : ''})`
      : `${qn(t.schema, t.name)} (${cols})`;
  const started = Date.now();
  const bytesBefore = prog.bytesCopied;
  await tgt.query('BEGIN');
  try {
    const out = src.query(copyTo(`COPY ${source} TO STDOUT WITH (FORMAT ${format})`));
    const into = tgt.query(copyFrom(`COPY ${qn(t.schema, t.name)}${cols ? ` (${cols})` : ''} FROM STDIN WITH (FORMAT ${format})`));
    // Count bytes with a listener, not a Transform: one stream hop less per chunk.
    out.on('data', (chunk: Buffer) => {
      prog.bytesCopied += chunk.length;
    });
    await pipeline(out, into, { signal: opts.signal });
    const rows = Number((into as unknown as { rowCount?: number }).rowCount ?? 0);
    await recordCopiedPart(tgt, opts.migrationId, {
      table: key,
      part: task.part,
      parts: task.parts,
      snapshotLsn: opts.snapshotLsn,
      rows,
      bytes: prog.bytesCopied - bytesBefore,
    });
    await tgt.query('COMMIT');
    prog.rowsCopied += rows;
    prog.partsDone += 1;
    if (prog.partsDone === prog.parts) {
      prog.phase = 'copied';
      prog.snapshotLsn = opts.snapshotLsn;
      prog.bytesEstimated = Math.max(prog.bytesEstimated, prog.bytesCopied);
      opts.log('info', `Copied ${key}: ${prog.rowsCopied} rows in ${((Date.now() - started) / 1000).toFixed(1)} s (last part)`, {
        table: key,
        rows: prog.rowsCopied,
      });
    }
  } catch (e) {
    await tgt.query('ROLLBACK').catch(() => undefined);
    throw asPgferryError(e, 'COPY_FAILED', `copying ${key}${task.parts > 1 ? ` part ${task.part + 1}/${task.parts}` : ''}`);
  }
}
