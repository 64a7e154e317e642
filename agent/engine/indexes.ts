/**
 * indexes — post-data: secondary indexes, exclusion and foreign-key
 * constraints and replica identities, built on the target after the load
 * (building them into loaded tables is far cheaper than maintaining them row
 * by row during COPY), `indexJobs` at a time. `analyzeTables` refreshes the
 * planner's statistics afterwards, in the background of the sync.
 *
 * Input: the schema plan's `postData` statements (each re-runnable: an
 * `existsSql` probe skips what a previous run already built).
 * Output: the objects on the target; the marker `post-data` in
 * `pgferry.migration_state` once all are done.
 *
 * Foreign keys go last: they need the referenced tables' unique indexes, and
 * validating them reads both tables.
 */
import type pg from 'pg';
import { connect, qn } from './conn';
import { asPgferryError } from './errors';
import type { SchemaStatement } from './schema';
import type { Endpoint } from './spec';
import type { TableInfo } from './catalog';

export interface PostDataOptions {
  target: Endpoint;
  statements: SchemaStatement[];
  tables: TableInfo[];
  jobs: number;
  signal: AbortSignal;
  log: (level: 'info' | 'warn' | 'error', msg: string, fields?: object) => void;
  onStatementDone?: (done: number, total: number) => void;
}

export async function runPostData(opts: PostDataOptions): Promise<void> {
  const first = opts.statements.filter((s) => s.kind !== 'foreign-key');
  const fks = opts.statements.filter((s) => s.kind === 'foreign-key');
  let done = 0;
  const total = opts.statements.length;
  for (const wave of [first, fks]) {
    const queue = [...wave];
    const n = Math.max(1, Math.min(opts.jobs, queue.length));
    const conns: pg.Client[] = [];
    // A stop (pause, shutdown) cancels the builds in flight instead of
    // waiting for them: a large index takes minutes. Each statement is its
    // own transaction, so a cancelled one leaves nothing behind and is built
    // again on resume.
    const onAbort = () => {
      void cancelBackends(opts.target, conns, opts.log);
    };
    opts.signal.addEventListener('abort', onAbort, { once: true });
    try {
      for (let i = 0; i < n; i++) {
        conns.push(
          await connect('target', opts.target, {
            applicationName: 'pgferry post-data',
            extraOptions: '-c maintenance_work_mem=256MB -c synchronous_commit=off',
          }),
        );
      }
      let failed: unknown;
      await Promise.all(
        conns.map(async (c) => {
          for (;;) {
            if (failed || opts.signal.aborted) return;
            const s = queue.shift();
            if (!s) return;
            try {
              if (s.existsSql && (await c.query(s.existsSql)).rows.length > 0) {
                opts.log('info', `Skipping ${s.kind} ${s.object}, already built on a previous run`);
              } else {
                const t0 = Date.now();
                await c.query(s.sql);
                opts.log('info', `Built ${s.kind} ${s.object} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
              }
              done += 1;
              opts.onStatementDone?.(done, total);
            } catch (e) {
              failed ??= asPgferryError(e, 'SCHEMA_FAILED', `building ${s.kind} ${s.object} on the target (${s.sql.split('\n')[0].slice(0, 160)})`);
            }
          }
        }),
      );
      if (failed) throw failed;
    } finally {
      opts.signal.removeEventListener('abort', onAbort);
      await Promise.all(conns.map((c) => c.end().catch(() => undefined)));
    }
  }
}

/** Cancel whatever the sessions of `conns` are running (pg_cancel_backend: our own role's backends). */
async function cancelBackends(target: Endpoint, conns: pg.Client[], log: PostDataOptions['log']): Promise<void> {
  const pids = conns.map((c) => (c as unknown as { processID: number | null }).processID).filter((p): p is number => typeof p === 'number');
  if (pids.length === 0) return;
  try {
    const c = await connect('target', target, { applicationName: 'pgferry post-data cancel' });
    try {
      await c.query('SELECT pg_cancel_backend(pid) FROM unnest($1::int[]) AS pid', [pids]);
    } finally {
      await c.end().catch(() => undefined);
    }
  } catch (e) {
    log('warn', `could not cancel the index builds in progress; the stop waits for them: ${(e as Error).message}`);
  }
}

/**
 * ANALYZE the loaded tables, off the critical path: it runs while the stream
 * already applies (the planner's first lookups use the primary keys either
 * way), and its marker keeps a restart from doing it twice.
 */
export async function analyzeTables(target: Endpoint, tables: TableInfo[], signal: AbortSignal, log: PostDataOptions['log']): Promise<boolean> {
  const c = await connect('target', target, { applicationName: 'pgferry analyze' });
  try {
    const t0 = Date.now();
    for (const t of tables.filter((x) => x.root === null)) {
      if (signal.aborted) return false;
      await c.query(`ANALYZE ${qn(t.schema, t.name)}`);
    }
    log('info', `Analyzed ${tables.length} table(s) on the target in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    return true;
  } finally {
    await c.end().catch(() => undefined);
  }
}
