/**
 * measure — the bench's instruments: a monotonic stopwatch, a poller that
 * waits on a condition (never a fixed sleep), a resident-memory sampler for
 * a process (VmRSS from /proc/<pid>/status every 100 ms, plus the kernel's
 * own high-water mark VmHWM as a cross-check), a process's CPU time
 * (/proc/<pid>/stat), and small statistics.
 */
import { readFileSync } from 'node:fs';

/** Milliseconds since an arbitrary origin, monotonic (not wall clock). */
export function nowMs(): number {
  return performance.now();
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Poll `probe` every `intervalMs` until it returns a value other than
 * undefined/false; fail after `timeoutMs` naming `what` and the last error.
 */
export async function pollUntil<T>(
  what: string,
  probe: () => Promise<T | undefined | false>,
  opts: { intervalMs?: number; timeoutMs?: number } = {},
): Promise<T> {
  const intervalMs = opts.intervalMs ?? 100;
  const deadline = Date.now() + (opts.timeoutMs ?? 30 * 60_000);
  let lastError: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
    } catch (e) {
      if ((e as { fatal?: boolean }).fatal) throw e;
      lastError = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${lastError ? ` (last error: ${(lastError as Error).message})` : ''}`);
    await sleep(intervalMs);
  }
}

/** An error that stops `pollUntil` at once (e.g. the migration failed). */
export function fatal(message: string): Error {
  return Object.assign(new Error(message), { fatal: true });
}

function procStatusKb(pid: number, field: 'VmRSS' | 'VmHWM'): number | undefined {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Sample the RSS of the process `pid()` names (it may change across a
 * restart) every `intervalMs`. `stop()` returns the peak in MB; the
 * high-water mark (VmHWM, the kernel's exact peak of the current process) is
 * read by `hwmMb()` while the process is alive.
 */
export class RssSampler {
  private peakKb = 0;
  private samples = 0;
  private timer: NodeJS.Timeout;
  constructor(
    private readonly pid: () => number,
    intervalMs = 100,
  ) {
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
  }
  private sample(): void {
    const kb = procStatusKb(this.pid(), 'VmRSS');
    if (kb === undefined) return;
    this.samples++;
    if (kb > this.peakKb) this.peakKb = kb;
  }
  hwmMb(): number | undefined {
    const kb = procStatusKb(this.pid(), 'VmHWM');
    return kb === undefined ? undefined : kb / 1024;
  }
  stop(): { peakRssMb: number; samples: number } {
    clearInterval(this.timer);
    this.sample();
    return { peakRssMb: this.peakKb / 1024, samples: this.samples };
  }
}

/**
 * CPU seconds (user + system) `pid` has used since it started, from
 * /proc/<pid>/stat (fields 14 and 15, in clock ticks of 1/100 s on Linux);
 * undefined when the process is gone or /proc is not there.
 */
export function cpuSeconds(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return undefined;
  }
}

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Nearest-rank percentile (p in 0..100). */
export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}
