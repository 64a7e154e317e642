/**
 * fence — the one owner of the write fence on the source database: raising
 * it for a cutover, keeping it after a completed one, and lifting it,
 * verified, after anything else.
 *
 * Input: the migration's record (its `fence` field is the durable truth) and
 * the source endpoint. Output: `ALTER DATABASE … default_transaction_read_only`
 * on the source, and the record's `fence` kept in step with it.
 *
 * It keeps the six fence rules of docs/architecture.md ("The fence's rules"),
 * cited below as "fence rule N": 1 recorded before raised; 2 only a verified
 * lift clears the record; 3 a failed lift is retried, in any phase and at the
 * agent's start; 4 a lift ends the sessions that started read-only; 5 one
 * fence at a time, named; 6 kept after a completed cutover.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { closeQuietly, connect, qi } from './conn';
import { PgferryError, redact } from './errors';
import type { Endpoint } from './spec';
import { sleep } from './sleep';

/** The fence as the agent's state file keeps it (`MigrationRecord.fence`). */
export interface FenceRecord {
  /** One raise; a retried lift names the one it lifts (fence rule 5). */
  id: string;
  database: string;
  /** The database's own setting before the fence ('on'/'off'), null when it had none. */
  previous: string | null;
  /** Agent clock, when the fence was recorded. */
  raisedAt: string;
  /** Server clock, read before the ALTER: sessions that started after it may be read-only (fence rule 4). */
  serverRaisedAt: string;
  /** Kept on purpose after a completed cutover (fence rule 6). */
  kept?: boolean;
  liftAttempts?: number;
  lastLiftError?: string;
  lastLiftAttemptAt?: string;
}

/**
 * none: no fence of this migration is up. up: raised by the cutover that is
 * running. lift-pending: a cutover ended without completing and the lift is
 * not verified yet (the agent keeps trying). kept: after a completed cutover.
 */
export const FENCE_STATES = ['none', 'up', 'lift-pending', 'kept'] as const;
export type FenceState = (typeof FENCE_STATES)[number];

export interface FenceStatus {
  state: FenceState;
  database: string;
  /** When the fence was raised (ISO 8601), '' when none. */
  since: string;
  liftAttempts: number;
  lastLiftError: string;
  /** The statement that lifts it by hand, '' when none is up. */
  liftStatement: string;
}

/** What the keeper needs of its migration. */
export interface FenceHost {
  readonly id: string;
  readonly record: { fence?: FenceRecord };
  readonly source: Endpoint;
  save(): void;
  log(level: 'info' | 'warn' | 'error', msg: string, fields?: object): void;
  /** Told of every verified lift (before the record is saved without the fence). */
  onLifted?(at: string): void;
}

export interface LiftResult {
  /** True when no fence of this migration is up any more (verified, or there was none). */
  lifted: boolean;
  /** A fence was up before this call. */
  wasUp: boolean;
  /** Client sessions ended because they had started read-only (fence rule 4). */
  sessionsEnded: number;
  /** Why the lift could not be verified. */
  error?: string;
}

/** Time allowed for one lift attempt's connection, and for each of its statements. */
const LIFT_CONNECT_TIMEOUT_MS = 5000;
const LIFT_STATEMENT_TIMEOUT_MS = 10_000;
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 2000;

/** `ALTER DATABASE … RESET/SET …` that restores the database's own setting. */
export function liftStatement(database: string, previous: string | null): string {
  return previous === null
    ? `ALTER DATABASE ${qi(database)} RESET default_transaction_read_only;`
    : `ALTER DATABASE ${qi(database)} SET default_transaction_read_only = ${previous === 'on' ? 'on' : 'off'};`;
}

/** The database's own `default_transaction_read_only` setting (not a role's), or null. */
export async function readFenceSetting(c: pg.Client, database: string): Promise<string | null> {
  const r = await c.query(
    `SELECT (SELECT split_part(x, '=', 2) FROM unnest(s.setconfig) x WHERE x LIKE 'default\\_transaction\\_read\\_only=%') AS v
    FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = $1 AND s.setrole = 0`,
    [database],
  );
  return (r.rows[0]?.v as string | null | undefined) ?? null;
}

export class FenceKeeper {
  private chain: Promise<unknown> = Promise.resolve();
  private loop: Promise<void> | null = null;
  private loopAbort = new AbortController();
  /** The fence the retry loop lifts (fence rule 5: never another). */
  private target = '';

  constructor(private readonly host: FenceHost) {}

  get record(): FenceRecord | undefined {
    return this.host.record.fence;
  }

  /** A fence of this migration that is not kept on purpose. */
  get pending(): boolean {
    return !!this.record && !this.record.kept;
  }

  status(cutoverRunning: boolean): FenceStatus {
    const f = this.record;
    if (!f) return { state: 'none', database: '', since: '', liftAttempts: 0, lastLiftError: '', liftStatement: '' };
    return {
      state: f.kept ? 'kept' : cutoverRunning ? 'up' : 'lift-pending',
      database: f.database,
      since: f.raisedAt,
      liftAttempts: f.liftAttempts ?? 0,
      lastLiftError: f.lastLiftError ?? '',
      liftStatement: liftStatement(f.database, f.previous),
    };
  }

  /** Raising and lifting one at a time (fence rule 5). */
  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /**
   * Raise the fence on `database` through `src` (a session that is itself
   * writable). Records it first (fence rule 1). Refuses while an earlier fence of
   * this migration is still recorded: its `previous` would be read as 'on'.
   */
  raise(src: pg.Client, database: string): Promise<FenceRecord> {
    return this.serialized(async () => {
      if (this.record) {
        throw new PgferryError(
          'CUTOVER_FAILED',
          `A fence of this migration is still recorded on database '${database}' (since ${this.record.raisedAt}).`,
          `Lift it first: pgferry unfence ${this.host.id}.`,
        );
      }
      const previous = await readFenceSetting(src, database);
      if (previous === 'on') {
        // Another migration's fence, or a setting of the user's: lifting ours would restore 'on' and
        // theirs would lift ours (fence rule 5 holds only within one migration).
        throw new PgferryError(
          'CUTOVER_FAILED',
          `Database '${database}' already starts every session read-only (default_transaction_read_only = on): another migration's fence, or a setting of yours. Nothing was fenced.`,
          `Let the other migration finish its cutover or lift its fence (pgferry status lists a FENCE-UP one), or run ALTER DATABASE ${qi(database)} RESET default_transaction_read_only; if the setting is yours, then cut over again.`,
        );
      }
      const serverNow = (await src.query('SELECT clock_timestamp()::text AS t')).rows[0].t as string;
      const rec: FenceRecord = { id: randomUUID(), database, previous, raisedAt: new Date().toISOString(), serverRaisedAt: serverNow };
      this.host.record.fence = rec;
      this.host.save();
      await src.query(`ALTER DATABASE ${qi(database)} SET default_transaction_read_only = on`);
      return rec;
    });
  }

  /**
   * The cutover completed: keep the fence on purpose (the caller saves the
   * record). False when no fence is recorded any more (lifted under the
   * cutover): it must not complete then.
   */
  markKept(): boolean {
    if (!this.record) return false;
    this.record.kept = true;
    return true;
  }

  /**
   * One lift attempt on a fresh connection, verified by reading the setting
   * back (fence rule 2). A kept fence is lifted only with `includeKept`. `onlyId`
   * limits the attempt to one raise (a background retry, fence rule 5).
   */
  liftOnce(opts: { includeKept?: boolean; onlyId?: string } = {}): Promise<LiftResult> {
    return this.serialized(async () => {
      const f = this.record;
      if (!f || (opts.onlyId && f.id !== opts.onlyId)) return { lifted: true, wasUp: false, sessionsEnded: 0 };
      if (f.kept && !opts.includeKept) return { lifted: false, wasUp: true, sessionsEnded: 0, error: 'the fence is kept after a completed cutover' };
      f.liftAttempts = (f.liftAttempts ?? 0) + 1;
      f.lastLiftAttemptAt = new Date().toISOString();
      let c: pg.Client | undefined;
      try {
        // A fenced database starts every new session read-only, this one included.
        c = await connect('source', this.host.source, {
          applicationName: `pgferry unfence ${this.host.id}`,
          connectTimeoutMs: LIFT_CONNECT_TIMEOUT_MS,
          queryTimeoutMs: LIFT_STATEMENT_TIMEOUT_MS + 5000,
          extraOptions: `-c default_transaction_read_only=off -c statement_timeout=${LIFT_STATEMENT_TIMEOUT_MS}`,
        });
        await c.query(liftStatement(f.database, f.previous));
        const now = await readFenceSetting(c, f.database);
        if (now !== f.previous) {
          throw new Error(`the setting read back is ${now === null ? 'unset' : `'${now}'`}, not ${f.previous === null ? 'unset' : `'${f.previous}'`}`);
        }
        // Verified: the record goes first, so that nothing below can make a lift look failed.
        if (this.host.record.fence?.id === f.id) this.host.record.fence = undefined;
        this.host.onLifted?.(new Date().toISOString());
        this.host.save();
        const sessionsEnded = f.previous === 'on' ? 0 : await this.endReadOnlySessions(c, f);
        this.host.log(
          'info',
          `fence lifted on database '${f.database}' and verified (default_transaction_read_only is ${f.previous === null ? 'unset' : f.previous} again)` +
            `${sessionsEnded ? `; ended ${sessionsEnded} session(s) that had started read-only, so that they reconnect writable` : ''}`,
          { migration: this.host.id, event: 'fence-lifted', attempts: f.liftAttempts },
        );
        return { lifted: true, wasUp: true, sessionsEnded };
      } catch (e) {
        const msg = redact((e as Error)?.message ?? String(e));
        f.lastLiftError = msg;
        this.host.save();
        const n = f.liftAttempts;
        // Log the first failures, then every 30th: the status carries the rest.
        if (n <= 3 || n % 30 === 0) {
          this.host.log(
            'error',
            `the fence on database '${f.database}' is still up: lift attempt ${n} failed (${msg}); retrying. To lift it by hand: ${liftStatement(f.database, f.previous)}`,
            { migration: this.host.id, event: 'fence-lift-failed', attempts: n },
          );
        }
        return { lifted: false, wasUp: true, sessionsEnded: 0, error: msg };
      } finally {
        await closeQuietly(c);
      }
    });
  }

  /**
   * Fence rule 4, best effort: end the client sessions of the database that started
   * while the fence was up (from the raise, less the time a login may take,
   * until now). One at a time: a session the agent's role may not end (a
   * superuser's) is logged, not an error.
   */
  private async endReadOnlySessions(c: pg.Client, f: FenceRecord): Promise<number> {
    let ended = 0;
    try {
      const r = await c.query(
        `SELECT pid FROM pg_stat_activity
        WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()
          AND backend_start >= $2::timestamptz - current_setting('authentication_timeout')::interval AND backend_start < now()
          AND coalesce(application_name, '') NOT LIKE 'pgferry%'`,
        [f.database, f.serverRaisedAt],
      );
      for (const row of r.rows) {
        try {
          if ((await c.query('SELECT pg_terminate_backend($1) AS ok', [row.pid])).rows[0].ok) ended++;
        } catch (e) {
          this.host.log(
            'warn',
            `the fence is lifted, but session ${row.pid}, opened read-only while it was up, could not be ended (${redact((e as Error).message)}); it stays read-only until it reconnects`,
            { migration: this.host.id },
          );
        }
      }
    } catch (e) {
      this.host.log(
        'warn',
        `the fence is lifted, but the sessions opened read-only while it was up could not be listed (${redact((e as Error).message)}); they stay read-only until they reconnect`,
        { migration: this.host.id },
      );
    }
    return ended;
  }

  /** Retry the lift in the background until it is verified (fence rule 3). Idempotent. */
  keepLifting(): void {
    const f = this.record;
    if (!f || f.kept) return;
    // A loop already running (asleep between two attempts for an older
    // fence) takes this one on at its next turn.
    this.target = f.id;
    if (this.loop) return;
    const signal = this.loopAbort.signal;
    this.loop = (async () => {
      for (let wait = RETRY_MIN_MS; !signal.aborted; wait = Math.min(wait * 2, RETRY_MAX_MS)) {
        const id = this.target;
        const r = await this.liftOnce({ onlyId: id });
        if (r.lifted && this.target === id) return;
        if (!r.lifted) await sleep(wait, signal);
      }
    })().finally(() => {
      this.loop = null;
    });
  }

  /** Stop retrying (agent shutdown, delete); the record stays for the next start. */
  async stop(): Promise<void> {
    this.loopAbort.abort();
    await this.loop;
    await this.chain;
    this.loopAbort = new AbortController();
  }
}

/** The client sessions of the fenced database that are not pgferry's own. */
const CLIENT_SESSIONS = `datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
  AND coalesce(application_name, '') NOT LIKE 'pgferry%'`;

/**
 * The transactions that had already written when the fence went up, by (pid,
 * xid), read right after it: a session that began before the fence can go on
 * writing new transactions (the fence binds only new sessions), and waiting
 * for "no writer at all" would, under load, always run to the whole grace.
 * Those later transactions are not waited for; they end with their session.
 */
export async function writersInFlight(src: pg.Client): Promise<string[]> {
  const r = await src.query(`SELECT pid::text || ':' || backend_xid::text AS k FROM pg_stat_activity WHERE ${CLIENT_SESSIONS} AND backend_xid IS NOT NULL`);
  return r.rows.map((x) => x.k as string);
}

/** The grace: wait up to `graceMs` for those transactions to end (commit or abort). */
export async function waitForWriters(src: pg.Client, inFlight: string[], graceMs: number): Promise<void> {
  const graceEnd = Date.now() + graceMs;
  while (inFlight.length && Date.now() < graceEnd) {
    const w = await src.query(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid::text || ':' || backend_xid::text = ANY($1::text[])`,
      [inFlight],
    );
    if (w.rows[0].n === 0) return;
    await sleep(10);
  }
}

/** End every other client session of the database and wait until they are gone; `check` may throw (timeout). Returns their pids. */
export async function endClientSessions(src: pg.Client, check: () => void): Promise<number[]> {
  const killed = await src.query(`SELECT pid, pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE ${CLIENT_SESSIONS}`);
  const pids = killed.rows.map((r) => r.pid as number);
  while (pids.length) {
    const left = await src.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ANY($1::int[])', [pids]);
    if (left.rows[0].n === 0) break;
    check();
    await sleep(10);
  }
  return pids;
}

/** The role may fence the database (owner or superuser) and end its sessions (pg_signal_backend): the source's for a cutover, the target's for a cutback. */
export async function checkFencePrivileges(src: pg.Client, database: string, side: 'source' | 'target' = 'source'): Promise<void> {
  const r = await src.query(
    `SELECT r.rolsuper AS su,
      pg_has_role(current_user, d.datdba, 'USAGE') AS owner,
      pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') AS signal
    FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = $1`,
    [database],
  );
  const row = r.rows[0];
  if (!row) return;
  if (!row.su && !row.owner) {
    throw new PgferryError(
      'INSUFFICIENT_PRIVILEGE',
      `The ${side} role cannot fence writers: it does not own database '${database}' (ALTER DATABASE … SET default_transaction_read_only needs that).`,
      `Connect the migration's ${side} as the database owner or a superuser, or run ALTER DATABASE ${qi(database)} OWNER TO <${side} user>;`,
    );
  }
  if (!row.su && !row.signal) {
    throw new PgferryError(
      'INSUFFICIENT_PRIVILEGE',
      `The ${side} role cannot end the sessions still writing at the fence.`,
      `GRANT pg_signal_backend TO <${side} user>; (on Azure: the server admin has it).`,
    );
  }
}
