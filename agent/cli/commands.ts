/**
 * commands — the operator's side of the `pgferry` CLI: `status`, `preflight`,
 * `start`, `cutover`, `cutback`, `cancel-cutover`, `pause`, `resume`, `unfence` and `delete`, each a client of a
 * running agent (api/client.ts), with human output for an 80-column
 * terminal or `--json` for scripts.
 *
 * Input: flags, environment (`PGFERRY_AGENT`, `PGFERRY_TOKEN`,
 * `PGFERRY_TOKEN_FILE`, `PGFERRY_CA_CERT`; connection.ts) and spec files
 * (spec-file.ts; docs/cli.md).
 * Output: stdout for results, stderr for errors, and the exit code:
 *
 *   | code | meaning                                                                    |
 *   |------|----------------------------------------------------------------------------|
 *   | 0    | done                                                                       |
 *   | 1    | failed: agent unreachable or refused, preflight, cutover or cutback failed |
 *   | 2    | usage or input error: bad flag, bad spec file, invalid spec                |
 *
 * Secrets: spec files name passwords as `{"env": "VAR"}` or `{"file": "path"}`
 * instead of holding them; the token comes from `--token-file` or the
 * environment (`--token` works too, but is visible in `ps`). Nothing here
 * prints a password or a token.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { AgentClient, CUTOVER_VALIDATIONS, isAgentError, type MigrationMessage } from '../../api/client';
import { isPgferryError } from '../engine/errors';
import { clientOptions, withConnection, type ConnectionFlags } from './connection';
import { loadSpecFile } from './spec-file';
import { DEFAULT_WIDTH, formatBytes, formatDuration, renderCutback, renderCutover, renderList, renderMigration, renderPreflight } from './status-view';
import { sleep } from '../engine/sleep';

/** Exit codes of the client commands. */
export const EXIT = { ok: 0, failure: 1, usage: 2 } as const;

// The connection flags (connection.ts) and spec files (spec-file.ts), also reachable from here.
export { CLIENT_ENV, DEFAULT_AGENT, clientOptions, type ConnectionFlags } from './connection';
export { PULUMI_ONLY_KEYS, loadSpecFile } from './spec-file';

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

/** Where the commands write; a test can capture it. */
export interface Io {
  out: NodeJS.WriteStream | { write(s: string): unknown; isTTY?: boolean; columns?: number; rows?: number };
  err: { write(s: string): unknown; isTTY?: boolean };
  env: NodeJS.ProcessEnv;
}

const termWidth = (io: Io) => (io.out.isTTY && io.out.columns ? Math.min(io.out.columns, 120) : DEFAULT_WIDTH);
const print = (io: Io, lines: string[]) => {
  io.out.write(`${lines.join('\n')}\n`);
};
const printJson = (io: Io, v: unknown, compact = false) => {
  io.out.write(`${compact ? JSON.stringify(v) : JSON.stringify(v, null, 2)}\n`);
};

/** Redraws a block of lines in place on a terminal; appends frames otherwise. */
class Screen {
  private drawn = 0;
  constructor(private io: Io) {}
  draw(lines: string[]): void {
    if (this.io.out.isTTY) {
      const clear = this.drawn ? `\x1b[${this.drawn}F\x1b[0J` : '';
      this.io.out.write(`${clear}${lines.join('\n')}\n`);
      this.drawn = lines.length;
    } else {
      this.io.out.write(`--- ${new Date().toISOString()}\n${lines.join('\n')}\n`);
    }
  }
}

/** Turn any failure into stderr text and an exit code. */
export function reportError(io: Io, e: unknown): number {
  if (isPgferryError(e)) {
    io.err.write(`pgferry: ${e.code}: ${e.message}\n${e.remedy ? `  fix: ${e.remedy}\n` : ''}`);
    return e.code === 'INVALID_SPEC' ? EXIT.usage : EXIT.failure;
  }
  if (isAgentError(e)) {
    let remedy = e.remedy;
    if (e.code === 'AGENT_UNREACHABLE') {
      remedy = [remedy, 'If the agent requires client certificates (--tls-client-ca), pass --client-cert and --client-key.'].filter(Boolean).join(' ');
    }
    io.err.write(`pgferry: ${e.code}: ${e.message}\n${remedy ? `  fix: ${remedy}\n` : ''}`);
    return e.code === 'INVALID_SPEC' ? EXIT.usage : EXIT.failure;
  }
  io.err.write(`pgferry: ${(e as Error)?.message ?? String(e)}\n`);
  return EXIT.failure;
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

const intArg =
  (name: string, min = 0) =>
  (v: string): number => {
    const n = Number(v);
    if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be a whole number ≥ ${min}.`);
    return n;
  };
const numArg =
  (name: string) =>
  (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError(`${name} must be a number ≥ 0.`);
    return n;
  };

async function withClient<T>(io: Io, flags: ConnectionFlags, fn: (c: AgentClient) => Promise<T>): Promise<T> {
  const client = new AgentClient(clientOptions(flags, io.env));
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

/** Ctrl-C ends a watch cleanly (exit 0). */
function interruptSignal(): { signal: AbortSignal; dispose(): void } {
  const ac = new AbortController();
  const onSig = () => ac.abort();
  process.once('SIGINT', onSig);
  process.once('SIGTERM', onSig);
  return {
    signal: ac.signal,
    dispose: () => {
      process.off('SIGINT', onSig);
      process.off('SIGTERM', onSig);
    },
  };
}

async function watchOne(
  io: Io,
  client: AgentClient,
  id: string,
  intervalMs: number,
  view: { json?: boolean; tables?: boolean },
  until?: (m: MigrationMessage) => boolean,
): Promise<MigrationMessage | undefined> {
  const screen = new Screen(io);
  const intr = interruptSignal();
  let last: MigrationMessage | undefined;
  try {
    await client.watchMigration(
      id,
      intervalMs,
      (m) => {
        last = m;
        if (view.json) printJson(io, m, true);
        else {
          const width = termWidth(io);
          const rows = io.out.isTTY && io.out.rows ? io.out.rows : 0;
          screen.draw(renderMigration(m, { width, allTables: view.tables, maxTables: rows ? Math.max(3, rows - 12) : 20 }));
        }
        return until ? until(m) : false;
      },
      intr.signal,
    );
  } catch (e) {
    if (!(intr.signal.aborted && isAgentError(e) && e.code === 'CANCELLED')) throw e;
  } finally {
    intr.dispose();
  }
  return last;
}

async function watchAll(io: Io, client: AgentClient, intervalMs: number, json: boolean): Promise<void> {
  const screen = new Screen(io);
  const intr = interruptSignal();
  try {
    while (!intr.signal.aborted) {
      const ms = await client.listMigrations();
      if (json) printJson(io, { migrations: ms }, true);
      else screen.draw(renderList(ms, { width: termWidth(io) }));
      await sleep(intervalMs, intr.signal);
    }
  } finally {
    intr.dispose();
  }
}

/** Register the client commands on `program`; each sets `process.exitCode` through `run`. */
type Run = (fn: () => Promise<number | void>) => () => Promise<void>;

/** Wraps an action: its exit code (or the error's) becomes `process.exitCode`. */
function runner(io: Io): Run {
  return (fn) => async () => {
    let code: number;
    try {
      code = (await fn()) ?? EXIT.ok;
    } catch (e) {
      code = reportError(io, e);
    }
    process.exitCode = code;
  };
}

/** Register the client commands on `program`; each sets `process.exitCode` through `run`. */
export function registerClientCommands(program: Command, io: Io = { out: process.stdout, err: process.stderr, env: process.env }): void {
  const run = runner(io);
  registerInspectCommands(program, io, run);
  registerCutoverCommands(program, io, run);
  registerLifecycleCommands(program, io, run);
  registerSchemaCommands(program, io, run);
}

/** status, preflight, start. */
function registerInspectCommands(program: Command, io: Io, run: Run): void {
  withConnection(
    program
      .command('status')
      .argument('[id]', 'a migration id (default: all migrations)')
      .description(
        'Show one migration (phase, per-table progress while copying, lag, apply rate, ETA, WAL kept by the slot, the continuous verification, the schema changes followed, the cutover and its outage) or all of them.',
      )
      .option('--json', 'print the status message(s) as JSON (one object per line with --watch)')
      .option('--watch', 'keep refreshing (in place on a terminal) until Ctrl-C')
      .addOption(new Option('--interval-ms <ms>', 'refresh interval for --watch').argParser(intArg('--interval-ms', 100)).default(1000))
      .option('--tables', 'list every table, not only while copying'),
  ).action((id: string | undefined, o: ConnectionFlags & { json?: boolean; watch?: boolean; intervalMs: number; tables?: boolean }) =>
    run(async () => {
      await withClient(io, o, async (client) => {
        if (id && o.watch) {
          await watchOne(io, client, id, o.intervalMs, { json: o.json, tables: o.tables });
          return;
        }
        if (o.watch) {
          await watchAll(io, client, o.intervalMs, !!o.json);
          return;
        }
        if (id) {
          const m = await client.getMigration(id);
          if (o.json) printJson(io, m);
          else print(io, renderMigration(m, { width: termWidth(io), allTables: o.tables }));
        } else {
          const ms = await client.listMigrations();
          if (o.json) printJson(io, { migrations: ms });
          else print(io, renderList(ms, { width: termWidth(io) }));
        }
      });
    })(),
  );

  withConnection(
    program
      .command('preflight')
      .description('Check a spec against source and target without changing anything (exit 1 when a check fails).')
      .requiredOption('--spec <file>', 'the migration spec (JSON; see docs/cli.md)')
      .option('--json', 'print the report as JSON'),
  ).action((o: ConnectionFlags & { spec: string; json?: boolean }) =>
    run(async () => {
      const spec = loadSpecFile(o.spec, io.env, (w) => io.err.write(`pgferry: warning: ${w}\n`));
      return withClient(io, o, async (client) => {
        const report = await client.preflight(spec);
        if (o.json) printJson(io, report);
        else print(io, renderPreflight(report, { width: termWidth(io) }));
        return report.ok ? EXIT.ok : EXIT.failure;
      });
    })(),
  );

  withConnection(
    program
      .command('start')
      .description('Start a migration (idempotent: the same id and spec returns the running one).')
      .requiredOption('--spec <file>', 'the migration spec (JSON; see docs/cli.md)')
      .option('--json', 'print the status message as JSON')
      .option('--watch', 'then follow it until it is syncing (exit 0) or failed (exit 1)'),
  ).action((o: ConnectionFlags & { spec: string; json?: boolean; watch?: boolean }) =>
    run(async () => {
      const spec = loadSpecFile(o.spec, io.env, (w) => io.err.write(`pgferry: warning: ${w}\n`));
      return withClient(io, o, async (client) => {
        let m = await client.startMigration(spec);
        if (o.json) printJson(io, m, !!o.watch);
        else print(io, [`Started migration ${m.id}.`, ...renderMigration(m, { width: termWidth(io) })]);
        if (o.watch)
          m = (await watchOne(io, client, m.id, 1000, { json: o.json }, (x) => ['syncing', 'completed', 'failed', 'deleted'].includes(x.phase))) ?? m;
        return m.phase === 'failed' ? EXIT.failure : EXIT.ok;
      });
    })(),
  );
}

/** What a cutover (or a cutback) waits for, said beside its state. */
function narration(m: MigrationMessage, kind: SwitchKind): string {
  const c = kind === 'cutover' ? m.cutover : m.cutback;
  if (c?.state === 'waiting-for-lag' && kind === 'cutback' && m.reverse) {
    return ` (the old source is ${formatBytes(m.reverse.lagBytes)}, ${formatDuration(m.reverse.lagSeconds)} behind the target; nothing is fenced yet)`;
  }
  if (c?.state === 'waiting-for-lag') return ` (lag ${formatBytes(m.lagBytes)}, ${formatDuration(m.lagSeconds)})`;
  const v = m.verification;
  if (c?.state === 'waiting-for-verification' && v) return ` (${v.tablesVerified}/${v.tablesTotal} tables verified; nothing is fenced yet)`;
  return '';
}

type CutoverFlags = ConnectionFlags & {
  maxLagBytes?: number;
  maxLagSeconds?: number;
  timeoutMs?: number;
  validation?: (typeof CUTOVER_VALIDATIONS)[number];
  skipSequences?: boolean;
  acceptSchemaDifference?: string[];
  json?: boolean;
};

/** The two fenced switches: to the target (`cutover`) and back to the old source (`cutback`). */
type SwitchKind = 'cutover' | 'cutback';

const SWITCH_DESCRIPTIONS: Record<SwitchKind, string> = {
  cutover:
    'Wait for a small lag (and, with --validation changes, for every table to be verified), fence writers on the source, drain, set sequences, check the rows and switch to the target (exit 1 unless it completed).',
  cutback:
    'Go back to the old source after a completed cutover with a rollbackWindow: wait until the reverse sync has a small lag, fence writers on the target, drain into the source, set sequences, check the rows and switch to the source (exit 1 unless it completed; a failed cutback lifts the fence on the target and the reverse sync keeps running).',
};

/** `pgferry cutover <id>` and `pgferry cutback <id>`: the same flags (but the schema acceptance, a cutover's), report and narration. */
function registerSwitchCommand(program: Command, io: Io, run: Run, kind: SwitchKind): void {
  const side = kind === 'cutover' ? 'the target' : 'the source';
  let cmd = program
    .command(kind)
    .argument('<id>', 'the migration id')
    .description(SWITCH_DESCRIPTIONS[kind])
    .addOption(
      new Option(
        '--max-lag-bytes <n>',
        `fence only once the lag${kind === 'cutback' ? ' of the reverse sync' : ''} is at most this many bytes (agent default 1 MiB)`,
      ).argParser(intArg('--max-lag-bytes')),
    )
    .addOption(new Option('--max-lag-seconds <s>', '…and at most this many seconds (agent default 5)').argParser(numArg('--max-lag-seconds')))
    .addOption(new Option('--timeout-ms <ms>', `the whole ${kind} (agent default 300000)`).argParser(intArg('--timeout-ms', 1)))
    .addOption(
      new Option(
        '--validation <kind>',
        kind === 'cutover'
          ? 'what to check of the rows inside the fence: changes (agent default: only the rows applied since the continuous verification, after waiting until every table is verified), full (every row; checksums is its older name), counts (row counts), none'
          : 'what to check of the rows inside the fence: full (the default; changes means full here, as nothing verifies continuously in this direction), counts (row counts), none',
      ).choices(CUTOVER_VALIDATIONS),
    )
    .option('--skip-sequences', `do not set the sequences on ${side} at the fence`);
  if (kind === 'cutover') {
    cmd = cmd.option('--accept-schema-difference <object...>', 'a schema difference (object as `pgferry schema diff` names it) that does not fail the cutover');
  }
  withConnection(cmd.option('--json', 'print the resulting status message as JSON')).action((id: string, o: CutoverFlags) =>
    run(async () => {
      return withClient(io, o, async (client) => {
        if (!o.json) io.err.write(`pgferry: ${kind === 'cutover' ? 'cutting over' : 'cutting back'} ${id}…\n`);
        const reportOf = (x: MigrationMessage) => (kind === 'cutover' ? x.cutover : x.cutback);
        // On a terminal, narrate the switch's states while the call runs.
        const narrate = !o.json && io.err.isTTY;
        const stopNarrating = new AbortController();
        let narrating: Promise<void> | undefined;
        if (narrate) {
          const attempts = reportOf(await client.getMigration(id))?.attempts ?? 0;
          let shown = '';
          narrating = client
            .watchMigration(
              id,
              250,
              (x) => {
                const c = reportOf(x);
                // A new state, or (while waiting for it) the verification's progress.
                const now = c ? `${c.state}${c.state === 'waiting-for-verification' ? ` ${x.verification?.tablesVerified}` : ''}` : '';
                if (!c || c.attempts <= attempts || now === shown) return;
                shown = now;
                io.err.write(`  ${new Date().toISOString().slice(11, 19)} ${c.state}${narration(x, kind)}\n`);
              },
              stopNarrating.signal,
            )
            .catch(() => undefined);
        }
        let m: MigrationMessage;
        try {
          const req = {
            id,
            maxLagBytes: o.maxLagBytes,
            maxLagSeconds: o.maxLagSeconds,
            timeoutMs: o.timeoutMs,
            validation: o.validation,
            skipSequences: o.skipSequences,
            acceptSchemaDifferences: o.acceptSchemaDifference ?? [],
          };
          m = kind === 'cutover' ? await client.cutover(req) : await client.cutback(req);
        } finally {
          stopNarrating.abort();
          await narrating;
        }
        if (o.json) printJson(io, m);
        else print(io, kind === 'cutover' ? renderCutover(m, { width: termWidth(io) }) : renderCutback(m, { width: termWidth(io) }));
        const done = kind === 'cutover' ? m.phase === 'completed' : m.phase === 'cut-back';
        return done && reportOf(m)?.state === 'completed' ? EXIT.ok : EXIT.failure;
      });
    })(),
  );
}

/** cutover, cutback, cancel-cutover, unfence. */
function registerCutoverCommands(program: Command, io: Io, run: Run): void {
  registerSwitchCommand(program, io, run, 'cutover');
  registerSwitchCommand(program, io, run, 'cutback');

  withConnection(
    program
      .command('cancel-cutover')
      .argument('<id>', 'the migration id')
      .description('Cancel a cutover that is still waiting for the lag to drop (before the fence).')
      .option('--json', 'print the resulting status message as JSON'),
  ).action((id: string, o: ConnectionFlags & { json?: boolean }) =>
    run(async () => {
      await withClient(io, o, async (client) => {
        const m = await client.cancelCutover(id);
        if (o.json) printJson(io, m);
        else print(io, renderMigration(m, { width: termWidth(io) }));
      });
    })(),
  );

  withConnection(
    program
      .command('unfence')
      .argument('<id>', 'the migration id')
      .description(
        'Lift the write fence a cutover raised on the source database now, verified (idempotent: nothing to do when none is up). A running cutover is cancelled first.',
      )
      .option('--after-cutover', 'also lift the fence a completed cutover keeps on purpose (writes to the old source then never reach the target)')
      .option('--json', 'print the resulting status message as JSON'),
  ).action((id: string, o: ConnectionFlags & { json?: boolean; afterCutover?: boolean }) =>
    run(async () => {
      await withClient(io, o, async (client) => {
        const before = await client.getMigration(id);
        const m = await client.unfence(id, { afterCutover: o.afterCutover });
        if (o.json) {
          printJson(io, m);
          return;
        }
        const was = before.fence?.state && before.fence.state !== 'none';
        print(io, [
          was
            ? `Lifted the fence on database '${before.fence!.database}' and verified it: new sessions there are writable again.`
            : `No fence of migration ${m.id} is up on the source: nothing to do.`,
          ...renderMigration(m, { width: termWidth(io) }),
        ]);
      });
    })(),
  );
}

/** pause, resume, delete. */
function registerLifecycleCommands(program: Command, io: Io, run: Run): void {
  withConnection(
    program
      .command('pause')
      .argument('<id>', 'the migration id')
      .description('Pause a migration until `pgferry resume` (also across agent restarts). The slot stays: the source keeps the WAL written meanwhile.')
      .option('--json', 'print the resulting status message as JSON'),
  ).action((id: string, o: ConnectionFlags & { json?: boolean }) =>
    run(async () => {
      await withClient(io, o, async (client) => {
        const m = await client.pauseMigration(id);
        if (o.json) printJson(io, m);
        else
          print(io, [`Paused migration ${m.id}; the source keeps WAL for it until: pgferry resume ${m.id}`, ...renderMigration(m, { width: termWidth(io) })]);
      });
    })(),
  );

  withConnection(
    program
      .command('resume')
      .argument('<id>', 'the migration id')
      .description('Resume a paused migration, or retry a failed one once its cause is fixed, from where it stopped.')
      .option('--json', 'print the resulting status message as JSON'),
  ).action((id: string, o: ConnectionFlags & { json?: boolean }) =>
    run(async () => {
      await withClient(io, o, async (client) => {
        const m = await client.resumeMigration(id);
        if (o.json) printJson(io, m);
        else print(io, [`Resumed migration ${m.id}.`, ...renderMigration(m, { width: termWidth(io) })]);
      });
    })(),
  );

  withConnection(
    program
      .command('delete')
      .argument('<id>', 'the migration id')
      .description("Stop a migration and drop its replication slot and publication on the source (the target's data stays).")
      .option('--json', 'print the response as JSON'),
  ).action((id: string, o: ConnectionFlags & { json?: boolean }) =>
    run(async () => {
      await withClient(io, o, async (client) => {
        const r = await client.deleteMigration(id);
        if (o.json) printJson(io, r);
        else
          print(io, [`Deleted migration ${r.id}; dropped on the source: ${r.dropped.length ? r.dropped.join(', ') : 'nothing'}. The target keeps its data.`]);
      });
    })(),
  );
}

/** schema diff. */
function registerSchemaCommands(program: Command, io: Io, run: Run): void {
  const schema = program.command('schema').description("The target's schema compared with the source's.");
  withConnection(
    schema
      .command('diff')
      .argument('<id>', 'the migration id')
      .description(
        "Compare the target's schema with the source's now, for every object the schema stage carries (what the cutover checks before the handover). Exit 1 when they differ.",
      )
      .option('--json', 'print the comparison as JSON'),
  ).action((id: string, o: ConnectionFlags & { json?: boolean }) =>
    run(async () =>
      withClient(io, o, async (client) => {
        const d = await client.schemaDiff(id);
        if (o.json) printJson(io, d);
        else print(io, d.text.split('\n'));
        return d.equal ? EXIT.ok : EXIT.failure;
      }),
    )(),
  );
}
