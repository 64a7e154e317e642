/**
 * demo — the whole story on throwaway local clusters, no cloud account:
 * start a source and a target PostgreSQL, seed a sample shop database, start
 * the agent, keep a writer running against the source, migrate (load, sync),
 * cut over, verify and print the report, then remove everything.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, type Cluster, type PgMajor } from './testbed';
import { seedShop, startWriter } from './sample';
import { AgentClient, type MigrationMessage } from '../provider/client';

export interface DemoOptions { sourceVersion: PgMajor; targetVersion: PgMajor; rows: number }

const say = (msg: string) => process.stdout.write(`${msg}\n`);
const fmtBytes = (n: number) => (n > 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MB` : n > 1024 ? `${(n / 1024).toFixed(0)} kB` : `${n} B`);

function line(m: MigrationMessage): string {
  const pct = `${Math.round(m.progress * 100)}%`.padStart(4);
  const lag = m.phase === 'syncing' || m.phase === 'cutting-over' ? `  lag ${fmtBytes(m.lagBytes)} / ${m.lagSeconds.toFixed(1)} s  applied ${m.changesApplied} changes (${Math.round(m.applyRate)}/s)` : '';
  return `  ${m.phase.padEnd(12)} ${pct}  tables ${m.tablesCopied}/${m.tablesTotal}  rows ${m.rowsCopied}${m.etaSeconds > 0 ? `  eta ${m.etaSeconds}s` : ''}${lag}`;
}

export async function runDemo(opts: DemoOptions): Promise<void> {
  const t0 = Date.now();
  const work = mkdtempSync(join(tmpdir(), 'pgferry-demo-'));
  let source: Cluster | undefined;
  let target: Cluster | undefined;
  let agent: ChildProcess | undefined;
  let client: AgentClient | undefined;
  try {
    say(`pgferry demo: PostgreSQL ${opts.sourceVersion} → ${opts.targetVersion}, throwaway clusters in ${work}`);
    [source, target] = await Promise.all([startCluster({ version: opts.sourceVersion }), startCluster({ version: opts.targetVersion })]);
    say(`• source on 127.0.0.1:${source.port}, target on 127.0.0.1:${target.port}`);
    await source.createDatabase('shop');
    await target.createDatabase('shop');
    const seed = await source.client('shop');
    await seedShop(seed, opts.rows);
    await seed.end();
    say(`• seeded "shop": ${opts.rows} orders with items, customers, products, partitioned events, an audit log`);

    agent = spawn(process.execPath, [join(__dirname, 'cli.js'), 'agent', '--listen', '127.0.0.1:0', '--state-dir', join(work, 'agent'), '--log-format', 'json'], { stdio: ['ignore', 'pipe', 'ignore'] });
    const port = await new Promise<number>((resolve, reject) => {
      agent!.stdout!.on('data', (d: Buffer) => { const m = /listening (\d+)/.exec(d.toString()); if (m) resolve(Number(m[1])); });
      agent!.once('exit', (code) => reject(new Error(`the agent exited with code ${code}`)));
    });
    say(`• agent listening on 127.0.0.1:${port}`);
    client = new AgentClient({ endpoint: `127.0.0.1:${port}` });

    const src = source;
    const writer = startWriter(() => src.client('shop'));
    say('• a writer is committing orders against the source (and keeps going)');

    const spec = {
      id: 'shop',
      source: source.endpoint('shop'),
      target: target.endpoint('shop'),
      tables: { include: ['public.*'] },
    };
    const pre = await client.preflight(spec);
    say(`• preflight: ${pre.ok ? 'ok' : 'FAILED'} (${pre.checks.map((c) => `${c.name} ${c.verdict}`).join(', ')})`);
    await client.startMigration(spec);
    say('• migration started; progress:');
    let last = '';
    let m: MigrationMessage;
    for (;;) {
      m = await client.getMigration('shop');
      const l = line(m);
      if (l !== last) { say(l); last = l; }
      if (m.phase === 'failed') throw new Error(`migration failed: ${m.errorMessage} ${m.errorRemedy}`);
      if (m.phase === 'syncing' && m.lagBytes < 256 * 1024 && writer.stats.commits > 0) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    say('• in sync; the application keeps writing. Cutting over:');
    const done = await client.cutover({ id: 'shop', validation: 'checksums' });
    const stats = await writer.stop();
    const rep = done.cutover!;
    say(`• cutover ${rep.state}: write downtime ${rep.writeDowntimeMs} ms, fence LSN ${rep.fenceLsn}, active endpoint: ${done.activeEndpoint}`);
    say(`  writer: ${stats.commits} commits, ${stats.failures} refused (during the fence)`);
    say('  table                          source rows  target rows  checksums');
    for (const t of rep.tables) say(`  ${t.table.padEnd(30)} ${String(t.sourceRows).padStart(11)}  ${String(t.targetRows).padStart(11)}  ${t.match ? 'match' : 'DIFFER'}`);
    for (const s of rep.sequences) say(`  sequence ${s.sequence} set to ${s.value}`);
    const del = await client.deleteMigration('shop');
    say(`• deleted the migration: dropped ${del.dropped.join(', ')} on the source; the target keeps its data`);
    say(`done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    if (!rep.validationOk) process.exitCode = 1;
  } finally {
    client?.close();
    if (agent && agent.exitCode === null) { agent.kill('SIGTERM'); await new Promise((r) => agent!.once('exit', r)); }
    await Promise.all([source?.stop(), target?.stop()]);
    rmSync(work, { recursive: true, force: true });
  }
}
