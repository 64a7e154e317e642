/**
 * The application whose schema changes during a sync: a writer that commits
 * tiny transactions with the statements of its current shape, and switches to
 * another shape when told, as an application does once its own schema change
 * is deployed. Every transaction inserts one row into each of its shape's
 * tables, carrying the commit's number in `client_seq`; the writer remembers
 * each acknowledged commit with its shape (and the commits in doubt: the
 * connection died during COMMIT), so a test can check each one reached the
 * target.
 */
import assert from 'node:assert/strict';
import type pg from 'pg';

/** What one transaction of the application runs. */
export interface Shape {
  name: string;
  /** Tables each transaction inserts one row into, with `client_seq` = the commit's number. */
  tables: string[];
  /** The statements (and their parameters) of the transaction numbered `seq`. */
  statements(seq: number): Array<[string, unknown[]]>;
}

export interface ShapeWriter {
  /** Commit numbers are above this one (and below it plus a million). */
  base: number;
  /** Every acknowledged commit, with the shape it was written in. */
  committed: Map<number, Shape>;
  inDoubt: Set<number>;
  /** Transactions that failed (the shape changed under one, the source was fenced, the connection died). */
  readonly refused: number;
  /** The last failure's message, '' when none. */
  readonly lastError: string;
  /** The next transactions use `shape`. */
  use(shape: Shape): void;
  /** Wait until `count` more transactions of the current shape have committed (a timeout names the last failure). */
  writes(count: number, timeoutMs?: number): Promise<void>;
  /** The last acknowledged commit that wrote a row into `table`. */
  lastCommit(table: string): number;
  stop(): Promise<void>;
}

let writerNo = 0;

export interface ShapeWriterOptions {
  /** Pause between two transactions, so a minute of writing stays a few thousand rows (default 5). */
  paceMs?: number;
}

/** Start writing in `shape` at once; `connect` is asked for every new session. */
export function shapeWriter(connect: () => Promise<pg.Client>, shape: Shape, o: ShapeWriterOptions = {}): ShapeWriter {
  const committed = new Map<number, Shape>();
  const inDoubt = new Set<number>();
  const perShape = new Map<string, number>();
  let current = shape;
  let refused = 0;
  let lastError = '';
  let running = true;
  const base = 100_000_000 + ++writerNo * 1_000_000;
  let seq = base;
  const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const loop = (async () => {
    let c: pg.Client | null = null;
    while (running) {
      const i = ++seq;
      const s = current;
      try {
        if (!c) {
          c = await connect();
          c.on('error', () => undefined);
        }
        await c.query('BEGIN');
        for (const [sql, params] of s.statements(i)) await c.query(sql, params);
        try {
          await c.query('COMMIT');
        } catch (e) {
          inDoubt.add(i);
          throw e;
        }
        committed.set(i, s);
        perShape.set(s.name, (perShape.get(s.name) ?? 0) + 1);
        await pause(o.paceMs ?? 5);
      } catch (e) {
        refused++;
        lastError = `${s.name}: ${(e as Error).message}`;
        await c?.end().catch(() => undefined);
        c = null;
        await pause(20);
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
    get lastError() {
      return lastError;
    },
    use(next) {
      current = next;
    },
    async writes(count, timeoutMs = 60_000) {
      const s = current;
      const want = (perShape.get(s.name) ?? 0) + count;
      const end = Date.now() + timeoutMs;
      while ((perShape.get(s.name) ?? 0) < want) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${count} commits in shape ${s.name}; last failure: ${lastError || 'none'}`);
        await pause(20);
      }
    },
    lastCommit(table) {
      let last = 0;
      for (const [i, s] of committed) if (s.tables.includes(table) && i > last) last = i;
      return last;
    },
    async stop() {
      running = false;
      await loop;
    },
  };
}

/**
 * Every commit the writer saw succeed is in `db` (each of its shape's tables
 * holds its row), and `db` holds no row of this writer that no commit
 * acknowledged or left in doubt.
 */
export async function assertWritesHeld(db: pg.Client, w: ShapeWriter): Promise<void> {
  const tables = [...new Set([...w.committed.values()].flatMap((s) => s.tables))];
  const problems: string[] = [];
  for (const table of tables) {
    const r = await db.query(`SELECT client_seq FROM ${table} WHERE client_seq > $1 AND client_seq < $2`, [w.base, w.base + 1_000_000]);
    const held = new Set(r.rows.map((x) => x.client_seq as number));
    const missing = [...w.committed].filter(([i, s]) => s.tables.includes(table) && !held.has(i)).map(([i, s]) => `${i} (${s.name})`);
    const unexpected = [...held].filter((i) => !w.committed.get(i)?.tables.includes(table) && !w.inDoubt.has(i));
    if (missing.length) problems.push(`${table}: ${missing.length} acknowledged commit(s) missing, e.g. ${missing.slice(0, 5).join(', ')}`);
    if (unexpected.length) problems.push(`${table}: ${unexpected.length} row(s) no commit acknowledged, e.g. ${unexpected.slice(0, 5).join(', ')}`);
  }
  assert.deepEqual(problems, [], problems.join('\n'));
}
