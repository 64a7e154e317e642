#!/usr/bin/env node
/**
 * cli — the `pgferry` command.
 *
 *   pgferry agent --listen 127.0.0.1:7443 --state-dir /var/lib/pgferry   run the agent
 *   pgferry status [id] [--watch] [--json]                                 what the agent is doing
 *   pgferry preflight|start --spec FILE                                    check / start a migration
 *   pgferry cutover ID | cancel-cutover ID | delete ID                     finish / stop one
 *   pgferry demo                                                          the whole story on throwaway local clusters
 *
 * The client commands live in commands.ts (docs/cli.md); this file runs the
 * agent: TLS (tls.ts), tokens and the refusal to serve insecurely on a
 * non-loopback address (auth.ts), metrics (metrics.ts), logs (log.ts).
 *
 * Errors go to stderr with a non-zero exit code (2: usage or configuration,
 * 1: failure); they name what is wrong and how to fix it. No secret is ever
 * taken from the command line of the agent: tokens come from a file or the
 * environment.
 */
import type * as grpc from '@grpc/grpc-js';
import { Command, CommanderError, Option } from 'commander';
import { PgferryError, isPgferryError } from '../engine/errors';
import { LOG_FORMATS, LOG_LEVELS, createLogger, type LogFormat, type LogLevel } from '../server/log';
import { StateStore } from '../engine/state';
import { AgentService } from '../server/service';
import { createServer, listen } from '../server/server';
import { AGENT_TOKEN_ENV, MIN_TOKEN_LENGTH, StaticTokens, TokenAuth, TokenFile, checkListenSecurity, tokensFromEnv, type TokenSource } from '../server/auth';
import { loadServerTls, type ServerTls } from '../server/tls';
import type { AgentMetrics, MetricsServer } from '../server/metrics';
import type { LogFn } from '../engine/log-fn';
import { EXIT, registerClientCommands, reportError } from './commands';
import type { MigrationStatus } from '../engine/migration';

const VERSION: string = require('../../../package.json').version;

// gRPC over TLS to an IP address (e.g. --agent 10.0.0.4:7443) makes Node warn
// that an IP is not a valid TLS server name (DEP0123); the certificate is
// still checked against the IP in its subjectAltName. Keep other warnings.
// The agent routes the others through its logger, so stderr stays JSON lines.
let onWarning = (w: Error & { code?: string }) => {
  process.stderr.write(`pgferry: ${w.name}: ${w.message}\n`);
};
process.removeAllListeners('warning');
process.on('warning', (w: Error & { code?: string }) => {
  if (w.code !== 'DEP0123') onWarning(w);
});

const program = new Command();
program.name('pgferry').description('Online, minimal-downtime PostgreSQL migration, declared as infrastructure code.').version(VERSION);
program.exitOverride();

interface AgentFlags {
  listen: string;
  stateDir: string;
  tokenFile?: string;
  secretKeyFile?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsClientCa?: string;
  metricsListen?: string;
  insecureAllowPlaintext?: boolean;
  insecureAllowNoToken?: boolean;
  logFormat: LogFormat;
  logLevel: LogLevel;
  token?: string;
  allowUnauthenticated?: boolean;
}

program
  .command('agent')
  .description('Run the migration agent (a long-running gRPC server near the source database).')
  .requiredOption('--listen <host:port>', 'address to serve gRPC on', '127.0.0.1:7443')
  .requiredOption('--state-dir <dir>', "directory for the agent's durable state (created if missing)")
  .option('--tls-cert <file>', "the agent's TLS certificate (PEM); with --tls-key, gRPC is served over TLS")
  .option('--tls-key <file>', 'the private key of --tls-cert (PEM, unencrypted, mode 0600)')
  .option('--tls-client-ca <file>', 'CA (PEM) that signs client certificates: require and verify one on every connection (mutual TLS)')
  .option(
    '--token-file <file>',
    `file holding the bearer token(s) clients must send, one per line; re-read when it changes, so it can be rotated (or env ${AGENT_TOKEN_ENV})`,
  )
  .option('--metrics-listen <host:port>', 'serve Prometheus metrics on http://HOST:PORT/metrics (default: off)')
  .option('--secret-key-file <file>', 'AES key used to encrypt stored credentials (default: <state-dir>/secret.key, created on first start)')
  .option('--insecure-allow-plaintext', 'DANGEROUS: serve without TLS on a non-loopback address (tokens and passwords cross the network in clear text)')
  .option('--insecure-allow-no-token', 'DANGEROUS: serve without a bearer token on a non-loopback address')
  .addOption(new Option('--log-format <format>', 'log format').choices(LOG_FORMATS).default(process.stderr.isTTY ? 'pretty' : 'json'))
  .addOption(new Option('--log-level <level>', 'lowest level logged').choices(LOG_LEVELS).default('info'))
  // Refused with an explanation rather than "unknown option":
  .addOption(new Option('--token <token>').hideHelp())
  .addOption(new Option('--allow-unauthenticated').hideHelp())
  .action(async (opts: AgentFlags) => runAgent(opts));

registerClientCommands(program);

program
  .command('demo')
  .description('Run a whole migration on throwaway local PostgreSQL clusters: load, sync under a live writer, cut over, report.')
  .option('--source-version <major>', 'source PostgreSQL major version (13, 14 or 17)', '14')
  .option('--target-version <major>', 'target PostgreSQL major version', '17')
  .option('--rows <n>', 'rows in the largest sample table', '200000')
  .action(async (opts: { sourceVersion: string; targetVersion: string; rows: string }) => {
    const { runDemo } = await import('../../dev/demo.js');
    await runDemo({ sourceVersion: Number(opts.sourceVersion) as 13, targetVersion: Number(opts.targetVersion) as 17, rows: Number(opts.rows) });
  });

async function runAgent(opts: AgentFlags): Promise<void> {
  checkAgentFlags(opts);
  const observed = agentLogger(opts);
  const { log } = observed;
  onWarning = (w) => log('warn', `${w.name}: ${w.message}`, w.code ? { code: w.code } : {});
  const { source, tls } = securitySetup(opts, log);

  const store = new StateStore(opts.stateDir, opts.secretKeyFile);
  const svc = new AgentService(store, log);
  observed.ref.svc = svc;
  const metrics = loadMetrics(opts, svc, tls);
  const m = metrics?.metrics;
  observed.ref.metrics = m;
  const server = createServer(svc, {
    auth: source ? new TokenAuth(source) : undefined,
    onCall: (method, status, code) => {
      m?.recordRpc(method, status);
      if (code) m?.recordError(code, 'rpc');
    },
  });
  const port = await listen(server, opts.listen, tls?.credentials).catch((e: Error) => {
    throw new PgferryError('INVALID_SPEC', `Cannot listen on ${opts.listen}: ${e.message}.`, 'Pick a free port and an address of this machine for --listen.', {
      cause: e,
    });
  });
  const metricsServer = await serveAgentMetrics(opts, metrics, log);
  svc.init();
  observed.noteFailures(false); // failures recorded by an earlier run are not this process's errors
  announce(opts, { port, tls, source, metricsServer }, log);
  stopOnSignals(log, server, metricsServer, svc);
}

/** Flags the agent refuses, alone or in combination (exit 2). */
function checkAgentFlags(opts: AgentFlags): void {
  if (opts.token !== undefined) {
    throw new PgferryError(
      'INVALID_SPEC',
      'The agent does not take a token on the command line (every user on the machine can read it with `ps`).',
      `Put the token in a file readable only by the agent's user and pass --token-file FILE, or set ${AGENT_TOKEN_ENV}.`,
    );
  }
  if (opts.allowUnauthenticated) {
    throw new PgferryError(
      'INVALID_SPEC',
      '--allow-unauthenticated was replaced.',
      'Use --token-file FILE (recommended), or --insecure-allow-no-token (and --insecure-allow-plaintext without TLS) if you really mean it.',
    );
  }
  if (!!opts.tlsCert !== !!opts.tlsKey) {
    throw new PgferryError('INVALID_SPEC', 'Only one of --tls-cert and --tls-key was given.', 'Give both: the certificate and its private key.');
  }
  if (opts.tlsClientCa && !opts.tlsCert) {
    throw new PgferryError('INVALID_SPEC', '--tls-client-ca needs TLS.', 'Also give --tls-cert and --tls-key (mutual TLS runs over TLS).');
  }
}

/**
 * The agent's logger. A migration failure is recorded (rec.error, with its
 * time) before it is logged at error level: `noteFailures` counts each once
 * in the metrics. `ref` is filled in once the service and metrics exist.
 */
function agentLogger(opts: AgentFlags): {
  log: LogFn;
  ref: { svc?: AgentService; metrics?: AgentMetrics };
  noteFailures: (count?: boolean) => void;
} {
  const ref: { svc?: AgentService; metrics?: AgentMetrics } = {};
  const seenFailures = new Map<string, string>();
  const noteFailures = (count = true) => {
    for (const [id, r] of ref.svc?.runners ?? []) {
      const err = r.rec.error;
      if (r.rec.phase !== 'failed' || !err || seenFailures.get(id) === err.at) continue;
      seenFailures.set(id, err.at);
      if (count) ref.metrics?.recordError(err.code, 'migration');
    }
  };
  const { log } = createLogger(opts.logFormat, process.stderr, opts.logLevel, {
    phaseOf: (id) => ref.svc?.runners.get(id)?.phase,
    onLog: (level) => {
      if (level === 'error') noteFailures();
    },
  });
  return { log, ref, noteFailures };
}

/** Tokens (a file, rotatable, or the environment; never argv) and TLS; warns about what the listen address makes insecure. */
function securitySetup(opts: AgentFlags, log: LogFn): { source?: TokenSource; tls?: ServerTls } {
  const source = tokenSource(opts, log);
  let tls: ServerTls | undefined;
  if (opts.tlsCert && opts.tlsKey) tls = loadServerTls({ certFile: opts.tlsCert, keyFile: opts.tlsKey, clientCaFile: opts.tlsClientCa });

  const warnings = checkListenSecurity({
    listen: opts.listen,
    tls: !!tls,
    mutualTls: !!tls?.mutual,
    token: !!source,
    allowPlaintext: !!opts.insecureAllowPlaintext,
    allowNoToken: !!opts.insecureAllowNoToken,
  });
  for (const w of [...warnings, ...(tls?.warnings ?? [])]) log('warn', w);
  return { source, tls };
}

/** The tokens clients must send: from --token-file or the environment; none when neither is set. */
function tokenSource(opts: AgentFlags, log: LogFn): TokenSource | undefined {
  const envTokens = tokensFromEnv();
  if (opts.tokenFile && envTokens) {
    throw new PgferryError(
      'INVALID_SPEC',
      `Both --token-file and ${AGENT_TOKEN_ENV} are set.`,
      `Use one: --token-file (rotatable without a restart) or ${AGENT_TOKEN_ENV}.`,
    );
  }
  if (opts.tokenFile) {
    const file = new TokenFile(opts.tokenFile, (e) => {
      if ('problem' in e) log('warn', `The token file ${opts.tokenFile} ${e.problem}: every call is refused until it holds a token`);
      else {
        log('info', `Loaded ${e.tokens} token(s) from ${opts.tokenFile}`);
        if (e.shortest < MIN_TOKEN_LENGTH)
          log('warn', `A token in ${opts.tokenFile} is shorter than ${MIN_TOKEN_LENGTH} characters; use a long random one (openssl rand -hex 32)`);
      }
    });
    file.loadOrThrow();
    return file;
  }
  if (envTokens) {
    if (envTokens.length === 0) throw new PgferryError('INVALID_SPEC', `${AGENT_TOKEN_ENV} is set but empty.`, 'Put a token in it, or unset it.');
    if (envTokens.some((t) => t.length < MIN_TOKEN_LENGTH))
      log('warn', `A token in ${AGENT_TOKEN_ENV} is shorter than ${MIN_TOKEN_LENGTH} characters; use a long random one (openssl rand -hex 32)`);
    return new StaticTokens(envTokens, `environment ${AGENT_TOKEN_ENV}`);
  }
  return undefined;
}

type MetricsModule = typeof import('../server/metrics');

/** Metrics only when served: prom-client is loaded (and its collectors run) only then. */
function loadMetrics(opts: AgentFlags, svc: AgentService, tls: ServerTls | undefined): { module: MetricsModule; metrics: AgentMetrics } | undefined {
  if (!opts.metricsListen) return undefined;
  const module = require('../server/metrics') as MetricsModule;
  const statuses = async (): Promise<MigrationStatus[]> => {
    const settled = await Promise.allSettled([...svc.runners.values()].map((r) => r.status()));
    return settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  };
  return { module, metrics: new module.AgentMetrics(statuses, { version: VERSION, tlsNotAfter: tls?.notAfter }) };
}

/** Serve the metrics on --metrics-listen, if given. */
async function serveAgentMetrics(
  opts: AgentFlags,
  loaded: { module: MetricsModule; metrics: AgentMetrics } | undefined,
  log: LogFn,
): Promise<MetricsServer | undefined> {
  if (!opts.metricsListen || !loaded) return undefined;
  return loaded.module.serveMetrics(loaded.metrics, opts.metricsListen, log).catch((e: Error) => {
    throw new PgferryError(
      'INVALID_SPEC',
      `Cannot serve metrics on ${opts.metricsListen}: ${e.message}.`,
      'Pick a free port and an address of this machine for --metrics-listen.',
      { cause: e },
    );
  });
}

/** The start line in the log, and the lines on stdout that tools (tests, demo) can wait for. */
function announce(opts: AgentFlags, at: { port: number; tls?: ServerTls; source?: TokenSource; metricsServer?: MetricsServer }, log: LogFn): void {
  const { port, tls, source, metricsServer } = at;
  const host = opts.listen.replace(/:\d+$/, '');
  log('info', `pgferry agent ${VERSION} listening on ${host}:${port}`, {
    stateDir: opts.stateDir,
    tls: tls ? (tls.mutual ? 'mutual' : 'server') : 'off',
    certificate: tls?.subject,
    certificateExpires: tls?.notAfter.toISOString(),
    auth: source ? source.description : 'none',
    ...(metricsServer ? { metrics: `http://${opts.metricsListen!.replace(/:\d+$/, '')}:${metricsServer.port}/metrics` } : {}),
  });
  process.stdout.write(`listening ${port}\n`);
  if (metricsServer) process.stdout.write(`metrics ${metricsServer.port}\n`);
}

/** SIGINT or SIGTERM: stop serving, close metrics and the service, exit 0. */
function stopOnSignals(log: LogFn, server: grpc.Server, metricsServer: MetricsServer | undefined, svc: AgentService): void {
  let stopping = false;
  const shutdown = async (sig: string) => {
    if (stopping) return;
    stopping = true;
    log('info', `received ${sig}, stopping`);
    server.tryShutdown(() => undefined);
    await metricsServer?.close();
    await svc.close();
    process.exit(0);
  };
  process.once('SIGINT', () => void shutdown('SIGINT'));
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
}

program.parseAsync(process.argv).catch((e: unknown) => {
  if (e instanceof CommanderError) {
    // Commander printed its message already; help and version are not errors.
    process.exit(e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.exitCode === 0 ? 0 : EXIT.usage);
  }
  if (!isPgferryError(e)) {
    process.stderr.write(`pgferry: ${(e as Error)?.stack ?? String(e)}\n`);
    process.exit(EXIT.failure);
  }
  process.exit(reportError({ out: process.stdout, err: process.stderr, env: process.env }, e));
});
