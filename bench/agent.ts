/**
 * agent — a real pgferry agent process for the bench (the compiled
 * `dist/agent/cli/main.js agent` on a free loopback port with its own state dir
 * under /tmp), its typed gRPC client, and the waits the scenarios share:
 * "phase is X", "the migration failed". The pid is known from the spawn on,
 * so the RSS sampler also sees a restarting agent's start-up.
 *
 * The process is registered with cleanup.ts: SIGKILLed and its temp dir
 * removed on failure or Ctrl-C.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentClient, type MigrationMessage, type MigrationSpecMessage } from '../api/client';
import type { Cluster } from '../dev/testbed';
import { onCleanup } from './cleanup';
import { fatal, pollUntil } from './measure';

const CLI = join(__dirname, '..', 'agent', 'cli', 'main.js');

/**
 * One `pgferry agent` process: `spawn()` starts it on a free loopback port
 * and resolves once it printed `listening PORT`; `stop()` is SIGTERM (then
 * SIGKILL after 10 s) and waits for the exit. The state dir outlives it.
 */
class AgentProcess {
  child: ChildProcess | null = null;
  endpoint = '';
  readonly stateDir: string;
  readonly logFile: string;
  constructor(readonly dir: string) {
    this.stateDir = join(dir, 'state');
    this.logFile = join(dir, 'agent.log');
  }
  /** The pid of the current process (0 when none). */
  get pid(): number {
    return this.child?.pid ?? 0;
  }
  async spawn(): Promise<void> {
    const child = spawn(process.execPath, [CLI, 'agent', '--listen', '127.0.0.1:0', '--state-dir', this.stateDir, '--log-format', 'json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    child.stderr!.pipe(createWriteStream(this.logFile, { flags: 'a' }));
    const port = await new Promise<number>((resolve, reject) => {
      let buf = '';
      const onData = (d: Buffer) => {
        buf += d.toString();
        const m = /listening (\d+)/.exec(buf);
        if (m) {
          child.stdout!.off('data', onData);
          child.off('exit', onExit);
          resolve(Number(m[1]));
        }
      };
      const onExit = (code: number | null) => reject(new Error(`the agent exited (${code}) before listening; its log is ${this.logFile}`));
      child.stdout!.on('data', onData);
      child.once('exit', onExit);
    });
    this.endpoint = `127.0.0.1:${port}`;
  }
  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(t);
  }
  logs(): string {
    return readFileSync(this.logFile, 'utf8');
  }
}

export class BenchAgent {
  client: AgentClient;
  private constructor(
    readonly proc: AgentProcess,
    private readonly release: () => Promise<void>,
  ) {
    this.client = new AgentClient({ endpoint: proc.endpoint });
  }

  static async start(): Promise<BenchAgent> {
    const proc = new AgentProcess(mkdtempSync(join(tmpdir(), 'pgferry-bench-agent-')));
    let agent: BenchAgent | undefined;
    const release = onCleanup({
      what: 'agent process',
      run: async () => {
        agent?.client.close();
        await proc.stop();
        rmSync(proc.dir, { recursive: true, force: true });
      },
      runSync: () => {
        try {
          proc.child?.kill('SIGKILL');
        } catch {
          /* gone */
        }
        rmSync(proc.dir, { recursive: true, force: true });
      },
    });
    try {
      await proc.spawn();
    } catch (e) {
      const tail = (() => {
        try {
          return proc.logs().trimEnd().split('\n').slice(-10).join('\n');
        } catch {
          return '';
        }
      })();
      await release();
      throw new Error(`${(e as Error).message}${tail ? `:\n${tail}` : ''}`, { cause: e });
    }
    agent = new BenchAgent(proc, release);
    return agent;
  }

  get pid(): number {
    return this.proc.pid;
  }

  /** SIGTERM the process and wait for it to exit (state dir kept). */
  async stopProcess(): Promise<void> {
    this.client.close();
    await this.proc.stop();
  }

  /** Start a new process on the same state dir (it resumes its migrations). */
  async startProcess(): Promise<void> {
    await this.proc.stop();
    await this.proc.spawn();
    this.client = new AgentClient({ endpoint: this.proc.endpoint });
  }

  /** Stop the process and remove its state dir. */
  async dispose(): Promise<void> {
    await this.release();
  }

  /** The last lines of the agent's log, for error reports. */
  logTail(lines = 20): string {
    try {
      return this.proc.logs().trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }

  /** Poll until the migration reaches `phase`; throws at once when it fails. */
  waitPhase(id: string, phase: string, intervalMs = 100): Promise<MigrationMessage> {
    return pollUntil(
      `migration ${id} to reach phase ${phase}`,
      async () => {
        const m = await this.client.getMigration(id);
        if (m.phase === 'failed') throw fatal(`migration ${id} failed: ${m.errorCode}: ${m.errorMessage}${m.errorRemedy ? ` (fix: ${m.errorRemedy})` : ''}`);
        return m.phase === phase ? m : undefined;
      },
      { intervalMs },
    );
  }
}

/** The spec the bench starts: defaults everywhere (schema create, 2 copy workers, 2 index jobs). */
export function benchSpec(id: string, source: Cluster, sourceDb: string, target: Cluster, targetDb: string): MigrationSpecMessage {
  return {
    id,
    source: { ...source.endpoint(sourceDb) },
    target: { ...target.endpoint(targetDb) },
    tables: { include: ['public.*'] },
  };
}
