/**
 * state — the agent's own durable state, one JSON file per migration in
 * `<state-dir>/migrations/<id>.json`.
 *
 * What lives here: the spec (secrets encrypted), the phase, the slot and
 * publication names and whether pgferry created them, the main snapshot LSN,
 * the last error and the cutover report. What does NOT live here: anything
 * that must be exactly as durable as target data (applied LSN, copied tables):
 * that is in the target (target-state.ts), written in the same transactions.
 *
 * Writes are atomic (temp file, fsync, rename, fsync of the directory), so a
 * `kill -9` at any instant leaves either the old or the new record.
 *
 * Secrets (passwords, connection strings) are encrypted with AES-256-GCM
 * under a key kept in `<state-dir>/secret.key` (mode 0600, created on first
 * start) or given by `--secret-key-file`; the state files never hold them in
 * clear text. Hand-rolled on node:crypto: the format is three fields and
 * pulling a library in for it would add more surface than it removes.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, unlinkSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { PgferryError, registerSecret } from './errors';
import { withSpecDefaults, type Endpoint, type MigrationSpec } from './spec';
import type { FenceRecord } from './fence';

/** `completed`: the application is on the target; `cut-back`: a cutback (cutback.ts) returned it to the source. */
export const PHASES = ['created', 'schema', 'loading', 'indexing', 'syncing', 'cutting-over', 'completed', 'cut-back', 'failed', 'deleted'] as const;
export type Phase = (typeof PHASES)[number];

/**
 * What the cutover checks inside the fence: `changes` (the default) the rows
 * applied since the continuous verification checked each table, and every
 * table it has not verified in full; `full` every row of every table
 * (`checksums` is its older name); `counts` row counts; `none` nothing.
 */
export const VALIDATIONS = ['changes', 'full', 'checksums', 'counts', 'none'] as const;
export type Validation = (typeof VALIDATIONS)[number];

/** How one table was checked inside the fence (cutover-verify.ts). */
export type TableCheckMode = 'unchanged' | 'changes' | 'full' | 'counts';

export interface TableValidation {
  table: string;
  sourceRows: number;
  targetRows: number;
  sourceChecksum: string;
  targetChecksum: string;
  match: boolean;
  /** How it was checked (reports written before modes existed have none: they were `full` or `counts`). */
  mode?: TableCheckMode;
  /** Rows read on each side inside the fence. */
  rowsChecked?: number;
}

/** One part of the application's outage (CutoverReport.outageParts). */
export interface OutagePart {
  part: 'grace' | 'terminate' | 'drain' | 'sequences' | 'large-objects' | 'schema' | 'verification' | 'completing';
  ms: number;
}

/** The report of a migration's last cutover (cutover.ts writes it, the supervisor keeps it). */
/** The handover's comparison of the two catalogs (cutover-schema.ts). */
export interface SchemaCheckReport {
  ok: boolean;
  /** Objects compared (source side). */
  objects: number;
  /** One line per difference, accepted ones marked. */
  differences: string[];
  ms: number;
}

/** The large objects' last pass inside the fence (cutover-schema.ts). */
export interface LargeObjectsReport {
  objects: number;
  created: number;
  updated: number;
  unlinked: number;
  bytes: number;
  ms: number;
}

export interface CutoverReport {
  state:
    'waiting-for-lag' | 'waiting-for-verification' | 'fencing' | 'draining' | 'sequences' | 'large-objects' | 'schema' | 'validating' | 'completed' | 'failed';
  startedAt: string;
  fenceStartedAt: string;
  fenceEndedAt: string;
  writeDowntimeMs: number;
  validationMs: number;
  fenceLsn: string;
  tables: TableValidation[];
  sequences: Array<{ sequence: string; value: number }>;
  warnings: string[];
  validation: Validation;
  validationOk: boolean;
  completedAt: string;
  error: string;
  attempts: number;
  /** The large objects' last pass, inside the fence (cutover-schema.ts). */
  largeObjects?: LargeObjectsReport;
  /** The handover's comparison of the two catalogs. */
  schemaCheck?: SchemaCheckReport;
  /**
   * The application's outage: from the fence until the target was ready for
   * the application (handover done, rows verified), everything inside counted.
   * `writeDowntimeMs` is the same figure (kept for its readers).
   */
  outageMs?: number;
  /** The outage's parts, in order; they add up to `outageMs`. */
  outageParts?: OutagePart[];
}

/** The continuous verification's progress (verify.ts `status()`; the API's VerificationStatus). */
export interface VerificationStatus {
  state: 'off' | 'waiting' | 'verifying' | 'verified' | 'paused';
  tablesTotal: number;
  tablesVerified: number;
  rowsVerified: number;
  rowsEstimated: number;
  lastVerifiedAt: string;
  oldestVerifiedAt: string;
  tablesChanged: number;
  keysChanged: number;
  rangesRepaired: number;
  rowsRepaired: number;
  repairs: string[];
  lastError: string;
}

/** One schema change applied on the target during the sync (schema-follow.ts; `pgferry.schema_changes` on the target). */
export interface SchemaChangeEntry {
  /** When it was applied (ISO). */
  at: string;
  /** The object, quoted: `public.orders`, `public.orders.note`, `index public.orders_note_idx`. */
  object: string;
  /** What happened, in a few words: `column added`, `column renamed from x`, `type changed to bigint`, `table created and copied`, `index created`, `enum value added`. */
  change: string;
  /** The statement run on the target. */
  statement: string;
}

/** Schema changes followed during the sync (the API's SchemaChangesStatus). */
export interface SchemaChangesStatus {
  /** The spec's `schemaChanges`. */
  mode: 'follow' | 'stop';
  /** Changes applied on the target since the migration started (survives restarts). */
  applied: number;
  /** ISO time of the last one, '' when none. */
  lastAppliedAt: string;
  /** The most recent ones (at most 20), oldest first. */
  recent: SchemaChangeEntry[];
  /** Tables dropped on the source during the sync; their target copies are kept (pgferry never drops data). */
  keptTables: string[];
  /** ISO time the source's catalog was last compared with the target's, '' when never. */
  lastReconciledAt: string;
  /** Why the last comparison could not apply something (it is tried again), '' when nothing. */
  lastError: string;
}

export interface StoredError {
  code: string;
  message: string;
  remedy: string;
  at: string;
}

export interface MigrationRecord {
  id: string;
  fingerprint: string;
  /** The spec with `password` and `connectionString` replaced by `enc:` blobs. */
  spec: MigrationSpec;
  createdAt: string;
  updatedAt: string;
  phase: Phase;
  /** The phase before `failed`, to resume from. */
  resumePhase?: Phase;
  error?: StoredError;
  slotName: string;
  publicationName: string;
  /** 'none' → 'creating' → 'created': lets a restart tell our slot from a stranger's. */
  slotState: 'none' | 'creating' | 'created';
  publicationCreated: boolean;
  /** Consistent point of the main slot (LSN text). */
  snapshotLsn?: string;
  sourceVersion?: string;
  targetVersion?: string;
  /** The cutover report (cutover.ts), kept with the migration. */
  cutover?: CutoverReport;
  /** Set while an operator has paused the migration (pgferry pause): nothing runs until it is resumed, also across agent restarts. */
  pausedAt?: string;
  /** The write fence on the source, recorded before it is raised and cleared only by a verified lift (fence.ts). */
  fence?: FenceRecord;
  /** The way back (reverse-sync.ts): the slot and publication on the target, and where the old source follows it from. */
  reverse?: ReverseRecord;
  /** The report of the last cutback (cutback.ts): the same shape as the cutover's, source and target swapped. */
  cutback?: CutoverReport;
}

/**
 * The reverse sync of a migration with a `rollbackWindow`: made on the target before the cutover's fence, it
 * streams the target's changes back into the old source once the cutover completed, until the window ends.
 */
export interface ReverseRecord {
  /** `creating` (recorded before the slot is made: a restart drops a half-made one) → `prepared` → `streaming` → `dropped`. */
  state: 'creating' | 'prepared' | 'streaming' | 'dropped';
  slotName: string;
  publicationName: string;
  createdAt: string;
  /** The target's position from which its changes go back: taken inside the cutover's fence, after its last own write there. */
  startLsn?: string;
  /** When the slot and publication are dropped (the cutover's completion plus the window). */
  windowEndsAt?: string;
  droppedAt?: string;
  /** Why they were dropped: the window ended, `rollbackWindow` was removed, the cutback completed, the migration was deleted, the cutover failed. */
  dropReason?: string;
  /** The write fence a cutback raises on the target (fence.ts), as `fence` is the source's. */
  fence?: FenceRecord;
}

export class StateStore {
  readonly dir: string;
  private key: Buffer;

  constructor(stateDir: string, secretKeyFile?: string) {
    this.dir = stateDir;
    mkdirSync(join(stateDir, 'migrations'), { recursive: true, mode: 0o700 });
    this.key = loadOrCreateKey(secretKeyFile ?? join(stateDir, 'secret.key'));
  }

  list(): MigrationRecord[] {
    const dir = join(this.dir, 'migrations');
    return readdirSync(dir)
      .filter((f) => f.endsWith('.json'))
      .sort()
      .map((f) => this.readFile(join(dir, f)));
  }

  get(id: string): MigrationRecord | undefined {
    const file = this.file(id);
    return existsSync(file) ? this.readFile(file) : undefined;
  }

  put(rec: MigrationRecord): void {
    rec.updatedAt = new Date().toISOString();
    const file = this.file(rec.id);
    const tmp = `${file}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeFileSync(fd, JSON.stringify(rec, null, 2));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
    const dfd = openSync(join(this.dir, 'migrations'), 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  }

  remove(id: string): void {
    const file = this.file(id);
    if (existsSync(file)) unlinkSync(file);
  }

  /** Encrypt the secrets of a spec for storage. */
  sealSpec(spec: MigrationSpec): MigrationSpec {
    return { ...spec, source: this.sealEndpoint(spec.source), target: this.sealEndpoint(spec.target) };
  }

  /** Decrypt the secrets of a stored spec (in memory only), with the defaults of fields added since it was stored. */
  openSpec(spec: MigrationSpec): MigrationSpec {
    return withSpecDefaults({ ...spec, source: this.openEndpoint(spec.source), target: this.openEndpoint(spec.target) });
  }

  private sealEndpoint(e: Endpoint): Endpoint {
    return {
      ...e,
      password: e.password === undefined ? undefined : this.encrypt(e.password),
      connectionString: e.connectionString === undefined ? undefined : this.encrypt(e.connectionString),
    };
  }

  private openEndpoint(e: Endpoint): Endpoint {
    const out = {
      ...e,
      password: e.password === undefined ? undefined : this.decrypt(e.password),
      connectionString: e.connectionString === undefined ? undefined : this.decrypt(e.connectionString),
    };
    registerSecret(out.password);
    return out;
  }

  private encrypt(plain: string): string {
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.key, iv);
    const body = Buffer.concat([c.update(plain, 'utf8'), c.final()]);
    return `enc:v1:${iv.toString('base64')}:${c.getAuthTag().toString('base64')}:${body.toString('base64')}`;
  }

  private decrypt(sealed: string): string {
    const m = /^enc:v1:([^:]+):([^:]+):(.*)$/.exec(sealed);
    if (!m)
      throw new PgferryError(
        'STATE_CORRUPT',
        'A stored secret is not in the expected encrypted form.',
        'Restore the state directory from a backup, or delete the migration and start it again.',
      );
    try {
      const d = createDecipheriv('aes-256-gcm', this.key, Buffer.from(m[1], 'base64'));
      d.setAuthTag(Buffer.from(m[2], 'base64'));
      return Buffer.concat([d.update(Buffer.from(m[3], 'base64')), d.final()]).toString('utf8');
    } catch (e) {
      throw new PgferryError(
        'STATE_CORRUPT',
        "A stored secret cannot be decrypted with the agent's secret key.",
        'Start the agent with the same --state-dir (and --secret-key-file) it was started with before.',
        { cause: e },
      );
    }
  }

  private file(id: string): string {
    return join(this.dir, 'migrations', `${id}.json`);
  }

  private readFile(file: string): MigrationRecord {
    try {
      return JSON.parse(readFileSync(file, 'utf8')) as MigrationRecord;
    } catch (e) {
      throw new PgferryError(
        'STATE_CORRUPT',
        `The state file '${file}' cannot be read.`,
        'Restore it from a backup or remove it (the migration is then forgotten by the agent).',
        { cause: e },
      );
    }
  }
}

function loadOrCreateKey(file: string): Buffer {
  if (existsSync(file)) {
    const key = Buffer.from(readFileSync(file, 'utf8').trim(), 'base64');
    if (key.length !== 32)
      throw new PgferryError(
        'STATE_CORRUPT',
        `The secret key file '${file}' does not hold a 32-byte base64 key.`,
        'Restore the key file, or point --secret-key-file at the right one.',
      );
    return key;
  }
  const key = randomBytes(32);
  writeFileSync(file, key.toString('base64') + '\n', { mode: 0o600 });
  chmodSync(file, 0o600);
  return key;
}
