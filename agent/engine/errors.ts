/**
 * errors — the one error type of pgferry.
 *
 * Every failure a user can cause is a `PgferryError` with a stable `code`
 * (SCREAMING_SNAKE), a `message` stating the fact (objects quoted), a `remedy`
 * (the setting, statement or flag that fixes it) and the `cause` it wraps.
 * The gRPC surface maps codes to status codes in one table (`GRPC_STATUS_BY_CODE`
 * in server.ts); the provider turns argument problems into CheckFailures.
 *
 * Secrets never enter messages: `redact()` scrubs known secret values and
 * `password=`/`postgres://user:pw@` forms from any text that leaves the agent.
 */

export const ERROR_CODES = [
  'INVALID_SPEC',
  'MIGRATION_NOT_FOUND',
  'MIGRATION_EXISTS_DIFFERENT_SPEC',
  'SOURCE_UNREACHABLE',
  'TARGET_UNREACHABLE',
  'AUTH_FAILED',
  'DATABASE_NOT_FOUND',
  'INSUFFICIENT_PRIVILEGE',
  'PREFLIGHT_FAILED',
  'SLOT_NAME_TAKEN',
  'SCHEMA_FAILED',
  'COPY_FAILED',
  'APPLY_FAILED',
  'SCHEMA_DRIFT',
  'CUTOVER_FAILED',
  'CUTOVER_TIMEOUT',
  'CUTOVER_CANCELLED',
  'WRONG_PHASE',
  'UNAUTHENTICATED',
  'STATE_CORRUPT',
  'INTERNAL',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

export class PgferryError extends Error {
  readonly code: ErrorCode;
  readonly remedy: string;
  constructor(code: ErrorCode, message: string, remedy = '', options?: { cause?: unknown }) {
    super(redact(message), options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = 'PgferryError';
    this.code = code;
    this.remedy = redact(remedy);
  }
  /** message + remedy, as shown to a person. */
  get detail(): string {
    return this.remedy ? `${this.message} Fix: ${this.remedy}` : this.message;
  }
}

export function isPgferryError(e: unknown): e is PgferryError {
  return e instanceof PgferryError;
}

const secretValues = new Set<string>();

/** Remember a secret so that `redact()` scrubs it from any text. */
export function registerSecret(value: string | undefined | null): void {
  if (value && value.length >= 4) secretValues.add(value);
}

/** Scrub secrets from text that may leave the process (logs, errors, status). */
export function redact(text: string): string {
  let out = text;
  for (const s of secretValues) if (out.includes(s)) out = out.split(s).join('***');
  out = out.replace(/(postgres(?:ql)?:\/\/[^:/@\s]+:)[^@\s]+@/gi, '$1***@');
  out = out.replace(/(password\s*=\s*)('[^']*'|\S+)/gi, '$1***');
  return out;
}

/** A PostgreSQL server error as node-postgres reports it. */
export interface PgServerError extends Error {
  code?: string;
  detail?: string;
  hint?: string;
  routine?: string;
}

export function sqlState(e: unknown): string | undefined {
  const code = (e as PgServerError | undefined)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/**
 * Turn a connection-time failure into an error that says what is wrong with
 * which endpoint (`side`) and how to fix it.
 */
export function connectError(side: 'source' | 'target', where: string, e: unknown): PgferryError {
  const err = e as PgServerError & { errno?: number; syscall?: string };
  const state = sqlState(e);
  const raw = err?.message ?? String(e);
  const field = `\`${side}\``;
  if (state === '28P01' || state === '28000') {
    return new PgferryError(
      'AUTH_FAILED',
      `Authentication to the ${side} ${where} failed: ${raw}.`,
      `Check ${field}.user and ${field}.password (and pg_hba.conf on the ${side} server).`,
      { cause: e },
    );
  }
  if (state === '3D000') {
    return new PgferryError(
      'DATABASE_NOT_FOUND',
      `The ${side} database does not exist at ${where}: ${raw}.`,
      `Set ${field}.database to an existing database (list them with \\l in psql).`,
      { cause: e },
    );
  }
  if (state === '42501') {
    return new PgferryError(
      'INSUFFICIENT_PRIVILEGE',
      `The ${side} user lacks a privilege at ${where}: ${raw}.`,
      `Grant the privilege to ${field}.user or connect as a role that has it.`,
      { cause: e },
    );
  }
  const code = side === 'source' ? 'SOURCE_UNREACHABLE' : 'TARGET_UNREACHABLE';
  if (/does not support SSL/i.test(raw)) {
    return new PgferryError(
      code,
      `The ${side} server at ${where} does not accept TLS connections, but ${field}.sslMode requires TLS.`,
      `Enable ssl on the ${side} server, or set ${field}.sslMode to 'prefer' (TLS when offered) or 'disable'.`,
      { cause: e },
    );
  }
  if (/self[- ]signed|unable to verify|altname|certificate/i.test(raw)) {
    return new PgferryError(
      code,
      `The ${side} server's TLS certificate at ${where} could not be verified: ${raw}.`,
      `Give ${field}.sslRootCert the CA that signed it (and for verify-full use the host name in the certificate), or use sslMode 'require' to encrypt without verifying.`,
      { cause: e },
    );
  }
  return new PgferryError(
    code,
    `Cannot connect to the ${side} at ${where}: ${raw}.`,
    `Check ${field}.host and ${field}.port, that the server is running and that the agent's network can reach it.`,
    { cause: e },
  );
}

/** Wrap anything thrown into a PgferryError, keeping codes that are already ours. */
export function asPgferryError(e: unknown, fallback: ErrorCode = 'INTERNAL', context = ''): PgferryError {
  if (e instanceof PgferryError) return e;
  const err = e as PgServerError;
  const state = sqlState(e);
  const parts = [context, err?.message ?? String(e)].filter(Boolean).join(': ');
  const extra = [state ? `SQLSTATE ${state}` : '', err?.detail ? `detail: ${err.detail}` : ''].filter(Boolean).join('; ');
  return new PgferryError(fallback, extra ? `${parts} (${extra})` : parts, err?.hint ?? '', { cause: e });
}

/**
 * Errors after which a reconnect may succeed: lost connections, server
 * shutdown, too many connections, serialization failures and deadlocks, a
 * replication slot still held by the previous session.
 */
export function isTransientError(e: unknown): boolean {
  if (e instanceof PgferryError) return e.code === 'SOURCE_UNREACHABLE' || e.code === 'TARGET_UNREACHABLE';
  const state = sqlState(e);
  if (state) return state.startsWith('08') || ['57P01', '57P02', '57P03', '53300', '40001', '40P01', '55006', '55P03'].includes(state);
  const code = (e as { code?: unknown })?.code;
  if (typeof code === 'string' && ['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNABORTED'].includes(code))
    return true;
  return /Connection terminated|connection timeout|Client has encountered a connection error|not queryable|Client was closed/i.test(
    (e as Error)?.message ?? '',
  );
}

/** A transient error, also when wrapped (COPY_FAILED around a lost connection). */
export function isTransientDeep(e: unknown): boolean {
  for (let x: unknown = e, depth = 0; x && depth < 5; x = (x as { cause?: unknown }).cause, depth++) {
    if (isTransientError(x)) return true;
  }
  return false;
}
