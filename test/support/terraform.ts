/**
 * The real Terraform CLI for tests: a working directory with a CLI
 * configuration whose `dev_overrides` points `pgferry/pgferry` at the
 * launcher in terraform/bin (no registry, no `terraform init`), commands run
 * with `TF_IN_AUTOMATION=1`, and every byte they print kept for the
 * secret checks. `hclMigration` writes a `pgferry_migration` from the
 * Pulumi provider's argument names, recording the line of each argument.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { argumentAttrs, snake, type Attr } from '../../terraform/schema';

/** The folder holding `terraform-provider-pgferry` (dist/test/support → terraform/bin). */
export const LAUNCHER_DIR = join(__dirname, '..', '..', '..', 'terraform', 'bin');

/** The `terraform` executable on PATH, or undefined. */
export function findTerraform(): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    const f = join(dir, 'terraform');
    try {
      accessSync(f, constants.X_OK);
      return f;
    } catch {
      /* not here */
    }
  }
  return undefined;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export class TerraformDir {
  /** Everything the commands printed (stdout and stderr). */
  readonly printed: string[] = [];
  /** Each command run and its duration in ms. */
  readonly timings: Array<{ command: string; ms: number }> = [];
  private constructor(
    readonly dir: string,
    private readonly terraform: string,
    private readonly env: Record<string, string>,
  ) {}

  /**
   * A fresh directory; `env` adds variables (e.g. `TF_VAR_…` for secrets,
   * kept off the command line); `debugLog` writes Terraform's debug log
   * (the plugin's stderr included) to `terraform.log` in it.
   */
  static create(terraform: string, env: Record<string, string> = {}, opts: { debugLog?: boolean } = {}): TerraformDir {
    const dir = mkdtempSync(join(tmpdir(), 'pgferry-tf-'));
    if (opts.debugLog) Object.assign(env, { TF_LOG: 'DEBUG', TF_LOG_PATH: join(dir, 'terraform.log') });
    const cli = join(dir, 'cli.tfrc');
    writeFileSync(
      cli,
      `provider_installation {\n  dev_overrides {\n    "registry.terraform.io/pgferry/pgferry" = ${JSON.stringify(LAUNCHER_DIR)}\n  }\n  direct {}\n}\n`,
    );
    return new TerraformDir(dir, terraform, { TF_CLI_CONFIG_FILE: cli, TF_IN_AUTOMATION: '1', CHECKPOINT_DISABLE: '1', ...env });
  }

  write(name: string, text: string): void {
    writeFileSync(join(this.dir, name), text);
  }

  /** Run `terraform <args>` in the directory; resolves with its exit code and output. */
  run(args: string[]): Promise<RunResult> {
    const t0 = Date.now();
    return new Promise((resolve, reject) => {
      const child = spawn(this.terraform, args, { cwd: this.dir, env: { ...process.env, ...this.env }, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.once('error', reject);
      child.once('close', (code) => {
        this.printed.push(stdout, stderr);
        this.timings.push({ command: args.filter((a) => !a.startsWith('-')).join(' '), ms: Date.now() - t0 });
        resolve({ code: code ?? -1, stdout, stderr });
      });
    });
  }

  /** Run and fail with its output unless it exits 0. */
  async ok(args: string[]): Promise<string> {
    const r = await this.run(args);
    if (r.code !== 0) throw new Error(`terraform ${args.join(' ')} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
    return r.stdout;
  }

  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** An HCL literal (strings as JSON strings, with `${` and `%{` escaped). */
export function hclValue(v: unknown, indent = ''): string {
  if (typeof v === 'string') return JSON.stringify(v).replace(/\$\{/g, '$${').replace(/%\{/g, '%%{');
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (v === null || v === undefined) return 'null';
  if (Array.isArray(v)) return `[${v.map((x) => hclValue(x, indent)).join(', ')}]`;
  if (typeof v === 'object' && 'expr' in v) return String((v as { expr: string }).expr);
  const entries = Object.entries(v as Record<string, unknown>).map(([k, x]) => `${JSON.stringify(k)} = ${hclValue(x, indent)}`);
  return `{ ${entries.join(', ')} }`;
}

/** A raw HCL expression (e.g. `var.source_password`) in `hclMigration`'s arguments. */
export const expr = (e: string) => ({ expr: e });

/**
 * A `pgferry_migration` block from the Pulumi provider's argument names:
 * nested arguments as blocks, one attribute per line. `lines` maps each
 * argument path (Pulumi's) to its line in the text, from `firstLine`.
 */
export function hclMigration(name: string, args: Record<string, unknown>, firstLine = 1): { text: string; lines: Map<string, number> } {
  const attrs = argumentAttrs();
  const out = [`resource "pgferry_migration" ${JSON.stringify(name)} {`];
  const lines = new Map<string, number>();
  const put = (path: string, text: string) => {
    lines.set(path, firstLine + out.length);
    out.push(text);
  };
  for (const [key, value] of Object.entries(args)) {
    if (value === undefined) continue;
    const a: Attr | undefined = attrs.find((x) => x.key === key);
    if (a?.block && value && typeof value === 'object' && !Array.isArray(value) && !('expr' in value)) {
      put(key, `  ${a.name} {`);
      for (const [k, x] of Object.entries(value as Record<string, unknown>)) {
        if (x !== undefined) put(`${key}.${k}`, `    ${a.nested?.find((n) => n.key === k)?.name ?? snake(k)} = ${hclValue(x)}`);
      }
      out.push('  }');
    } else {
      put(key, `  ${a?.name ?? snake(key)} = ${hclValue(value)}`);
    }
  }
  out.push('}');
  return { text: `${out.join('\n')}\n`, lines };
}

/** One diagnostic of `terraform … -json` output. */
export interface JsonDiagnostic {
  severity: string;
  summary: string;
  detail: string;
  address?: string;
  range?: { filename: string; start: { line: number } };
}

/** The diagnostics in the lines of `terraform … -json` output. */
export function diagnosticsOf(jsonLines: string): JsonDiagnostic[] {
  const out: JsonDiagnostic[] = [];
  for (const line of jsonLines.split('\n')) {
    if (!line.startsWith('{')) continue;
    const m = JSON.parse(line) as { type?: string; diagnostic?: JsonDiagnostic };
    if (m.type === 'diagnostic' && m.diagnostic) out.push(m.diagnostic);
  }
  return out;
}
