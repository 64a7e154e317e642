/**
 * demo — the whole story on throwaway local clusters, no cloud account:
 * start a source and a target PostgreSQL, seed a sample shop database, start
 * the agent, keep a writer running against the source, migrate (load, sync),
 * cut over, verify and print the report, then remove everything.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, type Cluster, type PgMajor } from './testbed';
import { SHOP_APP_ROLE_SQL, SHOP_APP_SQL, seedShop, startWriter } from './sample';
import { AgentClient, type MigrationMessage } from '../api/client';
import { ProviderHost, declareMigration, urnOf, type Props } from '../provider/host-driver';
import type { MigrationArgs } from '../provider/index';

export interface DemoOptions {
  sourceVersion: PgMajor;
  targetVersion: PgMajor;
  rows: number;
}

const say = (msg: string) => process.stdout.write(`${msg}\n`);
const fmtBytes = (n: number) => (n > 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MB` : n > 1024 ? `${(n / 1024).toFixed(0)} kB` : `${n} B`);

function line(m: MigrationMessage): string {
  const pct = `${Math.round(m.progress * 100)}%`.padStart(4);
  const lag =
    m.phase === 'syncing' || m.phase === 'cutting-over'
      ? `  lag ${fmtBytes(m.lagBytes)} / ${m.lagSeconds.toFixed(1)} s  applied ${m.changesApplied} changes (${Math.round(m.applyRate)}/s)`
      : '';
  // Rows are counted when a table (or a range of it) commits; bytes move live.
  const moved = m.phase === 'loading' ? `copied ${fmtBytes(m.bytesCopied)} of ~${fmtBytes(m.bytesEstimated)}` : `rows ${m.rowsCopied}`;
  return `  ${m.phase.padEnd(12)} ${pct}  tables ${m.tablesCopied}/${m.tablesTotal}  ${moved}${m.etaSeconds > 0 ? `  eta ${m.etaSeconds}s` : ''}${lag}`;
}

/** What the demo started, for the clean-up to stop whatever of it exists. */
interface Started {
  work: string;
  source?: Cluster;
  target?: Cluster;
  agent?: ChildProcess;
  client?: AgentClient;
  host?: ProviderHost;
}

/** The Pulumi stack's view of the resource: the provider host, the resource's URN and the arguments of the user's program. */
interface Stack {
  host: ProviderHost;
  urn: string;
  args: (cutover: boolean) => MigrationArgs;
}

type Writer = ReturnType<typeof startWriter>;

export async function runDemo(opts: DemoOptions): Promise<void> {
  const t0 = Date.now();
  const started: Started = { work: mkdtempSync(join(tmpdir(), 'pgferry-demo-')) };
  try {
    say(`pgferry demo: PostgreSQL ${opts.sourceVersion} → ${opts.targetVersion}, throwaway clusters in ${started.work}`);
    const { source, target } = await startClusters(opts, started);
    const port = await startAgent(started);
    const client = (started.client = new AgentClient({ endpoint: `127.0.0.1:${port}` }));

    const writer = startWriter(() => source.client('shop'));
    say('• a writer is committing orders against the source (and keeps going)');

    // The user's Pulumi program: one resource, passwords as secrets.
    const args = (cutover: boolean) => ({
      agent: { endpoint: `127.0.0.1:${port}` },
      source: source.endpoint('shop'),
      target: target.endpoint('shop'),
      tables: { include: ['public.*'] },
      waitForSync: false,
      cutover,
      cutoverOptions: { timeoutMs: 120_000 },
    });
    const host = (started.host = await ProviderHost.start());
    await host.configure();
    const stack: Stack = { host, urn: urnOf('shop', 'shop-migration', 'demo'), args };

    const created = await createMigration(stack);
    const synced = await refreshUntilInSync(stack, created, client, writer);
    const { outputs, validationOk } = await cutOver(stack, created, synced, client, writer);
    await destroy(stack, created.id, outputs, source, target);
    if (!validationOk) process.exitCode = 1;
    say(`done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  } finally {
    await cleanUp(started);
  }
}

/** A source and a target cluster, each with a `shop` database; the source's is seeded. */
async function startClusters(opts: DemoOptions, started: Started): Promise<{ source: Cluster; target: Cluster }> {
  const [source, target] = await Promise.all([startCluster({ version: opts.sourceVersion }), startCluster({ version: opts.targetVersion })]);
  started.source = source;
  started.target = target;
  say(`• source on 127.0.0.1:${source.port}, target on 127.0.0.1:${target.port}`);
  await source.createDatabase('shop');
  await target.createDatabase('shop');
  const seed = await source.client('shop');
  await seedShop(seed, opts.rows);
  for (const c of [source, target]) await c.query(SHOP_APP_ROLE_SQL);
  await seed.query(SHOP_APP_SQL);
  await seed.end();
  say(`• seeded "shop": ${opts.rows} orders with items, customers, products, partitioned events, an audit log`);
  say('  and what the application keeps beside its tables: a view over a function, a trigger, grants to its role shop_app (created on both servers)');
  return { source, target };
}

/** The agent as a child process on a free port; resolves with that port. */
async function startAgent(started: Started): Promise<number> {
  const agent = spawn(
    process.execPath,
    [join(__dirname, '..', 'agent', 'cli', 'main.js'), 'agent', '--listen', '127.0.0.1:0', '--state-dir', join(started.work, 'agent'), '--log-format', 'json'],
    // PGFERRY_DEMO_AGENT_LOG=<file>: the agent's log (JSON lines) goes there.
    { stdio: ['ignore', 'pipe', process.env.PGFERRY_DEMO_AGENT_LOG ? openSync(process.env.PGFERRY_DEMO_AGENT_LOG, 'a') : 'ignore'] },
  );
  started.agent = agent;
  const port = await new Promise<number>((resolve, reject) => {
    agent.stdout!.on('data', (d: Buffer) => {
      const m = /listening (\d+)/.exec(d.toString());
      if (m) resolve(Number(m[1]));
    });
    agent.once('exit', (code) => reject(new Error(`the agent exited with code ${code}`)));
  });
  say(`• agent listening on 127.0.0.1:${port}`);
  return port;
}

/** PR 1: preview (Check runs the preflight), then up (Create starts the migration). */
async function createMigration({ host, urn, args }: Stack): Promise<{ id: string; inputs: Props; properties: Props }> {
  say('$ pulumi preview      # PR 1 adds the pgferry.Migration resource; Check runs the read-only preflight');
  const v1 = await declareMigration('shop', args(false));
  const checked = await host.check(urn, {}, v1.plainInputs);
  if (checked.failures.length) throw new Error(`preflight failed:\n${checked.failures.map((f) => `  ${f.property}: ${f.reason}`).join('\n')}`);
  say('  + pgferry:Migration shop   create   (preflight passed)');

  say('$ pulumi up           # Create starts the migration on the agent and returns once it is durably started');
  const created = await host.create(urn, checked.inputs);
  const outputs = created.properties;
  say(
    `  + shop created: phase ${outputs.phase}, activeConnection → ${(outputs.activeConnection as { host: string; port: number }).host}:${(outputs.activeConnection as { port: number }).port} (the source)`,
  );
  return { id: created.id, inputs: checked.inputs, properties: outputs };
}

/** Refresh (Read) until the migration is in sync under the writer's load; returns the last outputs. */
async function refreshUntilInSync({ host, urn }: Stack, created: { id: string; properties: Props }, client: AgentClient, writer: Writer): Promise<Props> {
  say('$ pulumi refresh      # Read reports phase, progress and lag (repeated while the data moves)');
  let outputs = created.properties;
  let last = '';
  for (;;) {
    outputs = (await host.read(created.id, urn, outputs)).properties;
    const m = await client.getMigration('shop');
    const l = line(m);
    if (l !== last) {
      say(l);
      last = l;
    }
    if (m.phase === 'failed') throw new Error(`migration failed: ${m.errorMessage} ${m.errorRemedy}`);
    if (m.phase === 'syncing' && m.lagBytes < 256 * 1024 && writer.stats.commits > 0) return outputs;
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** PR 2: `cutover: true`, previewed (Diff) and applied (Update) under the live writes; prints the cutover's report. */
async function cutOver(
  { host, urn, args }: Stack,
  created: { id: string; inputs: Props },
  synced: Props,
  client: AgentClient,
  writer: Writer,
): Promise<{ outputs: Props; validationOk: boolean }> {
  say('$ pulumi preview      # PR 2 flips `cutover: true`');
  const v2 = await declareMigration('shop', args(true));
  const checked2 = await host.check(urn, created.inputs, v2.plainInputs);
  const diff = await host.diff(created.id, urn, synced, checked2.inputs);
  say(
    `  ~ pgferry:Migration shop   update   (changes: ${diff.changes}, replaces: ${diff.replaces.length ? diff.replaces.join(', ') : 'none'})   ~ cutover: false => true`,
  );
  say('$ pulumi up           # Update runs the cutover under the live write load');
  const outputs = (await host.update(created.id, urn, synced, checked2.inputs)).properties;
  const stats = await writer.stop();
  const done = await client.getMigration('shop');
  const rep = done.cutover!;
  const conn = outputs.activeConnection as { host: string; port: number };
  say(`  ~ shop updated: phase ${outputs.phase}, application outage ${rep.outageMs} ms, validation ${outputs.validationOk ? 'ok' : 'FAILED'}`);
  say(`    inside the outage: ${rep.outageParts.map((p) => `${p.part} ${p.ms} ms`).join(', ')}`);
  say(`    activeConnection → ${conn.host}:${conn.port} (the target; the app's settings that use it follow in this same run)`);
  say(`  writer: ${stats.commits} commits; ${stats.failures} refused while the source was fenced (fence LSN ${rep.fenceLsn})`);
  const v = done.verification;
  if (v) say(`  verified before the fence: ${v.tablesVerified}/${v.tablesTotal} tables, ${v.rowsVerified} rows; ${v.rowsRepaired} row(s) repaired`);
  say('  table                          checked inside the fence      rows read  result');
  for (const t of rep.tables)
    say(`  ${t.table.padEnd(30)} ${(t.mode || 'full').padEnd(28)} ${String(t.rowsChecked).padStart(10)}  ${t.match ? 'match' : 'DIFFER'}`);
  for (const s of rep.sequences) say(`  sequence ${s.sequence} set to ${s.value}`);
  if (rep.schemaCheck) {
    say(
      `  schema: ${rep.schemaCheck.ok ? 'the target matches the source' : 'DIFFERS'} (${rep.schemaCheck.objects} objects compared: tables, view, functions, trigger, grants…; ${rep.schemaCheck.ms} ms inside the fence)`,
    );
    if (!rep.schemaCheck.ok) for (const d of rep.schemaCheck.differences) say(`    ${d}`);
  }
  return { outputs, validationOk: rep.validationOk && (rep.schemaCheck?.ok ?? true) };
}

/** PR 3: destroy (Delete drops the slot and publication); shows what is left on either side. */
async function destroy({ host, urn }: Stack, id: string, outputs: Props, source: Cluster, target: Cluster): Promise<void> {
  say('$ pulumi destroy      # PR 3 removes the resource: Delete drops the slot and publication, the target keeps its data');
  await host.delete(id, urn, outputs);
  const left = await source.query(
    'SELECT (SELECT count(*) FROM pg_replication_slots)::int AS slots, (SELECT count(*) FROM pg_publication)::int AS pubs',
    [],
    'shop',
  );
  const kept = await target.query('SELECT count(*)::int AS n FROM orders', [], 'shop');
  say(
    `  - shop deleted: source has ${left.rows[0].slots} replication slot(s) and ${left.rows[0].pubs} publication(s) left; target keeps ${kept.rows[0].n} orders`,
  );
}

/** Stop whatever was started, and remove the work directory. */
async function cleanUp({ work, source, target, agent, client, host }: Started): Promise<void> {
  client?.close();
  await host?.stop();
  if (agent && agent.exitCode === null) {
    agent.kill('SIGTERM');
    await new Promise((r) => agent.once('exit', r));
  }
  await Promise.all([source?.stop(), target?.stop()]);
  rmSync(work, { recursive: true, force: true });
}
