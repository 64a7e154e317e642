/**
 * sleep — wait `ms`, or less when `signal` aborts (then it resolves, it does
 * not throw: every caller checks the signal next). Node's own timers/promises
 * does the waiting.
 */
import { setTimeout as delay } from 'node:timers/promises';

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return delay(ms, undefined, signal ? { signal } : undefined).catch(() => undefined);
}
