/**
 * migration-phases — the work of each phase before the cutover: schema
 * (pre-data), load (publication, slot and snapshot, the parallel copy, and
 * after a restart the tables not yet copied), indexes (post-data), sync
 * (the stream, with ANALYZE once in its background).
 *
 * Input: the migration's record and spec (`PhaseHost`: MigrationRunner).
 * Output: each phase's work done and made durable (markers and copy state on
 * the target, the slot's state in the record), per-table copy progress.
 * The supervisor (migration.ts) runs them in order and alone changes the
 * phase: the record seen here has none.
 */
import type pg from 'pg';
import { connect } from './conn';
import { dataTables, selectTables, tableKey, type TableInfo } from './catalog';
import { formatLsn, type Lsn } from './lsn';
import { migratableTables } from './preflight';
import { createPublication, createSlotWithSnapshot, dropSlot, slotExists, type ExportedSnapshot } from './snapshot';
import { planLoad, planTasks, resetTables, runLoad, type TableCopyProgress } from './copy';
import { analyzeTables, runPostData } from './indexes';
import { applyFinish, applyPreData, planSchema, verifyExistingSchema, type PlanOptions } from './schema';
import { selectSchemas } from './schema-objects-read';
import { largeObjectPass } from './cutover-schema';
import { Verifier } from './verify';
import { SchemaKeeper } from './schema-follow';

import { sleep } from './sleep';

/** How often the sync passes over the large objects (env PGFERRY_LARGE_OBJECT_PASS_MS, for tests). */
const LARGE_OBJECT_PASS_MS = Number(process.env.PGFERRY_LARGE_OBJECT_PASS_MS) || 60_000;
import { runSync, type SyncProgress } from './sync';
import { ensureTargetState, getMarker, setMarker, readCopyState, type CopiedTable } from './target-state';
import type { MigrationRecord } from './state';
import type { MigrationSpec } from './spec';
import type { LogFn } from './log-fn';

/** What the phases need of their supervisor (MigrationRunner). */
export interface PhaseHost {
  /** The migration's record, without its phase: only the supervisor changes that. */
  readonly rec: Omit<MigrationRecord, 'phase' | 'resumePhase'>;
  readonly spec: MigrationSpec;
  /** Write the record to the state file. */
  save(): void;
  /** Logs with the migration's id. */
  readonly log: LogFn;
  /** The sync's progress, as it reports it. */
  onSyncProgress(p: SyncProgress): void;
}

/** The connections and settings one run of the load works with. */
interface LoadContext {
  src: pg.Client;
  tgt: pg.Client;
  sourceMajor: number;
  signal: AbortSignal;
}

/** The phases' work for one migration, and what it keeps between runs in this process. */
export class MigrationPhases {
  readonly copyProgress = new Map<string, TableCopyProgress>();
  /** When this process began the load (ms since the epoch), 0 if it did not. */
  copyStartedAt = 0;
  private tables: TableInfo[] = [];
  /**
   * Per table, the source position its copy is valid from: read from the
   * target once per process when the sync first starts (it is fixed once the
   * load finished), so a resume goes straight to the stream.
   */
  private syncStart: Map<string, Lsn> | null = null;
  private analyzed = false;
  private keepingLargeObjects = false;
  /** The continuous verification, from the first sync in this process (null when the spec switches it off). */
  verifier: Verifier | null = null;
  /** The source's schema changes followed (schema-follow.ts), from the first sync in this process (null with schemaChanges 'stop'). */
  schemaKeeper: SchemaKeeper | null = null;
  private readonly log: LogFn;

  constructor(private readonly host: PhaseHost) {
    this.log = host.log;
  }

  private get rec(): PhaseHost['rec'] {
    return this.host.rec;
  }
  private get spec(): MigrationSpec {
    return this.host.spec;
  }

  private async loadTables(src: pg.Client): Promise<TableInfo[]> {
    const sel = await selectTables(src, this.spec.tables);
    this.tables = migratableTables(sel.tables);
    for (const t of dataTables(this.tables)) {
      const key = tableKey(t);
      if (!this.copyProgress.has(key)) {
        this.copyProgress.set(key, {
          schema: t.schema,
          name: t.name,
          phase: 'queued',
          partsDone: 0,
          parts: 1,
          rowsCopied: 0,
          bytesCopied: 0,
          rowsEstimated: Math.round(t.estimatedRows),
          bytesEstimated: t.bytes,
        });
      }
    }
    return this.tables;
  }

  private async withClients<T>(fn: (src: pg.Client, tgt: pg.Client) => Promise<T>): Promise<T> {
    // Both at once (a resume starts that much sooner); a source error wins, as it would one after the other.
    const [s, t] = await Promise.allSettled([
      connect('source', this.spec.source, { applicationName: `pgferry ${this.rec.id}` }),
      connect('target', this.spec.target, { applicationName: `pgferry ${this.rec.id}` }),
    ]);
    try {
      if (s.status === 'rejected') throw s.reason;
      if (t.status === 'rejected') throw t.reason;
      return await fn(s.value, t.value);
    } finally {
      if (s.status === 'fulfilled') await s.value.end().catch(() => undefined);
      if (t.status === 'fulfilled') await t.value.end().catch(() => undefined);
    }
  }

  /** What the schema plan covers beyond the tables: every migrated schema, through the role mapping. */
  private async planOptions(src: pg.Client): Promise<PlanOptions> {
    return { schemas: await selectSchemas(src, this.spec.tables), roles: this.spec.roles };
  }

  /** Schema (pre-data): the target's tables and everything they need, or a check of the ones there (`schemaMode: existing`). */
  async schema(): Promise<void> {
    await this.withClients(async (src, tgt) => {
      const tables = await this.loadTables(src);
      await ensureTargetState(tgt);
      if ((await getMarker(tgt, this.rec.id, 'pre-data')) !== undefined) {
        this.log('info', 'Skipping the schema, already created on a previous run');
      } else if (this.spec.schemaMode === 'existing') {
        await verifyExistingSchema(tgt, tables);
        if (this.spec.overwriteTarget) {
          for (const t of dataTables(tables)) await tgt.query(`TRUNCATE ONLY ${tableKey(t)}`);
        }
        await setMarker(tgt, this.rec.id, 'pre-data', 'existing');
      } else {
        const plan = await planSchema(src, tables, await this.planOptions(src));
        for (const w of plan.warnings) this.log('warn', w);
        await applyPreData(tgt, plan, { beforeCommit: (c) => setMarker(c, this.rec.id, 'pre-data', 'created') });
      }
    });
  }

  /** Load: publication, slot and snapshot, and the tables copied in it; after a restart, the tables not yet copied, in a fresh snapshot. */
  async load(signal: AbortSignal): Promise<void> {
    await this.withClients(async (src, tgt) => {
      const tables = await this.loadTables(src);
      const sourceMajor = Math.floor(Number((await src.query("SELECT current_setting('server_version_num') AS v")).rows[0].v) / 10000);
      await ensureTargetState(tgt);
      if (this.rec.slotState === 'creating' && (await slotExists(src, this.rec.slotName))) {
        // We died between creating the slot and recording it: nothing was
        // copied with its snapshot (that is recorded first), so start afresh.
        await dropSlot(src, this.rec.slotName);
        this.rec.slotState = 'none';
        this.host.save();
      }
      this.copyStartedAt = Date.now();
      const load: LoadContext = { src, tgt, sourceMajor, signal };
      if (this.rec.slotState !== 'created') await this.loadInNewSlot(load, tables);
      else await this.resumeLoad(load, dataTables(tables));
      if (signal.aborted) return;
      // Large objects: logical replication does not carry them; copied now, kept in step during the sync, a last pass inside the fence.
      const lo = await largeObjectPass(src, tgt, this.rec.id, this.spec, signal);
      if (lo.objects > 0)
        this.log('info', `Copied ${lo.created + lo.updated} of ${lo.objects} large object(s) (${lo.bytes} bytes) in ${(lo.ms / 1000).toFixed(1)} s`);
    });
  }

  /** Create the publication and the slot, and copy the tables in the slot's snapshot. */
  private async loadInNewSlot(load: LoadContext, tables: TableInfo[]): Promise<void> {
    await createPublication(load.src, this.rec.id, this.rec.publicationName, tables, load.sourceMajor);
    this.rec.publicationCreated = true;
    this.rec.slotState = 'creating';
    this.host.save();
    const snap = await createSlotWithSnapshot(this.spec.source, this.rec.slotName);
    this.rec.slotState = 'created';
    this.rec.snapshotLsn = formatLsn(snap.lsn);
    this.host.save();
    this.log('info', `Created slot ${this.rec.slotName} at ${formatLsn(snap.lsn)} with snapshot ${snap.snapshotName}`);
    try {
      const plan = await planLoad(load.tgt, this.rec.id, dataTables(tables), this.log);
      await this.copyInSnapshot(load, plan.todo, snap, snap.release);
    } finally {
      await snap.release();
    }
  }

  /**
   * After a restart: copy the tables the previous runs did not finish. Their
   * exported snapshot died with the previous run: a temporary slot gives a
   * new one, and those tables record its LSN.
   */
  private async resumeLoad(load: LoadContext, data: TableInfo[]): Promise<void> {
    const plan = await planLoad(load.tgt, this.rec.id, data, this.log);
    await this.restoreCopyProgress(load.tgt);
    const todo = this.widenToWholePartitionTrees(plan.todo, data, plan.done);
    if (!todo.length) return;
    const siblings = todo.filter((t) => !plan.todo.includes(t));
    if (siblings.length) {
      // Finished partitions of a tree that also has unfinished ones are
      // copied again with them: one tree, one snapshot.
      this.log('warn', `Copying again ${siblings.length} finished partition(s) whose partitioned table was not finished: ${siblings.map(tableKey).join(', ')}`);
      await resetTables(load.tgt, this.rec.id, siblings);
    }
    const tmpName = `${this.rec.slotName.slice(0, 50)}_r${Date.now().toString(36)}`;
    const snap = await createSlotWithSnapshot(this.spec.source, tmpName, true);
    this.log('info', `Resuming the load of ${todo.length} table(s) with a fresh snapshot at ${formatLsn(snap.lsn)}`);
    try {
      await this.copyInSnapshot(load, todo, snap, async () => undefined);
    } finally {
      await snap.release();
    }
  }

  /** Split `tables` into copy tasks and run them in the snapshot `snap`. */
  private async copyInSnapshot(load: LoadContext, tables: TableInfo[], snap: ExportedSnapshot, onSnapshotImported: () => Promise<void>): Promise<void> {
    const { workers, splitBytes } = this.spec.copy;
    const tasks = await planTasks(load.src, tables, workers, splitBytes, load.sourceMajor);
    this.noteParts(tasks);
    await runLoad(
      {
        migrationId: this.rec.id,
        source: this.spec.source,
        target: this.spec.target,
        tables,
        snapshotName: snap.snapshotName,
        snapshotLsn: snap.lsn,
        onSnapshotImported,
        workers,
        splitBytes,
        sourceMajor: load.sourceMajor,
        progress: this.copyProgress,
        signal: load.signal,
        log: this.log,
      },
      tasks,
    );
  }

  /** Partitions of one root must share one snapshot (changes arrive as the root). */
  private widenToWholePartitionTrees(todo: TableInfo[], data: TableInfo[], done: Map<string, Lsn>): TableInfo[] {
    const roots = new Set(todo.filter((t) => t.root).map((t) => tableKey(t.root!)));
    const out = [...todo];
    for (const t of data) {
      if (t.root && roots.has(tableKey(t.root)) && !out.includes(t)) {
        out.push(t);
        done.delete(tableKey(t));
        const p = this.copyProgress.get(tableKey(t));
        if (p) {
          p.phase = 'queued';
          p.rowsCopied = 0;
          p.bytesCopied = 0;
          p.partsDone = 0;
        }
      }
    }
    return out;
  }

  private noteParts(tasks: Array<{ table: TableInfo; parts: number }>): void {
    for (const t of tasks) {
      const p = this.copyProgress.get(tableKey(t.table));
      if (p) p.parts = t.parts;
    }
  }

  /** Indexes (post-data): secondary indexes, constraints and foreign keys, `indexJobs` at a time. */
  async indexes(signal: AbortSignal): Promise<void> {
    await this.withClients(async (src, tgt) => {
      const tables = await this.loadTables(src);
      await this.restoreCopyProgress(tgt);
      if ((await getMarker(tgt, this.rec.id, 'post-data')) !== undefined) return;
      if (this.spec.schemaMode === 'create') {
        const plan = await planSchema(src, tables, await this.planOptions(src));
        await runPostData({
          target: this.spec.target,
          statements: plan.postData,
          tables,
          jobs: this.spec.copy.indexJobs,
          signal,
          log: this.log,
        });
        // The finish: what must not act during the load and the sync (triggers and rules, created disabled),
        // and owners and grants (set last: creating needs pgferry's own rights). One transaction, once.
        if (!signal.aborted && (await getMarker(tgt, this.rec.id, 'finish')) === undefined) {
          const warnings = await applyFinish(tgt, plan, {
            missingRoles: this.spec.roles.missing,
            log: (m) => this.log('info', m),
            beforeCommit: (c) => setMarker(c, this.rec.id, 'finish', new Date().toISOString()),
          });
          for (const w of warnings) this.log('warn', w);
        }
      }
      if (!signal.aborted) await setMarker(tgt, this.rec.id, 'post-data', new Date().toISOString());
    });
  }

  /** Restore per-table copy figures from the target's records (after a restart); returns those records. */
  private async restoreCopyProgress(tgt: pg.Client): Promise<Map<string, CopiedTable>> {
    const copied = await readCopyState(tgt, this.rec.id);
    for (const [table, c] of copied) {
      const p = this.copyProgress.get(table);
      if (!p) continue;
      p.rowsCopied = c.rows;
      p.bytesCopied = c.bytes;
      p.partsDone = c.partsDone;
      p.parts = c.parts;
      if (c.partsDone === c.parts) p.phase = 'copied';
    }
    return copied;
  }

  /** Which source LSN each table's copy is valid from (root name for partitions). */
  private tableSyncLsn(copied: Map<string, CopiedTable>): Map<string, Lsn> {
    const out = new Map<string, Lsn>();
    for (const t of dataTables(this.tables)) {
      const lsn = copied.get(tableKey(t))?.lastSnapshotLsn;
      if (lsn === undefined) continue;
      const key = t.root ? tableKey(t.root) : tableKey(t);
      const prev = out.get(key);
      out.set(key, prev === undefined || lsn > prev ? lsn : prev);
    }
    return out;
  }

  /** Sync: stream the source's changes into the target until `signal` aborts (ANALYZE of the loaded tables once, in its background). */
  async sync(signal: AbortSignal): Promise<void> {
    const map = (this.syncStart ??= await this.withClients(async (src, tgt) => {
      await this.loadTables(src);
      const copied = await this.restoreCopyProgress(tgt);
      for (const p of this.copyProgress.values()) if (p.phase !== 'copied') p.phase = 'copied';
      return this.tableSyncLsn(copied);
    }));
    if (!this.analyzed) void this.analyzeOnce(signal);
    if (!this.keepingLargeObjects) void this.keepLargeObjects(signal);
    // Both before the stream applies anything, and at once (a resume starts that much sooner).
    const [verifier, keeper] = await Promise.all([this.startVerifier(signal), this.startSchemaKeeper(map, signal)]);
    await runSync({
      migrationId: this.rec.id,
      source: this.spec.source,
      target: this.spec.target,
      slotName: this.rec.slotName,
      publicationName: this.rec.publicationName,
      tableSyncLsn: map,
      batchChanges: this.spec.apply.batchChanges,
      batchMs: this.spec.apply.batchMs,
      signal,
      onProgress: (p) => this.host.onSyncProgress(p),
      log: this.log,
      barrier: verifier?.barrier,
      tracker: verifier?.tracker,
      follow: keeper
        ? { source: this.spec.source, typesFromTarget: this.spec.schemaMode === 'create', onChanges: (c) => keeper.onColumnChanges(c) }
        : undefined,
      gates: keeper?.gates,
      catchUpSchema: keeper ? () => keeper.catchUp() : undefined,
    });
  }

  /**
   * With `schemaChanges: 'follow'`: the keeper of the source's schema on the
   * target (schema-follow.ts), prepared before the sync applies anything (a
   * table whose copy a restart cut short must be gated before its first
   * change), then looking at the source in the background.
   */
  private async startSchemaKeeper(tableSyncLsn: Map<string, Lsn>, signal: AbortSignal): Promise<SchemaKeeper | null> {
    if (this.spec.schemaChanges !== 'follow') return null;
    const keeper = (this.schemaKeeper ??= new SchemaKeeper({
      id: this.rec.id,
      spec: this.spec,
      publicationName: this.rec.publicationName,
      slotName: this.rec.slotName,
      log: this.log,
      tables: () => this.tables,
      tablesChanged: () => this.tablesChanged(),
      tableSyncLsn,
      progress: this.copyProgress,
    }));
    await this.withTarget((tgt) => keeper.prepare(tgt));
    keeper.start(signal);
    return keeper;
  }

  /** The source's tables changed (added, dropped, or of another shape): read them again; the verification takes them up. */
  private async tablesChanged(): Promise<void> {
    await this.withClients(async (src) => {
      await this.loadTables(src);
    });
    // Only tables the stream applies (a new one once its copy is in): the others are not on the target yet.
    const start = this.syncStart;
    await this.verifier?.updateTables(this.tables.filter((t) => start?.has(t.root ? tableKey(t.root) : tableKey(t))));
  }

  /**
   * The continuous verification (verify.ts), prepared before the sync
   * applies anything (its record of what changed must see every change).
   * When the target refuses what it needs (the write guards), the sync goes
   * on without it: the cutover then checks every table in full, and the
   * status says why.
   */
  private async startVerifier(signal: AbortSignal): Promise<Verifier | null> {
    if (this.spec.verification.disabled) return null;
    const v = (this.verifier ??= new Verifier(this.rec.id, this.spec, this.tables, this.log));
    try {
      await v.prepare();
    } catch (e) {
      this.log('warn', `The continuous verification cannot start (the cutover will check every table in full): ${(e as Error).message}`, {
        event: 'verify-off',
      });
      v.noteError((e as Error).message);
      return null;
    }
    v.start(signal);
    return v;
  }

  /**
   * During the sync, a pass over the large objects every LARGE_OBJECT_PASS_MS
   * (a pass reads every object's digest on the source: its cost grows with
   * their total size), so that the cutover's pass inside the fence finds
   * little to do. A failed pass is logged and retried at the next interval.
   */
  private async keepLargeObjects(signal: AbortSignal): Promise<void> {
    this.keepingLargeObjects = true;
    try {
      while (!signal.aborted) {
        await sleep(LARGE_OBJECT_PASS_MS, signal).catch(() => undefined);
        if (signal.aborted) break;
        try {
          const lo = await this.withClients((src, tgt) => largeObjectPass(src, tgt, this.rec.id, this.spec, signal));
          if (lo.created + lo.updated + lo.unlinked > 0) {
            this.log('info', `Large objects: ${lo.created} new, ${lo.updated} changed, ${lo.unlinked} unlinked on the target (${lo.bytes} bytes, ${lo.ms} ms)`);
          }
        } catch (e) {
          if (!signal.aborted) this.log('warn', `A pass over the large objects failed (retried in ${LARGE_OBJECT_PASS_MS / 1000} s): ${(e as Error).message}`);
        }
      }
    } finally {
      this.keepingLargeObjects = false;
    }
  }

  /** Fresh planner statistics for the loaded tables, once, in the background. */
  private async analyzeOnce(signal: AbortSignal): Promise<void> {
    try {
      const done = await this.withTarget((tgt) => getMarker(tgt, this.rec.id, 'analyzed'));
      if (done !== undefined) {
        this.analyzed = true;
        return;
      }
      const ok = await analyzeTables(this.spec.target, this.tables, signal, this.log);
      if (ok) {
        await this.withTarget((tgt) => setMarker(tgt, this.rec.id, 'analyzed', new Date().toISOString()));
        this.analyzed = true;
      }
    } catch (e) {
      if (!signal.aborted) this.log('warn', `ANALYZE of the loaded tables failed (statistics will come from autovacuum): ${(e as Error).message}`);
    }
  }

  private async withTarget<T>(fn: (tgt: pg.Client) => Promise<T>): Promise<T> {
    const tgt = await connect('target', this.spec.target, { applicationName: `pgferry ${this.rec.id}` });
    try {
      return await fn(tgt);
    } finally {
      await tgt.end().catch(() => undefined);
    }
  }
}
