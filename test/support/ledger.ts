/**
 * The application in the cutover tests: a client that commits tiny
 * transactions as fast as it can and remembers which commits succeeded (and
 * which are in doubt because the connection died during COMMIT). Each writer
 * numbers its rows from its own base. `connect` is asked for every new
 * session, so a test can move the writer to the target after a handover.
 */
import assert from 'node:assert/strict';
import type pg from 'pg';

/** The tables the ledger writer writes (a `bigserial` key, a standalone sequence). */
export const LEDGER_SCHEMA = `CREATE TABLE ledger (id bigserial PRIMARY KEY, client_seq int NOT NULL, note text, at timestamptz DEFAULT now());
  CREATE SEQUENCE standalone_seq; SELECT setval('standalone_seq', 4242);
  CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL, ref bigint DEFAULT nextval('standalone_seq'));
  INSERT INTO counters (id, n) SELECT g, 0 FROM generate_series(0, 4) g;`;

let writerNo = 0;

export interface LedgerWriter {
  base: number;
  committed: Set<number>;
  inDoubt: Set<number>;
  readonly refused: number;
  stop(): Promise<void>;
}

export function ledgerWriter(connect: () => Promise<pg.Client>): LedgerWriter {
  const committed = new Set<number>();
  const inDoubt = new Set<number>();
  let refused = 0;
  let running = true;
  const base = ++writerNo * 1_000_000;
  let seq = base;
  const loop = (async () => {
    let c: pg.Client | null = null;
    while (running) {
      const i = ++seq;
      try {
        if (!c) c = await connect();
        await c.query('BEGIN');
        await c.query('INSERT INTO ledger (client_seq, note) VALUES ($1, $2)', [i, `tx ${i}`]);
        await c.query('UPDATE counters SET n = n + 1 WHERE id = $1', [i % 5]);
        try {
          await c.query('COMMIT');
          committed.add(i);
        } catch {
          inDoubt.add(i); // the connection died during COMMIT: it may or may not have committed
          throw new Error('commit in doubt');
        }
      } catch {
        refused++;
        try {
          await c?.end();
        } catch {
          /* gone */
        }
        c = null;
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    await c?.end().catch(() => undefined);
  })();
  return {
    base,
    committed,
    inDoubt,
    get refused() {
      return refused;
    },
    stop: async () => {
      running = false;
      await loop;
    },
  };
}

/** Every commit the writer saw succeed is in `db`'s ledger, and nothing but those and the in-doubt ones. */
export async function assertLedgerHolds(db: pg.Client, w: LedgerWriter): Promise<void> {
  const rows = await db.query('SELECT client_seq FROM ledger WHERE client_seq > $1 AND client_seq < $2', [w.base, w.base + 1_000_000]);
  const held = new Set(rows.rows.map((r) => r.client_seq as number));
  const missing = [...w.committed].filter((i) => !held.has(i));
  assert.deepEqual(missing, [], `${missing.length} acknowledged commit(s) missing`);
  const unexpected = [...held].filter((i) => !w.committed.has(i) && !w.inDoubt.has(i));
  assert.deepEqual(unexpected, [], 'rows no commit acknowledged or left in doubt');
}
