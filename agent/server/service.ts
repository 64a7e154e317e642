/**
 * service — the agent's operations, independent of the transport: preflight,
 * start (idempotent by id and spec), get, list, pause, resume, delete,
 * cutover. server.ts exposes them over gRPC; tests may call them directly.
 *
 * On start-up every migration found in the state directory that is not
 * finished (and not paused) is resumed from where it stopped.
 */
import { PgferryError } from '../engine/errors';
import { MigrationRunner, preflightOrThrow, type MigrationStatus } from '../engine/migration';
import type { LogFn } from '../engine/log-fn';
import { schemaDiffNow, type SchemaDiffResult } from '../engine/cutover-schema';
import { runPreflight, type PreflightReport } from '../engine/preflight';
import { parseSpec, publicationNameOf, slotNameOf, specFingerprint, stableJson } from '../engine/spec';
import type { MigrationRecord, StateStore } from '../engine/state';
import { FENCE_METHODS, VALIDATIONS, runCutover, type CutoverOptions } from '../engine/cutover';
import { cutbackRefusal } from '../engine/cutback';

export interface CutoverRequest {
  id: string;
  maxLagBytes?: number;
  maxLagSeconds?: number;
  timeoutMs?: number;
  fenceMethod?: string;
  skipSequences?: boolean;
  validation?: string;
  acceptSchemaDifferences?: string[];
}

export class AgentService {
  readonly runners = new Map<string, MigrationRunner>();
  private starting = new Map<string, Promise<MigrationStatus>>();

  constructor(
    readonly store: StateStore,
    readonly log: LogFn,
  ) {}

  /** Load every recorded migration and resume the unfinished ones. */
  init(): void {
    for (const rec of this.store.list()) {
      const runner = new MigrationRunner(this.store, rec, this.log);
      this.runners.set(rec.id, runner);
      if (runner.fence.pending) {
        this.log(
          'warn',
          `Migration ${rec.id}: a fence on database '${rec.fence!.database}' (raised ${rec.fence!.raisedAt}) was not verified lifted before the agent stopped; lifting it now`,
          { migration: rec.id, event: 'fence-lift-pending' },
        );
        runner.resumeFenceLift();
      }
      if (rec.pausedAt) {
        this.log('info', `Migration ${rec.id} is paused (since ${rec.pausedAt}, phase ${rec.phase}); resume it with: pgferry resume ${rec.id}`, {
          migration: rec.id,
          phase: rec.phase,
          event: 'paused',
        });
      } else if (rec.phase === 'completed' && rec.reverse && rec.reverse.state !== 'dropped') {
        // The way back: the reverse sync goes on while its window lasts (a cutback the stop interrupted is failed, its fence lifted).
        this.log('info', `Migration ${rec.id}: resuming the reverse sync (the old source follows the target)`, { migration: rec.id });
        runner.start();
      } else if (rec.phase !== 'completed' && rec.phase !== 'cut-back' && rec.phase !== 'failed' && rec.phase !== 'deleted') {
        this.log('info', `Resuming migration ${rec.id} in phase ${rec.phase}`, { migration: rec.id, phase: rec.phase });
        runner.start();
      }
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.runners.values()].map((r) => r.shutdown()));
  }

  async preflight(input: unknown): Promise<PreflightReport> {
    const spec = parseSpec(input);
    const existing = this.runners.get(spec.id);
    const same = existing && existing.rec.fingerprint === specFingerprint(spec);
    const { report } = await runPreflight(spec, {
      ownsSlot: same && existing.rec.slotState !== 'none',
      ownsPublication: same && existing.rec.publicationCreated,
      resuming: same && existing.rec.phase !== 'created',
    });
    return report;
  }

  startMigration(input: unknown): Promise<MigrationStatus> {
    const spec = parseSpec(input);
    // One start per id at a time: two concurrent identical calls return the same migration.
    const inflight = this.starting.get(spec.id);
    if (inflight) return inflight.then(() => this.startMigration(input));
    const p = this.doStart(spec).finally(() => this.starting.delete(spec.id));
    this.starting.set(spec.id, p);
    return p;
  }

  private async doStart(spec: ReturnType<typeof parseSpec>): Promise<MigrationStatus> {
    const fingerprint = specFingerprint(spec);
    const existing = this.runners.get(spec.id);
    if (existing) {
      if (existing.rec.fingerprint !== fingerprint) {
        throw new PgferryError(
          'MIGRATION_EXISTS_DIFFERENT_SPEC',
          `Migration '${spec.id}' already exists on this agent with a different spec (source, target, tables or options differ).`,
          `Use another \`id\` for a new migration, or delete '${spec.id}' first (pgferry delete ${spec.id}).`,
        );
      }
      // Same migration: keep the newest credentials and apply knobs (a
      // rotated password is not a new spec). A syncing migration restarts its
      // stream to use them at once; an earlier phase picks them up when it
      // next resumes (a load is not interrupted for them).
      const changed = stableJson(existing.spec) !== stableJson(spec);
      existing.rec.spec = this.store.sealSpec(spec);
      this.store.put(existing.rec);
      if (changed && existing.rec.phase === 'completed' && existing.rec.reverse && !existing.cutbackRun) {
        // The rollback window changed (removed: the reverse slot is dropped; another length: a new end).
        await existing.shutdown();
        const fresh = new MigrationRunner(this.store, existing.rec, this.log);
        this.runners.set(spec.id, fresh);
        fresh.start();
        return fresh.status();
      }
      if (changed && (existing.rec.phase === 'syncing' || existing.rec.phase === 'failed') && !existing.cutoverRun) {
        await existing.shutdown();
        const fresh = new MigrationRunner(this.store, existing.rec, this.log);
        this.runners.set(spec.id, fresh);
        fresh.resumeFenceLift();
        this.log(
          'info',
          `Migration ${spec.id}: new credentials or apply settings; ${existing.paused ? 'it stays paused and uses them when resumed' : existing.rec.phase === 'failed' ? 'resuming it with them' : 'restarting its stream'}`,
          { migration: spec.id },
        );
        fresh.start();
        return fresh.status();
      }
      if (existing.rec.phase === 'failed') existing.start();
      return existing.status();
    }
    const versions = await preflightOrThrow(spec);
    const now = new Date().toISOString();
    const rec: MigrationRecord = {
      id: spec.id,
      fingerprint,
      spec: this.store.sealSpec(spec),
      createdAt: now,
      updatedAt: now,
      phase: 'created',
      slotName: slotNameOf(spec),
      publicationName: publicationNameOf(spec),
      slotState: 'none',
      publicationCreated: false,
      sourceVersion: versions.sourceVersion,
      targetVersion: versions.targetVersion,
    };
    this.store.put(rec);
    const runner = new MigrationRunner(this.store, rec, this.log);
    this.runners.set(spec.id, runner);
    this.log('info', `Started migration ${spec.id}`, { migration: spec.id });
    runner.start();
    return runner.status();
  }

  get(id: string): MigrationRunner {
    const r = this.runners.get(id);
    if (!r) {
      throw new PgferryError(
        'MIGRATION_NOT_FOUND',
        `No migration '${id}' on this agent.`,
        'Check the id (pgferry status lists them), or that you are talking to the right agent.',
      );
    }
    return r;
  }

  async status(id: string): Promise<MigrationStatus> {
    return this.get(id).status();
  }

  async list(): Promise<MigrationStatus[]> {
    return Promise.all([...this.runners.values()].map((r) => r.status()));
  }

  /**
   * Run the cutover (idempotent): on a completed migration it returns the
   * existing report; while one runs, a second call waits for the same one.
   */
  async cutover(req: CutoverRequest): Promise<MigrationStatus> {
    const r = this.get(req.id);
    if (r.phase === 'completed') {
      this.log('info', `Cutover of ${req.id} requested again: already completed, nothing to do`, { migration: req.id });
      return r.status();
    }
    if (!r.cutoverRun) {
      if (r.paused) {
        throw new PgferryError(
          'WRONG_PHASE',
          `Migration '${req.id}' is paused (since ${r.rec.pausedAt}); a cutover needs its changes flowing.`,
          `Resume it first (pgferry resume ${req.id}), wait until the lag is small (pgferry status ${req.id}), then cut over.`,
        );
      }
      if (r.phase !== 'syncing') {
        throw new PgferryError(
          'WRONG_PHASE',
          `Migration '${req.id}' is in phase '${r.phase}'; a cutover needs it to be 'syncing'.`,
          r.phase === 'failed'
            ? `Fix the failure (${r.rec.error?.message ?? 'see status'}) and start the migration again.`
            : 'Wait until the initial load finished and the migration is syncing (pgferry status).',
        );
      }
      const abort = new AbortController();
      const opts = cutoverOptions(req);
      const promise = runCutover(r, opts, abort.signal).finally(() => {
        r.cutoverRun = null;
      });
      r.cutoverRun = { promise, abort };
    }
    await r.cutoverRun!.promise;
    return r.status();
  }

  /**
   * Cut back to the old source (idempotent): after a completed cutover with
   * a rollback window; on a migration already cut back it returns the
   * existing report; while one runs, a second call waits for the same one.
   */
  async cutback(req: CutoverRequest): Promise<MigrationStatus> {
    const r = this.get(req.id);
    if (r.phase === 'cut-back') {
      this.log('info', `Cutback of ${req.id} requested again: already completed, nothing to do`, { migration: req.id });
      return r.status();
    }
    const refused = r.cutbackRun ? null : cutbackRefusal(r);
    if (refused) throw refused;
    await r.cutback(cutoverOptions(req));
    return r.status();
  }

  async cancelCutover(id: string): Promise<MigrationStatus> {
    const r = this.get(id);
    if (r.cutbackRun) {
      // A cutback is cancelled the same way, before its fence (on the target).
      if (r.rec.cutback?.state !== 'waiting-for-lag') {
        throw new PgferryError(
          'WRONG_PHASE',
          `The cutback of '${id}' is past the fence (${r.rec.cutback?.state}); it completes or rolls back by itself.`,
          'Wait for it to finish (pgferry status).',
        );
      }
      r.cutbackRun.abort.abort();
      await r.cutbackRun.promise.catch(() => undefined);
      return r.status();
    }
    const rep = r.rec.cutover;
    // Before the fence (waiting for lag or for the verification) nothing is fenced: cancelling is safe.
    if (r.cutoverRun && (rep?.state === 'waiting-for-lag' || rep?.state === 'waiting-for-verification')) {
      r.cutoverRun.abort.abort();
      await r.cutoverRun.promise.catch(() => undefined);
    } else if (r.cutoverRun) {
      throw new PgferryError(
        'WRONG_PHASE',
        `The cutover of '${id}' is past the fence (${rep?.state}); it completes or rolls back by itself.`,
        'Wait for it to finish (pgferry status).',
      );
    }
    return r.status();
  }

  /** Compare the target's schema with the source's now (read-only): what the cutover checks before the handover. */
  async schemaDiff(id: string): Promise<SchemaDiffResult & { id: string }> {
    const r = this.get(id);
    return { id, ...(await schemaDiffNow(r.spec, { beforeHandover: r.phase !== 'completed' })) };
  }

  /**
   * Lift the migration's fence on the source now (idempotent; nothing to do
   * when none is up). A running cutover is cancelled first (it lifts its own
   * fence). The fence a completed cutover keeps on purpose is lifted only
   * with `afterCutover`: writes to the old source then never reach the target.
   */
  async unfence(id: string, opts: { afterCutover?: boolean } = {}): Promise<MigrationStatus> {
    const r = this.get(id);
    const keptRefusal = () =>
      new PgferryError(
        'WRONG_PHASE',
        `The cutover of '${id}' completed: the source database '${r.fence.record?.database}' is fenced on purpose, since writes to it would never reach the target.`,
        `If the application must write to the old source anyway, run: pgferry unfence ${id} --after-cutover`,
      );
    if (r.fence.record?.kept && !opts.afterCutover) throw keptRefusal();
    if (r.cutoverRun) {
      this.log('warn', `Unfence of ${id} requested during its cutover (${r.rec.cutover?.state}): cancelling the cutover`, { migration: id });
      r.cutoverRun.abort.abort('pgferry unfence');
      await r.cutoverRun.promise.catch(() => undefined);
      if (r.fence.record?.kept && !opts.afterCutover) throw keptRefusal();
    }
    const lift = await r.fence.liftOnce({ includeKept: opts.afterCutover });
    if (!lift.lifted) {
      r.resumeFenceLift();
      throw new PgferryError(
        'SOURCE_UNREACHABLE',
        `The fence on database '${r.fence.record?.database}' could not be lifted: ${lift.error}. The source still starts every new session read-only.`,
        `The agent keeps retrying${r.fence.record?.kept ? ' only for a failed cutover; run pgferry unfence again' : ''}. To lift it by hand: ${r.fence.status(false).liftStatement}`,
      );
    }
    if (lift.wasUp)
      this.log(
        'warn',
        `Migration ${id}: fence lifted by pgferry unfence${opts.afterCutover ? ' after a completed cutover: the old source takes writes that will not reach the target' : ''}`,
        { migration: id, event: 'unfenced' },
      );
    return r.status();
  }

  /**
   * Pause a migration (idempotent): its work stops, and stays stopped across
   * agent restarts, until `resume`. Like ALTER SUBSCRIPTION … DISABLE: the
   * slot stays, so the source keeps the WAL written meanwhile (status shows
   * how much), and nothing is lost.
   */
  async pause(id: string): Promise<MigrationStatus> {
    const r = this.get(id);
    if (!r.paused) {
      if (r.cutoverRun || r.phase === 'cutting-over') {
        throw new PgferryError(
          'WRONG_PHASE',
          `Migration '${id}' is cutting over; it cannot be paused now.`,
          `Cancel the cutover if it is still waiting for the lag (pgferry cancel-cutover ${id}), or let it finish (pgferry status ${id}).`,
        );
      }
      if (r.phase === 'completed' || r.phase === 'failed') {
        throw new PgferryError(
          'WRONG_PHASE',
          `Migration '${id}' is ${r.phase}; there is nothing running to pause.`,
          r.phase === 'failed'
            ? `Fix the failure (${r.rec.error?.message ?? 'see pgferry status'}) and start it again (pgferry start), or delete it (pgferry delete ${id}).`
            : `Nothing to do; delete it when you no longer need its report (pgferry delete ${id}).`,
        );
      }
      await r.pause();
    }
    return r.status();
  }

  /** Resume a paused migration from where it stopped (idempotent: a running one is left as it is). */
  async resume(id: string): Promise<MigrationStatus> {
    const r = this.get(id);
    r.resume();
    return r.status();
  }

  async delete(id: string): Promise<string[]> {
    const r = this.get(id);
    const dropped = await r.destroy();
    this.runners.delete(id);
    this.log('info', `Deleted migration ${id}; dropped on the source: ${dropped.join(', ') || 'nothing'}`, { migration: id });
    return dropped;
  }
}

/** The cutover's (and cutback's) options from a request, checked. */
function cutoverOptions(req: CutoverRequest): CutoverOptions {
  const opts: CutoverOptions = {
    maxLagBytes: req.maxLagBytes || undefined,
    maxLagSeconds: req.maxLagSeconds || undefined,
    timeoutMs: req.timeoutMs || undefined,
    skipSequences: req.skipSequences,
    fenceMethod: (req.fenceMethod || undefined) as CutoverOptions['fenceMethod'],
    validation: (req.validation || undefined) as CutoverOptions['validation'],
    acceptSchemaDifferences: req.acceptSchemaDifferences ?? [],
  };
  if (opts.fenceMethod && !FENCE_METHODS.includes(opts.fenceMethod)) {
    throw new PgferryError('INVALID_SPEC', `Unknown fence method '${opts.fenceMethod}'.`, `Use one of: ${FENCE_METHODS.join(', ')}.`);
  }
  if (opts.validation && !VALIDATIONS.includes(opts.validation)) {
    throw new PgferryError('INVALID_SPEC', `Unknown validation '${opts.validation}'.`, `Use one of: ${VALIDATIONS.join(', ')}.`);
  }
  return opts;
}
