/**
 * failpoints — named pause points for fault-injection tests, off unless the
 * agent runs with `PGFERRY_FAILPOINTS_FILE` set (never in production).
 *
 * Input: that file, JSON `{ "<name>": { "pauseMs": N } }`, read at every hit
 * so a test can change it between scenarios. Output: each hit of a configured
 * point appends its name to `<file>.hits`, followed by ` paused` when the hit
 * pauses (the test waits for that line, then injects its fault while the agent
 * is known to be held there).
 *
 * Hand-rolled: a failpoint library for Node.js would bring more than these
 * twenty lines, and the names must stay the pipeline's own.
 */
import { appendFileSync, readFileSync } from 'node:fs';
import { sleep } from './sleep';

export async function failpoint(name: string, signal?: AbortSignal): Promise<void> {
  const file = process.env.PGFERRY_FAILPOINTS_FILE;
  if (!file) return;
  let conf: Record<string, { pauseMs?: number } | undefined>;
  try {
    conf = JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    return;
  }
  const fp = conf[name];
  if (!fp) return;
  const pauses = (fp.pauseMs ?? 0) > 0;
  appendFileSync(`${file}.hits`, pauses ? `${name} paused\n` : `${name}\n`);
  if (pauses) await sleep(fp.pauseMs!, signal);
}
