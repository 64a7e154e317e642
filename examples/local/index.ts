/**
 * pgferry locally — the whole story against two PostgreSQL servers on this
 * machine and a local agent, for anyone with the Pulumi CLI (no cloud account).
 *
 * Run from the repository root (its Pulumi.yaml points here): `npm run build`
 * once, start the agent (`node dist/agent/cli/main.js agent --listen 127.0.0.1:7443
 * --state-dir .pgferry`), then `pulumi up`. See README.md next to this file.
 *
 * Config (`pulumi config set …`, secrets with `--secret`):
 *   agentEndpoint    (127.0.0.1:7443)
 *   agentToken       (secret, optional) when the agent runs with --token-file
 *   sourcePort (5432), targetPort (5433), database (shop), user (postgres)
 *   sourcePassword, targetPassword   (secrets)
 *   cutover          (false) — set to true to cut over
 */
import * as pulumi from '@pulumi/pulumi';
import * as pgferry from 'pgferry';

const cfg = new pulumi.Config();
const database = cfg.get('database') ?? 'shop';
const user = cfg.get('user') ?? 'postgres';
const agentToken = cfg.getSecret('agentToken');

const migration = new pgferry.Migration('shop', {
  agent: { endpoint: cfg.get('agentEndpoint') ?? '127.0.0.1:7443', ...(agentToken ? { token: agentToken } : {}) },
  source: { host: '127.0.0.1', port: cfg.getNumber('sourcePort') ?? 5432, database, user, password: cfg.requireSecret('sourcePassword'), sslMode: 'disable' },
  target: { host: '127.0.0.1', port: cfg.getNumber('targetPort') ?? 5433, database, user, password: cfg.requireSecret('targetPassword'), sslMode: 'disable' },
  tables: { include: ['public.*'] },
  waitForSync: true,
  cutover: cfg.getBoolean('cutover') ?? false,
});

export const migrationId = migration.migrationId;
export const phase = migration.phase;
export const rowsCopied = migration.rowsCopied;
export const lagBytes = migration.lagBytes;
export const activeEndpoint = migration.activeEndpoint;
export const writeDowntimeMs = migration.writeDowntimeMs;
export const validationOk = migration.validationOk;
/** What an application would use (secret: `pulumi stack output databaseUrl --show-secrets`). */
export const databaseUrl = migration.activeConnection.apply((c) => c.connectionString);
