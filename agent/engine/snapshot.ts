/**
 * snapshot — the consistent start: publication, replication slot and the
 * snapshot the initial load reads in, created so that there is no gap and no
 * double between the copy and the stream.
 *
 * Order matters:
 *  1. The publication is created first (a slot created before it would decode
 *     WAL whose historic catalog does not know the publication yet).
 *  2. `CREATE_REPLICATION_SLOT … LOGICAL pgoutput EXPORT_SNAPSHOT` on a
 *     replication connection creates the slot AND exports the snapshot of its
 *     consistent point in one step. Transactions that commit before that LSN
 *     are in the snapshot; those after it come from the slot's stream.
 *  3. The exporting connection must stay open, idle, until every copy worker
 *     has run `SET TRANSACTION SNAPSHOT`; then it is released.
 * A load that resumes after a crash cannot get that snapshot back (it died
 * with its connection); it takes a TEMPORARY slot's snapshot instead and the
 * tables copied in it record that slot's LSN, so the main stream applies to
 * them only transactions committed after it (see copy.ts and sync.ts).
 */
import type pg from 'pg';
import { connect, qi, qn, ql } from './conn';
import { PgferryError, asPgferryError, sqlState } from './errors';
import { parseLsn, type Lsn } from './lsn';
import { publishedTables, type TableInfo } from './catalog';
import type { Endpoint } from './spec';
import { sleep } from './sleep';

export const PUBLICATION_COMMENT_PREFIX = 'pgferry migration ';

export interface ExportedSnapshot {
  slotName: string;
  /** The slot's consistent point. */
  lsn: Lsn;
  snapshotName: string;
  /** Release the exporting connection (after every worker imported the snapshot). */
  release(): Promise<void>;
}

/** Create the publication for the selected tables (idempotent for our own). */
export async function createPublication(src: pg.Client, migrationId: string, name: string, tables: TableInfo[], sourceMajor: number): Promise<void> {
  const existing = await src.query(`SELECT p.pubname, obj_description(p.oid, 'pg_publication') AS comment FROM pg_publication p WHERE p.pubname = $1`, [name]);
  if (existing.rows.length) {
    if (existing.rows[0].comment === PUBLICATION_COMMENT_PREFIX + migrationId) return;
    throw new PgferryError(
      'SLOT_NAME_TAKEN',
      `A publication named '${name}' already exists on the source and is not this migration's.`,
      `Set \`publicationName\` to another name, or drop it if unused: DROP PUBLICATION ${qi(name)};`,
    );
  }
  const list = publishedTables(tables)
    .map((t) => qn(t.schema, t.name))
    .join(', ');
  const withClause = sourceMajor >= 13 ? ' WITH (publish_via_partition_root = true)' : '';
  try {
    await src.query('BEGIN');
    await src.query(`CREATE PUBLICATION ${qi(name)} FOR TABLE ${list}${withClause}`);
    await src.query(`COMMENT ON PUBLICATION ${qi(name)} IS ${ql(PUBLICATION_COMMENT_PREFIX + migrationId)}`);
    await src.query('COMMIT');
  } catch (e) {
    await src.query('ROLLBACK').catch(() => undefined);
    if (sqlState(e) === '42501') {
      throw new PgferryError(
        'INSUFFICIENT_PRIVILEGE',
        `The source role may not create publication '${name}': ${(e as Error).message}.`,
        'Connect as the owner of the selected tables (CREATE PUBLICATION requires ownership) or a superuser.',
        { cause: e },
      );
    }
    throw asPgferryError(e, 'INTERNAL', `creating publication '${name}' on the source`);
  }
}

/**
 * Create the main slot with an exported snapshot. `temporary` slots vanish
 * with their connection (used when a load resumes).
 */
export async function createSlotWithSnapshot(source: Endpoint, slotName: string, temporary = false, signal?: AbortSignal): Promise<ExportedSnapshot> {
  const repl = await connect('source', source, { replication: true, applicationName: `pgferry snapshot ${slotName}` });
  // Aborted (the verification stopped): the creation may be waiting for the source's open transactions; end it.
  const onAbort = () => void repl.end().catch(() => undefined);
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    if (signal?.aborted) throw new Error('aborted before the slot was created');
    const r = await repl.query(`CREATE_REPLICATION_SLOT ${qi(slotName)}${temporary ? ' TEMPORARY' : ''} LOGICAL pgoutput EXPORT_SNAPSHOT`);
    const row = r.rows[0];
    return {
      slotName,
      lsn: parseLsn(row.consistent_point),
      snapshotName: row.snapshot_name,
      release: async () => {
        signal?.removeEventListener('abort', onAbort);
        await repl.end().catch(() => undefined);
      },
    };
  } catch (e) {
    signal?.removeEventListener('abort', onAbort);
    await repl.end().catch(() => undefined);
    if (sqlState(e) === '42710') {
      throw new PgferryError(
        'SLOT_NAME_TAKEN',
        `A replication slot named '${slotName}' already exists on the source.`,
        `Set \`slotName\` to another name, or drop the slot if it is unused: SELECT pg_drop_replication_slot('${slotName}');`,
        { cause: e },
      );
    }
    if (sqlState(e) === '53400') {
      throw new PgferryError(
        'PREFLIGHT_FAILED',
        `The source has no free replication slot: ${(e as Error).message}.`,
        'Raise max_replication_slots on the source (and restart it), or drop unused slots.',
        { cause: e },
      );
    }
    throw asPgferryError(e, 'INTERNAL', `creating replication slot '${slotName}'`);
  }
}

export interface DropResult {
  dropped: string[];
}

/**
 * Drop the slot and publication this migration created on the source. Waits
 * for a walsender still holding the slot to let go (it is terminated if it
 * belongs to pgferry's own application_name).
 */
export async function dropSourceObjects(src: pg.Client, migrationId: string, slotName: string, publicationName: string): Promise<DropResult> {
  const dropped: string[] = [];
  if (await dropSlot(src, slotName)) dropped.push(`replication slot ${slotName}`);
  const pub = await src.query(`SELECT obj_description(p.oid, 'pg_publication') AS comment FROM pg_publication p WHERE p.pubname = $1`, [publicationName]);
  if (pub.rows.length && pub.rows[0].comment === PUBLICATION_COMMENT_PREFIX + migrationId) {
    await src.query(`DROP PUBLICATION ${qi(publicationName)}`);
    dropped.push(`publication ${publicationName}`);
  }
  return { dropped };
}

/**
 * Drop a replication slot, waiting for a walsender still holding it to let
 * go (terminating it when it is pgferry's own). Returns false when there was
 * no such slot.
 */
export async function dropSlot(src: pg.Client, slotName: string): Promise<boolean> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const slot = await src.query('SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1', [slotName]);
    if (!slot.rows.length) return false;
    const pid = slot.rows[0].active_pid;
    if (pid) {
      await src.query(`SELECT pg_terminate_backend($1) FROM pg_stat_activity WHERE pid = $1 AND application_name LIKE 'pgferry%'`, [pid]);
      await sleep(100);
      continue;
    }
    try {
      await src.query('SELECT pg_drop_replication_slot($1)', [slotName]);
      return true;
    } catch (e) {
      if (sqlState(e) === '55006' || sqlState(e) === '42704') {
        await sleep(100);
        continue;
      }
      throw asPgferryError(e, 'INTERNAL', `dropping replication slot '${slotName}'`);
    }
  }
  throw new PgferryError(
    'INTERNAL',
    `The replication slot '${slotName}' is still in use on the source after 5 s; it was not dropped.`,
    `Find the session holding it (SELECT active_pid FROM pg_replication_slots WHERE slot_name = '${slotName}'), end it, then retry; or drop it by hand: SELECT pg_drop_replication_slot('${slotName}');`,
  );
}

export async function slotExists(src: pg.Client, slotName: string): Promise<boolean> {
  return (await src.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1', [slotName])).rows.length > 0;
}
