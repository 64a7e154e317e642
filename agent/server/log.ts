/**
 * log — structured logs: JSON lines (pino) for machines, or a compact human
 * form for terminals (`--log-format pretty`).
 *
 * Every line about a migration carries `migration` (the code passes it) and,
 * where the agent knows it, `phase` (added here by `LoggerOptions.phaseOf`, so
 * no call site has to remember it).
 *
 * Secrets: every line passes `redact()` (registered passwords and tokens,
 * `password=…`, `postgres://user:pw@`), and fields named like a secret
 * (`password`, `token`, `authorization`, `connectionString`, at any of the
 * first two levels) are censored by pino before serialisation.
 */
import pino from 'pino';
import { Writable } from 'node:stream';
import { redact } from '../engine/errors';
import type { LogFn } from '../engine/log-fn';

export const LOG_FORMATS = ['json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };

const SECRET_FIELDS = ['password', 'token', 'authorization', 'connectionString', 'clientKey'];
const REDACT_PATHS = SECRET_FIELDS.flatMap((f) => [f, `*.${f}`]);

export interface LoggerOptions {
  /** The current phase of a migration, added as `phase` to lines that name a `migration` but no phase. Default: none. */
  phaseOf?: (migration: string) => string | undefined;
  /** Called for every line (after enrichment), e.g. to count errors. Default: none. */
  onLog?: (level: 'info' | 'warn' | 'error', msg: string, fields: Record<string, unknown>) => void;
}

/**
 * A logger writing to `out` (default stderr) at `level` (default `info`).
 *
 * @example
 * const { log } = createLogger('pretty');
 * log('info', 'phase loading', { migration: 'shop', phase: 'loading' });
 * // 12:00:01 INFO  [shop/loading] phase loading
 */
export function createLogger(
  format: LogFormat = 'json',
  out: NodeJS.WritableStream = process.stderr,
  level: LogLevel | string = 'info',
  opts: LoggerOptions = {},
): { log: LogFn; logger: pino.Logger } {
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const line = redact(chunk.toString('utf8'));
      if (format === 'json') {
        out.write(line);
        cb();
        return;
      }
      try {
        const o = JSON.parse(line) as Record<string, unknown>;
        const { level: lv, time, msg, pid: _p, hostname: _h, migration, phase, ...rest } = o;
        const t = new Date(Number(time)).toISOString().slice(11, 19);
        const where = migration ? ` [${String(migration)}${phase ? `/${String(phase)}` : ''}]` : '';
        const extra = Object.entries(rest)
          .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
          .join(' ');
        out.write(`${t} ${(LEVELS[Number(lv)] ?? lv).toString().padEnd(5)}${where} ${msg}${extra ? `  ${extra}` : ''}\n`);
      } catch {
        out.write(line);
      }
      cb();
    },
  });
  const logger = pino({ level, base: { pid: process.pid }, redact: { paths: REDACT_PATHS, censor: '***' } }, sink);
  const log: LogFn = (lv, msg, fields) => {
    let f = (fields ?? {}) as Record<string, unknown>;
    if (opts.phaseOf && typeof f.migration === 'string' && f.phase === undefined) {
      const phase = opts.phaseOf(f.migration);
      if (phase) f = { ...f, phase };
    }
    try {
      opts.onLog?.(lv, msg, f);
    } catch {
      /* an observer must never break logging */
    }
    logger[lv](f, msg);
  };
  return { log, logger };
}
