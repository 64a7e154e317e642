/**
 * sync — continuous sync, the stage after the initial copy: stream the
 * source's changes from the migration's logical slot and apply them to the
 * target until told to stop. Stage driver for receive → transform → apply.
 *
 * Input: `SyncOptions` (endpoints, slot, publication, per-table start LSNs,
 * batching knobs, an AbortSignal). Output: target tables kept in step with
 * the source, `pgferry.apply_state` on the target, the slot's confirmed
 * position on the source, and `SyncProgress` reports.
 *
 * One session (a replication connection and a target connection) at a time,
 * a new one after a transient failure, from the target's recorded position.
 * The session loop, and why the slot is confirmed only up to what the target
 * has applied and flushed (Guard 8, Guard 9): docs/architecture.md, "The
 * stream: receive → decode → apply" and "The guards".
 */
import { Applier, type ApplierOptions } from './apply';
import { SafeReplayNeeded } from './apply-diagnosis';
import type { LogFn } from './log-fn';
import { TextModeNeeded } from './apply-target';
import { ql, resolveEndpoint } from './conn';
import { asPgferryError, isTransientError, PgferryError, redact, sqlState } from './errors';
import { formatLsn, maxLsn, parseLsn, type Lsn } from './lsn';
import { PgoutputParser, type PgoutputMessage } from './pgoutput';
import { ReplicationStream } from './receive';
import type { Endpoint } from './spec';
import { sleep } from './sleep';
import type { ApplyBarrier } from './verify-barrier';
import type { ChangeTracker } from './verify-changes';

export { encodeStandbyStatus, parseKeepalive, type Keepalive } from './receive';

export interface SyncOptions {
  migrationId: string;
  source: Endpoint;
  target: Endpoint;
  slotName: string;
  publicationName: string;
  /** Per table (`qn(schema, name)`): apply only source transactions committed at or after this LSN (its copy holds the earlier ones). Absent tables apply from the start. */
  tableSyncLsn: Map<string, Lsn>;
  /** Changes per target transaction, committed at the next source transaction boundary (spec default 10000). */
  batchChanges: number;
  /** Longest a batch stays open, in ms (spec default 200). */
  batchMs: number;
  /** Aborting stops the sync: `runSync` resolves once the connections are closed (uncommitted work is rolled back and re-sent next time). */
  signal: AbortSignal;
  onProgress?: (p: SyncProgress) => void;
  log?: LogFn;
  /** Where the continuous verification pauses the apply at an exact point (verify-barrier.ts). */
  barrier?: ApplyBarrier;
  /** Told of every row change applied (the verification's record of what changed since it checked). */
  tracker?: ChangeTracker;
  /** Follow the source's column changes in stream order (schemaChanges 'follow'; apply-mapping.ts). */
  follow?: ApplierOptions['follow'];
  /** Tables being added during the sync (schema-follow-tables.ts). */
  gates?: ApplierOptions['gates'];
  /**
   * The target's schema may be behind the stream (an enum value, a type, added on the source since the last
   * reconciliation): bring it up now. Called once per applied position when a change fails for such a reason;
   * resolves to the number of changes made (0: the failure stands).
   */
  catchUpSchema?: () => Promise<number>;
  /** Extra `-c` settings for the target session (ApplierOptions.targetOptions). */
  targetOptions?: string;
}

export interface SyncProgress {
  /** Everything the source committed before this position is committed on the target. */
  appliedLsn: Lsn;
  /** Commit time (source clock) of the last applied source transaction. */
  appliedCommitTime: Date | null;
  /** Start of the last XLogData message received. */
  receivedLsn: Lsn;
  /** Server position the decoder has reached (keepalive walEnd / last message). */
  decodedLsn: Lsn;
  /** Changes gathered in the open target transaction, not committed yet. */
  pendingChanges: number;
  changesApplied: number;
  transactionsApplied: number;
  /** Changes committed per second over the last 10 s. */
  applyRatePerSec: number;
  lastBatchAt: Date | null;
}

/** Events decoded between two turns of the event loop (see the main loop). */
const YIELD_EVERY = 64;
const yieldToIo = () => new Promise<void>((resolve) => setImmediate(resolve));
/** How often the source hears from us even when nothing changes (wal_sender_timeout defaults to 60 s). */
const STATUS_INTERVAL_MS = 10_000;
/** How often to ask the target how far its WAL is flushed while commits wait to become durable. */
const DURABLE_POLL_MS = 100;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30_000;
const RATE_WINDOW_MS = 10_000;

/** State that outlives one session (connection pair). */
interface SyncState {
  appliedLsn: Lsn;
  appliedCommitTime: Date | null;
  receivedLsn: Lsn;
  decodedLsn: Lsn;
  changesApplied: number;
  transactionsApplied: number;
  lastBatchAt: Date | null;
  safeThroughLsn: Lsn | null;
  rateSamples: { atMs: number; changes: number }[];
  /** A binary stream met a value it could not take: stream text from now on. */
  textOnly: boolean;
  /** The applied position at which the target's schema was last brought up after a failure (`catchUpSchema`). */
  caughtUpAt: Lsn | null;
}

/**
 * Runs until `signal` aborts (resolves) or a fatal error (rejects with a
 * PgferryError). Starts from the target's applied LSN (or the slot's
 * confirmed position when none). Reconnects on transient connection loss with
 * backoff (0.5 s doubling to 30 s), resuming from the target's applied LSN.
 *
 * @example
 * const ac = new AbortController();
 * const done = runSync({ migrationId: 'orders', source, target, slotName: 'pgferry_orders',
 *   publicationName: 'pgferry_orders', tableSyncLsn: new Map(), batchChanges: 10000, batchMs: 200,
 *   signal: ac.signal, onProgress: (p) => console.log(formatLsn(p.appliedLsn)) });
 * // ... later
 * ac.abort(); await done;
 */
export async function runSync(opts: SyncOptions): Promise<void> {
  if (!Number.isInteger(opts.batchChanges) || opts.batchChanges < 1)
    throw new PgferryError('INVALID_SPEC', `batchChanges must be a positive integer, got ${opts.batchChanges}.`, 'Set `apply.batchChanges` to 1 or more.');
  if (!Number.isFinite(opts.batchMs) || opts.batchMs < 1)
    throw new PgferryError('INVALID_SPEC', `batchMs must be a positive number, got ${opts.batchMs}.`, 'Set `apply.batchMs` to 1 or more.');
  const log: LogFn = opts.log ?? (() => undefined);
  const state: SyncState = {
    appliedLsn: 0n,
    appliedCommitTime: null,
    receivedLsn: 0n,
    decodedLsn: 0n,
    changesApplied: 0,
    transactionsApplied: 0,
    lastBatchAt: null,
    safeThroughLsn: null,
    rateSamples: [],
    textOnly: false,
    caughtUpAt: null,
  };
  let backoffMs = BACKOFF_MIN_MS;
  while (!opts.signal.aborted) {
    const appliedBefore = state.changesApplied;
    try {
      await runSession(opts, state, log);
      return;
    } catch (e) {
      if (opts.signal.aborted && !(e instanceof PgferryError && !isTransientError(e))) return;
      if (e instanceof TextModeNeeded) {
        state.textOnly = true;
        log('warn', `${e.message}; streaming values as text from now on (nothing of the open batch was committed)`, {
          event: 'text-values',
          table: e.table,
          column: e.column,
        });
        continue;
      }
      if (e instanceof SafeReplayNeeded) {
        state.safeThroughLsn = e.throughLsn;
        log('warn', `set-based apply failed; re-applying through ${formatLsn(e.throughLsn)} one change per statement`, {
          event: 'safe-replay',
          throughLsn: formatLsn(e.throughLsn),
          cause: redact((e.cause as Error)?.message ?? String(e.cause)),
        });
        continue;
      }
      if (opts.catchUpSchema && schemaBehind(e) && state.caughtUpAt !== state.appliedLsn) {
        state.caughtUpAt = state.appliedLsn;
        // Applied again once per position even when nothing was left to make: the keeper's own look at the source may have
        // brought the types up meanwhile (a second failure at the same position stands).
        const made = await opts.catchUpSchema().catch(() => -1);
        if (made >= 0) {
          log('warn', `a change failed as if the target's schema were behind the source's; made ${made} schema change(s) on the target, applying again`, {
            event: 'schema-caught-up',
            cause: redact((e as Error).message),
          });
          continue;
        }
      }
      if (!isTransientError(e)) {
        const err = asPgferryError(e, 'INTERNAL', 'continuous sync');
        log('error', err.message, { code: err.code, remedy: err.remedy });
        throw err;
      }
      if (state.changesApplied > appliedBefore) backoffMs = BACKOFF_MIN_MS;
      log('warn', `sync connection lost, reconnecting in ${backoffMs} ms: ${redact((e as Error)?.message ?? String(e))}`, {
        event: 'reconnect',
        appliedLsn: formatLsn(state.appliedLsn),
      });
      await sleep(backoffMs, opts.signal);
      backoffMs = Math.min(backoffMs * 2, BACKOFF_MAX_MS);
    }
  }
}

/**
 * A change failed the way it does when the target's schema is behind the
 * stream: a value the target's type does not take (an enum value added on
 * the source: 22P02), a type or object it lacks (42704).
 */
function schemaBehind(e: unknown): boolean {
  const cause = e instanceof PgferryError ? (e.cause as unknown) : e;
  const state = sqlState(cause);
  return state === '22P02' || state === '42704';
}

/**
 * The slot's confirmed position, read on the replication connection itself
 * (simple SQL is allowed there); fails when the slot is missing or is not
 * this migration's kind of slot.
 */
async function readSlot(stream: ReplicationStream<PgoutputMessage>, source: Endpoint, slotName: string): Promise<Lsn> {
  const database = resolveEndpoint(source).database;
  const r = await stream.query(`SELECT confirmed_flush_lsn::text AS lsn, plugin, database FROM pg_replication_slots WHERE slot_name = ${ql(slotName)}`);
  if (r.rows.length === 0) {
    throw new PgferryError(
      'STATE_CORRUPT',
      `The replication slot "${slotName}" does not exist on the source.`,
      'The slot was dropped, so the changes since the last applied position are gone from the source. Delete the migration and start it again (a fresh copy).',
    );
  }
  const row = r.rows[0];
  if (row.plugin !== 'pgoutput' || row.database !== database) {
    throw new PgferryError(
      'SLOT_NAME_TAKEN',
      `The replication slot "${slotName}" on the source is not a pgoutput slot of database "${database}" (plugin ${row.plugin}, database ${row.database}).`,
      'Give the migration another `slotName`, or drop the other slot if it is unused.',
    );
  }
  return row.lsn ? parseLsn(row.lsn) : 0n;
}

/** A published column of the source, as `Applier.binaryBlocker` checks it. */
type PublishedColumn = Parameters<Applier['binaryBlocker']>[0][number];

/**
 * The source side of a session, opened while the target side opens: the
 * replication connection, the slot's confirmed position and, unless text is
 * already decided (a string: why), the published columns that decide
 * whether values can come in binary form.
 *
 * Binary values: pgoutput's `binary` option (PostgreSQL 14+) sends each
 * value in its type's binary form, so the walsender skips the type's output
 * function and the target its input function (COPY parses no text, arrays
 * carry typed elements); what that saved on the bench is in
 * docs/performance.md. It needs every published column to have the same built-in type on both
 * sides (Applier.binaryBlocker).
 */
async function openSource(
  opts: SyncOptions,
  parser: PgoutputParser,
  textOnly: boolean,
): Promise<{ stream: ReplicationStream<PgoutputMessage>; slotLsn: Lsn; published: PublishedColumn[] | string }> {
  const stream = await ReplicationStream.connect<PgoutputMessage>({
    source: opts.source,
    slotName: opts.slotName,
    publicationName: opts.publicationName,
    decode: (buf, offset, end) => parser.parse(buf, offset, end),
    // Room for about two batches: the walsender keeps decoding while the
    // previous batch executes on the target.
    highWaterEvents: Math.max(512, Math.min(2 * opts.batchChanges + 512, 32_768)),
  });
  try {
    const slotLsn = await readSlot(stream, opts.source, opts.slotName);
    if (textOnly) return { stream, slotLsn, published: 'a value came as text earlier' };
    const v = await stream.query('SHOW server_version_num');
    if (Number(v.rows[0].server_version_num) < 140000) return { stream, slotLsn, published: 'the source is older than PostgreSQL 14' };
    const r = await stream.query(`
      SELECT pt.schemaname AS schema, pt.tablename AS table, a.attname AS column, a.atttypid::int AS type_oid,
             -- 'f' also for a table without a replica identity key, which the apply treats alike
             CASE WHEN c.relreplident = 'f' OR NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisreplident OR (c.relreplident = 'd' AND i.indisprimary)))
                  THEN 'f' ELSE c.relreplident::text END AS identity
        FROM pg_publication_tables pt
        JOIN pg_namespace n ON n.nspname = pt.schemaname
        JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
       WHERE pt.pubname = ${ql(opts.publicationName)}`);
    const published = r.rows.map((x) => ({ schema: x.schema, table: x.table, identity: x.identity, column: x.column, typeOid: Number(x.type_oid) }));
    return { stream, slotLsn, published };
  } catch (e) {
    await stream.close();
    throw e;
  }
}

/** One session's two ends, and why values travel as text when they do. */
interface Session {
  applier: Applier;
  stream: ReplicationStream<PgoutputMessage>;
  textReason: string | null;
}

/** Open the source and the target at once, and start streaming from the applied position. */
async function openSession(opts: SyncOptions, state: SyncState, log: LogFn): Promise<Session> {
  // Both sides at once (a restart resumes that much sooner).
  // Reused row-message objects: the loop below is done with each event
  // before it takes the next (the applier copies a row it keeps).
  const parser = new PgoutputParser(true);
  const [src, ap] = await Promise.allSettled([
    openSource(opts, parser, state.textOnly),
    Applier.open(opts.target, {
      migrationId: opts.migrationId,
      batchChanges: opts.batchChanges,
      batchMs: opts.batchMs,
      tableSyncLsn: opts.tableSyncLsn,
      safeThroughLsn: state.safeThroughLsn,
      tracker: opts.tracker,
      follow: opts.follow,
      gates: opts.gates,
      targetOptions: opts.targetOptions,
      log,
    }),
  ]);
  if (src.status === 'rejected' || ap.status === 'rejected') {
    if (src.status === 'fulfilled') await src.value.stream.close();
    if (ap.status === 'fulfilled') await ap.value.close();
    throw src.status === 'rejected' ? src.reason : (ap as PromiseRejectedResult).reason;
  }
  const applier = ap.value;
  const { stream, slotLsn, published } = src.value;
  let textReason: string | null;
  try {
    // The target's recorded position may trail the slot's confirmed position
    // (idle positions are not written to the target). Both only ever cover
    // durably applied changes, and the server starts from the slot's position
    // at the earliest anyway.
    // Only durable positions count here: what this process saw committed may
    // have been lost by a target crash (commits are asynchronous, see apply.ts).
    applier.appliedLsn = maxLsn(applier.appliedLsn, slotLsn);
    applier.durableLsn = applier.appliedLsn;
    // Positions are this session's: what a failed session had decoded is not applied.
    state.receivedLsn = applier.appliedLsn;
    state.decodedLsn = applier.appliedLsn;
    textReason = typeof published === 'string' ? published : await applier.binaryBlocker(published);
    applier.binary = textReason === null;
    await stream.start(applier.appliedLsn, applier.binary);
  } catch (e) {
    await stream.close();
    await applier.close();
    throw e;
  }
  return { applier, stream, textReason };
}

/**
 * Progress and confirmations of one session: what the source is told
 * (Guard 9) and what the supervisor sees.
 */
class SessionReporter {
  private readonly base: { changes: number; txns: number };
  private lastSentLsn = -1n;
  private lastSentAtMs = 0;
  /**
   * True while the loop awaits the applier on an event it has taken from the
   * stream: the stream's consumed position already includes that event but
   * the applier does not count it yet, so the position is not reported then
   * (the cutover must never see "nothing pending" past an unapplied change).
   * Nor inside a source transaction: after its Begin, before its changes
   * are counted, the position would also claim too much.
   */
  midEvent = false;

  constructor(
    private readonly opts: SyncOptions,
    private readonly state: SyncState,
    private readonly s: Session,
  ) {
    this.base = { changes: state.changesApplied, txns: state.transactionsApplied };
  }

  sendStatus(force: boolean): void {
    // Guard 9 (confirm only what is durable): confirm only what the target has flushed.
    const lsn = this.s.applier.durableLsn;
    if (!force && lsn === this.lastSentLsn && Date.now() - this.lastSentAtMs < STATUS_INTERVAL_MS) return;
    this.s.stream.sendStatus(lsn);
    this.lastSentLsn = lsn;
    this.lastSentAtMs = Date.now();
  }

  report(): void {
    const { applier, stream } = this.s;
    const state = this.state;
    if (!this.midEvent && !applier.inSourceTransaction) {
      state.receivedLsn = maxLsn(state.receivedLsn, stream.consumedDataStart);
      state.decodedLsn = maxLsn(state.decodedLsn, stream.consumedWalEnd);
    }
    state.appliedLsn = maxLsn(state.appliedLsn, applier.appliedLsn);
    state.appliedCommitTime = applier.appliedCommitTime ?? state.appliedCommitTime;
    state.changesApplied = this.base.changes + applier.changesApplied;
    state.transactionsApplied = this.base.txns + applier.transactionsApplied;
    state.lastBatchAt = applier.lastBatchAt ?? state.lastBatchAt;
    state.safeThroughLsn = applier.safeThroughLsn;
    const nowMs = Date.now();
    const samples = state.rateSamples;
    samples.push({ atMs: nowMs, changes: state.changesApplied });
    while (samples.length > 2 && nowMs - samples[0].atMs > RATE_WINDOW_MS) samples.shift();
    const spanMs = nowMs - samples[0].atMs;
    const rate = spanMs > 0 ? ((state.changesApplied - samples[0].changes) * 1000) / spanMs : 0;
    this.opts.onProgress?.({
      appliedLsn: state.appliedLsn,
      appliedCommitTime: state.appliedCommitTime,
      receivedLsn: state.receivedLsn,
      decodedLsn: state.decodedLsn,
      pendingChanges: applier.pendingChanges,
      changesApplied: state.changesApplied,
      transactionsApplied: state.transactionsApplied,
      applyRatePerSec: rate,
      lastBatchAt: state.lastBatchAt,
    });
  }
}

async function runSession(opts: SyncOptions, state: SyncState, log: LogFn): Promise<void> {
  const s = await openSession(opts, state, log);
  const { applier, stream, textReason } = s;
  const r = new SessionReporter(opts, state, s);
  const sendStatus = (force: boolean) => r.sendStatus(force);
  const report = () => r.report();
  let timer: NodeJS.Timeout | null = null;
  let durableTimer: NodeJS.Timeout | null = null;

  try {
    log(
      'info',
      `streaming changes from slot "${opts.slotName}" from ${formatLsn(applier.appliedLsn)}, values ${applier.binary ? 'in binary form' : `as text (${textReason})`}`,
      {
        mode: applier.mode,
        values: applier.binary ? 'binary' : 'text',
        safeThroughLsn: applier.safeThroughLsn === null ? null : formatLsn(applier.safeThroughLsn),
      },
    );
    timer = setInterval(() => {
      sendStatus(false);
      report();
    }, STATUS_INTERVAL_MS);
    timer.unref();
    // The target's WAL writer flushes asynchronous commits within
    // wal_writer_delay; ask for the flush position a few times a second while
    // some committed batches are not known durable, then confirm them.
    let refreshing = false;
    durableTimer = setInterval(() => {
      if (refreshing || applier.undurableBatches === 0) return;
      refreshing = true;
      // node-postgres queues this behind whatever the loop is running on the
      // same connection; a read-only function call is harmless inside a batch.
      applier
        .refreshDurable()
        .then(
          () => sendStatus(false),
          () => undefined,
        )
        .finally(() => {
          refreshing = false;
        });
    }, DURABLE_POLL_MS);
    durableTimer.unref();
    report();

    applier.onCommitted = () => {
      sendStatus(false);
      report();
    };
    await streamLoop(opts, state, s, r);
  } finally {
    if (timer) clearInterval(timer);
    if (durableTimer) clearInterval(durableTimer);
    report();
    await stream.close();
    await applier.close();
  }
}

/** Take the stream's events in order and hand them to the applier until the signal aborts. */
async function streamLoop(opts: SyncOptions, state: SyncState, s: Session, rep: SessionReporter): Promise<void> {
  const { applier, stream } = s;
  let sinceYield = 0;
  while (!opts.signal.aborted) {
    applier.throwIfFailed();
    // Drain what is buffered synchronously; await only when nothing is —
    // and let the event loop run every YIELD_EVERY events: the batch in
    // flight on the target advances (its next statement is sent) only from
    // I/O callbacks, as does reading the source socket. Without it, decode
    // and target execution would take turns instead of overlapping.
    if (++sinceYield >= YIELD_EVERY) {
      sinceYield = 0;
      await yieldToIo();
      if (opts.signal.aborted) break;
    }
    let ev = stream.poll();
    if (ev === undefined) {
      const ageMs = applier.batchAgeMs();
      const atBoundary = !applier.inSourceTransaction;
      let waitMs = ageMs !== null && atBoundary ? Math.max(0, opts.batchMs - ageMs) : STATUS_INTERVAL_MS;
      // A batch in flight may fail while the stream is quiet: look again soon.
      if (applier.hasInflight) waitMs = Math.min(waitMs, 50);
      const got = await stream.next(waitMs, opts.signal);
      if (opts.signal.aborted) break;
      if (got === null) {
        // batchMs passed with the batch open and no transaction in flight.
        if (!applier.inSourceTransaction && (applier.batchAgeMs() ?? -1) >= opts.batchMs) {
          await applier.flush();
          rep.sendStatus(false);
          rep.report();
        }
        continue;
      }
      ev = got;
    }

    switch (ev.tag) {
      case 'keepalive': {
        const { walEnd, replyRequested } = ev;
        // Guard 8 (confirm only what is applied):
        // walEnd covers every transaction committed before it only when no
        // transaction is in flight; a keepalive sent mid-transaction must not
        // move the position, or a crash would skip the rest of that transaction.
        if (!applier.inSourceTransaction) {
          state.decodedLsn = maxLsn(state.decodedLsn, walEnd);
          applier.boundary(walEnd);
          // Idle: nothing more buffered, commit now rather than wait for batchMs.
          if (stream.buffered === 0) {
            rep.midEvent = true;
            await applier.flush();
            rep.midEvent = false;
          }
          if (opts.barrier?.due(walEnd)) await pauseAt(opts, s, rep, walEnd);
        }
        rep.sendStatus(replyRequested);
        rep.report();
        break;
      }
      case 'begin':
        if (opts.barrier?.due(ev.finalLsn)) await pauseAt(opts, s, rep, ev.finalLsn);
        applier.begin(ev);
        break;
      case 'commit': {
        const r = applier.commit(ev);
        if (r === false) break;
        if (r !== true) {
          rep.midEvent = true;
          await r;
          rep.midEvent = false;
        }
        rep.sendStatus(false);
        rep.report();
        break;
      }
      case 'relation':
        applier.relation(ev);
        break;
      case 'insert':
      case 'update':
      case 'delete':
      case 'truncate': {
        const p = applier.change(ev);
        if (p) {
          rep.midEvent = true;
          await p;
          rep.midEvent = false;
        }
        break;
      }
      case 'type':
      case 'origin':
      case 'message':
        break; // values are cast by the target's column types; origins and logical messages are not ours
    }
  }
}

/**
 * The verification's pause (verify-barrier.ts): every source transaction
 * committed before `lsn` is committed on the target and nothing after it;
 * the apply waits here until the verifier lets it go (or the sync stops).
 */
async function pauseAt(opts: SyncOptions, s: Session, rep: SessionReporter, lsn: Lsn): Promise<void> {
  rep.midEvent = true;
  await s.applier.flush();
  await s.applier.settle();
  rep.report();
  const barrier = opts.barrier!;
  let onAbort: (() => void) | undefined;
  await Promise.race([
    barrier.arrive(lsn),
    new Promise<void>((resolve) => {
      onAbort = resolve;
      opts.signal.addEventListener('abort', onAbort, { once: true });
    }),
  ]);
  if (onAbort) opts.signal.removeEventListener('abort', onAbort);
  if (opts.signal.aborted) barrier.release();
  rep.midEvent = false;
}
