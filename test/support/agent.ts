/**
 * A real agent process for tests: `node dist/agent/cli/main.js agent` on a free
 * loopback port with its own state directory. `kill()` is `kill -9`;
 * `restart()` starts a new process on the same state directory.
 *
 * Options add a token (written to a file, never argv), TLS files, a metrics
 * listener and extra arguments or environment; the agent's stderr (its log)
 * goes to `logFile`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync, createWriteStream, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface AgentProcess {
  endpoint: string;
  token?: string;
  /** The file the token was written to (rewrite it to rotate the token). */
  tokenFile?: string;
  stateDir: string;
  logFile: string;
  /** The agent's working directory (state dir, log, token file live under it). */
  dir: string;
  pid: number;
  /** Port of the Prometheus endpoint when started with `metrics: true`. */
  metricsPort?: number;
  stop(): Promise<void>;
  kill(): void;
  /** The process has not exited. */
  alive(): boolean;
  restart(): Promise<void>;
  logs(): string;
}

export interface StartAgentOptions {
  /** Require this bearer token (written to `<dir>/token`, passed as --token-file). */
  token?: string;
  /** Extra arguments for `pgferry agent`. */
  args?: string[];
  /** Serve TLS from these PEM files (and require client certificates signed by `clientCa`). */
  tls?: { cert: string; key: string; clientCa?: string };
  /** Serve metrics on a free loopback port (`metricsPort`). */
  metrics?: boolean;
  /** Extra environment variables for the agent process. */
  env?: Record<string, string>;
}

export const CLI = join(__dirname, '..', '..', 'agent', 'cli', 'main.js');

async function spawnAgent(
  stateDir: string,
  logFile: string,
  extraArgs: string[],
  env: Record<string, string>,
  wantMetrics: boolean,
): Promise<{ child: ChildProcess; port: number; metricsPort?: number }> {
  const child = spawn(process.execPath, [CLI, 'agent', '--listen', '127.0.0.1:0', '--state-dir', stateDir, '--log-format', 'json', ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  const log = createWriteStream(logFile, { flags: 'a' });
  child.stderr!.pipe(log);
  const ports = await new Promise<{ port: number; metricsPort?: number }>((resolve, reject) => {
    let buf = '';
    let settled = false;
    const onData = (d: Buffer) => {
      buf += d.toString();
      const m = /listening (\d+)/.exec(buf);
      const mm = /metrics (\d+)/.exec(buf);
      if (m && (!wantMetrics || mm) && !settled) {
        settled = true;
        child.stdout!.off('data', onData);
        resolve({ port: Number(m[1]), metricsPort: mm ? Number(mm[1]) : undefined });
      }
    };
    child.stdout!.on('data', onData);
    child.once('close', (code) => {
      if (settled) return;
      settled = true;
      // stderr has ended; once the log file has it all, show its tail.
      const fail = () => reject(new Error(`agent exited with ${code} before listening; see ${logFile}:\n${readFileSync(logFile, 'utf8').slice(-2000)}`));
      if (log.writableFinished) fail();
      else log.once('finish', fail);
    });
  });
  return { child, ...ports };
}

/** Agent directories (state + log) to remove when the test process exits; PGFERRY_KEEP_AGENT_DIR=1 keeps them for a post-mortem. */
const agentDirs: string[] = [];
process.once('exit', () => {
  if (process.env.PGFERRY_KEEP_AGENT_DIR) return;
  for (const d of agentDirs) {
    try {
      rmSync(d, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  }
});

export async function startAgent(opts: StartAgentOptions = {}): Promise<AgentProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'pgferry-agent-'));
  agentDirs.push(dir);
  const stateDir = join(dir, 'state');
  const logFile = join(dir, 'agent.log');
  const args = [...(opts.args ?? [])];
  let tokenFile: string | undefined;
  if (opts.token) {
    tokenFile = join(dir, 'token');
    writeFileSync(tokenFile, opts.token + '\n', { mode: 0o600 });
    args.push('--token-file', tokenFile);
  }
  if (opts.tls) {
    args.push('--tls-cert', opts.tls.cert, '--tls-key', opts.tls.key);
    if (opts.tls.clientCa) args.push('--tls-client-ca', opts.tls.clientCa);
  }
  if (opts.metrics) args.push('--metrics-listen', '127.0.0.1:0');
  const env = opts.env ?? {};
  let { child, port, metricsPort } = await spawnAgent(stateDir, logFile, args, env, !!opts.metrics);
  const proc: AgentProcess = {
    endpoint: `127.0.0.1:${port}`,
    token: opts.token,
    tokenFile,
    stateDir,
    logFile,
    dir,
    pid: child.pid!,
    metricsPort,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 10000);
        await exited;
        clearTimeout(t);
      }
    },
    kill() {
      child.kill('SIGKILL');
    },
    alive() {
      return child.exitCode === null && child.signalCode === null;
    },
    async restart() {
      await proc.stop();
      ({ child, port, metricsPort } = await spawnAgent(stateDir, logFile, args, env, !!opts.metrics));
      proc.endpoint = `127.0.0.1:${port}`;
      proc.pid = child.pid!;
      proc.metricsPort = metricsPort;
    },
    logs() {
      return readFileSync(logFile, 'utf8');
    },
  };
  return proc;
}

export function removeAgentDir(a: AgentProcess): void {
  rmSync(join(a.stateDir, '..'), { recursive: true, force: true });
}
