/**
 * cleanup — one place that undoes what the bench started (agent processes,
 * clusters, temp dirs), in reverse order, on success, on failure and on
 * Ctrl-C / SIGTERM. Each step has an async form (normal path) and an
 * optional synchronous last resort for `process.on('exit')`, which cannot wait.
 *
 * dev/testbed.ts stops its own clusters on signals too; registering them
 * here as well is harmless (their `stop()` is idempotent) and keeps the order:
 * agent first, then the clusters it talks to.
 *
 * Between runs, `dropLeftovers` checks that a deleted migration left nothing
 * of pgferry's on the servers (slots, publications, the `pgferry` schema the
 * reverse apply makes on the old source) and drops what it finds, so that
 * the next run starts clean.
 */
import type { Cluster } from '../dev/testbed';

export interface CleanupStep {
  what: string;
  run: () => Promise<void>;
  /** Synchronous fallback for process exit (e.g. SIGKILL a child, rm -rf a dir). */
  runSync?: () => void;
}

const steps: CleanupStep[] = [];
let installed = false;
let running: Promise<void> | null = null;

/** Register a step; returns a function that runs it now (once) and unregisters it. */
export function onCleanup(step: CleanupStep): () => Promise<void> {
  install();
  steps.push(step);
  let done = false;
  return async () => {
    if (done) return;
    done = true;
    const i = steps.indexOf(step);
    if (i >= 0) steps.splice(i, 1);
    await step.run();
  };
}

/** Run every registered step, newest first; errors are printed, never thrown. */
export function cleanupAll(): Promise<void> {
  running ??= (async () => {
    while (steps.length) {
      const s = steps.pop()!;
      try {
        await s.run();
      } catch (e) {
        process.stderr.write(`cleanup: ${s.what}: ${(e as Error).message}\n`);
      }
    }
  })();
  return running;
}

function install(): void {
  if (installed) return;
  installed = true;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}, cleaning up…\n`);
      const hard = setTimeout(() => process.exit(130), 15_000);
      hard.unref();
      void cleanupAll().finally(() => process.exit(130));
    });
  }
  process.on('exit', () => {
    for (const s of steps.reverse()) {
      try {
        s.runSync?.();
      } catch {
        /* best effort */
      }
    }
  });
}

/**
 * What pgferry left in database `db` of the two clusters after its
 * migration was deleted: every replication slot of either cluster, the
 * publications in `db` on either side, and on the source its `pgferry`
 * schema and triggers (the target keeps its emptied bookkeeping schema by
 * design; its database is dropped next). Dropped (slots first: an active
 * one's walsender is ended) and returned as "source slot x", … — empty
 * when the delete left nothing.
 */
export async function dropLeftovers(source: Cluster, target: Cluster, db: string): Promise<string[]> {
  const left: string[] = [];
  for (const [side, c] of [
    ['source', source],
    ['target', target],
  ] as const) {
    const slots = await c.query('SELECT slot_name, active_pid FROM pg_replication_slots ORDER BY 1');
    for (const s of slots.rows) {
      left.push(`${side} slot ${s.slot_name}`);
      if (s.active_pid) await c.query('SELECT pg_terminate_backend($1)', [s.active_pid]);
      await c.query('SELECT pg_drop_replication_slot($1)', [s.slot_name]).catch(() => undefined);
    }
    const exists = await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [db]);
    if (!exists.rowCount) continue;
    const objects = await c.query(
      `SELECT 'publication ' || pubname AS o, format('DROP PUBLICATION %I', pubname) AS drop FROM pg_publication
       UNION ALL SELECT format('trigger %s on %s', tgname, tgrelid::regclass), format('DROP TRIGGER %I ON %s', tgname, tgrelid::regclass)
         FROM pg_trigger WHERE $1 AND NOT tgisinternal AND tgname LIKE 'pgferry%'
       UNION ALL SELECT 'schema pgferry', 'DROP SCHEMA pgferry CASCADE' FROM pg_namespace WHERE $1 AND nspname = 'pgferry'`,
      [side === 'source'],
      db,
    );
    if (!objects.rowCount) continue;
    const client = await c.client(db);
    try {
      await client.query('SET default_transaction_read_only = off');
      for (const o of objects.rows) {
        left.push(`${side} ${o.o}`);
        await client.query(o.drop);
      }
    } finally {
      await client.end();
    }
  }
  return left;
}
