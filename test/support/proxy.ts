/**
 * A TCP proxy on loopback that a test can break: the network path between
 * the agent and a server.
 * - `cut(ms)` drops every connection through it at once (both ends see a
 *   reset) and refuses new ones until the time is up, like a path that goes
 *   down and comes back; `cut()` without a time stays down until `restore()`.
 * - `stall()` drops packets instead: connections stay open but nothing
 *   crosses, and new ones are accepted but never reach the server, like a
 *   path that black-holes traffic (no reset ever arrives). `restore()` lets
 *   the traffic flow again.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

export interface CuttableProxy {
  host: string;
  port: number;
  /** Connections dropped or refused so far. */
  readonly dropped: number;
  cut(ms?: number): void;
  stall(): void;
  restore(): void;
  readonly down: boolean;
  close(): Promise<void>;
}

interface Pair {
  client: Socket;
  upstream: Socket | null;
}

export async function startProxy(targetPort: number, targetHost = '127.0.0.1'): Promise<CuttableProxy> {
  const pairs = new Set<Pair>();
  let down = false;
  let stalled = false;
  let dropped = 0;
  let timer: NodeJS.Timeout | undefined;

  const end = (p: Pair) => {
    pairs.delete(p);
    p.client.destroy();
    p.upstream?.destroy();
  };
  const flow = (p: Pair) => {
    if (!p.upstream) {
      const upstream = connect(targetPort, targetHost);
      p.upstream = upstream;
      upstream.on('error', () => end(p));
      upstream.on('close', () => end(p));
    }
    p.client.pipe(p.upstream);
    p.upstream.pipe(p.client);
    p.client.resume();
    p.upstream.resume();
  };
  const hold = (p: Pair) => {
    p.client.unpipe();
    p.upstream?.unpipe();
    p.client.pause();
    p.upstream?.pause();
  };

  const server: Server = createServer((client) => {
    if (down) {
      dropped++;
      client.resetAndDestroy();
      return;
    }
    const p: Pair = { client, upstream: null };
    pairs.add(p);
    client.on('error', () => end(p));
    client.on('close', () => end(p));
    if (stalled) client.pause();
    else flow(p);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    host: '127.0.0.1',
    port,
    get dropped() {
      return dropped;
    },
    get down() {
      return down || stalled;
    },
    cut(ms?: number) {
      down = true;
      for (const p of pairs) {
        dropped++;
        p.client.resetAndDestroy();
        p.upstream?.resetAndDestroy();
      }
      pairs.clear();
      if (timer) clearTimeout(timer);
      timer =
        ms === undefined
          ? undefined
          : setTimeout(() => {
              down = false;
            }, ms);
    },
    stall() {
      stalled = true;
      for (const p of pairs) hold(p);
    },
    restore() {
      if (timer) clearTimeout(timer);
      down = false;
      if (stalled) {
        stalled = false;
        for (const p of pairs) flow(p);
      }
    },
    async close() {
      if (timer) clearTimeout(timer);
      for (const p of pairs) end(p);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
