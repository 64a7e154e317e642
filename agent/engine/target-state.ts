/**
 * target-state — pgferry's bookkeeping on the target, in schema `pgferry`.
 *
 * Progress that must be exactly as durable as the data it describes lives in
 * the target, written in the same transaction as that data:
 *   - `pgferry.apply_state`: the source position (end LSN of the last source
 *     transaction applied) per migration; committed with the changes it covers.
 *   - `pgferry.copy_state`: one row per table (or part of one) copied by the
 *     initial load, with the LSN of the snapshot it was copied in; committed
 *     with the copied rows.
 *   - `pgferry.migration_state`: stage markers (e.g. 'pre-data' done).
 *   - `pgferry.verify_state`: the continuous verification's progress per
 *     table (verify-state.ts holds its queries).
 * `dropTargetState()` removes a migration's rows. Every query on these
 * tables is in this file.
 */
import type pg from 'pg';
import { formatLsn, parseLsn, type Lsn } from './lsn';
import { ql } from './conn';

export const TARGET_STATE_DDL = `
CREATE SCHEMA IF NOT EXISTS pgferry;
CREATE TABLE IF NOT EXISTS pgferry.apply_state (
  migration_id text PRIMARY KEY,
  applied_lsn pg_lsn NOT NULL,
  applied_commit_time timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS pgferry.copy_state (
  migration_id text NOT NULL,
  table_name text NOT NULL,
  part int NOT NULL DEFAULT 0,
  parts int NOT NULL DEFAULT 1,
  snapshot_lsn pg_lsn NOT NULL,
  rows bigint NOT NULL,
  bytes bigint NOT NULL,
  copied_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (migration_id, table_name, part)
);
CREATE TABLE IF NOT EXISTS pgferry.migration_state (
  migration_id text NOT NULL,
  marker text NOT NULL,
  value text,
  at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (migration_id, marker)
);
CREATE TABLE IF NOT EXISTS pgferry.verify_state (
  migration_id text NOT NULL,
  table_name text NOT NULL,
  pass_lsn pg_lsn,
  pass_snapshot text,
  pass_after text,
  pass_rows bigint NOT NULL DEFAULT 0,
  pass_started_at timestamptz,
  pass_changed boolean NOT NULL DEFAULT false,
  verified_lsn pg_lsn,
  verified_snapshot text,
  verified_at timestamptz,
  verified_rows bigint NOT NULL DEFAULT 0,
  verified_changed boolean NOT NULL DEFAULT false,
  repaired_rows bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (migration_id, table_name)
);
ALTER TABLE pgferry.verify_state ADD COLUMN IF NOT EXISTS pass_end text;
CREATE TABLE IF NOT EXISTS pgferry.follow_columns (
  migration_id text NOT NULL,
  table_name text NOT NULL,
  attnums jsonb NOT NULL,
  PRIMARY KEY (migration_id, table_name)
);
CREATE TABLE IF NOT EXISTS pgferry.schema_changes (
  migration_id text NOT NULL,
  seq bigserial,
  at timestamptz NOT NULL DEFAULT clock_timestamp(),
  object text NOT NULL,
  change text NOT NULL,
  statement text NOT NULL,
  PRIMARY KEY (migration_id, seq)
);`;

export async function ensureTargetState(client: pg.Client): Promise<void> {
  // Serialize concurrent creators (several workers may start at once).
  await client.query("SELECT pg_advisory_lock(hashtext('pgferry.target_state'))");
  try {
    await client.query(TARGET_STATE_DDL);
  } finally {
    await client.query("SELECT pg_advisory_unlock(hashtext('pgferry.target_state'))");
  }
}

export async function readAppliedLsn(client: pg.Client, migrationId: string): Promise<Lsn | null> {
  const r = await client.query('SELECT applied_lsn::text AS lsn FROM pgferry.apply_state WHERE migration_id = $1', [migrationId]);
  return r.rows.length ? parseLsn(r.rows[0].lsn) : null;
}

/**
 * The statements that end an apply batch, sent in the same pipeline part as
 * its changes (apply.ts): the applied position, written in the batch's own
 * transaction ($1 migration id, $2 the source end LSN as text, $3 the source
 * commit time as ISO text or NULL); COMMIT; then the target's WAL insert
 * position (the commit record is below it) and flush position.
 */
export const RECORD_APPLIED_LSN = `INSERT INTO pgferry.apply_state (migration_id, applied_lsn, applied_commit_time)
  VALUES ($1, $2::pg_lsn, $3::timestamptz)
  ON CONFLICT (migration_id) DO UPDATE SET applied_lsn = excluded.applied_lsn, applied_commit_time = excluded.applied_commit_time, updated_at = now()`;
export const LOCAL_WAL_POSITIONS = 'SELECT pg_current_wal_insert_lsn()::text AS local, pg_current_wal_flush_lsn()::text AS flushed';

/** What the initial load committed for one table: its parts so far. */
export interface CopiedTable {
  partsDone: number;
  /** How many parts the table was split into. */
  parts: number;
  rows: number;
  bytes: number;
  /** The oldest and the newest snapshot its parts were copied in. */
  firstSnapshotLsn: Lsn;
  lastSnapshotLsn: Lsn;
}

/** Per table (`tableKey`), what the initial load of `migrationId` committed. */
export async function readCopyState(client: pg.Client, migrationId: string): Promise<Map<string, CopiedTable>> {
  const r = await client.query(
    `SELECT table_name, count(*)::int AS parts_done, max(parts)::int AS parts,
      sum(rows)::float8 AS rows, sum(bytes)::float8 AS bytes, min(snapshot_lsn)::text AS first_lsn, max(snapshot_lsn)::text AS last_lsn
      FROM pgferry.copy_state WHERE migration_id = $1 GROUP BY table_name`,
    [migrationId],
  );
  return new Map(
    r.rows.map((row) => [
      row.table_name as string,
      {
        partsDone: row.parts_done,
        parts: row.parts,
        rows: Number(row.rows),
        bytes: Number(row.bytes),
        firstSnapshotLsn: parseLsn(row.first_lsn),
        lastSnapshotLsn: parseLsn(row.last_lsn),
      },
    ]),
  );
}

/** One copied part of a table; written in the transaction that commits its rows. */
export async function recordCopiedPart(
  client: pg.Client,
  migrationId: string,
  p: {
    table: string;
    part: number;
    parts: number;
    snapshotLsn: Lsn;
    rows: number;
    bytes: number;
  },
): Promise<void> {
  await client.query(
    `INSERT INTO pgferry.copy_state (migration_id, table_name, part, parts, snapshot_lsn, rows, bytes)
    VALUES ($1, $2, $3, $4, $5::pg_lsn, $6, $7)`,
    [migrationId, p.table, p.part, p.parts, formatLsn(p.snapshotLsn), p.rows, p.bytes],
  );
}

/** Forget the copied parts of `tables` (`tableKey`s); in the transaction that empties them. */
export async function forgetCopiedTables(client: pg.Client, migrationId: string, tables: string[]): Promise<void> {
  await client.query('DELETE FROM pgferry.copy_state WHERE migration_id = $1 AND table_name = ANY($2::text[])', [migrationId, tables]);
}

export async function getMarker(client: pg.Client, migrationId: string, marker: string): Promise<string | null | undefined> {
  const r = await client.query('SELECT value FROM pgferry.migration_state WHERE migration_id = $1 AND marker = $2', [migrationId, marker]);
  return r.rows.length ? r.rows[0].value : undefined;
}

/** The markers of `migrationId` whose name starts with `prefix`, by name (schema-follow-tables.ts keeps one per followed table). */
export async function readMarkers(client: pg.Client, migrationId: string, prefix: string): Promise<Map<string, string | null>> {
  const r = await client.query('SELECT marker, value FROM pgferry.migration_state WHERE migration_id = $1 AND left(marker, length($2)) = $2', [
    migrationId,
    prefix,
  ]);
  return new Map(r.rows.map((row) => [row.marker as string, row.value as string | null]));
}

export async function setMarker(client: pg.Client, migrationId: string, marker: string, value: string | null = null): Promise<void> {
  await client.query(
    `INSERT INTO pgferry.migration_state (migration_id, marker, value) VALUES ($1, $2, $3)
    ON CONFLICT (migration_id, marker) DO UPDATE SET value = excluded.value, at = now()`,
    [migrationId, marker, value],
  );
}

export async function dropTargetState(client: pg.Client, migrationId: string): Promise<void> {
  const exists = await client.query("SELECT 1 FROM pg_namespace WHERE nspname = 'pgferry'");
  if (!exists.rows.length) return;
  for (const t of ['apply_state', 'copy_state', 'migration_state', 'verify_state', 'follow_columns', 'schema_changes']) {
    // verify_state is missing on a target an older agent set up and nobody resumed since.
    await client.query(
      `DO $$ BEGIN IF to_regclass('pgferry.${t}') IS NOT NULL THEN DELETE FROM pgferry.${t} WHERE migration_id = ${ql(migrationId)}; END IF; END $$`,
    );
  }
}
