/**
 * cutback — the way back in the provider: when `cutback: true` (and the
 * `cutover` and `cutback` flags around it) may be asked for, and the Cutback
 * call with a failure text that says only what the agent's answer shows.
 *
 * Input: the old outputs and new arguments (Check, Update), and the agent's
 * status when it could be read. Output: CheckFailures on `cutback` or
 * `cutover` with the reason and the fix; the migration after a cutback.
 * lifecycle.ts calls it; it talks to the agent only through the client given.
 */
import { UNKNOWN, type MigrationInputs, type ReverseSyncOutput } from './args';
import type { CheckFailure } from './check';
import type { AgentClient, MigrationMessage, ReverseSyncStatusMessage } from '../api/client';
import { toCutoverRequest } from './outputs';

type Props = Record<string, unknown>;

/** An Error whose message says what happened and how to fix it (as lifecycle.ts words them). */
function userError(message: string, remedy: string, cause?: unknown): Error {
  return new Error(`${message} Fix: ${remedy}`, cause === undefined ? undefined : { cause });
}

/** What Check and Update know of the migration: the agent's status when read, the old outputs otherwise. */
interface Known {
  phase: string;
  cutoverCompletedAt?: string;
  cutbackCompletedAt?: string;
  reverse?: Pick<ReverseSyncOutput, 'state' | 'windowEndsAt' | 'droppedAt' | 'dropReason'>;
}

function knownOf(olds: Props, live: MigrationMessage | undefined): Known {
  if (live) {
    const r: ReverseSyncStatusMessage | null = live.reverse;
    return {
      phase: live.phase,
      cutoverCompletedAt: live.cutover?.completedAt || undefined,
      cutbackCompletedAt: live.cutback?.completedAt || undefined,
      reverse: r?.state ? { state: r.state, windowEndsAt: r.windowEndsAt, droppedAt: r.droppedAt, dropReason: r.dropReason } : undefined,
    };
  }
  return {
    phase: String(olds.phase ?? ''),
    cutoverCompletedAt: olds.cutoverCompletedAt as string | undefined,
    cutbackCompletedAt: (olds.cutbackReport as { completedAt?: string } | undefined)?.completedAt,
    reverse: olds.reverseSync as Known['reverse'],
  };
}

/** `cutback` true → false after the cutback completed cannot be honoured. */
export function cutbackBackError(id: string, when: string | undefined): Error {
  return userError(
    `\`cutback\` cannot go back to \`false\`: migration '${id}' cut back to the source${when ? ` at ${when}` : ''}; the source is the active database again and writes to the target are fenced.`,
    'keep `cutback: true` (and `cutover: true`). To clean up, remove the resource. To move to the target again, declare a new Migration (a new `migrationId`).',
  );
}

/** The window is open: the reverse sync exists and is not dropped, and its end (if known) is ahead. */
function windowOpen(k: Known, now: number): boolean {
  const r = k.reverse;
  if (!r || r.state === 'dropped') return false;
  const ends = r.windowEndsAt ? Date.parse(r.windowEndsAt) : NaN;
  return !Number.isFinite(ends) || ends > now;
}

/** Said in a refused `cutover: true → false`, when a cutback is what the user may want. */
export function cutbackHint(olds: Props, live: MigrationMessage | undefined, now = Date.now()): string {
  return windowOpen(knownOf(olds, live), now) ? ' To go back to the source, keep `cutover: true` and set `cutback: true` (the rollback window is open).' : '';
}

/**
 * Check's rules for `cutback` (and `cutover` after a cutback), pure given
 * what is known: `cutback: true` needs a completed cutover, a
 * `rollbackWindow` and an open window; after a completed cutback, `cutback`
 * stays `true` and a second cutover is refused (`cutover: false` is taken:
 * the application is on the source, as it says).
 */
export function cutbackFailures(olds: Props, news: Props, live: MigrationMessage | undefined, now = Date.now()): CheckFailure[] {
  if (news.cutback === UNKNOWN || news.cutover === UNKNOWN) return [];
  const id = String(news.migrationId ?? '');
  const creating = !olds || Object.keys(olds).filter((k) => k !== '__provider').length === 0;
  const k = knownOf(olds ?? {}, live);
  const fail = (property: string, e: Error): CheckFailure[] => [{ property, reason: e.message }];
  if (!creating && k.phase === 'cut-back') {
    if (olds.cutback === true && news.cutback !== true) return fail('cutback', cutbackBackError(id, k.cutbackCompletedAt));
    if (news.cutover === true && olds.cutover !== true) {
      return fail(
        'cutover',
        userError(
          `\`cutover\` cannot be asked again: migration '${id}' cut back to the source${k.cutbackCompletedAt ? ` at ${k.cutbackCompletedAt}` : ''}, and a migration is cut over once.`,
          'to migrate to the target again, declare a new Migration (a new `migrationId`: a fresh copy and sync), or replace this one.',
        ),
      );
    }
    return [];
  }
  if (news.cutback !== true) return [];
  if (creating || olds.cutover !== true || k.phase !== 'completed') {
    return fail(
      'cutback',
      userError(
        `\`cutback: true\` needs a completed cutover: migration '${id}' is ${creating ? 'not created yet' : `in phase '${k.phase}'${olds.cutover === true ? '' : ' and `cutover` is not `true`'}`}.`,
        'cut over first (`cutover: true`, with `rollbackWindow` set), then set `cutback: true` in a later change.',
      ),
    );
  }
  if (news.rollbackWindow === undefined || news.rollbackWindow === null) {
    return fail(
      'cutback',
      olds.rollbackWindow
        ? userError(
            `\`cutback: true\` needs \`rollbackWindow\`, which this change removes: removing it drops the reverse sync (the old source would no longer have the target's writes).`,
            'keep `rollbackWindow` as it is in the change that cuts back.',
          )
        : userError(
            `\`cutback: true\` needs \`rollbackWindow\`: migration '${id}' was cut over without one, so the old source did not follow the target and going back would lose every write made since.`,
            'to move back now, declare a new Migration from the target to the source. Next time, set `rollbackWindow` before the cutover.',
          ),
    );
  }
  if (news.rollbackWindow !== UNKNOWN && !windowOpen(k, now)) {
    const r = k.reverse;
    const what = !r
      ? `migration '${id}' has no reverse sync (\`rollbackWindow\` was set after the cutover, or the agent has not made it)`
      : r.state === 'dropped'
        ? `the rollback window of migration '${id}' is over (${r.dropReason || 'dropped'}${r.droppedAt ? `, at ${r.droppedAt}` : ''})`
        : `the rollback window of migration '${id}' ended at ${r.windowEndsAt}`;
    return fail(
      'cutback',
      userError(
        `\`cutback: true\` cannot be honoured: ${what}; the old source no longer follows the target.`,
        'to move back now, declare a new Migration from the target to the source.',
      ),
    );
  }
  return [];
}

/** What a changed `rollbackWindow` did. */
export function windowNote(window: string | undefined, m: MigrationMessage): string {
  const after = m.phase === 'completed';
  if (!window) {
    return after
      ? '`rollbackWindow` removed: the agent drops the reverse sync and its slot and publication on the target; there is no way back any more.'
      : '`rollbackWindow` removed: the cutover will not prepare a way back.';
  }
  return after
    ? `\`rollbackWindow\` changed: the window now ends at ${m.reverse?.windowEndsAt || 'the time `reverseSync.windowEndsAt` shows'}.`
    : `\`rollbackWindow\` set to ${window}: the cutover prepares the way back (a slot and publication on the target) and the old source follows the target that long.`;
}

/** A rollback window added after the cutover completed: the reverse sync is made by the cutover, so it comes too late. */
export function windowTooLate(id: string): CheckFailure {
  return {
    property: 'rollbackWindow',
    reason: `\`rollbackWindow\` comes too late: migration '${id}' already completed its cutover, and the reverse sync is made by the cutover, its start position taken inside the fence (before the application's first write on the target). Fix: leave it out; to move back now, declare a new Migration from the target to the source. Next time, set it before \`cutover: true\`.`,
  };
}

/** What a failed cutback left, as far as the agent's status shows it (nothing is claimed that it does not). */
function afterFailedCutback(id: string, m: MigrationMessage | undefined): string {
  if (!m) return `The agent could not be asked what became of the reverse sync: run \`pulumi refresh\` or \`pgferry status ${id}\`.`;
  const parts: string[] = [];
  if (m.phase === 'completed' && m.activeEndpoint !== 'source') parts.push('The application stays on the target (`activeConnection` unchanged).');
  const r = m.reverse;
  if (r?.state === 'streaming' || r?.state === 'prepared')
    parts.push(`The reverse sync keeps running (${r.state}; the old source is ${r.lagBytes} byte(s) behind).`);
  else if (r?.state === 'failed') parts.push(`The reverse sync is retrying${r.lastError ? ` (${r.lastError})` : ''}.`);
  else if (r?.state === 'dropped') parts.push(`The reverse sync was dropped (${r.dropReason || 'no reason given'}): there is no way back any more.`);
  return parts.join(' ');
}

/** Cut back; returns the cut-back migration or throws the agent's reason, what it left, and the fix. */
export async function runCutback(client: AgentClient, a: MigrationInputs, describe: (e: unknown) => Error): Promise<MigrationMessage> {
  const id = a.migrationId;
  const retry =
    'run `pulumi up` again to retry once the cause is fixed (`cutoverOptions.maxLagSeconds`, `cutoverOptions.timeoutMs` and `cutoverOptions.validation` tune it).';
  let m: MigrationMessage;
  try {
    m = await client.cutback(toCutoverRequest(a));
  } catch (e) {
    // The agent's message says what became of the target's fence (lifted and verified, or still retried).
    const err = describe(e);
    const after = await client.getMigration(id).catch(() => undefined);
    err.message += ` ${afterFailedCutback(id, after)} To retry: ${retry}`;
    throw err;
  }
  if (m.phase !== 'cut-back') {
    const reason = m.cutback?.error || `the cutback ended in state '${m.cutback?.state || m.phase}'`;
    throw userError(`Cutback of migration '${id}' did not complete: ${reason} ${afterFailedCutback(id, m)}`, retry);
  }
  return m;
}
