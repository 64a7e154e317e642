/**
 * pgferry on Azure — move an outside PostgreSQL database into a new Azure
 * Database for PostgreSQL flexible server without stopping the application,
 * and switch the application over in the same `pulumi up` that cuts over.
 *
 * Declared here: a resource group, the flexible server (the target), a
 * firewall rule that lets the pgferry agent reach it, the target database,
 * the `pgferry.Migration` from the outside source, and a Linux web app whose
 * `DATABASE_URL` setting is `migration.activeConnection` — the source until
 * the cutover completed, then the new server.
 *
 * Config (`pulumi config set …`, secrets with `--secret`):
 *   agentEndpoint        host:port of the pgferry agent (runs near the source)
 *   agentToken           (secret) the agent's bearer token
 *   agentCaCert          (optional) PEM of the CA of the agent's TLS certificate
 *   agentInsecure        (false) plain-text gRPC to the agent — private networks only
 *   agentIp              public IP the agent connects to Azure from (firewall)
 *   sourceHost, sourcePort (5432), sourceDatabase (orders), sourceUser
 *   sourcePassword       (secret)
 *   sourceSslMode        (require)
 *   targetAdminPassword  (secret) administrator password of the new server
 *   location             (westeurope)
 *   cutover              (false) — flip to true in the cutover pull request
 */
import * as pulumi from '@pulumi/pulumi';
import * as resources from '@pulumi/azure-native/resources';
import * as dbforpostgresql from '@pulumi/azure-native/dbforpostgresql';
import * as web from '@pulumi/azure-native/web';
import * as pgferry from 'pgferry';

const cfg = new pulumi.Config();
const location = cfg.get('location') ?? 'westeurope';
const databaseName = cfg.get('sourceDatabase') ?? 'orders';
const adminLogin = 'pgadmin';
const adminPassword = cfg.requireSecret('targetAdminPassword');
const agentIp = cfg.require('agentIp');

const group = new resources.ResourceGroup('pgferry-orders', { location });

// The target: a flexible server one or more major versions newer than the source.
const server = new dbforpostgresql.Server('orders-pg', {
  resourceGroupName: group.name,
  location,
  version: dbforpostgresql.PostgresMajorVersion.PostgresMajorVersion_17,
  administratorLogin: adminLogin,
  administratorLoginPassword: adminPassword,
  sku: { name: 'Standard_B1ms', tier: dbforpostgresql.SkuTier.Burstable },
  storage: { storageSizeGB: 32 },
  network: { publicNetworkAccess: 'Enabled' },
});

// The agent loads and streams into the server: let its address in.
const agentFirewall = new dbforpostgresql.FirewallRule('pgferry-agent', {
  resourceGroupName: group.name,
  serverName: server.name,
  startIpAddress: agentIp,
  endIpAddress: agentIp,
});

const database = new dbforpostgresql.Database('orders', {
  resourceGroupName: group.name,
  serverName: server.name,
  databaseName,
  charset: 'UTF8',
  collation: 'en_US.utf8',
});

const caCert = cfg.get('agentCaCert');
const migration = new pgferry.Migration(
  'orders',
  {
    agent: {
      endpoint: cfg.require('agentEndpoint'),
      token: cfg.requireSecret('agentToken'),
      ...(caCert ? { caCert } : {}),
      insecure: cfg.getBoolean('agentInsecure') ?? false,
    },
    source: {
      host: cfg.require('sourceHost'),
      port: cfg.getNumber('sourcePort') ?? 5432,
      database: databaseName,
      user: cfg.require('sourceUser'),
      password: cfg.requireSecret('sourcePassword'),
      sslMode: (cfg.get('sourceSslMode') as pgferry.SslMode | undefined) ?? 'require',
    },
    target: {
      host: server.fullyQualifiedDomainName.apply((fqdn) => fqdn ?? ''),
      database: database.name,
      user: adminLogin,
      password: adminPassword,
      sslMode: 'require',
    },
    tables: { include: ['public.*'] },
    // The objects' owners and grantees must exist on the target. Azure's admin is not a superuser and the
    // source's owner (often `postgres`) does not exist there: map it to the admin (the preflight in
    // `pulumi preview` names every role the target lacks, with its CREATE ROLE, before anything starts).
    roles: { map: { [cfg.get('sourceOwnerRole') ?? 'postgres']: adminLogin } },
    // The cutover pull request flips this to true (`pulumi config set cutover true`, or edit the default).
    cutover: cfg.getBoolean('cutover') ?? false,
    cutoverOptions: { maxLagSeconds: 5, validation: 'checksums' },
  },
  { dependsOn: [agentFirewall, database] },
);

// The application follows the migration: the source until the cutover completed, then the new server.
const plan = new web.AppServicePlan('orders-plan', {
  resourceGroupName: group.name,
  location,
  kind: 'linux',
  reserved: true,
  sku: { name: 'B1', tier: 'Basic' },
});

const app = new web.WebApp('orders-app', {
  resourceGroupName: group.name,
  location,
  serverFarmId: plan.id,
  httpsOnly: true,
  siteConfig: {
    linuxFxVersion: 'NODE|20-lts',
    appSettings: [
      { name: 'DATABASE_URL', value: migration.activeConnection.apply((c) => c.connectionString) },
      { name: 'DATABASE_ENDPOINT', value: migration.activeEndpoint },
    ],
  },
});

export const phase = migration.phase;
export const lagBytes = migration.lagBytes;
export const lagSeconds = migration.lagSeconds;
export const retainedWalBytes = migration.retainedWalBytes;
export const activeEndpoint = migration.activeEndpoint;
export const writeDowntimeMs = migration.writeDowntimeMs;
export const validationOk = migration.validationOk;
export const targetHost = server.fullyQualifiedDomainName;
export const appUrl = pulumi.interpolate`https://${app.defaultHostName}`;
