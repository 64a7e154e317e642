/**
 * log — structured logs: JSON lines (pino) for machines, or a compact human
 * form for terminals (`--log-format pretty`). Every line passes `redact()`,
 * so a secret that slipped into a message is scrubbed before it is written.
 */
import pino from 'pino';
import { Writable } from 'node:stream';
import { redact } from './errors';
import type { LogFn } from './migration';

export type LogFormat = 'json' | 'pretty';

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };

export function createLogger(format: LogFormat = 'json', out: NodeJS.WritableStream = process.stderr, level = 'info'): { log: LogFn; logger: pino.Logger } {
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const line = redact(chunk.toString('utf8'));
      if (format === 'json') { out.write(line); cb(); return; }
      try {
        const o = JSON.parse(line) as Record<string, unknown>;
        const { level: lv, time, msg, pid: _p, hostname: _h, ...rest } = o;
        const t = new Date(Number(time)).toISOString().slice(11, 19);
        const extra = Object.entries(rest).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' ');
        out.write(`${t} ${(LEVELS[Number(lv)] ?? lv).toString().padEnd(5)} ${msg}${extra ? `  ${extra}` : ''}\n`);
      } catch { out.write(line); }
      cb();
    },
  });
  const logger = pino({ level, base: { pid: process.pid } }, sink);
  const log: LogFn = (lv, msg, fields) => logger[lv](fields ?? {}, msg);
  return { log, logger };
}
