/**
 * apply-mapping — the apply stage's map from the stream's relations to the
 * target's tables (apply-target.ts `relMap`), cached per relation until the
 * stream describes the relation again; and, on the way, what a new
 * description may require: a table being added waits for its copy
 * (schema-follow-tables.ts), and a table whose columns changed is followed
 * (schema-follow-columns.ts) inside the batch's target transaction.
 *
 * Input: Relation messages, the commit LSN of the source transaction being
 * applied, the per-table start LSNs. Output: `RelMap`s; column changes made
 * on the target, handed to the batch that commits them.
 */
import { qn } from './conn';
import type { Lsn } from './lsn';
import type { RelationMessage } from './pgoutput';
import type { ApplyMode, ApplySession } from './apply-session';
import { missingColumn, readTargets, relMap, type RelMap, type TargetTable } from './apply-target';
import { ShapeFollower, type RunSql, type ShapeChange } from './schema-follow-columns';
import type { Endpoint } from './spec';
import type { ChangeTracker } from './verify-changes';

/** Tables whose copy is in progress (schema-follow-tables.ts `TableGates`), as the apply reads them. */
export interface GateLookup {
  readonly size: number;
  get(key: string): { lsn: Lsn | null; ready: Promise<void> } | undefined;
}

/** The batch's target transaction, opened for a column change (apply.ts `ddlTransaction`). */
export interface DdlTransaction {
  run: RunSql;
  /** The changes made in it, reported once it commits. */
  followed(changes: ShapeChange[]): void;
  rollback(): Promise<void>;
}

export interface MapperOptions {
  migrationId: string;
  tableSyncLsn: Map<string, Lsn>;
  follow?: { source: Endpoint; typesFromTarget: boolean };
  gates?: GateLookup;
  tracker?: ChangeTracker;
}

export class TableMapper {
  readonly targets = new Map<string, TargetTable>();
  private readonly maps = new Map<number, RelMap>();
  private readonly follower: ShapeFollower | null;

  constructor(
    private readonly session: ApplySession,
    private readonly mode: ApplyMode,
    private readonly opts: MapperOptions,
  ) {
    this.follower = opts.follow ? new ShapeFollower(opts.migrationId, opts.follow.source, opts.follow.typesFromTarget) : null;
  }

  /** The target tables read when the apply opens, and the follower's records of them. */
  async init(known: Map<string, TargetTable>): Promise<void> {
    for (const [key, t] of known) this.targets.set(key, t);
    await this.follower?.init((text, values) => this.session.query(text, values), known);
  }

  /** The mapping of `rel` when it is known (no catalog read needed). */
  known(rel: RelationMessage): RelMap | undefined {
    const cached = this.maps.get(rel.relationOid);
    return cached && cached.rel === rel ? cached : undefined;
  }

  /** The stream describes the relation again: map it anew at its next change. */
  forget(relationOid: number): void {
    this.maps.delete(relationOid);
  }

  /**
   * Map `rel` for a change of the source transaction committed at `finalLsn`
   * (cached for the next ones); false: the change is skipped. A table being
   * added waits for its copy unless the change is older than the copy's
   * snapshot (the copy holds it). Guard 2 (per-table start) is checked before
   * the mapping too: a stream older than a table's copy may describe an
   * older shape of it, which must not be followed.
   */
  async map(rel: RelationMessage, finalLsn: Lsn, binary: boolean, ddl: () => Promise<DdlTransaction>): Promise<boolean> {
    const key = qn(rel.schema, rel.name);
    for (let gate = this.opts.gates?.size ? this.opts.gates.get(key) : undefined; gate; gate = this.opts.gates!.get(key)) {
      if (gate.lsn !== null && finalLsn < gate.lsn) return false;
      await gate.ready;
    }
    if (finalLsn < (this.opts.tableSyncLsn.get(key) ?? 0n)) return false;
    if (this.known(rel)) return true;
    let target = this.targets.get(key);
    if (!target || missingColumn(rel, target)) {
      // Read (again: the user may have fixed drift, or it was just created) from the target catalog.
      target = (await readTargets(this.session, [key], this.mode)).get(key);
      if (target) this.targets.set(key, target);
    }
    if (target && this.follower?.differs(rel, key, target)) target = await this.follow(rel, key, target, await ddl());
    this.maps.set(rel.relationOid, relMap(rel, key, target, this.opts.tableSyncLsn.get(key) ?? 0n, binary));
    return true;
  }

  /** The target's columns of `key` made what `rel` says, in `tx`; its rows then count as changed whole for the verification. */
  private async follow(rel: RelationMessage, key: string, target: TargetTable, tx: DdlTransaction): Promise<TargetTable> {
    let changes: ShapeChange[];
    try {
      changes = (await this.follower!.follow(rel, key, target, tx.run)).changes;
    } catch (e) {
      await tx.rollback();
      // Not followed: the fix will be made on the target by hand (a DDL the write guard does not see, which may
      // rewrite every value): the table's rows are verified again in full (the flag is committed now, on its own).
      await this.opts.tracker?.noteWhole(key)?.catch(() => undefined);
      throw e;
    }
    if (changes.length === 0) return target;
    const fresh = (await readTargets(this.session, [key], this.mode)).get(key) ?? target;
    this.targets.set(key, fresh);
    tx.followed(changes);
    await this.opts.tracker?.noteWhole(key);
    return fresh;
  }

  async close(): Promise<void> {
    await this.follower?.close();
  }
}
