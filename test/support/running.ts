/**
 * A migration running against real clusters, for tests of what operators
 * see (CLI, metrics): a PostgreSQL 14 source seeded with the sample shop, a
 * PostgreSQL 17 target, a real agent process, and migration `shop` started
 * and waited for until it is syncing. `stop()` removes everything.
 */
import { readFileSync } from 'node:fs';
import { startCluster, type Cluster } from '../../dev/testbed';
import { seedShop } from '../../dev/sample';
import { AgentClient, type MigrationMessage, type MigrationSpecMessage } from '../../api/client';
import { startAgent, removeAgentDir, type AgentProcess, type StartAgentOptions } from './agent';

export interface RunningShop {
  source: Cluster;
  target: Cluster;
  agent: AgentProcess;
  client: AgentClient;
  spec: MigrationSpecMessage;
  /** Wait until migration `id` is in `phase` (throws at once if it failed). */
  waitPhase(phase: string, id?: string): Promise<MigrationMessage>;
  stop(): Promise<void>;
}

/**
 * Poll `fn` every 100 ms until it returns a value; an error thrown by `fn`
 * ends the wait at once (unlike compare.ts' waitFor, which retries it).
 */
export async function pollUntil<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 180_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Wait until migration `id` is in `phase`; throws at once if it failed. */
export function waitPhase(client: AgentClient, id: string, phase: string): Promise<MigrationMessage> {
  return pollUntil(`migration ${id} to be ${phase}`, async () => {
    const m = await client.getMigration(id);
    if (m.phase === 'failed' && phase !== 'failed') throw new Error(`migration ${id} failed: ${m.errorCode} ${m.errorMessage}`);
    return m.phase === phase ? m : undefined;
  });
}

export async function startShop(opts: StartAgentOptions & { rows?: number; caCert?: string } = {}): Promise<RunningShop> {
  const [source, target] = await Promise.all([startCluster({ version: 14, fast: true }), startCluster({ version: 17, fast: true })]);
  let agent: AgentProcess | undefined;
  let client: AgentClient | undefined;
  const stop = async () => {
    client?.close();
    await agent?.stop();
    if (agent) removeAgentDir(agent);
    await Promise.all([source.stop(), target.stop()]);
  };
  try {
    await source.createDatabase('shop');
    await target.createDatabase('shop');
    const seed = await source.client('shop');
    await seedShop(seed, opts.rows ?? 5000);
    await seed.end();
    agent = await startAgent(opts);
    client = new AgentClient({ endpoint: agent.endpoint, token: opts.token, caCert: opts.caCert ? readFileSync(opts.caCert, 'utf8') : undefined });
    const spec: MigrationSpecMessage = {
      id: 'shop',
      source: source.endpoint('shop'),
      target: target.endpoint('shop'),
      tables: { include: ['public.*'] },
      copy: { workers: 2, splitBytes: 256 * 1024, indexJobs: 2 },
      apply: { batchChanges: 500, batchMs: 50 },
    };
    const c = client;
    await client.startMigration(spec);
    await waitPhase(c, 'shop', 'syncing');
    return { source, target, agent, client, spec, waitPhase: (phase, id = 'shop') => waitPhase(c, id, phase), stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
