/**
 * switch — one measured switch of the cutover scenario (the cutover, or the
 * cutback after it) and the application that follows it: the sample writer
 * (dev/sample.ts) and a tight writer, each pointed at a side and moved to
 * the side the agent names in `activeEndpoint`, as an application would.
 *
 * Input: a running agent, a migration in `syncing` (cutover) or `completed`
 * with a rollback window (cutback). Output: the switch's figures (the
 * report's outage and its parts, the RPC, the wait before the fence, the
 * tables checked) and the tight writer's own gap across the switch.
 */
import { loadavg } from 'node:os';
import type pg from 'pg';
import type { Cluster } from '../dev/testbed';
import { startWriter } from '../dev/sample';
import { isAgentError, type CutoverReportMessage, type MigrationMessage } from '../api/client';
import type { BenchAgent } from './agent';
import { fatal, nowMs, pollUntil, sleep } from './measure';

export type Side = 'source' | 'target';

/** What one switch measured; every field is absent until known. */
export interface SwitchFigures {
  /** The validation the agent reports it ran. */
  validation?: string;
  /** The report's application outage: fence raised → completed switch recorded. */
  outageMs?: number;
  outageParts?: Array<{ part: string; ms: number }>;
  /** RPC sent → fence raised (waits for lag, and for the cutover the verification; nothing fenced). */
  beforeFenceMs?: number;
  rpcMs?: number;
  /** The tight writer's last commit on the side it left → its first on the side it moved to. */
  clientGapMs?: number;
  /** Tables checked inside the fence, per mode (unchanged, changes, full, counts). */
  modes?: Record<string, number>;
  /** Rows read on each side inside the fence, all tables. */
  rowsChecked?: number;
  /** The tables not checked 'unchanged', each with its mode and rows read ("public.orders changes 4 102"). */
  checkedTables?: string[];
  /** Commits per second of both writers before the switch (on the side it leaves). */
  writerCommitsPerSec?: number;
  /** The machine's 1-minute load average when the RPC returned (other processes add noise). */
  loadAvg?: number;
  validationOk?: boolean;
  /** The switch itself failed (verbatim). */
  error?: string;
}

/** Longest a switch may take, the waits before the fence included. */
export const SWITCH_TIMEOUT_MS = 600_000;

/**
 * A writer committing one transaction per round trip on the side it is
 * pointed at; reconnects on failure (fenced sessions are terminated, new
 * ones are read-only). On the first side: `BEGIN; INSERT …; UPDATE …;
 * COMMIT` (the pressure on the fence and the drain). After a switch: the
 * INSERT alone, noted with the side ('tight-target', 'tight-source'): it
 * proves the sequences were set (a collision fails it), and the bench can
 * count it and take it out again. Keeps one leg per side it committed on.
 */
export class TightWriter {
  commits = 0;
  failures = 0;
  lastError = '';
  /** The sides it committed on, in order, with the first and last commit and the commits there. */
  readonly legs: Array<{ side: Side; firstAt: number; lastAt: number; commits: number }> = [];
  private side: Side = 'source';
  private switched = false;
  private running = true;
  private loop: Promise<void>;
  constructor(
    private readonly source: Cluster,
    private readonly target: Cluster,
    private readonly db: string,
  ) {
    this.loop = this.run();
  }
  follow(side: Side): void {
    if (side !== this.side) this.switched = true;
    this.side = side;
  }
  /** Its last leg's first commit minus the previous leg's last: the gap of the last switch (undefined before it). */
  gapMs(): number | undefined {
    const [a, b] = this.legs.slice(-2);
    return b && a ? b.firstAt - a.lastAt : undefined;
  }
  /** Resolves once it committed on `side` after a switch to it. */
  async committedOn(side: Side, what: string): Promise<void> {
    await pollUntil(`the tight writer to commit on the ${side}`, async () => this.legs.length > 1 && this.legs.at(-1)!.side === side, {
      timeoutMs: 30_000,
    }).catch(() => {
      throw fatal(`the application could not write to the ${side} after the ${what}: ${this.lastError}`);
    });
  }
  private statement(n: number, on: Side): string {
    const customer = 11 + (n % 500);
    if (!this.switched) {
      return `BEGIN; INSERT INTO orders (customer_id, total, note) VALUES (${customer}, ${n % 97}, 'tight');
             UPDATE customers SET name = 'Customer tight ${n}' WHERE id = ${customer}; COMMIT`;
    }
    return `INSERT INTO orders (customer_id, total, note) VALUES (${customer}, ${n % 97}, 'tight-${on}')`;
  }
  private recordCommit(on: Side): void {
    const now = nowMs();
    const leg = this.legs.at(-1);
    if (leg?.side === on) {
      leg.lastAt = now;
      leg.commits++;
    } else this.legs.push({ side: on, firstAt: now, lastAt: now, commits: 1 });
    this.commits++;
  }
  private async run(): Promise<void> {
    let c: pg.Client | null = null;
    let on: Side = 'source';
    let n = 0;
    while (this.running) {
      try {
        if (c && on !== this.side) {
          await c.end().catch(() => undefined);
          c = null;
        }
        if (!c) {
          on = this.side;
          c = await (on === 'source' ? this.source : this.target).client(this.db);
        }
        n++;
        await c.query(this.statement(n, on));
        this.recordCommit(on);
      } catch (e) {
        this.failures++;
        this.lastError = (e as Error).message;
        await c?.query('ROLLBACK').catch(() => undefined);
        await c?.end().catch(() => undefined);
        c = null;
        await sleep(5);
      }
    }
    await c?.end().catch(() => undefined);
  }
  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }
}

/** Both writers, started on the source. The sample writer moves only when told (`followSample`); on reconnect it goes to its side. */
export class Writers {
  readonly tight: TightWriter;
  private readonly sample: ReturnType<typeof startWriter>;
  private sampleSide: Side = 'source';
  constructor(source: Cluster, target: Cluster, db: string) {
    this.sample = startWriter(() => (this.sampleSide === 'source' ? source : target).client(db));
    this.tight = new TightWriter(source, target, db);
  }
  /** The sample writer's next session goes to `side` (its current one fails on a fence and reconnects). */
  followSample(side: Side): void {
    this.sampleSide = side;
  }
  get commits(): number {
    return this.sample.stats.commits + this.tight.commits;
  }
  /** Keep both writing for ≥ `ms` (and 50 commits); returns their commits per second meanwhile. */
  async keepWriting(ms: number, what: string): Promise<number> {
    const c0 = this.commits;
    const t0 = nowMs();
    await pollUntil(`the writers to keep committing for ${ms / 1000} s ${what}`, async () => nowMs() - t0 >= ms && this.commits > c0 + 50, {
      timeoutMs: 120_000,
    });
    return (this.commits - c0) / ((nowMs() - t0) / 1000);
  }
  async stop(): Promise<void> {
    await this.tight.stop();
    await this.sample.stop();
  }
}

/**
 * Send the cutover (or the cutback) and read its completed report into
 * `fig`; throws (fatal) when the RPC fails or the switch did not complete.
 * `expected` lists the validations the agent should report; a different one is a note.
 */
export async function measureSwitch(
  agent: BenchAgent,
  id: string,
  dir: 'cutover' | 'cutback',
  opts: { validation?: 'full'; expected: string[] },
  fig: SwitchFigures,
  note: (n: string) => void,
): Promise<MigrationMessage> {
  const r0 = nowMs();
  const sentAt = Date.now();
  let m: MigrationMessage;
  try {
    const req = { id, timeoutMs: SWITCH_TIMEOUT_MS, ...(opts.validation ? { validation: opts.validation } : {}) };
    m = dir === 'cutover' ? await agent.client.cutover(req) : await agent.client.cutback(req);
  } catch (e) {
    throw fatal(`${dir === 'cutover' ? 'Cutover' : 'Cutback'} RPC failed: ${isAgentError(e) ? `${e.code}: ${e.detail}` : (e as Error).message}`);
  }
  fig.rpcMs = nowMs() - r0;
  fig.loadAvg = loadavg()[0];
  const rep = dir === 'cutover' ? m.cutover : m.cutback;
  if (!rep || rep.state !== 'completed') {
    throw fatal(
      `${dir === 'cutover' ? 'Cutover' : 'Cutback'} did not complete: phase ${m.phase}, state ${rep?.state ?? '(no report)'}: ${rep?.error || m.errorMessage || '(no error given)'}`,
    );
  }
  readReport(rep, fig, sentAt, opts.expected, note);
  return m;
}

/** The completed switch's report into `fig`: outage and parts, per-table modes, rows read. */
function readReport(rep: CutoverReportMessage, fig: SwitchFigures, sentAt: number, expected: string[], note: (n: string) => void): void {
  fig.validation = rep.validation;
  fig.validationOk = rep.validationOk;
  fig.outageMs = Number(rep.outageMs);
  fig.outageParts = rep.outageParts.map((p) => ({ part: p.part, ms: Number(p.ms) }));
  fig.beforeFenceMs = rep.fenceStartedAt ? Date.parse(rep.fenceStartedAt) - sentAt : undefined;
  fig.modes = {};
  fig.rowsChecked = 0;
  fig.checkedTables = [];
  for (const t of rep.tables) {
    const mode = t.mode || '(none given)';
    fig.modes[mode] = (fig.modes[mode] ?? 0) + 1;
    fig.rowsChecked += Number(t.rowsChecked);
    if (mode !== 'unchanged') fig.checkedTables.push(`${t.table} ${mode} ${Number(t.rowsChecked).toLocaleString('en-US')}`);
  }
  const partsSum = fig.outageParts.reduce((a, p) => a + p.ms, 0);
  if (partsSum !== fig.outageMs) note(`the outage's parts add up to ${partsSum} ms, not to outageMs ${fig.outageMs} ms`);
  if (Number(rep.writeDowntimeMs) !== fig.outageMs) note(`writeDowntimeMs ${rep.writeDowntimeMs} differs from outageMs ${fig.outageMs}`);
  if (!expected.includes(rep.validation)) note(`the agent ran validation '${rep.validation}', expected ${expected.join(' or ')}`);
}

/** The tight writer moves to the side the agent names; its gap across the switch into `fig`. */
export async function followActiveEndpoint(m: MigrationMessage, w: Writers, expected: Side, fig: SwitchFigures, note: (n: string) => void): Promise<void> {
  const side: Side = m.activeEndpoint === 'source' ? 'source' : 'target';
  if (side !== expected) note(`activeEndpoint is '${m.activeEndpoint}' after the ${expected === 'target' ? 'cutover' : 'cutback'}, expected '${expected}'`);
  w.tight.follow(side);
  await w.tight.committedOn(side, expected === 'target' ? 'cutover' : 'cutback');
  fig.clientGapMs = w.tight.gapMs();
}
