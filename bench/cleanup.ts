/**
 * cleanup — one place that undoes what the bench started (agent processes,
 * clusters, temp dirs), in reverse order, on success, on failure and on
 * Ctrl-C / SIGTERM. Each step has an async form (normal path) and an
 * optional synchronous last resort for `process.on('exit')`, which cannot wait.
 *
 * dev/testbed.ts stops its own clusters on signals too; registering them
 * here as well is harmless (their `stop()` is idempotent) and keeps the order:
 * agent first, then the clusters it talks to.
 */
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
