#!/usr/bin/env node
/**
 * cli — the `pgferry` command.
 *
 *   pgferry agent --listen 127.0.0.1:7443 --state-dir /var/lib/pgferry   run the agent
 *   pgferry demo                                                          the whole story on throwaway local clusters
 *
 * Errors go to stderr with a non-zero exit code; they name what is wrong and
 * how to fix it.
 */
import { Command, Option } from 'commander';
import { readFileSync, existsSync } from 'node:fs';
import { isIP } from 'node:net';
import { PgferryError, isPgferryError } from './errors';
import { createLogger, type LogFormat } from './log';
import { StateStore } from './state';
import { AgentService } from './service';
import { createServer, listen } from './server';

const program = new Command();
program.name('pgferry').description('Online, minimal-downtime PostgreSQL migration, declared as infrastructure code.').version(require('../../package.json').version);

program.command('agent')
  .description('Run the migration agent (a long-running gRPC server near the source database).')
  .requiredOption('--listen <host:port>', 'address to serve gRPC on', '127.0.0.1:7443')
  .requiredOption('--state-dir <dir>', 'directory for the agent\'s durable state (created if missing)')
  .option('--token-file <file>', 'file holding the bearer token(s) clients must send, one per line (re-read on every call, so it can be rotated)')
  .option('--secret-key-file <file>', 'AES key used to encrypt stored credentials (default: <state-dir>/secret.key, created on first start)')
  .addOption(new Option('--log-format <format>', 'log format').choices(['json', 'pretty']).default(process.stderr.isTTY ? 'pretty' : 'json'))
  .option('--allow-unauthenticated', 'allow serving without --token-file on a non-loopback address (dangerous)')
  .action(async (opts: { listen: string; stateDir: string; tokenFile?: string; secretKeyFile?: string; logFormat: LogFormat; allowUnauthenticated?: boolean }) => {
    const { log } = createLogger(opts.logFormat);
    const host = opts.listen.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
    const loopback = host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));
    if (!loopback && !opts.tokenFile && !opts.allowUnauthenticated) {
      throw new PgferryError('INVALID_SPEC', `Refusing to serve on the non-loopback address ${opts.listen} without a token.`,
        'Pass --token-file <file>, listen on 127.0.0.1, or (not recommended) --allow-unauthenticated.');
    }
    let tokens: (() => string[]) | undefined;
    if (opts.tokenFile) {
      const file = opts.tokenFile;
      if (!existsSync(file)) throw new PgferryError('INVALID_SPEC', `The token file '${file}' does not exist.`, 'Create it with one token per line, or fix --token-file.');
      tokens = () => readFileSync(file, 'utf8').split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
      if (tokens().length === 0) throw new PgferryError('INVALID_SPEC', `The token file '${file}' holds no token.`, 'Write at least one token (one per line) into it.');
    }
    const store = new StateStore(opts.stateDir, opts.secretKeyFile);
    const svc = new AgentService(store, log);
    const server = createServer(svc, { tokens });
    const port = await listen(server, opts.listen);
    svc.init();
    log('info', `pgferry agent listening on ${host}:${port}`, { stateDir: opts.stateDir });
    // A line on stdout that tools (tests, demo) can wait for.
    process.stdout.write(`listening ${port}\n`);
    const shutdown = async (sig: string) => {
      log('info', `received ${sig}, stopping`);
      server.tryShutdown(() => undefined);
      await svc.close();
      process.exit(0);
    };
    process.once('SIGINT', () => void shutdown('SIGINT'));
    process.once('SIGTERM', () => void shutdown('SIGTERM'));
  });

program.command('demo')
  .description('Run a whole migration on throwaway local PostgreSQL clusters: load, sync under a live writer, cut over, report.')
  .option('--source-version <major>', 'source PostgreSQL major version (13, 14 or 17)', '14')
  .option('--target-version <major>', 'target PostgreSQL major version', '17')
  .option('--rows <n>', 'rows in the largest sample table', '200000')
  .action(async (opts: { sourceVersion: string; targetVersion: string; rows: string }) => {
    const { runDemo } = await import('./demo.js');
    await runDemo({ sourceVersion: Number(opts.sourceVersion) as 13, targetVersion: Number(opts.targetVersion) as 17, rows: Number(opts.rows) });
  });

program.parseAsync(process.argv).catch((e: unknown) => {
  if (isPgferryError(e)) {
    process.stderr.write(`pgferry: ${e.message}\n${e.remedy ? `  fix: ${e.remedy}\n` : ''}`);
  } else {
    process.stderr.write(`pgferry: ${(e as Error)?.stack ?? String(e)}\n`);
  }
  process.exit(1);
});
