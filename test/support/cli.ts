/**
 * Run the `pgferry` CLI (dist/agent/cli/main.js) as a child process and collect
 * its exit code, stdout and stderr. Asynchronous, so agents started by the
 * same test keep their pipes drained while the CLI runs.
 */
import { spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import { CLI } from './agent';

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], opts: { env?: Record<string, string | undefined>; timeoutMs?: number } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const env: NodeJS.ProcessEnv = { ...process.env };
    for (const k of ['PGFERRY_AGENT', 'PGFERRY_TOKEN', 'PGFERRY_TOKEN_FILE', 'PGFERRY_CA_CERT', 'PGFERRY_AGENT_TOKEN']) delete env[k];
    for (const [k, v] of Object.entries(opts.env ?? {})) {
      if (v === undefined) delete env[k];
      else env[k] = v;
    }
    const child = spawn(process.execPath, [CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** True when util-linux `script` is installed (it gives the CLI a terminal). */
export function haveTerminalRunner(): boolean {
  return ['/usr/bin/script', '/bin/script'].some((p) => {
    try {
      return statSync(p).isFile();
    } catch {
      return false;
    }
  });
}

const shellQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * Run the CLI with a pseudo-terminal as stdin, stdout and stderr (through
 * `script`), so that it behaves as for a person: stdout and stderr are merged
 * into `stdout`, with the terminal's CR LF line ends turned back into LF.
 * `columns` sets the terminal's width (default: unknown, which the CLI
 * treats as 80).
 */
export function runCliInTerminal(
  args: string[],
  opts: { env?: Record<string, string | undefined>; timeoutMs?: number; columns?: number } = {},
): Promise<CliResult> {
  const size = opts.columns ? `stty cols ${opts.columns} rows 40; ` : '';
  const command = size + [process.execPath, CLI, ...args].map(shellQuote).join(' ');
  return new Promise((resolve, reject) => {
    const env: NodeJS.ProcessEnv = { ...process.env, ...opts.env };
    const child = spawn('script', ['-qec', command, '/dev/null'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: stdout.replace(/\r\n/g, '\n'), stderr });
    });
  });
}
