/**
 * log-fn — the one logging signature of the engine: a level, a message and
 * structured fields. The agent's server side binds it to pino (server/log.ts);
 * tests and the bench pass their own.
 */
export type LogFn = (level: 'info' | 'warn' | 'error', msg: string, fields?: object) => void;
