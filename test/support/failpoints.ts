/**
 * The agent's failpoints file (agent/engine/failpoints.ts) from a test: which
 * points pause and for how long, and how many times each was hit. The agent
 * reads the file at every hit, so a test may change it while the agent runs;
 * pass `path` as `PGFERRY_FAILPOINTS_FILE` in the agent's environment.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

export interface Failpoints {
  path: string;
  /** Pause at these points (ms each; 0 only counts the hits); every other point is off. Forgets earlier hits unless `keepHits`. */
  set(pauses: Record<string, number>, keepHits?: boolean): void;
  /** Times `name` was hit since the last `set` that forgot them. */
  hits(name: string): number;
  /**
   * Of those hits, the ones that paused: a test that changes a point from counting to pausing waits for
   * this, not for one more hit (a hit may land between reading the count and the agent reading the file).
   */
  paused(name: string): number;
  /** Remove the file and its directory. */
  remove(): void;
}

export function failpointsFile(): Failpoints {
  const path = join(mkdtempSync(join(tmpdir(), 'pgferry-failpoints-')), 'failpoints.json');
  const lines = (): string[] => (existsSync(`${path}.hits`) ? readFileSync(`${path}.hits`, 'utf8').split('\n') : []);
  const fp: Failpoints = {
    path,
    set(pauses, keepHits = false) {
      writeFileSync(path, JSON.stringify(Object.fromEntries(Object.entries(pauses).map(([k, ms]) => [k, { pauseMs: ms }]))));
      if (!keepHits) rmSync(`${path}.hits`, { force: true });
    },
    hits(name) {
      return lines().filter((l) => l === name || l === `${name} paused`).length;
    },
    paused(name) {
      return lines().filter((l) => l === `${name} paused`).length;
    },
    remove() {
      rmSync(dirname(path), { recursive: true, force: true });
    },
  };
  fp.set({});
  return fp;
}
