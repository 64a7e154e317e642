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
import { AgentClient, type MigrationMessage } from '../api/client';
import { ProviderHost, declareMigration, urnOf } from '../provider/host-driver';

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

export async function runDemo(opts: DemoOptions): Promise<void> {
  const t0 = Date.now();
  const work = mkdtempSync(join(tmpdir(), 'pgferry-demo-'));
  let source: Cluster | undefined;
  let target: Cluster | undefined;
  let agent: ChildProcess | undefined;
  let client: AgentClient | undefined;
  let host: ProviderHost | undefined;
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

    agent = spawn(
      process.execPath,
      [join(__dirname, '..', 'agent', 'cli', 'main.js'), 'agent', '--listen', '127.0.0.1:0', '--state-dir', join(work, 'agent'), '--log-format', 'json'],
      { stdio: ['ignore', 'pipe', 'ignore'] },
    );
    const port = await new Promise<number>((resolve, reject) => {
      agent!.stdout!.on('data', (d: Buffer) => {
        const m = /listening (\d+)/.exec(d.toString());
        if (m) resolve(Number(m[1]));
      });
      agent!.once('exit', (code) => reject(new Error(`the agent exited with code ${code}`)));
    });
    say(`• agent listening on 127.0.0.1:${port}`);
    client = new AgentClient({ endpoint: `127.0.0.1:${port}` });

    const src = source;
    const writer = startWriter(() => src.client('shop'));
    say('• a writer is committing orders against the source (and keeps going)');

    // The user's Pulumi program: one resource, passwords as secrets.
    const args = (cutover: boolean) => ({
      agent: { endpoint: `127.0.0.1:${port}` },
      source: src.endpoint('shop'),
      target: target!.endpoint('shop'),
      tables: { include: ['public.*'] },
      waitForSync: false,
      cutover,
      cutoverOptions: { validation: 'checksums' as const, timeoutMs: 120_000 },
    });
    host = await ProviderHost.start();
    await host.configure();
    const urn = urnOf('shop', 'shop-migration', 'demo');

    say('$ pulumi preview      # PR 1 adds the pgferry.Migration resource; Check runs the read-only preflight');
    const v1 = await declareMigration('shop', args(false));
    const checked = await host.check(urn, {}, v1.plainInputs);
    if (checked.failures.length) throw new Error(`preflight failed:\n${checked.failures.map((f) => `  ${f.property}: ${f.reason}`).join('\n')}`);
    say('  + pgferry:Migration shop   create   (preflight passed)');

    say('$ pulumi up           # Create starts the migration on the agent and returns once it is durably started');
    const created = await host.create(urn, checked.inputs);
    let outputs = created.properties;
    say(
      `  + shop created: phase ${outputs.phase}, activeConnection → ${(outputs.activeConnection as { host: string; port: number }).host}:${(outputs.activeConnection as { port: number }).port} (the source)`,
    );

    say('$ pulumi refresh      # Read reports phase, progress and lag (repeated while the data moves)');
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
      if (m.phase === 'syncing' && m.lagBytes < 256 * 1024 && writer.stats.commits > 0) break;
      await new Promise((r) => setTimeout(r, 500));
    }

    say('$ pulumi preview      # PR 2 flips `cutover: true`');
    const v2 = await declareMigration('shop', args(true));
    const checked2 = await host.check(urn, checked.inputs, v2.plainInputs);
    const diff = await host.diff(created.id, urn, outputs, checked2.inputs);
    say(
      `  ~ pgferry:Migration shop   update   (changes: ${diff.changes}, replaces: ${diff.replaces.length ? diff.replaces.join(', ') : 'none'})   ~ cutover: false => true`,
    );
    say('$ pulumi up           # Update runs the cutover under the live write load');
    const updated = await host.update(created.id, urn, outputs, checked2.inputs);
    outputs = updated.properties;
    const stats = await writer.stop();
    const done = await client.getMigration('shop');
    const rep = done.cutover!;
    const conn = outputs.activeConnection as { host: string; port: number };
    say(`  ~ shop updated: phase ${outputs.phase}, write downtime ${outputs.writeDowntimeMs} ms, validation ${outputs.validationOk ? 'ok' : 'FAILED'}`);
    say(`    activeConnection → ${conn.host}:${conn.port} (the target; the app's settings that use it follow in this same run)`);
    say(`  writer: ${stats.commits} commits; ${stats.failures} refused while the source was fenced (fence LSN ${rep.fenceLsn})`);
    say('  table                          source rows  target rows  checksums');
    for (const t of rep.tables)
      say(`  ${t.table.padEnd(30)} ${String(t.sourceRows).padStart(11)}  ${String(t.targetRows).padStart(11)}  ${t.match ? 'match' : 'DIFFER'}`);
    for (const s of rep.sequences) say(`  sequence ${s.sequence} set to ${s.value}`);

    say('$ pulumi destroy      # PR 3 removes the resource: Delete drops the slot and publication, the target keeps its data');
    await host.delete(created.id, urn, outputs);
    const left = await src.query(
      'SELECT (SELECT count(*) FROM pg_replication_slots)::int AS slots, (SELECT count(*) FROM pg_publication)::int AS pubs',
      [],
      'shop',
    );
    const kept = await target.query('SELECT count(*)::int AS n FROM orders', [], 'shop');
    say(
      `  - shop deleted: source has ${left.rows[0].slots} replication slot(s) and ${left.rows[0].pubs} publication(s) left; target keeps ${kept.rows[0].n} orders`,
    );
    if (!rep.validationOk) process.exitCode = 1;
    say(`done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    if (!rep.validationOk) process.exitCode = 1;
  } finally {
    client?.close();
    await host?.stop();
    if (agent && agent.exitCode === null) {
      agent.kill('SIGTERM');
      await new Promise((r) => agent!.once('exit', r));
    }
    await Promise.all([source?.stop(), target?.stop()]);
    rmSync(work, { recursive: true, force: true });
  }
}
