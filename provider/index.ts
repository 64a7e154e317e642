/**
 * pgferry — the Pulumi side: the `Migration` resource (a dynamic resource)
 * and its provider object. This is the package's main entry
 * (`import * as pgferry from "pgferry"`).
 *
 * The provider object is serialized by Pulumi's closure serializer into the
 * stack's state and run later by the dynamic-provider host from the user's
 * program directory. So its methods capture nothing: each one `require`s
 * `pgferry/dist/provider/lifecycle.js` (resolved from that directory, where
 * pgferry is a dependency) and delegates. The work is in lifecycle.ts; the
 * agent client in client.ts.
 */
import * as pulumi from '@pulumi/pulumi';
import {
  OUTPUT_NAMES,
  SECRET_AGENT_FIELDS,
  SECRET_ENDPOINT_FIELDS,
  SECRET_OUTPUTS,
  deriveMigrationId,
  type ActiveEndpoint,
  type AgentArgs,
  type ApplyArgs,
  type ConnectionOutput,
  type CopyArgs,
  type CutbackReportOutput,
  type CutoverOptionsArgs,
  type EndpointArgs,
  type ReverseSyncOutput,
  type RoleMissing,
  type SchemaChangeOutput,
  type SchemaChanges,
  type SchemaMode,
  type VerificationArgs,
} from './args';

export {
  ACTIVE_ENDPOINTS,
  CUTOVER_VALIDATIONS,
  DEFAULTS,
  OUTPUT_NAMES,
  PHASES,
  ROLE_MISSING,
  SCHEMA_CHANGES,
  SCHEMA_MODES,
  SECRET_OUTPUTS,
  SSL_MODES,
  UNKNOWN,
  VERIFICATION_LIMITS,
  deriveMigrationId,
} from './args';
export type {
  ActiveEndpoint,
  ConnectionOutput,
  CutbackReportOutput,
  CutoverValidation,
  MigrationInputs,
  MigrationOutputs,
  Phase,
  ReverseSyncOutput,
  RoleMissing,
  RolesArgs,
  SchemaChangeOutput,
  SchemaChanges,
  SchemaMode,
  SslMode,
  VerificationArgs,
} from './args';
export { AgentClient, AgentError, isAgentError } from '../api/client';
export type { AgentClientOptions, MigrationMessage, MigrationSpecMessage, PreflightReportMessage, CutoverRequestMessage } from '../api/client';

type Lifecycle = typeof import('./lifecycle');

/**
 * The provider of `Migration`, as Pulumi runs it. Exported so tests and tools
 * can call its methods directly. Each method loads the lifecycle module from
 * the installed `pgferry` package; nothing else is captured when it is
 * serialized.
 */
export const MigrationProvider: pulumi.dynamic.ResourceProvider = {
  async check(olds: Record<string, unknown>, news: Record<string, unknown>) {
    const lifecycle: Lifecycle = require('pgferry/dist/provider/lifecycle.js');
    return lifecycle.check(olds, news);
  },
  async diff(id: pulumi.ID, olds: Record<string, unknown>, news: Record<string, unknown>) {
    const lifecycle: Lifecycle = require('pgferry/dist/provider/lifecycle.js');
    return lifecycle.diff(id, olds, news);
  },
  async create(inputs: Record<string, unknown>) {
    const lifecycle: Lifecycle = require('pgferry/dist/provider/lifecycle.js');
    return lifecycle.create(inputs);
  },
  async read(id: pulumi.ID, props?: Record<string, unknown>) {
    const lifecycle: Lifecycle = require('pgferry/dist/provider/lifecycle.js');
    return lifecycle.read(id, props ?? {});
  },
  async update(id: pulumi.ID, olds: Record<string, unknown>, news: Record<string, unknown>) {
    const lifecycle: Lifecycle = require('pgferry/dist/provider/lifecycle.js');
    return lifecycle.update(id, olds, news);
  },
  async delete(id: pulumi.ID, props: Record<string, unknown>) {
    const lifecycle: Lifecycle = require('pgferry/dist/provider/lifecycle.js');
    return lifecycle.remove(id, props);
  },
};

/** Each field of `T` as a Pulumi input (a plain value, a promise or an output). */
export type Inputs<T> = { [K in keyof T]: pulumi.Input<T[K]> };

/**
 * Where the agent is and how to talk to it (the agent client's options,
 * documented field by field in api/client.ts). `token` and `clientKey` are
 * kept secret.
 */
export type AgentInput = Inputs<AgentArgs>;

/**
 * A PostgreSQL endpoint: the separate fields, or `connectionString` (the
 * API's `Endpoint`, documented in the proto). `password` and
 * `connectionString` are kept secret.
 */
export type EndpointInput = Inputs<EndpointArgs>;

/** The arguments of a `Migration`. */
export interface MigrationArgs {
  /** The agent that does the work (a long-running `pgferry agent` near the source). */
  agent: pulumi.Input<AgentInput>;
  /** The database to migrate from (a change replaces the migration). */
  source: pulumi.Input<EndpointInput>;
  /** The database to migrate to (a change replaces the migration). */
  target: pulumi.Input<EndpointInput>;
  /**
   * What to migrate: `schema.table` patterns, PostgreSQL's identifier rules (unquoted names fold to lower
   * case, `"Quoted"` ones are exact with `""` for a quote; `*` and `?` are wildcards outside quotes).
   * The schemas the include patterns name are migrated whole: their tables and every other object
   * (views, functions, types, triggers, policies, grants…). Default: `{ include: ["public.*"], exclude: [] }`.
   */
  tables?: pulumi.Input<{ include?: pulumi.Input<pulumi.Input<string>[]>; exclude?: pulumi.Input<pulumi.Input<string>[]> }>; // Inputs<TablesArgs>, with inputs inside the lists
  /** `create`: pgferry creates the tables on the target; `existing`: they exist already. Default: `create`. */
  schemaMode?: pulumi.Input<SchemaMode>;
  /** Load into target tables that already hold rows (truncated first). Default: `false`. */
  overwriteTarget?: pulumi.Input<boolean>;
  /**
   * The migration's id on the agent (`^[a-z][a-z0-9_]{0,39}$`); it names the
   * replication slot and publication (`pgferry_<id>`). Default: derived from
   * the resource name (see `deriveMigrationId`).
   */
  migrationId?: pulumi.Input<string>;
  /** Replication slot name. Default: `pgferry_<migrationId>`. */
  slotName?: pulumi.Input<string>;
  /** Publication name. Default: `pgferry_<migrationId>`. */
  publicationName?: pulumi.Input<string>;
  /** Initial-load knobs (apply when the migration starts). Defaults: 2 workers, 64 MiB splits, 2 index jobs. */
  copy?: pulumi.Input<Inputs<CopyArgs>>;
  /** Change-apply knobs. Defaults: 10000 changes, 200 ms per batch. */
  apply?: pulumi.Input<Inputs<ApplyArgs>>;
  /**
   * How the source's roles are named on the target, for the owners, grants,
   * policies and default privileges the schema stage creates (roles are
   * cluster objects: pgferry does not create them). `map`: source role →
   * existing target role; a role not named keeps its name. `missing`: a role
   * the target lacks fails the preflight (`'fail'`), or the owners and grants
   * that need it are skipped with a warning each (`'skip'`). A change applies
   * the next time a migration starts. Default: `{ map: {}, missing: 'fail' }`.
   *
   * @example roles: { map: { app_owner: 'app', reporting: 'analyst' } }
   */
  roles?: pulumi.Input<{ map?: pulumi.Input<Record<string, pulumi.Input<string>>>; missing?: pulumi.Input<RoleMissing> }>;
  /**
   * The continuous verification: while the sync runs, the agent compares each
   * table with the source in key ranges at matching points of the stream,
   * re-copies a range that still differs, and the cutover then checks inside
   * the fence only what changed since. `rowsPerSecond`: rows read per second
   * on each side, at most (default 100000, at least 1000; the source's cost).
   * `rangeRows`: rows per key range, the unit compared and repaired (default
   * 50000, 100..1000000). `disabled`: turn it off (default `false`; the
   * cutover then checks every row inside the fence, so the outage grows with
   * the database). A change is taken up by the running migration.
   *
   * @example verification: { rowsPerSecond: 20000 }   // spare a busy source
   */
  verification?: pulumi.Input<Inputs<VerificationArgs>>;
  /**
   * The source's schema changes during the sync: `follow` (default) applies
   * them on the target (columns added, dropped, retyped or renamed in stream
   * order; new tables copied; other objects reconciled; dropped tables kept),
   * `stop` stops the sync with SCHEMA_DRIFT. A change is taken up by the
   * running migration.
   *
   * @example schemaChanges: 'stop'   // review every schema change by hand
   */
  schemaChanges?: pulumi.Input<SchemaChanges>;
  /** Create returns only once the migration is in sync (phase `syncing`). Default: `false` (return once durably started). */
  waitForSync?: pulumi.Input<boolean>;
  /** Longest Create waits for sync, in minutes. Default: 30. */
  createTimeoutMinutes?: pulumi.Input<number>;
  /** Cut over: fence writes on the source, drain, sync sequences, validate, switch. Flip to `true` in a later change. Default: `false`. */
  cutover?: pulumi.Input<boolean>;
  /**
   * How to cut over. Defaults: 1 MiB / 5 s of lag, 300000 ms, `changes` validation, sequences set.
   *
   * `validation`, what is checked of the rows inside the fence:
   * - `changes` (default): the cutover first waits (nothing fenced, within
   *   `timeoutMs`) until the continuous verification has verified every
   *   table, then checks inside the fence only the rows applied since (a table
   *   nobody wrote to since costs nothing), plus any table it could not
   *   verify; the outage grows with the changes, not with the database.
   * - `full`: every row of every table, inside the fence (`checksums` is its
   *   older name); the outage grows with the database.
   * - `counts`: row counts only. `none`: no check of the rows.
   */
  cutoverOptions?: pulumi.Input<Inputs<CutoverOptionsArgs>>;
  /**
   * The way back: how long after the cutover the old source keeps following
   * the target, so that a cutback loses no write. A duration of at least ten
   * seconds: `'72h'`, `'90m'`, `'3d'`, `'1h30m'` (units s, m, h, d). Set it
   * before the cutover: the cutover then makes a replication slot and
   * publication on the target (its start position taken inside the fence)
   * and, once it completed, the
   * agent streams the target's changes back into the old source (which stays
   * closed to everyone else). When the window ends, or the argument is
   * removed, or the resource is deleted, the slot and publication on the
   * target are dropped (a slot nobody reads would fill its disk) and there is
   * no way back. The preflight then also checks the target (`wal_level =
   * logical`, a role that may replicate and publish the tables) and the
   * source (a role that may set `session_replication_role` and create schema
   * `pgferry`). A change is an in-place update. Default: absent (off).
   *
   * @example rollbackWindow: '72h'   // three days to change our minds
   */
  rollbackWindow?: pulumi.Input<string>;
  /**
   * Cut back: after a completed cutover with a `rollbackWindow`, while the
   * window is open, the same fenced, verified switch in the other direction
   * (fence writes on the target, drain into the source, set the source's
   * sequences, check every row, lift the source's fence); `activeConnection`
   * then points at the source again and `cutbackReport` gives the outage.
   * Flip to `true` in a later change (keep `cutover: true`); `cutoverOptions`
   * tune it too (its `changes` validation means `full` here). A failed cutback
   * lifts the fence on the target and the reverse sync keeps running: run
   * `pulumi up` again. The preview refuses it before a completed cutover,
   * without a `rollbackWindow`, or once the window ended. Default: `false`.
   */
  cutback?: pulumi.Input<boolean>;
}

/** Wrap the secret fields of an endpoint/agent argument in `pulumi.secret`, keeping the rest readable in a preview. */
function withSecretFields<T extends object>(value: pulumi.Input<T>, fields: readonly string[]): pulumi.Input<T> {
  if (value === undefined || value === null) return value;
  if (pulumi.Output.isInstance(value) || value instanceof Promise) {
    // Opaque until resolved: the whole value is secret (its parts cannot be told apart here).
    return pulumi.secret(value as pulumi.Input<T>) as unknown as pulumi.Input<T>;
  }
  const out: Record<string, unknown> = { ...(value as Record<string, unknown>) };
  for (const f of fields) if (out[f] !== undefined) out[f] = pulumi.secret(out[f] as pulumi.Input<unknown>);
  return out as T;
}

/**
 * An online PostgreSQL migration run by a pgferry agent: Create starts it
 * (initial load from one consistent snapshot, then continuous sync), Read
 * shows its phase, progress and lag, flipping `cutover` to `true` cuts over
 * (writes fenced, drained, sequences set, validated), and Delete drops the
 * replication slot and publication on the source while the target keeps its
 * data. `activeConnection` is the source until the cutover completed, then
 * the target: wire the application's connection setting to it.
 *
 * Passwords, connection strings and the agent token are kept secret; no
 * output holds them in clear text.
 *
 * @example
 * import * as pulumi from "@pulumi/pulumi";
 * import * as pgferry from "pgferry";
 *
 * const cfg = new pulumi.Config();
 * const migration = new pgferry.Migration("orders", {
 *   agent: { endpoint: "10.0.0.4:7443", token: cfg.requireSecret("agentToken"), caCert: cfg.get("agentCa") },
 *   source: { host: "old-db.internal", database: "orders", user: "migrator", password: cfg.requireSecret("sourcePassword") },
 *   target: { host: "new-db.postgres.database.azure.com", database: "orders", user: "pgadmin",
 *             password: cfg.requireSecret("targetPassword"), sslMode: "require" },
 *   tables: { include: ["public.*", "billing.invoices"], exclude: ["public.audit_log"] },
 *   cutover: false,   // flip to true in a later change to cut over
 * });
 * export const phase = migration.phase;
 * export const lagBytes = migration.lagBytes;
 * export const connection = migration.activeConnection;   // secret
 */
export class Migration extends pulumi.dynamic.Resource {
  // `declare`: the base constructor sets these; a class field would reset them.
  /** The migration's id on the agent. */
  declare readonly migrationId: pulumi.Output<string>;
  /** preflight | schema | loading | indexing | syncing | cutting-over | completed | cut-back | failed */
  declare readonly phase: pulumi.Output<string>;
  declare readonly tablesTotal: pulumi.Output<number>;
  declare readonly tablesCopied: pulumi.Output<number>;
  declare readonly rowsCopied: pulumi.Output<number>;
  /** 0..1 of the initial load. */
  declare readonly progress: pulumi.Output<number>;
  /** WAL of the source database not yet applied to the target, in bytes. */
  declare readonly lagBytes: pulumi.Output<number>;
  /** Age of the oldest change not yet applied, in seconds. */
  declare readonly lagSeconds: pulumi.Output<number>;
  /** WAL the replication slot keeps on the source, in bytes. */
  declare readonly retainedWalBytes: pulumi.Output<number>;
  declare readonly appliedLsn: pulumi.Output<string | undefined>;
  declare readonly replicationSlot: pulumi.Output<string | undefined>;
  declare readonly publication: pulumi.Output<string | undefined>;
  declare readonly sourceVersion: pulumi.Output<string | undefined>;
  declare readonly targetVersion: pulumi.Output<string | undefined>;
  /** `CODE: message Fix: remedy` when the migration failed. */
  declare readonly error: pulumi.Output<string | undefined>;
  /** Since when an operator has paused the migration on the agent (`pgferry pause`); absent while it runs. */
  declare readonly pausedAt: pulumi.Output<string | undefined>;
  /**
   * The write fence on the source database: `none`, `up` (during the cutover),
   * `lift-pending` (a cutover that did not complete left it up; the agent keeps
   * lifting it: alert on this), or `kept` (after a completed cutover, on purpose).
   */
  declare readonly sourceFence: pulumi.Output<string | undefined>;
  /** While `sourceFence` is `lift-pending`: since when, attempts, last error, and the statement that lifts it by hand. */
  declare readonly sourceFenceDetail: pulumi.Output<string | undefined>;
  /**
   * The continuous verification: `off`, `waiting` (not syncing yet),
   * `verifying`, `verified` (every table verified, and still valid) or
   * `paused`. It and the verification outputs below are absent while it does
   * not run (before the sync, after the cutover).
   */
  declare readonly verificationState: pulumi.Output<string | undefined>;
  /** Tables the verification covers (the migrated tables that hold data). */
  declare readonly verificationTablesTotal: pulumi.Output<number | undefined>;
  /** Of those, the tables verified against the source whose verification still holds. */
  declare readonly tablesVerified: pulumi.Output<number | undefined>;
  /** Rows of the verified tables, as of their last pass. */
  declare readonly rowsVerified: pulumi.Output<number | undefined>;
  /** When the verification last confirmed a range (ISO 8601): how recently it worked. */
  declare readonly lastVerifiedAt: pulumi.Output<string | undefined>;
  /** Every table was verified at or after this time (ISO 8601); absent until all were. */
  declare readonly oldestVerifiedAt: pulumi.Output<string | undefined>;
  /** Rows the verification found different on the target and copied again from the source. */
  declare readonly rowsRepaired: pulumi.Output<number | undefined>;
  /** The latest repairs, one line each (table, key range, rows). */
  declare readonly verificationRepairs: pulumi.Output<string[] | undefined>;
  /** The verification's last error, if any (it retries by itself; the sync is not affected). */
  declare readonly verificationError: pulumi.Output<string | undefined>;
  /** Schema changes applied on the target during the sync (survives agent restarts); absent before the sync. */
  declare readonly schemaChangesApplied: pulumi.Output<number | undefined>;
  /** When the last schema change was applied on the target (ISO 8601); absent when none. */
  declare readonly lastSchemaChangeAt: pulumi.Output<string | undefined>;
  /** The most recent schema changes applied (at most 20, oldest first): time, object, change and the statement run. */
  declare readonly recentSchemaChanges: pulumi.Output<SchemaChangeOutput[] | undefined>;
  /** Tables dropped on the source during the sync whose target copies were kept (pgferry never drops data). */
  declare readonly keptTables: pulumi.Output<string[] | undefined>;
  /** The cutover's state (waiting-for-lag, waiting-for-verification, fencing … completed | failed), once one was requested. */
  declare readonly cutoverState: pulumi.Output<string | undefined>;
  /**
   * The cutover's application outage, in ms: from the moment writes were
   * fenced on the source until the target was ready for the application
   * (every step inside the fence counted, the row check included).
   */
  declare readonly outageMs: pulumi.Output<number | undefined>;
  /**
   * The outage's parts, in the order they happened, as part → ms (they add up
   * to `outageMs`): `grace`, `terminate`, `drain`, `sequences`,
   * `large-objects`, `schema`, `verification` (the row check inside the
   * fence), `completing`.
   *
   * @example migration.outageParts.apply((p) => p?.verification)   // ms the row check held the fence
   */
  declare readonly outageParts: pulumi.Output<Record<string, number> | undefined>;
  /** The same figure as `outageMs` (its older name, kept for existing programs). */
  declare readonly writeDowntimeMs: pulumi.Output<number | undefined>;
  /** Whether the cutover's check of the rows (`cutoverOptions.validation`) matched. */
  declare readonly validationOk: pulumi.Output<boolean | undefined>;
  /** The validation the cutover ran (changes | full | checksums | counts | none). */
  declare readonly validation: pulumi.Output<string | undefined>;
  /** The source LSN at the fence. */
  declare readonly fenceLsn: pulumi.Output<string | undefined>;
  declare readonly cutoverCompletedAt: pulumi.Output<string | undefined>;
  declare readonly cutoverWarnings: pulumi.Output<string[] | undefined>;
  /** The cutover compared the target's schema with the source's before the handover: true when they matched. */
  declare readonly schemaCheckOk: pulumi.Output<boolean | undefined>;
  /** What differed, one line each (also: pgferry schema diff <id>). */
  declare readonly schemaDifferences: pulumi.Output<string[] | undefined>;
  /**
   * The way back (with `rollbackWindow`): the reverse sync's `state`
   * (`prepared`, `streaming`, `dropped`, `failed`), how far the old source is
   * behind the target (`lagBytes`, `lagSeconds`), when the window ends
   * (`windowEndsAt`) or when and why it was dropped (`droppedAt`,
   * `dropReason`), and its `lastError`. Absent without a rollback window.
   *
   * @example migration.reverseSync.apply((r) => r?.windowEndsAt)   // cut back before this
   */
  declare readonly reverseSync: pulumi.Output<ReverseSyncOutput | undefined>;
  /** The last cutback's report, as the cutover's: `state`, `outageMs` and `outageParts`, `validation`, `validationOk`, `fenceLsn`, `completedAt`, `warnings`, `error`. */
  declare readonly cutbackReport: pulumi.Output<CutbackReportOutput | undefined>;
  /** `source` until the cutover completed, then `target`; `source` again after a cutback. */
  declare readonly activeEndpoint: pulumi.Output<ActiveEndpoint>;
  /** The connection the application should use (secret): the source, then the target (and the source again after a cutback). */
  declare readonly activeConnection: pulumi.Output<ConnectionOutput>;
  /** The source connection (secret). */
  declare readonly sourceConnection: pulumi.Output<ConnectionOutput>;
  /** The target connection (secret). */
  declare readonly targetConnection: pulumi.Output<ConnectionOutput>;
  /** Things worth knowing about the last change (e.g. knobs that apply at the next start). */
  declare readonly notes: pulumi.Output<string[]>;
  declare readonly cutover: pulumi.Output<boolean>;
  declare readonly cutback: pulumi.Output<boolean>;

  /**
   * @param name The resource name; also the default `migrationId` (sanitized).
   * @param args Where the agent is, source, target, tables and options.
   * @param opts Resource options; the secret outputs are added to `additionalSecretOutputs`.
   */
  constructor(name: string, args: MigrationArgs, opts?: pulumi.CustomResourceOptions) {
    const props: Record<string, unknown> = {
      ...args,
      agent: withSecretFields(args.agent, SECRET_AGENT_FIELDS),
      source: withSecretFields(args.source, SECRET_ENDPOINT_FIELDS),
      target: withSecretFields(args.target, SECRET_ENDPOINT_FIELDS),
      migrationId: args.migrationId ?? deriveMigrationId(name),
    };
    for (const k of OUTPUT_NAMES) props[k] = undefined;
    super(
      MigrationProvider,
      name,
      props,
      {
        ...opts,
        additionalSecretOutputs: [...(opts?.additionalSecretOutputs ?? []), ...SECRET_OUTPUTS],
      },
      'pgferry',
      'Migration',
    );
  }

  /**
   * Look up an existing migration (read-only) by id, e.g. one started with the
   * `pgferry` CLI. To manage such a migration, declare it with `new Migration`
   * and the same `migrationId` and spec instead: Create adopts it.
   */
  static get(name: string, id: pulumi.Input<pulumi.ID>, args: MigrationArgs, opts?: pulumi.CustomResourceOptions): Migration {
    return new Migration(name, args, { ...opts, id });
  }
}
