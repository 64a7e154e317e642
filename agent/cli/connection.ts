/**
 * connection — how the client commands reach the agent: the connection flags
 * (`--agent`, `--token-file`, `--token`, `--ca-cert`, `--client-cert`,
 * `--client-key`, `--insecure-plaintext`), their environment variables, and
 * the agent client's options made from them (docs/cli.md).
 *
 * The token comes from `--token-file` or the environment (`--token` works
 * too, but is visible in `ps`); nothing here prints it.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { splitHostPort, type AgentClientOptions } from '../../api/client';
import { PgferryError } from '../engine/errors';
import { parseTokens } from '../server/auth';
import { loadClientTls } from '../server/tls';

/** The agent the commands talk to unless `--agent` or `PGFERRY_AGENT` say otherwise. */
export const DEFAULT_AGENT = '127.0.0.1:7443';

/** Environment variables the client commands read. */
export const CLIENT_ENV = ['PGFERRY_AGENT', 'PGFERRY_TOKEN', 'PGFERRY_TOKEN_FILE', 'PGFERRY_CA_CERT'] as const;

export interface ConnectionFlags {
  agent?: string;
  token?: string;
  tokenFile?: string;
  caCert?: string;
  clientCert?: string;
  clientKey?: string;
  insecurePlaintext?: boolean;
}

/**
 * Options for the agent client from flags and environment. Throws
 * INVALID_SPEC (exit 2) for a malformed address or unreadable files.
 */
export function clientOptions(f: ConnectionFlags, env: NodeJS.ProcessEnv = process.env): AgentClientOptions {
  const endpoint = f.agent || env.PGFERRY_AGENT || DEFAULT_AGENT;
  if (!splitHostPort(endpoint)) {
    throw new PgferryError(
      'INVALID_SPEC',
      `The agent address '${endpoint}' is not HOST:PORT.`,
      `Pass --agent HOST:PORT (or set PGFERRY_AGENT), e.g. --agent ${DEFAULT_AGENT}.`,
    );
  }
  if (f.token !== undefined && f.tokenFile !== undefined) {
    throw new PgferryError('INVALID_SPEC', 'Both --token and --token-file were given.', 'Give one of them (--token-file keeps the token out of `ps`).');
  }
  let token: string | undefined;
  const tokenFile = f.tokenFile ?? (f.token === undefined ? env.PGFERRY_TOKEN_FILE : undefined);
  if (f.token !== undefined) token = f.token.trim();
  else if (tokenFile) {
    let text: string;
    try {
      text = readFileSync(tokenFile, 'utf8');
    } catch (e) {
      throw new PgferryError(
        'INVALID_SPEC',
        `The token file '${tokenFile}' cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'}).`,
        'Fix --token-file (or PGFERRY_TOKEN_FILE), or pass the token in PGFERRY_TOKEN.',
        { cause: e },
      );
    }
    token = parseTokens(text)[0];
    if (!token) throw new PgferryError('INVALID_SPEC', `The token file '${tokenFile}' holds no token.`, 'Write the agent token into it.');
  } else if (env.PGFERRY_TOKEN) token = env.PGFERRY_TOKEN.trim();
  const tls = loadClientTls({ caFile: f.caCert ?? env.PGFERRY_CA_CERT, certFile: f.clientCert, keyFile: f.clientKey });
  return {
    endpoint,
    token: token || undefined,
    caCert: tls.caCert,
    insecure: f.insecurePlaintext || undefined,
    ...(tls.clientCert ? { clientCert: tls.clientCert, clientKey: tls.clientKey } : {}),
  };
}

/** Add the connection flags to a client command. */
export function withConnection(cmd: Command): Command {
  return cmd
    .option('--agent <host:port>', `the agent's gRPC address (env PGFERRY_AGENT; default ${DEFAULT_AGENT})`)
    .option('--token-file <file>', 'file holding the agent token (env PGFERRY_TOKEN_FILE)')
    .option('--token <token>', 'the agent token (visible to other users in `ps`; prefer --token-file or env PGFERRY_TOKEN)')
    .option('--ca-cert <file>', "CA certificate (PEM) that signed the agent's certificate; turns on TLS (env PGFERRY_CA_CERT)")
    .option('--client-cert <file>', 'client certificate (PEM) for an agent that requires mutual TLS')
    .option('--client-key <file>', 'private key (PEM) of --client-cert')
    .option('--insecure-plaintext', 'talk plain-text gRPC to a non-loopback agent (only if it runs with --insecure-allow-plaintext)');
}
