/**
 * verify-state — the continuous verification's progress, kept on the target
 * in `pgferry.verify_state` (created with the rest of target-state.ts), one
 * row per migrated data table. Every query on that table is here.
 *
 * A pass checks a table range by range from a first barrier on:
 *   pass_lsn / pass_snapshot   the source point and target snapshot it started at
 *   pass_after, pass_rows      the key after which the next range starts, rows checked so far
 *   pass_end                   the table's last key when the pass began: it ends there (rows
 *                              inserted since are the pass's changes, checked by key)
 *                              (written only once a range compared equal, or was repaired)
 *   pass_changed               the apply changed the table since the pass started
 * and its last completed pass:
 *   verified_lsn / _snapshot / _at / _rows, verified_changed (changed since).
 *
 * The "changed" flags are committed before the apply commits the change
 * (verify-changes.ts), so after a kill -9 a flag that says false is true: a
 * pass whose table did not change resumes where it stopped, and a verified
 * table that did not change is still verified. A flag that says true makes
 * the table's keys unknown: its pass starts again, and the fence checks it
 * in full until a new pass completes.
 */
import type pg from 'pg';
import { formatLsn, parseLsn, type Lsn } from './lsn';

export interface VerifyRow {
  table: string;
  pass: null | { lsn: Lsn; snapshot: string; after: string | null; end: string | null; rows: number; startedAt: Date; changed: boolean };
  verified: null | { lsn: Lsn; snapshot: string; at: Date; rows: number; changed: boolean };
  repairedRows: number;
}

export async function readVerifyState(tgt: pg.Client, migrationId: string): Promise<Map<string, VerifyRow>> {
  const r = await tgt.query(
    `SELECT table_name, pass_lsn::text AS pass_lsn, pass_snapshot, pass_after, pass_end, pass_rows, pass_started_at, pass_changed,
            verified_lsn::text AS verified_lsn, verified_snapshot, verified_at, verified_rows, verified_changed, repaired_rows
       FROM pgferry.verify_state WHERE migration_id = $1`,
    [migrationId],
  );
  const out = new Map<string, VerifyRow>();
  for (const x of r.rows) {
    out.set(x.table_name, {
      table: x.table_name,
      pass: x.pass_lsn
        ? {
            lsn: parseLsn(x.pass_lsn),
            snapshot: x.pass_snapshot,
            after: x.pass_after,
            end: x.pass_end,
            rows: Number(x.pass_rows),
            startedAt: x.pass_started_at,
            changed: x.pass_changed,
          }
        : null,
      verified: x.verified_lsn
        ? { lsn: parseLsn(x.verified_lsn), snapshot: x.verified_snapshot, at: x.verified_at, rows: Number(x.verified_rows), changed: x.verified_changed }
        : null,
      repairedRows: Number(x.repaired_rows),
    });
  }
  return out;
}

/** A pass starts (the apply is paused at its barrier: nothing can flag the table meanwhile). */
export async function recordPassStart(tgt: pg.Client, migrationId: string, table: string, lsn: Lsn, snapshot: string): Promise<void> {
  await tgt.query(
    `INSERT INTO pgferry.verify_state AS v (migration_id, table_name, pass_lsn, pass_snapshot, pass_after, pass_rows, pass_started_at, pass_changed)
     VALUES ($1, $2, $3::pg_lsn, $4, NULL, 0, now(), false)
     ON CONFLICT (migration_id, table_name) DO UPDATE SET pass_lsn = excluded.pass_lsn, pass_snapshot = excluded.pass_snapshot,
       pass_after = NULL, pass_end = NULL, pass_rows = 0, pass_started_at = now(), pass_changed = false`,
    [migrationId, table, formatLsn(lsn), snapshot],
  );
}

/** Ranges up to `after` (a key's text, verify-ranges.ts `keyId`) compared equal; `rows` in the pass so far. */
export async function recordPassProgress(tgt: pg.Client, migrationId: string, table: string, after: string, rows: number): Promise<void> {
  await tgt.query('UPDATE pgferry.verify_state SET pass_after = $3, pass_rows = $4 WHERE migration_id = $1 AND table_name = $2 AND pass_lsn IS NOT NULL', [
    migrationId,
    table,
    after,
    rows,
  ]);
}

/** Where the pass ends: the table's last key in the snapshot its first range was compared in (`keyId`; null: the table was empty). */
export async function recordPassEnd(tgt: pg.Client, migrationId: string, table: string, end: string | null): Promise<void> {
  await tgt.query('UPDATE pgferry.verify_state SET pass_end = $3 WHERE migration_id = $1 AND table_name = $2 AND pass_lsn IS NOT NULL', [
    migrationId,
    table,
    end,
  ]);
}

/** The pass checked every range: it becomes the table's verification (with whether the table changed since it started). */
export async function recordPassComplete(tgt: pg.Client, migrationId: string, table: string, rows: number): Promise<void> {
  await tgt.query(
    `UPDATE pgferry.verify_state SET verified_lsn = pass_lsn, verified_snapshot = pass_snapshot, verified_at = now(), verified_rows = $3,
       verified_changed = pass_changed, pass_lsn = NULL, pass_snapshot = NULL, pass_after = NULL, pass_rows = 0, pass_started_at = NULL, pass_changed = false
     WHERE migration_id = $1 AND table_name = $2 AND pass_lsn IS NOT NULL`,
    [migrationId, table, rows],
  );
}

/** Forget the table's pass in progress (it will start again). */
export async function recordPassAbandoned(tgt: pg.Client, migrationId: string, table: string): Promise<void> {
  await tgt.query(
    `UPDATE pgferry.verify_state SET pass_lsn = NULL, pass_snapshot = NULL, pass_after = NULL, pass_rows = 0, pass_started_at = NULL, pass_changed = false
     WHERE migration_id = $1 AND table_name = $2`,
    [migrationId, table],
  );
}

/**
 * The apply is about to change `table` for the first time since its pass
 * started (or since it was verified): committed before that change is.
 */
export async function recordChanged(tgt: pg.Client, migrationId: string, table: string): Promise<void> {
  await tgt.query(
    'UPDATE pgferry.verify_state SET pass_changed = (pass_lsn IS NOT NULL), verified_changed = true WHERE migration_id = $1 AND table_name = $2',
    [migrationId, table],
  );
}

/** Rows the verification rewrote from the source. In the repair's own transaction. */
export async function recordRepair(tgt: pg.Client, migrationId: string, table: string, rows: number): Promise<void> {
  await tgt.query('UPDATE pgferry.verify_state SET repaired_rows = repaired_rows + $3 WHERE migration_id = $1 AND table_name = $2', [migrationId, table, rows]);
}

/** Nothing of this migration counts as verified any more (the write guards were off for a while): every table is verified again. */
export async function forgetVerification(tgt: pg.Client, migrationId: string): Promise<void> {
  await tgt.query(
    `UPDATE pgferry.verify_state SET verified_lsn = NULL, verified_snapshot = NULL, verified_at = NULL, verified_rows = 0, verified_changed = false,
       pass_lsn = NULL, pass_snapshot = NULL, pass_after = NULL, pass_rows = 0, pass_started_at = NULL, pass_changed = false
     WHERE migration_id = $1`,
    [migrationId],
  );
}
