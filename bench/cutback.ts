/**
 * cutback — the way back, measured after each completed cutover of
 * pgferry's runs (their migrations carry `rollbackWindow`, issue 21):
 *
 *   1. both writers on the target (the tight one followed `activeEndpoint`
 *      at the cutover, the sample one is sent after it), ≥ 3 s, with the
 *      reverse sync streaming their changes back into the old source;
 *   2. Cutback (its default validation: there is no continuous verification
 *      in this direction, so every row of every table is read inside the
 *      fence); its report gives the outage `outageMs` with its parts, as
 *      the cutover's does. Left out, as for the cutover: the wait for the
 *      reverse sync's lag before the fence ("before fence");
 *   3. the tight writer follows `activeEndpoint` back to the source: its gap
 *      = its last commit on the target → its first on the source. The
 *      sample writer stays on the target (fenced now), as it stayed on the
 *      source at the cutover. Judged on the larger of outage and gap;
 *   4. after the writers stopped: the source holds every write acknowledged
 *      on the target, and — once the tight writer's rows of after the
 *      cutback are taken out — equals the target, which the fence froze
 *      (count + checksum per table). This also checks the cutover's data:
 *      a row lost on the way there would be missing on the target.
 */
import type { Cluster } from '../dev/testbed';
import type { BenchAgent } from './agent';
import { assertSameData } from './compare';
import { pollUntil } from './measure';
import { followActiveEndpoint, measureSwitch, type SwitchFigures, type Writers } from './switch';

/** The rollback window of pgferry's runs: longer than any run, so the reverse slot lives until the cutback. */
export const ROLLBACK_WINDOW = '1h';
/** How long the application writes on the target before the cutback. */
const ON_TARGET_MS = 3000;

/** The cutback's figures, and what preceded it. */
export interface CutbackFigures extends SwitchFigures {
  /** The reverse sync's lag (bytes) when the cutback was sent, as the agent reported it. */
  reverseLagBytes?: number;
  /** Changes the reverse sync had applied to the old source when the cutback was sent. */
  reverseChangesApplied?: number;
  /** The tight writer's acknowledged commits on the target, and on the source after the cutback. */
  targetCommits?: number;
  backCommits?: number;
  /** The source held every acknowledged write and equalled the frozen target (compareAfterCutback). */
  sourceChecked?: boolean;
}

/**
 * Steps 1–3; a failure is the cutback's error (the cutover before it
 * completed). The writers keep running: the caller stops them, then
 * compares (`compareAfterCutback`) when the cutback completed.
 */
export async function measureCutback(agent: BenchAgent, id: string, w: Writers, fig: CutbackFigures, note: (n: string) => void): Promise<void> {
  try {
    w.followSample('target');
    let streaming = false;
    let said = '';
    const probe = setInterval(() => {
      agent.client.getMigration(id).then(
        (m) => {
          const err = m.reverse?.lastError;
          if (err && err !== said) note(`the reverse sync reported an error before the cutback: ${(said = err)}`);
          streaming = m.reverse?.state === 'streaming';
        },
        () => undefined,
      );
    }, 200);
    try {
      fig.writerCommitsPerSec = await w.keepWriting(ON_TARGET_MS, 'on the target');
      await pollUntil('the reverse sync to stream', async () => streaming, { timeoutMs: 120_000 });
    } finally {
      clearInterval(probe);
    }
    const before = await agent.client.getMigration(id);
    fig.reverseLagBytes = Number(before.reverse?.lagBytes ?? NaN);
    fig.reverseChangesApplied = Number(before.reverse?.changesApplied ?? NaN);
    // The agent's default: 'changes' is taken as 'full' in this direction.
    const m = await measureSwitch(agent, id, 'cutback', { expected: ['full'] }, fig, (n) => note(`cutback: ${n}`));
    if (m.phase !== 'cut-back') note(`cutback: phase '${m.phase}' after a completed cutback, expected 'cut-back'`);
    await followActiveEndpoint(m, w, 'source', fig, (n) => note(`cutback: ${n}`));
  } catch (e) {
    fig.error = (e as Error).message;
  }
}

/** Step 4, with the writers stopped: every acknowledged write on the source, and the source equal to the frozen target. */
export async function compareAfterCutback(source: Cluster, target: Cluster, db: string, w: Writers, fig: CutbackFigures): Promise<void> {
  const legs = w.tight.legs;
  fig.targetCommits = legs.filter((l) => l.side === 'target').reduce((a, l) => a + l.commits, 0);
  fig.backCommits = legs.at(-1)?.side === 'source' && legs.length > 2 ? legs.at(-1)!.commits : 0;
  const onSource = await source.query("SELECT count(*)::int AS n FROM orders WHERE note = 'tight-target'", [], db);
  // A commit whose acknowledgement was lost at the fence may be there too: at least, not exactly.
  if (onSource.rows[0].n < fig.targetCommits) {
    throw new Error(`the source lacks acknowledged writes made on the target: ${onSource.rows[0].n} of the tight writer's ${fig.targetCommits} rows`);
  }
  const back = await source.query("DELETE FROM orders WHERE note = 'tight-source'", [], db);
  if (back.rowCount !== fig.backCommits) {
    throw new Error(`the source holds ${back.rowCount} of the tight writer's rows of after the cutback, it acknowledged ${fig.backCommits}`);
  }
  await assertSameData(source, target, db).catch((e: Error) => {
    throw new Error(`after the cutback: ${e.message.replace('the target differs from the source', 'the source differs from the frozen target')}`);
  });
  fig.sourceChecked = true;
}
