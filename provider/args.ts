/**
 * args — the shapes of a `pgferry.Migration`: its arguments as the provider
 * receives them (plain values, secrets unwrapped by the engine), its outputs,
 * the allowed values and defaults, and the derivation of a migration id from
 * a resource name.
 *
 * Field names mirror agent/engine/spec.ts (`migrationId` is the spec's `id`). The
 * allowed-value tuples are copies of the agent's, kept equal by a unit test,
 * so that the provider needs neither zod nor the agent's modules at run time.
 */
import type {
  AgentClientOptions,
  ApplyOptionsMessage,
  CopyOptionsMessage,
  CutoverRequestMessage,
  EndpointMessage,
  RoleOptionsMessage,
  TableSelectionMessage,
  VerificationOptionsMessage,
} from '../api/client';

/** The value the Pulumi engine sends during preview for a value not known yet. */
export const UNKNOWN = '04da6b54-80e4-46f7-96ec-b56ff0331ba9';

export const SSL_MODES = ['disable', 'prefer', 'require', 'verify-ca', 'verify-full'] as const;
export type SslMode = (typeof SSL_MODES)[number];

export const SCHEMA_MODES = ['create', 'existing'] as const;
export type SchemaMode = (typeof SCHEMA_MODES)[number];

/** What to do with a role the target lacks (`roles.missing`). */
export const ROLE_MISSING = ['fail', 'skip'] as const;
export type RoleMissing = (typeof ROLE_MISSING)[number];

/**
 * What the sync does when the source's schema changes (`schemaChanges`):
 * `follow` (default) applies the change on the target; `stop` stops the sync
 * with SCHEMA_DRIFT.
 */
export const SCHEMA_CHANGES = ['follow', 'stop'] as const;
export type SchemaChanges = (typeof SCHEMA_CHANGES)[number];

/**
 * What the cutover checks of the rows inside the fence (`cutoverOptions.validation`):
 * `changes` (default) the rows applied since the continuous verification checked
 * their table, plus every table it has not verified; `full` every row of every
 * table (`checksums` is its older name); `counts` row counts; `none` nothing.
 */
export const CUTOVER_VALIDATIONS = ['changes', 'full', 'checksums', 'counts', 'none'] as const;
export type CutoverValidation = (typeof CUTOVER_VALIDATIONS)[number];

/** The bounds of `verification`'s knobs (the agent's, agent/engine/spec.ts; a unit test keeps them equal). */
export const VERIFICATION_LIMITS = {
  rowsPerSecond: { min: 1000, max: 4294967295 },
  rangeRows: { min: 100, max: 1_000_000 },
} as const;

/** The phases the agent reports (Migration.phase). */
export const PHASES = ['preflight', 'schema', 'loading', 'indexing', 'syncing', 'cutting-over', 'completed', 'cut-back', 'failed', 'deleted'] as const;
export type Phase = (typeof PHASES)[number];

export const ACTIVE_ENDPOINTS = ['source', 'target'] as const;
export type ActiveEndpoint = (typeof ACTIVE_ENDPOINTS)[number];

/** The agent's id rule (agent/engine/spec.ts). */
export const MIGRATION_ID_PATTERN = /^[a-z][a-z0-9_]{0,39}$/;
export const MIGRATION_ID_MAX_LENGTH = 40;

/** Defaults the provider applies (the agent applies the same ones to the spec). */
export const DEFAULTS = {
  port: 5432,
  sslMode: 'prefer' as SslMode,
  tables: { include: ['public.*'], exclude: [] as string[] },
  schemaMode: 'create' as SchemaMode,
  overwriteTarget: false,
  roles: { map: {} as Record<string, string>, missing: 'fail' as RoleMissing },
  verification: { rowsPerSecond: 100_000, rangeRows: 50_000, disabled: false },
  schemaChanges: 'follow' as SchemaChanges,
  waitForSync: false,
  createTimeoutMinutes: 30,
  cutover: false,
  cutback: false,
  cutoverOptions: { maxLagBytes: 1024 * 1024, maxLagSeconds: 5, timeoutMs: 300_000, validation: 'changes' as CutoverValidation, skipSequences: false },
} as const;

/**
 * Where the agent is and how to talk to it: the agent client's options
 * (api/client.ts documents each field and its default) without call
 * deadlines. `token` and `clientKey` are secrets.
 */
export type AgentArgs = Omit<AgentClientOptions, 'defaultTimeoutMs'>;

/**
 * A PostgreSQL endpoint: either the separate fields or `connectionString`
 * (the API's `Endpoint`, documented field by field in the proto).
 */
export type EndpointArgs = Omit<EndpointMessage, 'sslMode'> & { sslMode?: SslMode };

/** Which tables (the API's `TableSelection`). */
export type TablesArgs = TableSelectionMessage;

/** Initial-load knobs (the API's `CopyOptions`). */
export type CopyArgs = CopyOptionsMessage;

/** Change-apply knobs (the API's `ApplyOptions`). */
export type ApplyArgs = ApplyOptionsMessage;

/**
 * The continuous verification before the cutover (the API's
 * `VerificationOptions`): `rowsPerSecond` read on each side at most (default
 * 100000, at least 1000), `rangeRows` per key range compared (default 50000,
 * 100..1000000), `disabled` (default false; the cutover then checks every row
 * inside the fence).
 */
export type VerificationArgs = VerificationOptionsMessage;

/**
 * How the source's roles are named on the target (the API's `RoleOptions`):
 * `map` names a target role for a source role (a role not named keeps its
 * name); `missing` says what a role the target lacks does: `fail` the
 * preflight (default) or `skip` the owners and grants that need it.
 */
export type RolesArgs = Omit<RoleOptionsMessage, 'missing'> & { missing?: RoleMissing };

/** How to cut over (the API's `CutoverRequest` but the id and the fence method). */
export type CutoverOptionsArgs = Omit<CutoverRequestMessage, 'id' | 'fenceMethod'>;

/** The arguments as the provider receives them (plain values). */
export interface MigrationInputs {
  agent: AgentArgs;
  source: EndpointArgs;
  target: EndpointArgs;
  tables?: TablesArgs;
  schemaMode?: SchemaMode;
  overwriteTarget?: boolean;
  migrationId: string;
  slotName?: string;
  publicationName?: string;
  copy?: CopyArgs;
  apply?: ApplyArgs;
  roles?: RolesArgs;
  verification?: VerificationArgs;
  schemaChanges?: SchemaChanges;
  waitForSync?: boolean;
  createTimeoutMinutes?: number;
  cutover?: boolean;
  cutoverOptions?: CutoverOptionsArgs;
  /** The way back: how long after the cutover the old source follows the target (`72h`, `90m`, `3d`, `1h30m`); absent: off. */
  rollbackWindow?: string;
  /** Cut back to the old source (after a completed cutover, within the rollback window). */
  cutback?: boolean;
}

/** The top-level argument names, for the unknown-field check. */
export const ARG_NAMES = [
  'agent',
  'source',
  'target',
  'tables',
  'schemaMode',
  'overwriteTarget',
  'migrationId',
  'slotName',
  'publicationName',
  'copy',
  'apply',
  'roles',
  'verification',
  'schemaChanges',
  'waitForSync',
  'createTimeoutMinutes',
  'cutover',
  'cutoverOptions',
  'rollbackWindow',
  'cutback',
] as const;
/**
 * The fields of a shape, as a runtime list (for the unknown-field check) that
 * the compiler holds to the type: a field added to the API and missing here,
 * or named here and absent there, fails the build.
 */
function fieldsOf<T>() {
  return <const L extends readonly (keyof T & string)[]>(list: L & (Exclude<keyof T, L[number]> extends never ? unknown : never)): L => list;
}
export const AGENT_FIELDS = fieldsOf<AgentArgs>()(['endpoint', 'token', 'caCert', 'clientCert', 'clientKey', 'insecure']);
export const ENDPOINT_FIELDS = fieldsOf<EndpointArgs>()(['connectionString', 'host', 'port', 'database', 'user', 'password', 'sslMode', 'sslRootCert']);
export const TABLES_FIELDS = fieldsOf<TablesArgs>()(['include', 'exclude']);
export const COPY_FIELDS = fieldsOf<CopyArgs>()(['workers', 'splitBytes', 'indexJobs']);
export const APPLY_FIELDS = fieldsOf<ApplyArgs>()(['batchChanges', 'batchMs']);
export const ROLES_FIELDS = fieldsOf<RolesArgs>()(['map', 'missing']);
export const VERIFICATION_FIELDS = fieldsOf<VerificationArgs>()(['rowsPerSecond', 'rangeRows', 'disabled']);
export const CUTOVER_OPTION_FIELDS = fieldsOf<CutoverOptionsArgs>()([
  'maxLagBytes',
  'maxLagSeconds',
  'timeoutMs',
  'validation',
  'skipSequences',
  'acceptSchemaDifferences',
]);

/** The arguments the preflight needs known (Check skips it otherwise): the agent and what the spec is built from. */
export const PREFLIGHT_ARGS = [
  'agent',
  'source',
  'target',
  'tables',
  'schemaMode',
  'overwriteTarget',
  'migrationId',
  'slotName',
  'publicationName',
  'copy',
  'apply',
  'roles',
  'verification',
  'schemaChanges',
  'rollbackWindow',
] as const satisfies readonly (typeof ARG_NAMES)[number][];

/** Arguments whose change means a different migration: the resource is replaced (delete first). */
export const REPLACE_ON_CHANGE = ['migrationId', 'source', 'target', 'tables', 'schemaMode', 'slotName', 'publicationName'] as const;

/** A database connection, as `activeConnection` and friends give it. */
export interface ConnectionOutput {
  host: string;
  port: number;
  database: string;
  user: string;
  /** Absent when none was given. */
  password?: string;
  sslMode: SslMode;
  /** `postgresql://user:password@host:port/database?sslmode=…`, ready for an app setting. */
  connectionString: string;
}

/** An endpoint as echoed in outputs: no password, the connection string redacted. */
export type EndpointEcho = Omit<EndpointArgs, 'password'>;

/** One schema change applied on the target during the sync (the API's `SchemaChange`). */
export interface SchemaChangeOutput {
  /** When (ISO 8601). */
  at: string;
  /** The object, e.g. `public.orders.note`. */
  object: string;
  /** What happened, e.g. `column added`. */
  change: string;
  /** The statement run on the target. */
  statement: string;
}

/** The reverse sync of a migration with a `rollbackWindow` (the API's `ReverseSyncStatus`, the parts a program reads). */
export interface ReverseSyncOutput {
  /** `prepared` (made at the cutover's fence) · `streaming` · `dropped` (window ended, removed, cut back or deleted) · `failed` (retried). */
  state: string;
  /** The target's WAL not yet applied to the old source, bytes. */
  lagBytes: number;
  /** How far the old source is behind the target, seconds. */
  lagSeconds: number;
  /** When the window ends and the reverse slot and publication are dropped (ISO 8601). */
  windowEndsAt?: string;
  /** When they were dropped (ISO 8601), and why. */
  droppedAt?: string;
  dropReason?: string;
  /** The last error (it retries by itself). */
  lastError?: string;
}

/** The last cutback's report (the cutover report's outputs, gathered in one object). */
export interface CutbackReportOutput {
  /** waiting-for-lag, fencing, draining, sequences, validating, completed | failed. */
  state: string;
  /** The application's outage: from the fence on the target until the old source was ready for it, ms. */
  outageMs?: number;
  /** Its parts, part → ms (they add up to `outageMs`). */
  outageParts?: Record<string, number>;
  validation?: string;
  validationOk?: boolean;
  /** The target's LSN at the fence. */
  fenceLsn?: string;
  completedAt?: string;
  warnings?: string[];
  /** Why it failed, and what became of the target's fence. */
  error?: string;
}

/** The resource's outputs (what the provider returns and the state holds). */
export interface MigrationOutputs {
  // The arguments, echoed without secrets (diff() receives the old outputs).
  agent: { endpoint: string; caCert?: string; clientCert?: string; insecure?: boolean };
  source: EndpointEcho;
  target: EndpointEcho;
  tables: { include: string[]; exclude: string[] };
  schemaMode: SchemaMode;
  overwriteTarget: boolean;
  migrationId: string;
  slotName?: string;
  publicationName?: string;
  copy?: CopyArgs;
  apply?: ApplyArgs;
  roles?: RolesArgs;
  verification?: VerificationArgs;
  schemaChanges?: SchemaChanges;
  waitForSync: boolean;
  createTimeoutMinutes: number;
  /** `true` once a requested cutover completed (or is requested and the resource is up to date). */
  cutover: boolean;
  cutoverOptions?: CutoverOptionsArgs;
  rollbackWindow?: string;
  /** `true` once a requested cutback completed (or is requested and the resource is up to date). */
  cutback: boolean;

  // Live status from the agent.
  phase: string;
  tablesTotal: number;
  tablesCopied: number;
  rowsCopied: number;
  /** 0..1 of the initial load. */
  progress: number;
  lagBytes: number;
  lagSeconds: number;
  retainedWalBytes: number;
  appliedLsn?: string;
  /** The replication slot the migration holds on the source. */
  replicationSlot?: string;
  /** The publication the migration created on the source. */
  publication?: string;
  sourceVersion?: string;
  targetVersion?: string;
  /** `CODE: message Fix: remedy` of the last failure, when the migration failed. */
  error?: string;
  /** Since when an operator has paused the migration on the agent (pgferry pause); absent when it runs. */
  pausedAt?: string;
  /** The write fence on the source database: none | up | lift-pending | kept (agent/engine/fence.ts). */
  sourceFence?: string;
  /** While the fence is lift-pending: since when, the attempts, the last error and the statement that lifts it by hand. */
  sourceFenceDetail?: string;

  // The continuous verification (absent while it does not run: before the sync, after the cutover).
  /** off | waiting | verifying | verified | paused */
  verificationState?: string;
  /** Tables the verification covers (the migrated tables that hold data). */
  verificationTablesTotal?: number;
  /** Tables verified at least once whose verification still holds. */
  tablesVerified?: number;
  /** Rows of the verified tables, as of their last pass. */
  rowsVerified?: number;
  /** When the last range was verified (ISO 8601). */
  lastVerifiedAt?: string;
  /** The least recently verified table's time: every table was verified since (ISO 8601; absent until all were). */
  oldestVerifiedAt?: string;
  /** Rows the verification found different and copied again. */
  rowsRepaired?: number;
  /** The latest repairs, one line each. */
  verificationRepairs?: string[];
  /** The verification's last error (it retries by itself). */
  verificationError?: string;

  // The source's schema changes followed during the sync (absent before the sync).
  /** Changes applied on the target since the migration started (survives agent restarts). */
  schemaChangesApplied?: number;
  /** When the last one was applied (ISO 8601; absent when none). */
  lastSchemaChangeAt?: string;
  /** The most recent ones (at most 20), oldest first, each with the statement run on the target. */
  recentSchemaChanges?: SchemaChangeOutput[];
  /** Tables dropped on the source during the sync whose target copies were kept. */
  keptTables?: string[];

  // The cutover report.
  cutoverState?: string;
  /** The application's outage: from the fence until the target was ready for it, ms. */
  outageMs?: number;
  /** The outage's parts, in order, part → ms (they add up to `outageMs`). */
  outageParts?: Record<string, number>;
  /** The same figure as `outageMs` (its older name). */
  writeDowntimeMs?: number;
  validationOk?: boolean;
  validation?: string;
  fenceLsn?: string;
  cutoverCompletedAt?: string;
  cutoverWarnings?: string[];
  /** The cutover's comparison of the target's schema with the source's: true when they matched. */
  schemaCheckOk?: boolean;
  /** What differed, one line each, when the comparison failed the cutover. */
  schemaDifferences?: string[];

  // The way back (a `rollbackWindow`).
  /** The reverse sync: absent without a rollback window or before the cutover made it. */
  reverseSync?: ReverseSyncOutput;
  /** The last cutback's report; absent before one. */
  cutbackReport?: CutbackReportOutput;

  /** `source` until the cutover completed, then `target`; `source` again after a cutback. */
  activeEndpoint: ActiveEndpoint;
  /** Things worth knowing about the last change (e.g. knobs that apply at the next start). */
  notes: string[];

  // Secret outputs (additionalSecretOutputs; encrypted in the state).
  activeConnection: ConnectionOutput;
  sourceConnection: ConnectionOutput;
  targetConnection: ConnectionOutput;
  agentToken?: string;
  /** The private key of `agent.clientCert` (mutual TLS). */
  agentClientKey?: string;
  /** scrypt digest of the database secrets (passwords, connection strings), to see a rotation in diff(). */
  secretsDigest: string;
}

/**
 * The output names of a Migration (registered so they exist on the resource
 * object; the Terraform resource's computed attributes follow them).
 */
export const OUTPUT_NAMES = [
  'phase',
  'tablesTotal',
  'tablesCopied',
  'rowsCopied',
  'progress',
  'lagBytes',
  'lagSeconds',
  'retainedWalBytes',
  'appliedLsn',
  'replicationSlot',
  'publication',
  'sourceVersion',
  'targetVersion',
  'error',
  'pausedAt',
  'sourceFence',
  'sourceFenceDetail',
  'verificationState',
  'verificationTablesTotal',
  'tablesVerified',
  'rowsVerified',
  'lastVerifiedAt',
  'oldestVerifiedAt',
  'rowsRepaired',
  'verificationRepairs',
  'verificationError',
  'schemaChangesApplied',
  'lastSchemaChangeAt',
  'recentSchemaChanges',
  'keptTables',
  'cutoverState',
  'outageMs',
  'outageParts',
  'writeDowntimeMs',
  'validationOk',
  'validation',
  'fenceLsn',
  'cutoverCompletedAt',
  'cutoverWarnings',
  'schemaCheckOk',
  'schemaDifferences',
  'reverseSync',
  'cutbackReport',
  'activeEndpoint',
  'notes',
  'activeConnection',
  'sourceConnection',
  'targetConnection',
  'agentToken',
  'agentClientKey',
  'secretsDigest',
] as const satisfies readonly (keyof MigrationOutputs)[];

/** The agent fields that are secrets (kept secret by Pulumi, write-only in Terraform). */
export const SECRET_AGENT_FIELDS = ['token', 'clientKey'] as const satisfies readonly (typeof AGENT_FIELDS)[number][];
/** The endpoint fields that are secrets (kept secret by Pulumi, write-only in Terraform). */
export const SECRET_ENDPOINT_FIELDS = ['password', 'connectionString'] as const satisfies readonly (typeof ENDPOINT_FIELDS)[number][];

/** The outputs that hold or derive from secrets; the resource marks them secret. */
export const SECRET_OUTPUTS = ['activeConnection', 'sourceConnection', 'targetConnection', 'agentToken', 'agentClientKey', 'secretsDigest'] as const;

/**
 * Derive a migration id from a resource name: lower-case, runs of other
 * characters become `_`, a leading non-letter gets an `m_` prefix, and a name
 * too long for 40 characters keeps its first 31 plus `_` and 8 hex digits of
 * its hash (so two long names do not collide).
 *
 * @example deriveMigrationId('Orders-DB.v2') === 'orders_db_v2'
 */
export function deriveMigrationId(name: string): string {
  let id = name
    .toLowerCase()
    .replace(/[^a-z0-9_]+/g, '_')
    .replace(/_+/g, '_')
    .replace(/^_+|_+$/g, '');
  if (!/^[a-z]/.test(id)) id = `m_${id}`.replace(/_+$/, '');
  if (id.length > MIGRATION_ID_MAX_LENGTH) id = `${id.slice(0, 31).replace(/_+$/, '')}_${fnv1a32(name)}`;
  return id;
}

/** FNV-1a, 32 bits, as 8 hex digits (stable across Node versions; no crypto needed). */
function fnv1a32(s: string): string {
  let h = 0x811c9dc5;
  for (const ch of Buffer.from(s, 'utf8')) {
    h ^= ch;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, '0');
}

/** True when `v` is, or contains, a value the engine does not know yet. */
export function containsUnknown(v: unknown): boolean {
  if (v === UNKNOWN) return true;
  if (Array.isArray(v)) return v.some(containsUnknown);
  if (v && typeof v === 'object') return Object.values(v).some(containsUnknown);
  return false;
}
