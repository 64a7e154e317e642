/**
 * schema-follow — the target keeps the source's schema through the sync
 * (`schemaChanges: 'follow'`): the stage's driver and its record.
 *
 * Three paths, each in its own file:
 *   - columns, in stream order: the apply follows a table's new shape at the
 *     stream's point where it changed (schema-follow-columns.ts, through
 *     apply-mapping.ts), inside the batch that carries its first rows;
 *   - new tables: created on the target, added to the publication, copied in
 *     a snapshot of their own and streamed from exactly there
 *     (schema-follow-tables.ts), found by a periodic look at the source;
 *   - everything else (indexes, constraints, views, functions, triggers,
 *     policies, grants, comments, types and enum values): the source's
 *     catalog reconciled onto the target (schema-follow-objects.ts), every
 *     RECONCILE_MS when the source's catalog changed, once more before the
 *     cutover's fence and a last time inside it (with the columns no row
 *     change brought), and at once when a change fails because the target's
 *     types are behind (an enum value used right after it was added).
 * Tables dropped on the source are kept on the target (pgferry never drops
 * data) and named in the status.
 *
 * Input: the runner (its spec, tables and verifier). Output: changes made on
 * the target, each a log line (event `schema-change`), a row of
 * `pgferry.schema_changes` and an entry of the status (`SchemaChangesStatus`).
 */
import type pg from 'pg';
import { selectTables, tableKey, type TableInfo } from './catalog';
import { closeQuietly, connect } from './conn';
import { catalogSignature, rolesOf } from './cutover-schema';
import type { LogFn } from './log-fn';
import type { Lsn } from './lsn';
import { migratableTables } from './preflight';
import { selectSchemas } from './schema-objects-read';
import { changeRecordStatement, fenceColumnChanges, runChanges, type ShapeChange } from './schema-follow-columns';
import { reconcileObjects, reconcileTypes, type AppliedChange, type ReconcileOptions, type ReconcileResult } from './schema-follow-objects';
import { TableGates, followNewTables, recopyTables, unfinishedFollowedTables, type FollowTablesContext } from './schema-follow-tables';
import { sleep } from './sleep';
import type { MigrationSpec } from './spec';
import type { SchemaChangeEntry, SchemaChangesStatus } from './state';
import type { TableCopyProgress } from './copy';

/** How often the source's catalog is looked at during the sync (a signature query; the rest only when it changed). */
const RECONCILE_MS = Number(process.env.PGFERRY_SCHEMA_RECONCILE_MS ?? 15_000);
/** Entries the status lists. */
const RECENT = 20;
/** The change that names a table dropped on the source. */
const KEPT = 'table dropped on the source; kept on the target';

/** What the keeper reads and tells of its runner (migration-phases.ts). */
export interface KeeperHost {
  readonly id: string;
  readonly spec: MigrationSpec;
  readonly publicationName: string;
  readonly slotName: string;
  readonly log: LogFn;
  /** The migration's tables now. */
  tables(): TableInfo[];
  /** Tables were added, dropped or changed shape: the runner reads them again and tells the verification. */
  tablesChanged(): Promise<void>;
  readonly tableSyncLsn: Map<string, Lsn>;
  readonly progress: Map<string, TableCopyProgress>;
}

export class SchemaKeeper {
  readonly gates = new TableGates();
  private applied = 0;
  private lastAppliedAt = '';
  private recent: SchemaChangeEntry[] = [];
  private kept = new Set<string>();
  private lastReconciledAt = '';
  private lastError = '';
  /** The source's catalog signature at the last reconciliation that left nothing to do. */
  private signature = '';
  /** The source's catalog signature at the last reconciliation of the objects that failed nowhere (the fence skips them when unchanged). */
  private reconciledSig = '';
  private unfinished: TableInfo[] = [];
  private running = false;

  constructor(private readonly host: KeeperHost) {}

  /**
   * Before the sync applies anything: what earlier runs followed (the
   * status' counts), and the gates of tables whose copy a restart cut short
   * (copied again by the loop before anything else).
   */
  async prepare(tgt: pg.Client): Promise<void> {
    const r = await tgt.query(
      `SELECT count(*)::int AS n, max(at) AS last,
              coalesce(array_agg(object) FILTER (WHERE change = $2), '{}') AS kept
         FROM pgferry.schema_changes WHERE migration_id = $1`,
      [this.host.id, KEPT],
    );
    this.applied = r.rows[0].n;
    this.lastAppliedAt = r.rows[0].last ? new Date(r.rows[0].last).toISOString() : '';
    this.kept = new Set(r.rows[0].kept as string[]);
    const last = await tgt.query('SELECT at, object, change, statement FROM pgferry.schema_changes WHERE migration_id = $1 ORDER BY seq DESC LIMIT $2', [
      this.host.id,
      RECENT,
    ]);
    this.recent = last.rows.reverse().map((x) => ({ at: new Date(x.at).toISOString(), object: x.object, change: x.change, statement: x.statement }));
    this.unfinished = await unfinishedFollowedTables(this.tablesContext(new AbortController().signal));
  }

  /** Look at the source every RECONCILE_MS until `signal` aborts. */
  start(signal: AbortSignal): void {
    if (this.running) return;
    this.running = true;
    void (async () => {
      try {
        while (!signal.aborted) {
          try {
            this.lastError = '';
            await this.tick(signal);
          } catch (e) {
            if (signal.aborted) break;
            this.lastError = (e as Error).message;
            this.host.log('warn', `Following the source's schema: ${this.lastError} (tried again in ${RECONCILE_MS / 1000} s)`, {
              event: 'schema-follow-failed',
            });
          }
          await sleep(RECONCILE_MS, signal).catch(() => undefined);
        }
      } finally {
        this.running = false;
      }
    })();
  }

  /** One look: tables cut short copied again, new tables added, dropped ones named, other objects reconciled if the catalog changed. */
  async tick(signal: AbortSignal): Promise<void> {
    const ctx = this.tablesContext(signal);
    // Tables whose copy did not finish (a restart, or a failed copy: their gates hold the apply back) first.
    const unfinished = this.unfinished.length ? this.unfinished : await unfinishedFollowedTables(ctx);
    this.unfinished = [];
    if (unfinished.length) {
      await this.withClients(async (src, tgt) => this.record(tgt, await reconcileTypes(src, tgt, await this.reconcileOptions(src, signal))));
      const done = await recopyTables(ctx, unfinished);
      if (done.length) await this.tablesAdded(done.map((f) => ({ key: tableKey(f.table), rows: f.rows, statements: f.statements })));
    }
    await this.withClients(async (src, tgt) => {
      const sig = await catalogSignature(src);
      if (sig === this.signature) return;
      const opts = await this.reconcileOptions(src, signal);
      // Types first: a new table's rows may use an enum value the target lacks.
      await this.record(tgt, await reconcileTypes(src, tgt, opts));
      const added = await followNewTables(ctx);
      for (const s of added.skipped)
        this.host.log('warn', `New table ${s.table} is not followed: ${s.reason}`, { event: 'schema-follow-skipped', table: s.table });
      if (added.added.length) await this.tablesAdded(added.added.map((f) => ({ key: tableKey(f.table), rows: f.rows, statements: f.statements })));
      await this.noteDropped(src, tgt);
      const res = await this.reconcileObjectsIfOurs(src, tgt, opts);
      await this.record(tgt, res.applied);
      this.lastReconciledAt = new Date().toISOString();
      if (res.failed.length === 0) this.reconciledSig = sig;
      if (res.failed.length) {
        // Tried again next time (an index on a column the stream has not brought yet, say).
        this.lastError = res.failed.map((f) => `${f.object}: ${f.error}`).join('; ');
        this.host.log('warn', `Could not follow ${res.failed.length} schema change(s) yet: ${this.lastError}`, { event: 'schema-follow-failed' });
        return;
      }
      // A table added or skipped (its fix may be on the target, which the source's signature does not see): look again next time.
      if (added.added.length === 0 && added.skipped.length === 0) this.signature = sig;
    });
  }

  /** Column changes the apply followed (committed with their batch): logged, counted, and the runner told. */
  onColumnChanges(changes: ShapeChange[]): void {
    const at = new Date().toISOString();
    for (const c of changes) this.noted({ at, ...c });
    void this.host.tablesChanged().catch((e) => this.host.log('warn', `Reading the tables again after a schema change failed: ${(e as Error).message}`));
  }

  /** A change failed as if the target's types were behind: bring them up now (sync.ts `catchUpSchema`); the number of changes made. */
  async catchUp(): Promise<number> {
    return this.withClients(async (src, tgt) => {
      const made = await reconcileTypes(src, tgt, await this.reconcileOptions(src));
      await this.record(tgt, made);
      return made.length;
    });
  }

  /**
   * Before the fence: everything but the columns reconciled once more, on
   * connections of its own, for at most `ms` (a lock held on a target table
   * must not keep the cutover from its fence: what is left is reconciled
   * inside it). Failures are logged and left to the check inside the fence.
   */
  async beforeFence(ms: number): Promise<number> {
    const work = this.withClients(async (src, tgt) => {
      await tgt.query("SET lock_timeout = '2s'");
      const sig = await catalogSignature(src);
      const res = await this.reconcileNow(src, tgt);
      if (res.failed.length === 0) this.reconciledSig = sig;
      return res.applied.length;
    });
    work.catch(() => undefined);
    const timer = sleep(ms).then(() => -1);
    try {
      const made = await Promise.race([work, timer]);
      if (made < 0)
        this.host.log('warn', `The schema reconciliation before the fence took over ${ms} ms; it is finished inside the fence`, {
          event: 'schema-follow-slow',
        });
      return Math.max(0, made);
    } catch (e) {
      this.host.log('warn', `The schema reconciliation before the fence failed (it runs again inside the fence): ${(e as Error).message}`, {
        event: 'schema-follow-failed',
      });
      return 0;
    }
  }

  /** Everything but the columns, reconciled now on `src` and `tgt`. */
  private async reconcileNow(src: pg.Client, tgt: pg.Client): Promise<ReconcileResult> {
    const res = await this.reconcileObjectsIfOurs(src, tgt, await this.reconcileOptions(src));
    await this.record(tgt, res.applied);
    return res;
  }

  /**
   * Inside the fence (the stream drained, so the source's catalog is the
   * stream's point): the columns no row change brought, NOT NULL and
   * defaults included, then everything else, unless the source's catalog
   * `signature` is the one a reconciliation that failed nowhere saw (the one
   * before the fence, usually): the handover's check compares it all anyway.
   * A column change the target refuses throws SCHEMA_DRIFT (the cutover
   * fails and lifts the fence).
   */
  async atFence(src: pg.Client, tgt: pg.Client, tables: TableInfo[], signature: string): Promise<number> {
    const plans = await fenceColumnChanges(src, tgt, this.host.id, tables.filter((t) => !t.root).map(tableKey));
    let made = 0;
    for (const [key, plan] of plans) {
      await tgt.query('BEGIN');
      try {
        await runChanges((text, values) => tgt.query(text, values), this.host.id, key, plan);
        await tgt.query('COMMIT');
      } catch (e) {
        await tgt.query('ROLLBACK').catch(() => undefined);
        throw e;
      }
      const at = new Date().toISOString();
      for (const c of plan.changes) this.noted({ at, ...c });
      made += plan.changes.length;
    }
    if (signature !== '' && signature === this.reconciledSig) return made;
    return made + (await this.reconcileNow(src, tgt)).applied.length;
  }

  status(): SchemaChangesStatus {
    return {
      mode: 'follow',
      applied: this.applied,
      lastAppliedAt: this.lastAppliedAt,
      recent: [...this.recent],
      keptTables: [...this.kept].sort(),
      lastReconciledAt: this.lastReconciledAt,
      lastError: this.lastError,
    };
  }

  // ───────────────────────────── internals ─────────────────────────────

  /**
   * The objects reconciled only where pgferry made the target's schema
   * (`schemaMode: 'create'`): on a schema the user made (`existing`), an
   * object the source lacks is theirs, never dropped or replaced.
   */
  private async reconcileObjectsIfOurs(src: pg.Client, tgt: pg.Client, opts: ReconcileOptions): Promise<ReconcileResult> {
    if (this.host.spec.schemaMode !== 'create') return { applied: [], failed: [], unsupported: [] };
    return reconcileObjects(src, tgt, opts);
  }

  private tablesContext(signal: AbortSignal): FollowTablesContext {
    const h = this.host;
    return {
      migrationId: h.id,
      spec: h.spec,
      publicationName: h.publicationName,
      slotName: h.slotName,
      known: h.tables(),
      tableSyncLsn: h.tableSyncLsn,
      gates: this.gates,
      signal,
      log: h.log,
      progress: h.progress,
    };
  }

  private async reconcileOptions(src: pg.Client, signal?: AbortSignal): Promise<ReconcileOptions> {
    const spec = this.host.spec;
    const tables = migratableTables((await selectTables(src, spec.tables)).tables);
    const schemas = spec.schemaMode === 'create' ? await selectSchemas(src, spec.tables) : [...new Set(tables.map((t) => t.schema))];
    return { tables, schemas, roles: rolesOf(spec), signal };
  }

  private async tablesAdded(list: Array<{ key: string; rows: number; statements: string[] }>): Promise<void> {
    const at = new Date().toISOString();
    await this.withTarget(async (tgt) => {
      for (const t of list) {
        const entry = { object: t.key, change: `table created and copied (${t.rows} rows)`, statement: t.statements.join(';\n') };
        await tgt.query(changeRecordStatement(this.host.id, entry));
        this.noted({ at, ...entry });
      }
    });
    await this.host.tablesChanged();
  }

  /** Migrated tables the source no longer has: kept on the target, named once. */
  private async noteDropped(src: pg.Client, tgt: pg.Client): Promise<void> {
    const keys = this.host
      .tables()
      .filter((t) => !t.root)
      .map(tableKey);
    const r = await src.query('SELECT k FROM unnest($1::text[]) AS k WHERE to_regclass(k) IS NULL', [keys]);
    const gone = r.rows.map((x) => x.k as string).filter((k) => !this.kept.has(k));
    if (gone.length === 0) return;
    const at = new Date().toISOString();
    for (const key of gone) {
      const entry = { object: key, change: KEPT, statement: '' };
      await tgt.query(changeRecordStatement(this.host.id, entry));
      this.kept.add(key);
      this.noted({ at, ...entry });
    }
    await this.host.tablesChanged();
  }

  /** Object changes the reconciliation made: a row each in `pgferry.schema_changes`, logged and counted. */
  private async record(tgt: pg.Client, changes: AppliedChange[]): Promise<void> {
    if (changes.length === 0) return;
    await tgt.query(changes.map((c) => changeRecordStatement(this.host.id, c)).join(';\n'));
    const at = new Date().toISOString();
    for (const c of changes) this.noted({ at, ...c });
  }

  private noted(e: SchemaChangeEntry): void {
    this.applied++;
    this.lastAppliedAt = e.at;
    this.recent.push(e);
    if (this.recent.length > RECENT) this.recent.splice(0, this.recent.length - RECENT);
    this.host.log('info', `schema change followed: ${e.object}: ${e.change}`, {
      event: 'schema-change',
      object: e.object,
      change: e.change,
      statement: e.statement,
    });
  }

  private async withClients<T>(fn: (src: pg.Client, tgt: pg.Client) => Promise<T>): Promise<T> {
    const src = await connect('source', this.host.spec.source, { applicationName: `pgferry ${this.host.id} schema` });
    try {
      return await this.withTarget((tgt) => fn(src, tgt));
    } finally {
      await closeQuietly(src);
    }
  }

  private async withTarget<T>(fn: (tgt: pg.Client) => Promise<T>): Promise<T> {
    const tgt = await connect('target', this.host.spec.target, { applicationName: `pgferry ${this.host.id} schema` });
    try {
      return await fn(tgt);
    } finally {
      await closeQuietly(tgt);
    }
  }
}
