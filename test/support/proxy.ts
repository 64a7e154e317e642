/**
 * A TCP proxy on loopback that a test can cut: the network path between the
 * agent and a server. `cut(ms)` drops every connection through it at once
 * (both ends see a reset) and refuses new ones until the time is up, like a
 * network path that goes down and comes back; `cut()` without a time stays
 * down until `restore()`.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

export interface CuttableProxy {
  host: string;
  port: number;
  /** Connections dropped or refused so far. */
  readonly dropped: number;
  cut(ms?: number): void;
  restore(): void;
  readonly down: boolean;
  close(): Promise<void>;
}

export async function startProxy(targetPort: number, targetHost = '127.0.0.1'): Promise<CuttableProxy> {
  const live = new Set<Socket>();
  let down = false;
  let dropped = 0;
  let timer: NodeJS.Timeout | undefined;
  const server: Server = createServer((client) => {
    if (down) {
      dropped++;
      client.resetAndDestroy();
      return;
    }
    const upstream = connect(targetPort, targetHost);
    live.add(client);
    live.add(upstream);
    const end = () => {
      live.delete(client);
      live.delete(upstream);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  const proxy: CuttableProxy = {
    host: '127.0.0.1',
    port,
    get dropped() {
      return dropped;
    },
    get down() {
      return down;
    },
    cut(ms?: number) {
      down = true;
      for (const s of live) {
        dropped++;
        s.resetAndDestroy();
      }
      live.clear();
      if (timer) clearTimeout(timer);
      timer =
        ms === undefined
          ? undefined
          : setTimeout(() => {
              down = false;
            }, ms);
    },
    restore() {
      if (timer) clearTimeout(timer);
      down = false;
    },
    async close() {
      if (timer) clearTimeout(timer);
      for (const s of live) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return proxy;
}
