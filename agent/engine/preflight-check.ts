/**
 * preflight-check — what one preflight check is, shared by the source-side
 * checks (preflight.ts) and the target-side ones (preflight-target.ts).
 */
import type { ErrorCode } from './errors';

export type Verdict = 'pass' | 'warn' | 'fail';

export interface PreflightCheck {
  name: string;
  verdict: Verdict;
  message: string;
  remedy: string;
  objects: string[];
  /** The error code a failed check maps to when the migration is started anyway. */
  code?: ErrorCode;
}

export interface PreflightContext {
  /** Objects this migration created earlier (a restart is not a name clash). */
  ownsSlot?: boolean;
  ownsPublication?: boolean;
  /** Skip target-content checks (the migration is already loading into it). */
  resuming?: boolean;
}

/** A check as the report lists it. */
export const check = (name: string, verdict: Verdict, message: string, remedy = '', objects: string[] = []): PreflightCheck => ({
  name,
  verdict,
  message,
  remedy,
  objects,
});
