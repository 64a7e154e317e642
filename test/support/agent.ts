/**
 * A real agent process for tests: `node dist/agent/cli.js agent` on a free
 * loopback port with its own state directory. `kill()` is `kill -9`;
 * `restart()` starts a new process on the same state directory.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync, createWriteStream, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface AgentProcess {
  endpoint: string;
  token?: string;
  stateDir: string;
  logFile: string;
  pid: number;
  stop(): Promise<void>;
  kill(): void;
  restart(): Promise<void>;
  logs(): string;
}

const CLI = join(__dirname, '..', '..', 'agent', 'cli.js');

async function spawnAgent(stateDir: string, logFile: string, extraArgs: string[]): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, [CLI, 'agent', '--listen', '127.0.0.1:0', '--state-dir', stateDir, '--log-format', 'json', ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = createWriteStream(logFile, { flags: 'a' });
  child.stderr!.pipe(log);
  const port = await new Promise<number>((resolve, reject) => {
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d.toString();
      const m = /listening (\d+)/.exec(buf);
      if (m) { child.stdout!.off('data', onData); resolve(Number(m[1])); }
    };
    child.stdout!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`agent exited with ${code} before listening; see ${logFile}:\n${readFileSync(logFile, 'utf8').slice(-2000)}`)));
  });
  return { child, port };
}

export async function startAgent(opts: { token?: string; args?: string[] } = {}): Promise<AgentProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'pgferry-agent-'));
  const stateDir = join(dir, 'state');
  const logFile = join(dir, 'agent.log');
  const args = [...(opts.args ?? [])];
  if (opts.token) {
    const tf = join(dir, 'token');
    writeFileSync(tf, opts.token + '\n', { mode: 0o600 });
    args.push('--token-file', tf);
  }
  let { child, port } = await spawnAgent(stateDir, logFile, args);
  const proc: AgentProcess = {
    endpoint: `127.0.0.1:${port}`,
    token: opts.token,
    stateDir,
    logFile,
    pid: child.pid!,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 10000);
        await exited;
        clearTimeout(t);
      }
    },
    kill() { child.kill('SIGKILL'); },
    async restart() {
      await proc.stop();
      ({ child, port } = await spawnAgent(stateDir, logFile, args));
      proc.endpoint = `127.0.0.1:${port}`;
      proc.pid = child.pid!;
    },
    logs() { return readFileSync(logFile, 'utf8'); },
  };
  return proc;
}

export function removeAgentDir(a: AgentProcess): void {
  rmSync(join(a.stateDir, '..'), { recursive: true, force: true });
}
