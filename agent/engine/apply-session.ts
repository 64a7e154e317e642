/**
 * apply-session — the apply stage's one connection to the target: its
 * session settings, the apply mode they allow, and the turns of the
 * pipelines batches are sent on (pipeline.ts) and of every other query.
 *
 * Input: a connected target client. Output: an open pipeline to send on, or
 * a query's result, in turn; the prepared-statement name of each text.
 */
import type pg from 'pg';
import { sqlState } from './errors';
import type { LogFn } from './log-fn';
import { Pipeline, type PipelineStatement } from './pipeline';

/** How statements may be ordered, decided by what the target session is allowed to do. */
export type ApplyMode = 'replica' | 'ordered';

/** Set up the apply session on `client`; the mode its user allows. */
export async function prepareSession(client: pg.Client): Promise<ApplyMode> {
  // Commits are asynchronous (as PostgreSQL's own apply worker's): what is
  // confirmed to the source is not the committed position but the durable
  // one (`durableLsn`: batches whose commit record the target has flushed),
  // so a target crash that loses the last commits loses nothing for good.
  // Long chunked transactions must not be cut off by timeouts.
  // Generic plans: a custom plan sees the real array length and, for a
  // few thousand keys against a cached table, picks a hash join over a
  // sequential scan of the WHOLE table (cost grows with table size and
  // is replanned every time); the generic plan probes the replica
  // identity index per key, as PostgreSQL's own apply worker does.
  await client.query(
    // pgferry.applying: the target's write guard (verify-guard.ts) does not count the agent's own writes.
    "SET synchronous_commit = off; SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0; SET plan_cache_mode = force_generic_plan; SET pgferry.applying = 'on'",
  );
  try {
    await client.query('SET session_replication_role = replica');
    return 'replica';
  } catch (e) {
    if (sqlState(e) !== '42501') throw e;
    return 'ordered';
  }
}

/** Say which mode the session runs in, and in ordered mode how to get the faster one. */
export function logApplyMode(log: LogFn, mode: ApplyMode): void {
  if (mode === 'replica') {
    log('info', 'apply mode: replica (session_replication_role = replica; statements grouped per table within a batch)', { event: 'apply-mode', mode });
  } else {
    log(
      'warn',
      'apply mode: ordered (the target user may not set session_replication_role: foreign keys and triggers fire on the target, statements keep the source order)',
      {
        event: 'apply-mode',
        mode,
        remedy:
          'Run the agent with a target user allowed to SET session_replication_role' +
          ' (superuser, or on PostgreSQL 15+: GRANT SET ON PARAMETER session_replication_role TO <user>) for faster apply.',
      },
    );
  }
}

/**
 * The target connection, shared by the pipelines batches are sent on and
 * the session's other queries, which take turns: node-postgres never
 * queues a query behind a pipeline.
 */
export class ApplySession {
  /** The pipeline batches are sent on (pipeline.ts); a new one once it has ended. */
  private pipe: Pipeline | null = null;
  /**
   * Settles when the connection's last user (a pipeline or a query) is done:
   * each waits for the one before, so node-postgres never queues a query.
   */
  private turn: Promise<unknown> = Promise.resolve();
  /** Prepared statement names by statement text, and the names the session has prepared. */
  private readonly prepared = new Map<string, string>();
  private readonly parsed = new Set<string>();
  private nameSeq = 0;

  constructor(private readonly client: pg.Client) {}

  /**
   * An open pipeline to send on: the current one, or a new one behind it
   * that starts when the connection's last user is done (`turn`).
   */
  pipeline(): Pipeline {
    if (!this.pipe?.open) {
      this.pipe = new Pipeline(this.client, this.parsed, this.pipe, this.turn);
      this.turn = this.pipe.ended;
    }
    return this.pipe;
  }

  /** Any other query on the session: in its turn, after the pipeline has ended. */
  async query(text: string, values?: unknown[]): Promise<pg.QueryResult> {
    void this.pipe?.end();
    const before = this.turn;
    let done!: () => void;
    this.turn = new Promise<void>((resolve) => {
      done = resolve;
    });
    try {
      await before;
      return await this.client.query(text, values);
    } finally {
      done();
    }
  }

  /** The prepared-statement name for `text` ('' once 2 000 are prepared: parsed every time). */
  statementName(text: string): string {
    let name = this.prepared.get(text);
    if (name === undefined && this.prepared.size < 2000) {
      name = `pgferry_${this.nameSeq++}`;
      this.prepared.set(text, name);
    }
    return name ?? '';
  }

  /** `st` failed: whether its Parse ran is unknown, so its name is never used again. */
  forget(st: PipelineStatement): void {
    if (st.name) this.prepared.delete(st.text);
  }

  /** End the pipeline and disconnect. */
  async end(): Promise<void> {
    await this.pipe?.end();
    await this.client.end().catch(() => undefined);
  }
}
