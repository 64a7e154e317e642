/**
 * conn — connections to the source and the target, the one place that turns
 * an `Endpoint` into a node-postgres client.
 *
 * Every session gets the same output settings so values travel as exact,
 * canonical text (ISO dates in UTC, hex bytea, shortest-exact floats).
 * sslmode follows libpq: `prefer` (the default) tries TLS and falls back to
 * plain; `require` encrypts without verifying; `verify-ca`/`verify-full` check
 * the server certificate against `sslRootCert`.
 */
import pg from 'pg';
import { parse as parseConnectionString } from 'pg-connection-string';
import type { ConnectionOptions } from 'node:tls';
import { connectError, registerSecret } from './errors';
import type { Endpoint, SslMode } from './spec';

export type Side = 'source' | 'target';

export const SESSION_OPTIONS =
  '-c DateStyle=ISO,YMD -c IntervalStyle=postgres -c TimeZone=UTC -c extra_float_digits=3 -c bytea_output=hex -c client_encoding=UTF8';

export interface ResolvedEndpoint {
  host: string;
  port: number;
  database: string;
  user: string;
  password?: string;
  sslMode: SslMode;
  sslRootCert?: string;
}

export function resolveEndpoint(e: Endpoint): ResolvedEndpoint {
  let r: ResolvedEndpoint;
  if (e.connectionString) {
    const p = parseConnectionString(e.connectionString) as Record<string, unknown>;
    r = {
      host: String(p.host ?? e.host ?? 'localhost'),
      port: Number(p.port ?? e.port ?? 5432),
      database: String(p.database ?? e.database ?? ''),
      user: String(p.user ?? e.user ?? ''),
      password: (p.password as string | undefined) ?? e.password,
      sslMode: (p.sslmode as SslMode | undefined) ?? e.sslMode ?? 'prefer',
      sslRootCert: e.sslRootCert,
    };
  } else {
    r = {
      host: e.host!,
      port: e.port ?? 5432,
      database: e.database!,
      user: e.user!,
      password: e.password,
      sslMode: e.sslMode ?? 'prefer',
      sslRootCert: e.sslRootCert,
    };
  }
  registerSecret(r.password);
  return r;
}

export function describeEndpoint(e: ResolvedEndpoint): string {
  return `${e.user}@${e.host}:${e.port}/${e.database}`;
}

function sslOptions(e: ResolvedEndpoint, mode: SslMode): false | ConnectionOptions {
  switch (mode) {
    case 'disable':
      return false;
    case 'prefer':
    case 'require':
      return { rejectUnauthorized: false };
    case 'verify-ca':
      return { rejectUnauthorized: true, ca: e.sslRootCert, checkServerIdentity: () => undefined };
    case 'verify-full':
      return { rejectUnauthorized: true, ca: e.sslRootCert, servername: e.host };
  }
}

export interface ConnectOptions {
  replication?: boolean;
  applicationName?: string;
  /** ms to wait for the TCP connection and authentication. */
  connectTimeoutMs?: number;
  /** Extra `-c name=value` settings. */
  extraOptions?: string;
  /** Client-side bound on every query, ms (a path that drops packets never lets statement_timeout answer). */
  queryTimeoutMs?: number;
}

/** Open and return a connected client, or throw an error naming the side and the fix. */
export async function connect(side: Side, endpoint: Endpoint | ResolvedEndpoint, opts: ConnectOptions = {}): Promise<pg.Client> {
  const e = resolveEndpoint(endpoint as Endpoint);
  const attempt = async (mode: SslMode) => {
    const config: pg.ClientConfig & { replication?: string } = {
      host: e.host,
      port: e.port,
      database: e.database,
      user: e.user,
      password: e.password,
      ssl: sslOptions(e, mode),
      connectionTimeoutMillis: opts.connectTimeoutMs ?? 15000,
      application_name: opts.applicationName ?? 'pgferry',
      options: [SESSION_OPTIONS, opts.extraOptions ?? ''].join(' ').trim(),
      keepAlive: true,
      ...(opts.queryTimeoutMs ? { query_timeout: opts.queryTimeoutMs } : {}),
    };
    if (opts.replication) config.replication = 'database';
    const client = new pg.Client(config);
    // An idle client whose server goes away must not crash the agent; the
    // next query on it fails and is handled there.
    client.on('error', () => undefined);
    await client.connect();
    return client;
  };
  try {
    if (e.sslMode === 'prefer') {
      try {
        return await attempt('prefer');
      } catch (err) {
        if (/does not support SSL/i.test(String((err as Error)?.message))) return await attempt('disable');
        throw err;
      }
    }
    return await attempt(e.sslMode);
  } catch (err) {
    throw connectError(side, describeEndpoint(e), err);
  }
}

/** Quote an identifier the way PostgreSQL's quote_ident does. */
export function qi(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) && !RESERVED.has(name) ? name : `"${name.replace(/"/g, '""')}"`;
}
/** Quote `schema.name`. */
export function qn(schema: string, name: string): string {
  return `${qi(schema)}.${qi(name)}`;
}
/** Quote a string literal. */
export function ql(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}

// Keywords that must be quoted as identifiers (reserved in PostgreSQL's grammar).
const RESERVED = new Set(
  'all analyse analyze and any array as asc asymmetric authorization binary both case cast check collate collation column concurrently constraint create cross current_catalog current_date current_role current_schema current_time current_timestamp current_user default deferrable desc distinct do else end except false fetch for foreign freeze from full grant group having ilike in initially inner intersect into is isnull join lateral leading left like limit localtime localtimestamp natural not notnull null offset on only or order outer overlaps placing primary references returning right select session_user similar some symmetric system_user table tablesample then to trailing true union unique user using variadic verbose when where window with'.split(
    ' ',
  ),
);

/**
 * End a client without waiting on a dead path: `end()` waits for the server
 * to close its side, which never happens where the network drops packets.
 * After `ms` the socket is destroyed.
 */
export async function closeQuietly(client: pg.Client | null | undefined, ms = 1000): Promise<void> {
  if (!client) return;
  let timer: NodeJS.Timeout | undefined;
  const ended = client.end().catch(() => undefined);
  const late = new Promise<'late'>((resolve) => {
    timer = setTimeout(() => resolve('late'), ms);
  });
  if ((await Promise.race([ended, late])) === 'late') {
    (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
  }
  clearTimeout(timer);
}
