/**
 * auth — who may talk to the agent, and where it may listen.
 *
 * Input: the agent's `--token-file` (or `PGFERRY_AGENT_TOKEN`), the gRPC
 * metadata of each call, the `--listen` address and the insecure-override
 * flags. Output: a verdict per call (`TokenAuth.verify`) and, at start-up,
 * either the warnings to log or a refusal to start (`checkListenSecurity`).
 *
 * It keeps Auth guards 1–4 of docs/architecture.md ("The guards"): 1 tokens
 * never on the command line, 2 constant-time comparison, 3 fail closed,
 * 4 the token never logged.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import type * as grpc from '@grpc/grpc-js';
import { PgferryError, registerSecret } from '../engine/errors';

/** Environment variable the agent reads a (non-rotating) token from when no `--token-file` is given. */
export const AGENT_TOKEN_ENV = 'PGFERRY_AGENT_TOKEN';

/** Tokens shorter than this are accepted but warned about at start-up. */
export const MIN_TOKEN_LENGTH = 16;

/** Why a call was refused; logged (never the token). */
export const AUTH_REJECT_REASONS = ['missing', 'malformed', 'wrong', 'no-tokens'] as const;
export type AuthRejectReason = (typeof AUTH_REJECT_REASONS)[number];

export type AuthResult = { ok: true } | { ok: false; reason: AuthRejectReason };

/** Something that knows the accepted tokens, as SHA-256 digests. */
export interface TokenSource {
  /** Digests of the tokens accepted right now (empty: refuse everything). */
  digests(): Buffer[];
  /** Human description for logs, e.g. `file /etc/pgferry/token`. */
  readonly description: string;
}

const digest = (token: string): Buffer => createHash('sha256').update(token, 'utf8').digest();

/** Parse a token file's text: one token per line; blank lines and `#` comments are ignored. */
export function parseTokens(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
}

/**
 * Tokens from a file, re-read when the file changes (Auth guard 1) and
 * failing closed when it cannot be read (Auth guard 3). `onChange` hears about every
 * (re)load, with the number of tokens or the problem — for the log.
 */
export class TokenFile implements TokenSource {
  readonly description: string;
  private key = '';
  private cached: Buffer[] = [];

  constructor(
    readonly path: string,
    private onChange: (e: { tokens: number; shortest: number } | { problem: string }) => void = () => undefined,
  ) {
    this.description = `file ${path}`;
  }

  /**
   * Load the file now; throws INVALID_SPEC when it is missing, unreadable or
   * empty (used at start-up, where refusing to start is the right answer).
   */
  loadOrThrow(): number {
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (e) {
      throw new PgferryError(
        'INVALID_SPEC',
        `The token file '${this.path}' cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'}).`,
        'Create it with one token per line (e.g. `openssl rand -hex 32 > FILE; chmod 600 FILE`), or fix --token-file.',
        { cause: e },
      );
    }
    const n = parseTokens(text).length;
    if (n === 0)
      throw new PgferryError(
        'INVALID_SPEC',
        `The token file '${this.path}' holds no token.`,
        'Write at least one token (one per line) into it, e.g. `openssl rand -hex 32 > FILE`.',
      );
    this.digests();
    return n;
  }

  digests(): Buffer[] {
    let key: string;
    try {
      const st = statSync(this.path);
      key = `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
    } catch (e) {
      return this.problem(`cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
    }
    if (key === this.key) return this.cached;
    let tokens: string[];
    try {
      tokens = parseTokens(readFileSync(this.path, 'utf8'));
    } catch (e) {
      return this.problem(`cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
    }
    this.key = key;
    // Auth guard 4 (the token never logged): only digests are kept, and redact() scrubs the tokens.
    for (const t of tokens) registerSecret(t);
    this.cached = tokens.map(digest);
    if (tokens.length === 0) this.onChange({ problem: 'holds no token' });
    else this.onChange({ tokens: tokens.length, shortest: Math.min(...tokens.map((t) => t.length)) });
    return this.cached;
  }

  private problem(what: string): Buffer[] {
    const key = `problem:${what}`;
    if (this.key !== key) {
      this.key = key;
      this.onChange({ problem: what });
    }
    this.cached = [];
    return this.cached;
  }
}

/** Tokens fixed for the life of the process (from the environment). */
export class StaticTokens implements TokenSource {
  private readonly list: Buffer[];
  constructor(
    tokens: string[],
    readonly description: string,
  ) {
    for (const t of tokens) registerSecret(t);
    this.list = tokens.map(digest);
  }
  digests(): Buffer[] {
    return this.list;
  }
}

/**
 * Read `PGFERRY_AGENT_TOKEN` (one or more tokens separated by newlines or
 * commas) and remove it from the environment so no child process inherits
 * it (Auth guard 1).
 */
export function tokensFromEnv(env: NodeJS.ProcessEnv = process.env): string[] | undefined {
  const raw = env[AGENT_TOKEN_ENV];
  if (raw === undefined) return undefined;
  delete env[AGENT_TOKEN_ENV];
  return raw
    .split(/[\n,]/)
    .map((t) => t.trim())
    .filter(Boolean);
}

/** Checks the bearer token of each call against a `TokenSource` (Auth guard 2: constant-time comparison). */
export class TokenAuth {
  constructor(readonly source: TokenSource) {}

  /** Verify `authorization: Bearer <token>` in the call's metadata. */
  verify(md: grpc.Metadata): AuthResult {
    const values = md.get('authorization');
    if (values.length === 0) return { ok: false, reason: 'missing' };
    const v = values[0];
    const m = typeof v === 'string' ? /^Bearer[ ]+(\S+)\s*$/i.exec(v) : null;
    if (!m) return { ok: false, reason: 'malformed' };
    const accepted = this.source.digests();
    if (accepted.length === 0) return { ok: false, reason: 'no-tokens' };
    const given = digest(m[1]);
    let ok = false;
    for (const d of accepted) if (timingSafeEqual(given, d)) ok = true;
    return ok ? { ok: true } : { ok: false, reason: 'wrong' };
  }
}

/** Split `host:port` / `[v6]:port`; throws INVALID_SPEC naming `flag` when it is not of that form. */
export function parseListenAddress(address: string, flag: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(address) ?? /^([^:\s/[\]]+):(\d+)$/.exec(address);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new PgferryError(
      'INVALID_SPEC',
      `${flag} '${address}' is not a HOST:PORT address.`,
      `Give ${flag} as HOST:PORT, e.g. 127.0.0.1:7443, 0.0.0.0:7443 or [::1]:7443.`,
    );
  }
  return { host: m[1], port };
}

/** True for addresses only this machine can reach: 127.0.0.0/8, ::1, localhost. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, '');
  if (h === 'localhost' || h === '::1') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (h.startsWith('::ffff:')) return isLoopbackHost(h.slice(7));
  return false;
}

export interface ListenSecurity {
  /** `--listen` as given. */
  listen: string;
  tls: boolean;
  mutualTls: boolean;
  token: boolean;
  /** `--insecure-allow-plaintext` */
  allowPlaintext: boolean;
  /** `--insecure-allow-no-token` */
  allowNoToken: boolean;
}

/**
 * The start-up rule: on an address other machines can reach, the agent
 * serves TLS and requires a token, unless the operator passed the
 * corresponding `--insecure-…` flag. Returns the warnings to log on every
 * start; throws INVALID_SPEC naming the missing option and the override flag.
 */
export function checkListenSecurity(s: ListenSecurity): string[] {
  const { host } = parseListenAddress(s.listen, '--listen');
  const loopback = isLoopbackHost(host);
  const warnings: string[] = [];
  if (!loopback && !s.tls && !s.allowPlaintext) {
    throw new PgferryError(
      'INVALID_SPEC',
      `Refusing to serve plain-text gRPC on the non-loopback address ${s.listen}: tokens and database passwords would cross the network unencrypted.`,
      'Pass --tls-cert FILE --tls-key FILE (and --tls-client-ca FILE for mutual TLS), listen on 127.0.0.1, or, on a network you trust completely, --insecure-allow-plaintext.',
    );
  }
  if (!loopback && !s.token && !s.allowNoToken) {
    throw new PgferryError(
      'INVALID_SPEC',
      `Refusing to serve on the non-loopback address ${s.listen} without a bearer token: anyone who can reach it could start, cut over or delete migrations.`,
      `Pass --token-file FILE (or set ${AGENT_TOKEN_ENV}), listen on 127.0.0.1, or, if mutual TLS alone is enough for you, --insecure-allow-no-token.`,
    );
  }
  if (s.allowPlaintext && !s.tls) {
    warnings.push(`INSECURE: --insecure-allow-plaintext: gRPC on ${s.listen} is not encrypted; tokens and database passwords cross the network in clear text.`);
  }
  if (s.allowNoToken && !s.token) {
    warnings.push(
      `INSECURE: --insecure-allow-no-token: calls on ${s.listen} need no bearer token${s.mutualTls ? ' (a client certificate is still required)' : '; anyone who can reach it controls the migrations'}.`,
    );
  }
  if (loopback && !s.token && !s.allowNoToken) {
    warnings.push(`No bearer token configured: any local process can control the agent on ${s.listen}. Pass --token-file FILE to require one.`);
  }
  return warnings;
}
