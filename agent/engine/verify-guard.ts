/**
 * verify-guard — the continuous verification's check that nobody but the
 * agent writes the migrated tables on the target: a table verified once and
 * then re-checked only where the agent applied since is equal only if no
 * one else wrote it in between.
 *
 * Input: a target session and the migrated tables (`TableInfo[]`: ordinary
 * tables, partitions and their partitioned parents).
 * Output: on the target, in schema `pgferry`, the notes table
 * `foreign_writes` and the trigger function `note_foreign_write()`, and on
 * each table a statement trigger `pgferry_write_guard`; per data table, the
 * writes by others after a verification's snapshot.
 *
 * Why a plain trigger sees exactly the others' writes: the apply session
 * runs with `session_replication_role = replica`, where an ENABLE (origin)
 * trigger does not fire; in ordered mode, where it may not (apply-session.ts),
 * it says so with `APPLYING_SETTING_SQL` and the function records nothing.
 * Notes carry the writer's transaction id, not a time, so a transaction
 * still open at the snapshot counts even when it commits long after it.
 */
import type pg from 'pg';
import type { TableInfo } from './catalog';
import { qn, ql } from './conn';
import { PgferryError, sqlState, type PgServerError } from './errors';
import { sleep } from './sleep';

/** The guard's name on every migrated target table (the schema comparison skips it). */
export const GUARD_TRIGGER = 'pgferry_write_guard';
/** Sent once on each of the agent's own writing sessions (apply, repair): the guard ignores their writes. */
export const APPLYING_SETTING_SQL = "SET pgferry.applying = 'on'";

/** What others wrote to one data table after a snapshot. */
export interface ForeignWrites {
  /** Statements noted: on the table, or on a partitioned table above it (a TRUNCATE of a parent notes both). */
  count: number;
  /** When the last one ran, ISO 8601 with the server's offset. */
  lastAt: string;
  /** Their kinds, sorted: 'DELETE', 'INSERT', 'TRUNCATE', 'UPDATE'. */
  ops: string[];
}

/** How long a guard's DDL waits for a table's lock, and how often it tries. */
export interface GuardLockOptions {
  /** Per attempt (the `lock_timeout`), ms; default 300: an apply batch holds its locks for up to ~200 ms. */
  lockTimeoutMs?: number;
  /** Default 8; between attempts the agent waits 50 ms more each time. */
  attempts?: number;
}

/**
 * The objects, made under the same advisory lock as the rest of pgferry's
 * bookkeeping on the target (target-state.ts), in one implicit transaction.
 * The function is SECURITY DEFINER so that an application role without
 * rights on schema `pgferry` is recorded, not refused; with every name
 * qualified and `search_path` pinned, no one else's object is ever used.
 */
const GUARD_DDL = `
SELECT pg_advisory_xact_lock(hashtext('pgferry.target_state'));
CREATE SCHEMA IF NOT EXISTS pgferry;
CREATE TABLE IF NOT EXISTS pgferry.foreign_writes (
  table_name text NOT NULL,
  xid bigint NOT NULL,
  op text NOT NULL,
  at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION pgferry.note_foreign_write() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $note$
BEGIN
  IF current_setting('pgferry.applying', true) IS DISTINCT FROM 'on' THEN
    INSERT INTO pgferry.foreign_writes (table_name, xid, op)
    VALUES (format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), txid_current(), TG_OP);
  END IF;
  RETURN NULL;
END
$note$;
REVOKE ALL ON FUNCTION pgferry.note_foreign_write() FROM PUBLIC;`;

const LOCK_NOT_AVAILABLE = '55P03';

/** The remedy of a guard that could not get its table's lock. */
const lockRemedy = (table: string) =>
  `End the transaction that holds a lock on ${table} on the target (SELECT pid, state, xact_start, query FROM pg_stat_activity` +
  ` WHERE pid IN (SELECT pid FROM pg_locks WHERE relation = ${ql(table)}::regclass)), then run it again.`;

/**
 * Run `attempt` until it does not fail for want of a lock, at most
 * `attempts` times; then a PgferryError naming the table (the error's
 * detail, else `table`), wrapping the last lock timeout (transient for
 * isTransientDeep, so a phase retry tries again).
 */
async function withLockRetry<T>(what: string, table: string, opts: GuardLockOptions, attempt: (lockTimeoutMs: number) => Promise<T>): Promise<T> {
  const lockTimeoutMs = Math.max(1, Math.round(opts.lockTimeoutMs ?? 300));
  const attempts = Math.max(1, opts.attempts ?? 8);
  for (let i = 1; ; i++) {
    try {
      return await attempt(lockTimeoutMs);
    } catch (e) {
      if (sqlState(e) !== LOCK_NOT_AVAILABLE) throw e;
      if (i >= attempts) {
        const locked = (e as PgServerError).detail || table;
        throw new PgferryError(
          'CUTOVER_FAILED',
          `Could not ${what}: ${locked} stayed locked by another session on the target (${attempts} attempts, ${lockTimeoutMs} ms each).`,
          lockRemedy(locked),
          { cause: e },
        );
      }
      await sleep(50 * i);
    }
  }
}

/**
 * Create the objects (idempotent) and a guard on each table that has none.
 * Call outside a transaction (each guard is its own, so that one busy table
 * is retried alone), after the tables' load and before the first
 * `guardSnapshot`: writes before a guard exists are not noted.
 *
 * @example
 * await installGuards(tgt, tables);
 * await verifier.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
 * const since = await guardSnapshot(verifier); // …compare the table, COMMIT
 */
export async function installGuards(tgt: pg.Client, tables: TableInfo[], opts: GuardLockOptions = {}): Promise<void> {
  await tgt.query(GUARD_DDL);
  if (tables.length === 0) return;
  // CREATE OR REPLACE TRIGGER is 14+: read which tables have one already.
  const have = await tgt.query<{ i: number }>(
    `SELECT w.i FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS w(s, n, i)
      WHERE EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = to_regclass(format('%I.%I', w.s, w.n)) AND g.tgname = $3)`,
    [tables.map((t) => t.schema), tables.map((t) => t.name), GUARD_TRIGGER],
  );
  const guarded = new Set(have.rows.map((r) => Number(r.i) - 1));
  for (const [i, t] of tables.entries()) {
    if (guarded.has(i)) continue;
    const table = qn(t.schema, t.name);
    // ShareRowExclusive: waits for an open apply batch, and every writer
    // queues behind the wait, so it is short and retried.
    await withLockRetry(`install the write guard on ${table}`, table, opts, async (ms) => {
      try {
        await tgt.query(
          `SET LOCAL lock_timeout = '${ms}ms';
           CREATE TRIGGER ${GUARD_TRIGGER} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ${table}
             FOR EACH STATEMENT EXECUTE FUNCTION pgferry.note_foreign_write()`,
        );
      } catch (e) {
        if (sqlState(e) !== '42710') throw e; // made at the same moment by another session
      }
    });
  }
}

/**
 * The snapshot a verification compares the target in, as text
 * (`txid_current_snapshot()`), for `foreignWritesAfter`. Call inside the
 * verifier's REPEATABLE READ (or SERIALIZABLE) transaction, before or as its
 * first read: in READ COMMITTED each statement has a snapshot of its own,
 * and this one would not be the one compared.
 */
export async function guardSnapshot(tgt: pg.Client): Promise<string> {
  const r = await tgt.query<{ snapshot: string; isolation: string }>(
    "SELECT txid_current_snapshot()::text AS snapshot, current_setting('transaction_isolation') AS isolation",
  );
  const { snapshot, isolation } = r.rows[0];
  if (isolation !== 'repeatable read' && isolation !== 'serializable') {
    throw new PgferryError(
      'INTERNAL',
      `guardSnapshot was called in a ${isolation} transaction: its snapshot is not the one the verification compares in.`,
      "Call it inside the verifier's transaction, after BEGIN ISOLATION LEVEL REPEATABLE READ.",
    );
  }
  return snapshot;
}

/** A table and the partitioned tables above it, whose statements write it too. */
function notedAs(t: TableInfo, byKey: Map<string, TableInfo>): Array<{ schema: string; name: string }> {
  const out: Array<{ schema: string; name: string }> = [t];
  for (let p = t.parent; p && out.length < 64; p = byKey.get(qn(p.schema, p.name))?.parent ?? null) out.push(p);
  return out;
}

/**
 * Per data table (kind 'r', keyed by `tableKey`), the writes by others not
 * visible in the snapshot `since` gives for it: committed after it, or by a
 * transaction still open at it. Tables without a snapshot in `since` are not
 * looked at; tables absent from the result had no such write (as far as
 * committed: a transaction still open now is seen once it commits).
 */
export async function foreignWritesAfter(tgt: pg.Client, tables: TableInfo[], since: Map<string, string>): Promise<Map<string, ForeignWrites>> {
  const byKey = new Map(tables.map((t) => [qn(t.schema, t.name), t]));
  const keys: string[] = [];
  const cols = { i: [] as number[], schema: [] as string[], name: [] as string[], since: [] as string[] };
  for (const t of tables) {
    const snapshot = since.get(qn(t.schema, t.name));
    if (t.kind !== 'r' || snapshot === undefined) continue;
    keys.push(qn(t.schema, t.name));
    for (const a of notedAs(t, byKey)) {
      cols.i.push(keys.length - 1);
      cols.schema.push(a.schema);
      cols.name.push(a.name);
      cols.since.push(snapshot);
    }
  }
  const out = new Map<string, ForeignWrites>();
  if (keys.length === 0) return out;
  // Notes name tables as format('%I.%I') does, so the match is made here too.
  const r = await tgt.query<{ i: number; count: number; last_at: string; ops: string[] }>(
    `SELECT w.i, count(*)::int AS count, to_json(max(f.at)) #>> '{}' AS last_at, array_agg(DISTINCT f.op) AS ops
       FROM unnest($1::int[], $2::text[], $3::text[], $4::text[]) AS w(i, s, n, since)
       JOIN pgferry.foreign_writes f ON f.table_name = format('%I.%I', w.s, w.n)
      WHERE NOT txid_visible_in_snapshot(f.xid, w.since::txid_snapshot)
      GROUP BY w.i`,
    [cols.i, cols.schema, cols.name, cols.since],
  );
  for (const row of r.rows) out.set(keys[row.i], { count: row.count, lastAt: row.last_at, ops: [...row.ops].sort() });
  return out;
}

/**
 * Remove the guards from these tables and forget their notes, in one round
 * trip (a DO block: it is called inside the cutover's fence), all or
 * nothing, retried while a table is locked. Idempotent; a table no longer
 * there is skipped. The function and the notes table stay: another
 * migration into the same database may be using them. Call outside a
 * transaction.
 */
export async function dropGuards(tgt: pg.Client, tables: TableInfo[], opts: GuardLockOptions = {}): Promise<void> {
  if (tables.length === 0) return;
  const list = (xs: string[]) => `ARRAY[${xs.map(ql).join(', ')}]::text[]`;
  const schemas = list(tables.map((t) => t.schema));
  const names = list(tables.map((t) => t.name));
  // The names are quoted literals, so only a `$` tag inside them could end
  // the body: the tag is made longer until none does.
  let tag = '$guard$';
  while (schemas.includes(tag) || names.includes(tag)) tag = `$${tag.slice(1, -1)}_$`;
  const body = (ms: number) => `DO ${tag}
DECLARE
  t record;
  busy text;
BEGIN
  PERFORM set_config('lock_timeout', '${ms}ms', true);
  BEGIN
    FOR t IN SELECT format('%I.%I', w.s, w.n) AS name FROM unnest(${schemas}, ${names}) AS w(s, n)
               JOIN pg_trigger g ON g.tgrelid = to_regclass(format('%I.%I', w.s, w.n)) AND g.tgname = ${ql(GUARD_TRIGGER)}
    LOOP
      busy := t.name;
      EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', ${ql(GUARD_TRIGGER)}, t.name);
    END LOOP;
  EXCEPTION WHEN lock_not_available THEN
    RAISE EXCEPTION USING ERRCODE = 'lock_not_available', MESSAGE = format('could not lock %s', busy), DETAIL = busy;
  END;
  IF to_regclass('pgferry.foreign_writes') IS NOT NULL THEN
    DELETE FROM pgferry.foreign_writes f USING unnest(${schemas}, ${names}) AS w(s, n)
     WHERE f.table_name = format('%I.%I', w.s, w.n);
  END IF;
END
${tag}`;
  // The block names the table it could not lock in the error's detail.
  await withLockRetry('remove the write guards', `one of ${tables.length} tables`, opts, (ms) => tgt.query(body(ms)));
}
