/**
 * schema-follow-tables — tables created on the source during the sync, which
 * the migration's `tables` patterns select, carried to the target: created
 * there, added to the publication, copied in their own snapshot and streamed
 * from exactly that snapshot on.
 *
 * Input: the migration's spec, publication and the sync's per-table start
 * (`tableSyncLsn`), and the gates the apply reads (`TableGates`).
 * Output: the new tables on the target with their rows, their copy state and
 * a `follow-table:<key>` marker (pgferry created or adopted the table, its
 * post-data built or not), their start LSN in `tableSyncLsn`, their gate
 * opened.
 *
 * Per table, in this order:
 *  1. the table on the target, with its marker, in one transaction;
 *  2. its gate closed (lsn null: the apply holds every change of it);
 *  3. ALTER PUBLICATION … ADD TABLE (commits at P): from P its changes are streamed;
 *  4. a TEMPORARY slot's exported snapshot at L > P: the gate's lsn is L, the
 *     apply skips changes committed before L (the copy holds them);
 *  5. the copy in that snapshot, its copy state committed with its rows;
 *  6. tableSyncLsn = L, the gate opened: changes at or after L apply;
 *  7. its indexes and foreign keys (foreign keys NOT VALID, then validated).
 * Follow guards: (1) a table is emptied for a new copy only when its marker
 * says pgferry created it (an adopted one is loaded in one transaction, so
 * it is never left half copied); (2) a gate closed again keeps its `ready`
 * (an apply waiting on it is released by the copy that follows); (3) no
 * post-data while any gate is closed (an apply waiting on a gate inside a
 * batch holds the locks a foreign key needs on the tables it wrote).
 * A restart between any two steps: `unfinishedFollowedTables` closes the gates
 * of the tables with a marker and no complete copy before the sync applies
 * anything; `recopyTables` empties them and runs steps 3 to 7 again.
 */
import type pg from 'pg';
import { connect, qi, qn } from './conn';
import { dataTables, identityProblem, selectTables, tableKey, type TableInfo } from './catalog';
import { PgferryError, asPgferryError, redact, sqlState } from './errors';
import { failpoint } from './failpoints';
import { formatLsn, type Lsn } from './lsn';
import { planTasks, resetTables, runLoad, type TableCopyProgress } from './copy';
import { createSlotWithSnapshot } from './snapshot';
import { applyPostDataStatement, planSchema, verifyExistingSchema, type SchemaStatement } from './schema';
import { forgetCopiedTables, readCopyState, readMarkers, setMarker, type CopiedTable } from './target-state';
import type { MigrationSpec } from './spec';
import type { LogFn } from './log-fn';

/** A gate of one table: `lsn` the snapshot's point once known; `ready` resolves when the copy is committed and tableSyncLsn set. */
export interface TableGate {
  lsn: Lsn | null;
  ready: Promise<void>;
}

/**
 * Tables whose copy is in progress: the apply must not write them yet.
 * Shared by the follower and the applier (one process). The applier's rule,
 * for a change of a gated table in a source transaction committed at C: when
 * `lsn` is known and C < lsn, the change is skipped (the copy holds it);
 * otherwise the apply waits for `ready`, then applies it by the usual rule
 * (C >= tableSyncLsn).
 */
export class TableGates {
  private readonly gates = new Map<string, { gate: TableGate; resolve: () => void }>();

  /** Gates closed now: the applier checks this first (zero cost when no table is being added). */
  get size(): number {
    return this.gates.size;
  }

  /** The gate of table `key` (`tableKey`), if closed. */
  get(key: string): TableGate | undefined {
    return this.gates.get(key)?.gate;
  }

  /**
   * Close the gate of `key` with lsn null (every change of the table waits).
   * A gate already closed stays the same object (an applier may be waiting
   * on its `ready`); its lsn goes back to null for the new copy.
   */
  close(key: string): TableGate {
    const open = this.gates.get(key);
    if (open) {
      open.gate.lsn = null;
      return open.gate;
    }
    let resolve!: () => void;
    const gate: TableGate = { lsn: null, ready: new Promise<void>((r) => (resolve = r)) };
    this.gates.set(key, { gate, resolve });
    return gate;
  }

  /** The snapshot's consistent point, once known: changes committed before it are in the copy. */
  setLsn(key: string, lsn: Lsn): void {
    const g = this.gates.get(key);
    if (!g) throw new PgferryError('INTERNAL', `No gate is closed for table ${key}.`, 'Close the gate before the snapshot is taken.');
    g.gate.lsn = lsn;
  }

  /** The copy is committed and tableSyncLsn set: resolve `ready` and remove the gate. */
  open(key: string): void {
    const g = this.gates.get(key);
    if (!g) return;
    this.gates.delete(key);
    g.resolve();
  }
}

export interface FollowTablesContext {
  migrationId: string;
  /** Source and target endpoints, `tables` patterns, copy knobs, roles. */
  spec: MigrationSpec;
  publicationName: string;
  /** The migration's slot name (temporary slots are named after it, ≤ 63 characters). */
  slotName: string;
  /** The tables the migration has now. */
  known: TableInfo[];
  /** The map the applier reads: a new table's LSN is set here before its gate opens. */
  tableSyncLsn: Map<string, Lsn>;
  gates: TableGates;
  signal: AbortSignal;
  log: LogFn;
  /** Per-table copy figures (the status' copy progress); an entry is added per followed table. Default: a map of its own. */
  progress?: Map<string, TableCopyProgress>;
}

export interface FollowedTable {
  table: TableInfo;
  /** The snapshot's point: changes committed at or after it are streamed. */
  lsn: Lsn;
  rows: number;
  /** The DDL run on the target for it (pre-data, then post-data). */
  statements: string[];
}

export interface FollowResult {
  added: FollowedTable[];
  /** Selected tables not followed, each with the reason and the fix. */
  skipped: Array<{ table: string; reason: string }>;
}

/** The marker of a followed table (target-state.ts `migration_state`). */
const MARKER_PREFIX = 'follow-table:';
interface FollowRecord {
  /** `created`: pgferry created the table (it may empty it); `adopted`: it existed, empty, and was loaded in one part. */
  origin: 'created' | 'adopted';
  /** Its indexes and foreign keys are built. */
  indexed: boolean;
}

/** SQLSTATEs of "already exists" (duplicate object, table, function, schema). */
const ALREADY_EXISTS = new Set(['42710', '42P07', '42723', '42P06']);

/** The connections one call works with. */
interface Conns {
  src: pg.Client;
  tgt: pg.Client;
  sourceMajor: number;
}

/**
 * Tables the patterns select now that the publication lacks (`known` lacks
 * them, or they were selected while the agent was down, or it died before
 * adding them): create each on the target (types first, from planSchema),
 * close its gate, add it to the publication, take a temporary slot's
 * snapshot, copy it in that snapshot, record its copy state (so a restart
 * knows it is done), set tableSyncLsn, open the gate; then its indexes and
 * foreign keys. Also builds what earlier calls left of followed tables'
 * post-data. Plain tables only: a new partitioned table or partition, an
 * unlogged table, a table without a replica identity, or one of that name
 * on the target with rows that pgferry did not create is in `skipped`.
 *
 * A failure leaves the failing table's gate closed (no change of it was
 * applied): retry with `recopyTables(ctx, [table])`, or after a restart with
 * `unfinishedFollowedTables`.
 */
export async function followNewTables(ctx: FollowTablesContext): Promise<FollowResult> {
  return withConns(ctx, async (c) => {
    const selected = await selectTables(c.src, ctx.spec.tables);
    const published = await publishedKeys(c.src, ctx.publicationName);
    const records = await readRecords(c.tgt, ctx.migrationId);
    const knownKeys = new Set(ctx.known.map(tableKey));
    const out: FollowResult = { added: [], skipped: [] };
    for (const t of selected.tables) {
      const key = tableKey(t);
      if (published.has(key)) continue;
      if (t.root) {
        if (published.has(tableKey(t.root)) && !knownKeys.has(key)) out.skipped.push({ table: key, reason: NEW_PARTITION(t) });
        continue;
      }
      const reason = notFollowable(t);
      if (reason) {
        out.skipped.push({ table: key, reason });
        continue;
      }
      if (ctx.signal.aborted) break;
      const prepared = await prepareTarget(ctx, c, t, records.get(key));
      if ('skip' in prepared) {
        out.skipped.push({ table: key, reason: prepared.skip });
        continue;
      }
      const followed = await copyAndOpen(ctx, c, t, prepared.record);
      followed.statements.unshift(...prepared.statements);
      out.added.push(followed);
    }
    for (const f of out.added) f.statements.push(...(await buildPostData(ctx, c, f.table, selected.tables)));
    const pending = [...(await readRecords(c.tgt, ctx.migrationId))].filter(([key]) => !out.added.some((f) => tableKey(f.table) === key));
    await finishPendingPostData(ctx, c, selected.tables, new Map(pending));
    return out;
  });
}

/**
 * After a restart, before the sync applies anything: the tables pgferry
 * followed whose copy never completed (the agent died mid-follow), in the
 * publication or not yet. Closes their gates (lsn null) and returns them;
 * the caller then runs `recopyTables` for them. A followed table that is no
 * longer on the source (or no longer selected) is logged and left out.
 */
export async function unfinishedFollowedTables(ctx: FollowTablesContext): Promise<TableInfo[]> {
  return withConns(ctx, async (c) => {
    const records = await readRecords(c.tgt, ctx.migrationId);
    if (records.size === 0) return [];
    const copied = await readCopyState(c.tgt, ctx.migrationId);
    const unfinished = [...records.keys()].filter((key) => !copyComplete(copied.get(key)));
    if (unfinished.length === 0) return [];
    const selected = new Map(dataTables((await selectTables(c.src, ctx.spec.tables)).tables).map((t) => [tableKey(t), t]));
    const out: TableInfo[] = [];
    for (const key of unfinished) {
      const t = selected.get(key);
      if (!t) {
        ctx.log('warn', `Table ${key} was being added when the agent stopped and is no longer selected on the source: not copied again`, { table: key });
        continue;
      }
      ctx.gates.close(key);
      out.push(t);
    }
    if (out.length) ctx.log('info', `Copying again ${out.length} table(s) whose follow did not finish: ${out.map(tableKey).join(', ')}`);
    return out;
  });
}

/**
 * Copy `tables` again (each a followed table whose copy did not finish, its
 * gate closed): empty it on the target (only a table pgferry created; an
 * adopted one must still be empty), add it to the publication if it is not
 * there yet, then copy it in a fresh snapshot, set tableSyncLsn, open its
 * gate, and build its indexes and foreign keys.
 */
export async function recopyTables(ctx: FollowTablesContext, tables: TableInfo[]): Promise<FollowedTable[]> {
  if (tables.length === 0) return [];
  return withConns(ctx, async (c) => {
    const records = await readRecords(c.tgt, ctx.migrationId);
    const selected = (await selectTables(c.src, ctx.spec.tables)).tables;
    const out: FollowedTable[] = [];
    for (const t of tables) {
      const key = tableKey(t);
      ctx.gates.close(key);
      const record = records.get(key) ?? { origin: 'adopted', indexed: false };
      await emptyForRecopy(ctx, c, t, record);
      out.push(await copyAndOpen(ctx, c, t, record));
    }
    for (const f of out) f.statements.push(...(await buildPostData(ctx, c, f.table, selected)));
    return out;
  });
}

// ───────────────────────────── the steps ─────────────────────────────

const NEW_PARTITION = (t: TableInfo) =>
  `a partition created during the sync (of ${tableKey(t.root!)}): pgferry follows new plain tables only. Fix: stop the migration and start it again to copy the partition, or create it on the target yourself before rows reach it.`;

/** Why a selected table cannot be followed (null when it can). */
function notFollowable(t: TableInfo): string | null {
  const key = tableKey(t);
  if (t.kind === 'p')
    return 'a partitioned table created during the sync: pgferry follows new plain tables only. Fix: stop the migration and start it again to copy it.';
  if (t.persistence !== 'p') return 'an unlogged table: it cannot be published. Fix: ALTER TABLE … SET LOGGED on the source; it is followed at the next check.';
  const identity = identityProblem(t);
  if (identity)
    return `${identity}: added to the publication, UPDATE and DELETE on it would fail on the source. Fix: ALTER TABLE ${key} ADD PRIMARY KEY (…), or ALTER TABLE ${key} REPLICA IDENTITY FULL; it is followed at the next check.`;
  return null;
}

/**
 * The table on the target, ready to be copied into: created with its marker
 * (one transaction), or a table pgferry created before (emptied), or an
 * empty table of that name adopted. A table there with rows that pgferry did
 * not create is skipped.
 */
async function prepareTarget(
  ctx: FollowTablesContext,
  c: Conns,
  t: TableInfo,
  record: FollowRecord | undefined,
): Promise<{ record: FollowRecord; statements: string[] } | { skip: string }> {
  const key = tableKey(t);
  if (record) {
    // Created or adopted by an earlier call that stopped before the publication: empty it again.
    await emptyForRecopy(ctx, c, t, record);
    return { record, statements: [] };
  }
  const exists = (await c.tgt.query('SELECT to_regclass($1) IS NOT NULL AS e', [key])).rows[0].e as boolean;
  if (!exists) {
    const statements = await createOnTarget(ctx, c, t);
    await step(ctx, 'follow.table-created');
    return { record: { origin: 'created', indexed: false }, statements };
  }
  if (await hasRows(c.tgt, key)) {
    return {
      skip: `the target already has a table ${key} with rows, which pgferry did not create. Fix: empty it (TRUNCATE ${key}) or drop it on the target; it is followed at the next check.`,
    };
  }
  try {
    await verifyExistingSchema(c.tgt, [t]);
  } catch (e) {
    return { skip: `the target already has an empty table ${key} that differs from the source: ${redact((e as Error).message)} Fix: drop it on the target.` };
  }
  const adopted: FollowRecord = { origin: 'adopted', indexed: false };
  await c.tgt.query('BEGIN');
  await forgetCopiedTables(c.tgt, ctx.migrationId, [key]);
  await setMarker(c.tgt, ctx.migrationId, MARKER_PREFIX + key, JSON.stringify(adopted));
  await c.tgt.query('COMMIT');
  ctx.log('info', `Table ${key} is new on the source and exists, empty, on the target: loading into it`, { table: key });
  return { record: adopted, statements: [] };
}

/**
 * Create `t` on the target in one transaction with its marker: what it
 * needs first (schema, types, functions, sequences: kept when they exist),
 * then the table and its PRIMARY KEY / UNIQUE / CHECK constraints.
 */
async function createOnTarget(ctx: FollowTablesContext, c: Conns, t: TableInfo): Promise<string[]> {
  const key = tableKey(t);
  const plan = await planSchema(c.src, [t], { roles: ctx.spec.roles });
  const ran: string[] = [];
  let current: SchemaStatement | undefined;
  try {
    await c.tgt.query('BEGIN');
    await c.tgt.query('SET LOCAL search_path = pg_catalog');
    await c.tgt.query('SET LOCAL check_function_bodies = off');
    for (const s of plan.preData) {
      current = s;
      const own = s.kind === 'table' || s.kind === 'constraint' || s.kind === 'sequence-owner';
      if (!own && s.existsSql && (await c.tgt.query(s.existsSql)).rows.length > 0) continue;
      if (own) {
        await c.tgt.query(s.sql);
        ran.push(s.sql);
        continue;
      }
      // What the table needs may exist already (created at the start, or by an earlier follow): kept as it is.
      await c.tgt.query('SAVEPOINT follow_object');
      try {
        await c.tgt.query(s.sql);
        ran.push(s.sql);
      } catch (e) {
        if (!ALREADY_EXISTS.has(sqlState(e) ?? '')) throw e;
        await c.tgt.query('ROLLBACK TO SAVEPOINT follow_object');
      }
      await c.tgt.query('RELEASE SAVEPOINT follow_object');
    }
    current = undefined;
    // A table of that name copied before (dropped and created again on the source) left its copy state: not this table's.
    await forgetCopiedTables(c.tgt, ctx.migrationId, [key]);
    await setMarker(c.tgt, ctx.migrationId, MARKER_PREFIX + key, JSON.stringify({ origin: 'created', indexed: false } satisfies FollowRecord));
    await c.tgt.query('COMMIT');
  } catch (e) {
    await c.tgt.query('ROLLBACK').catch(() => undefined);
    throw new PgferryError(
      'SCHEMA_FAILED',
      redact(
        `Creating ${current ? `${current.kind} ${current.object}` : `table ${key}`} on the target for the new source table ${key} failed: ${(e as Error).message}${sqlState(e) ? ` (SQLSTATE ${sqlState(e)})` : ''}. Nothing was created.`,
      ),
      'Create what it needs on the target (or the table itself, empty), then resume the migration; or exclude the table in `tables.exclude`.',
      { cause: e },
    );
  }
  ctx.log('info', `Created table ${key} on the target (new on the source)`, { table: key, statements: ran.length });
  return ran;
}

/** Empty a followed table for a new copy: only a table pgferry created; an adopted one must be empty still. */
async function emptyForRecopy(ctx: FollowTablesContext, c: Conns, t: TableInfo, record: FollowRecord): Promise<void> {
  const key = tableKey(t);
  if (record.origin === 'created') {
    ctx.log('warn', `Table ${key} was being added when the previous run stopped; emptying it to copy it again`, { table: key });
    await resetTables(c.tgt, ctx.migrationId, [t]);
    return;
  }
  const copied = (await readCopyState(c.tgt, ctx.migrationId)).get(key);
  if (!copied && !(await hasRows(c.tgt, key))) return;
  throw new PgferryError(
    'COPY_FAILED',
    `Table ${key} was being loaded into when the previous run stopped; it existed on the target before pgferry (not created by it) and holds rows now, so pgferry does not empty it.`,
    `Empty it on the target (TRUNCATE ${key}) and resume the migration: it is copied again.`,
  );
}

/**
 * Steps 2 to 6 for one table whose target table is ready and empty: gate
 * closed, publication, snapshot, copy, tableSyncLsn, gate open.
 */
async function copyAndOpen(ctx: FollowTablesContext, c: Conns, t: TableInfo, record: FollowRecord): Promise<FollowedTable> {
  const key = tableKey(t);
  ctx.gates.close(key);
  await addToPublication(c.src, ctx.publicationName, t);
  await step(ctx, 'follow.published');
  const tmpName = `${ctx.slotName.slice(0, 50)}_f${Date.now().toString(36)}`;
  const snap = await createSlotWithSnapshot(ctx.spec.source, tmpName, true, ctx.signal);
  try {
    ctx.gates.setLsn(key, snap.lsn);
    ctx.log('info', `Copying new table ${key} in a snapshot at ${formatLsn(snap.lsn)}`, { table: key });
    await step(ctx, 'follow.snapshot');
    const { workers, splitBytes } = ctx.spec.copy;
    // An adopted table is loaded in one part (one transaction): pgferry never has to empty a table it did not create.
    const split = record.origin === 'created' ? splitBytes : Number.MAX_SAFE_INTEGER;
    if ((await readCopyState(c.tgt, ctx.migrationId)).has(key)) throw new PgferryError('INTERNAL', `Table ${key} has a copy state before its copy.`, '');
    const progress = progressOf(ctx, t);
    const tasks = await planTasks(c.src, [t], workers, split, c.sourceMajor);
    progress.parts = tasks.length;
    await runLoad(
      {
        migrationId: ctx.migrationId,
        source: ctx.spec.source,
        target: ctx.spec.target,
        tables: [t],
        snapshotName: snap.snapshotName,
        snapshotLsn: snap.lsn,
        onSnapshotImported: snap.release,
        workers,
        splitBytes: split,
        sourceMajor: c.sourceMajor,
        progress: ctx.progress!,
        signal: ctx.signal,
        log: ctx.log,
      },
      tasks,
    );
  } finally {
    await snap.release();
  }
  await step(ctx, 'follow.copied');
  const copied = (await readCopyState(c.tgt, ctx.migrationId)).get(key);
  if (!copyComplete(copied)) throw new PgferryError('INTERNAL', `The copy of ${key} ended without recording every part.`, '');
  ctx.tableSyncLsn.set(key, snap.lsn);
  ctx.gates.open(key);
  return { table: t, lsn: snap.lsn, rows: copied!.rows, statements: [] };
}

/** ALTER PUBLICATION … ADD TABLE, unless the table is in it. */
async function addToPublication(src: pg.Client, publication: string, t: TableInfo): Promise<void> {
  const key = tableKey(t);
  if ((await publishedKeys(src, publication)).has(key)) return;
  try {
    await src.query(`ALTER PUBLICATION ${qi(publication)} ADD TABLE ${key}`);
  } catch (e) {
    if (sqlState(e) === '42710') return; // added meanwhile
    if (sqlState(e) === '42501') {
      throw new PgferryError(
        'INSUFFICIENT_PRIVILEGE',
        redact(`The source role may not add the new table ${key} to publication '${publication}': ${(e as Error).message}.`),
        `Make the source role the owner of ${key} (ALTER TABLE ${key} OWNER TO …) or connect as a superuser; or exclude the table in \`tables.exclude\`.`,
        { cause: e },
      );
    }
    throw asPgferryError(e, 'INTERNAL', `adding ${key} to publication '${publication}'`);
  }
}

/**
 * Step 7: the table's indexes, EXCLUDE constraints and replica identity,
 * then its foreign keys to selected tables (added NOT VALID, then validated:
 * a failed validation, as when the apply has not yet reached the copy's
 * point, is retried at the next call); then its marker says so.
 */
async function buildPostData(ctx: FollowTablesContext, c: Conns, t: TableInfo, selected: TableInfo[]): Promise<string[]> {
  // Follow guard 3: while a gate is closed, the apply may wait on it inside a batch holding locks a foreign key needs.
  if (ctx.signal.aborted || ctx.gates.size > 0) return [];
  const key = tableKey(t);
  const refs = await c.src.query<{ oid: number }>(`SELECT DISTINCT confrelid::int AS oid FROM pg_constraint WHERE conrelid = $1 AND contype = 'f'`, [t.oid]);
  const refOids = new Set(refs.rows.map((r) => r.oid));
  const referenced = selected.filter((s) => refOids.has(s.oid) && s.oid !== t.oid);
  const own = await planSchema(c.src, [t], { roles: ctx.spec.roles });
  const withRefs = referenced.length ? await planSchema(c.src, [t, ...referenced], { roles: ctx.spec.roles }) : own;
  const statements = [
    ...own.postData.filter((s) => s.kind !== 'foreign-key'),
    ...withRefs.postData.filter((s) => s.kind === 'foreign-key' && s.object.startsWith(`${key}.`)),
  ];
  const ran: string[] = [];
  let validated = true;
  for (const s of statements) {
    if (s.kind !== 'foreign-key') {
      if (await applyPostDataStatement(c.tgt, s)) ran.push(s.sql);
      continue;
    }
    const notValid = /\bNOT VALID\s*$/i.test(s.sql);
    if (await applyPostDataStatement(c.tgt, notValid ? s : { ...s, sql: `${s.sql} NOT VALID` })) ran.push(s.sql);
    if (notValid) continue;
    const name = s.object.slice(key.length + 1);
    try {
      const r = await c.tgt.query(`SELECT convalidated AS v FROM pg_constraint WHERE conrelid = $1::regclass AND quote_ident(conname) = $2`, [key, name]);
      if (r.rows[0] && !r.rows[0].v) await c.tgt.query(`ALTER TABLE ${key} VALIDATE CONSTRAINT ${name}`);
    } catch (e) {
      validated = false;
      ctx.log('warn', redact(`Foreign key ${s.object} on the new table is not validated yet (retried at the next check): ${(e as Error).message}`), {
        table: key,
      });
    }
  }
  if (validated && !ctx.signal.aborted) {
    const record = (await readRecords(c.tgt, ctx.migrationId)).get(key);
    if (record) await setMarker(c.tgt, ctx.migrationId, MARKER_PREFIX + key, JSON.stringify({ ...record, indexed: true }));
  }
  return ran;
}

/** Post-data of followed tables whose copy completed in an earlier call (or run) but whose indexes or foreign keys are not all built. */
async function finishPendingPostData(ctx: FollowTablesContext, c: Conns, selected: TableInfo[], records: Map<string, FollowRecord>): Promise<void> {
  const pending = [...records].filter(([, r]) => !r.indexed).map(([key]) => key);
  if (pending.length === 0) return;
  const copied = await readCopyState(c.tgt, ctx.migrationId);
  for (const key of pending) {
    const t = selected.find((s) => tableKey(s) === key);
    if (!t || !copyComplete(copied.get(key)) || ctx.gates.get(key) || ctx.signal.aborted) continue;
    await buildPostData(ctx, c, t, selected);
  }
}

// ───────────────────────────── helpers ─────────────────────────────

async function withConns<T>(ctx: FollowTablesContext, fn: (c: Conns) => Promise<T>): Promise<T> {
  const name = `pgferry ${ctx.migrationId} follow`;
  const [s, t] = await Promise.allSettled([
    connect('source', ctx.spec.source, { applicationName: name }),
    connect('target', ctx.spec.target, { applicationName: name }),
  ]);
  try {
    if (s.status === 'rejected') throw s.reason;
    if (t.status === 'rejected') throw t.reason;
    const v = await s.value.query("SELECT current_setting('server_version_num')::int AS v");
    return await fn({ src: s.value, tgt: t.value, sourceMajor: Math.floor(v.rows[0].v / 10000) });
  } finally {
    if (s.status === 'fulfilled') await s.value.end().catch(() => undefined);
    if (t.status === 'fulfilled') await t.value.end().catch(() => undefined);
  }
}

/** A failpoint between two steps (tests stop the agent there), then the stop check. */
async function step(ctx: FollowTablesContext, name: string): Promise<void> {
  await failpoint(name, ctx.signal);
  if (ctx.signal.aborted) throw new PgferryError('INTERNAL', `Following the new tables was stopped (${name}).`, '');
}

/** The tables listed in the publication (`tableKey`): the migration's, plain tables and partitioned roots. */
async function publishedKeys(src: pg.Client, publication: string): Promise<Set<string>> {
  const r = await src.query<{ schema: string; name: string }>(
    `SELECT n.nspname AS schema, c.relname AS name FROM pg_publication_rel pr
       JOIN pg_publication p ON p.oid = pr.prpubid JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE p.pubname = $1`,
    [publication],
  );
  return new Set(r.rows.map((row) => qn(row.schema, row.name)));
}

async function readRecords(tgt: pg.Client, migrationId: string): Promise<Map<string, FollowRecord>> {
  const out = new Map<string, FollowRecord>();
  for (const [marker, value] of await readMarkers(tgt, migrationId, MARKER_PREFIX)) {
    const r = JSON.parse(value ?? '{}') as Partial<FollowRecord>;
    out.set(marker.slice(MARKER_PREFIX.length), { origin: r.origin === 'created' ? 'created' : 'adopted', indexed: r.indexed === true });
  }
  return out;
}

const copyComplete = (c: CopiedTable | undefined): boolean => c !== undefined && c.partsDone === c.parts;

async function hasRows(tgt: pg.Client, key: string): Promise<boolean> {
  return (await tgt.query(`SELECT EXISTS (SELECT 1 FROM ONLY ${key}) AS e`)).rows[0].e as boolean;
}

/** The table's copy figures, from zero (added to `ctx.progress`, which is made when missing). */
function progressOf(ctx: FollowTablesContext, t: TableInfo): TableCopyProgress {
  ctx.progress ??= new Map();
  const key = tableKey(t);
  const p = ctx.progress.get(key) ?? { schema: t.schema, name: t.name, parts: 1, rowsEstimated: Math.round(t.estimatedRows), bytesEstimated: t.bytes };
  ctx.progress.set(key, Object.assign(p, { phase: 'queued' as const, partsDone: 0, rowsCopied: 0, bytesCopied: 0 }));
  return ctx.progress.get(key)!;
}
