/**
 * client — a small typed gRPC client for the pgferry agent
 * (`pgferry.agent.v1.MigrationService` plus the standard `grpc.health.v1.Health`).
 *
 * Used by the Pulumi provider and by the `pgferry` CLI, so it knows nothing of
 * Pulumi. Every call carries a deadline, the bearer token (when one is given)
 * and can be cancelled with an `AbortSignal`; every failure is turned into one
 * error type, `AgentError`, in one place (`toAgentError`), carrying the agent's
 * stable `code` and `remedy` from the trailing metadata (`pgferry-code`,
 * `pgferry-remedy`) and the gRPC status.
 *
 * Input: an agent endpoint (`host:port`) and credentials options.
 * Output: plain objects shaped as @grpc/proto-loader produces them (camelCase
 * fields, 64-bit integers as numbers, enums as strings, defaults filled in).
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { dirname, join } from 'node:path';
import type { Endpoint__Output } from './generated/pgferry/agent/v1/Endpoint';
import type { TableSelection__Output } from './generated/pgferry/agent/v1/TableSelection';
import type { CopyOptions__Output } from './generated/pgferry/agent/v1/CopyOptions';
import type { ApplyOptions__Output } from './generated/pgferry/agent/v1/ApplyOptions';
import type { RoleOptions__Output } from './generated/pgferry/agent/v1/RoleOptions';
import type { VerificationOptions__Output } from './generated/pgferry/agent/v1/VerificationOptions';
import type { VerificationStatus__Output } from './generated/pgferry/agent/v1/VerificationStatus';
import type { SchemaChange__Output } from './generated/pgferry/agent/v1/SchemaChange';
import type { SchemaChangesStatus__Output } from './generated/pgferry/agent/v1/SchemaChangesStatus';
import type { OutagePart__Output } from './generated/pgferry/agent/v1/OutagePart';
import type { MigrationSpec__Output } from './generated/pgferry/agent/v1/MigrationSpec';
import type { SchemaDiffResponse__Output } from './generated/pgferry/agent/v1/SchemaDiffResponse';
import type { PreflightCheck__Output } from './generated/pgferry/agent/v1/PreflightCheck';
import type { PreflightReport__Output } from './generated/pgferry/agent/v1/PreflightReport';
import type { TableStatus__Output } from './generated/pgferry/agent/v1/TableStatus';
import type { TableValidation__Output } from './generated/pgferry/agent/v1/TableValidation';
import type { SequenceSet__Output } from './generated/pgferry/agent/v1/SequenceSet';
import type { CutoverReport__Output } from './generated/pgferry/agent/v1/CutoverReport';
import type { FenceStatus__Output } from './generated/pgferry/agent/v1/FenceStatus';
import type { ReverseSyncStatus__Output } from './generated/pgferry/agent/v1/ReverseSyncStatus';
import type { Migration__Output } from './generated/pgferry/agent/v1/Migration';
import type { DeleteMigrationResponse__Output } from './generated/pgferry/agent/v1/DeleteMigrationResponse';
import type { CutoverRequest__Output } from './generated/pgferry/agent/v1/CutoverRequest';

// ---------------------------------------------------------------------------
// Messages: the types @grpc/proto-loader generates from the .proto
// (`npm run gen`, into api/generated/), so each shape is written once, in the
// proto. Responses are the generated `__Output` types (camelCase fields,
// 64-bit integers as numbers, enums as strings, defaults filled in);
// requests are derived from them (every field optional but the ones named).
// ---------------------------------------------------------------------------

/** One database endpoint of a migration spec (`pgferry.agent.v1.Endpoint`). */
export type EndpointMessage = Partial<Endpoint__Output>;
export type TableSelectionMessage = Partial<TableSelection__Output>;
export type CopyOptionsMessage = Partial<CopyOptions__Output>;
export type ApplyOptionsMessage = Partial<ApplyOptions__Output>;
export type RoleOptionsMessage = Partial<RoleOptions__Output>;
/** The continuous verification's knobs (`pgferry.agent.v1.VerificationOptions`); 0 / absent means the default. */
export type VerificationOptionsMessage = Partial<VerificationOptions__Output>;

/** What the sync does with the source's schema changes (`MigrationSpec.schema_changes`; agent default `follow`). */
export const SCHEMA_CHANGES = ['follow', 'stop'] as const;
export type SchemaChangesMode = (typeof SCHEMA_CHANGES)[number];

/** What a migration is (`pgferry.agent.v1.MigrationSpec`); mirrors agent/engine/spec.ts. */
export type MigrationSpecMessage = Partial<
  Omit<MigrationSpec__Output, 'id' | 'source' | 'target' | 'tables' | 'copy' | 'apply' | 'roles' | 'verification' | 'schemaChanges'>
> & {
  id: string;
  source: EndpointMessage;
  target: EndpointMessage;
  tables?: TableSelectionMessage;
  copy?: CopyOptionsMessage;
  apply?: ApplyOptionsMessage;
  roles?: RoleOptionsMessage;
  verification?: VerificationOptionsMessage;
  /** One of SCHEMA_CHANGES; '' or absent: the agent's default (`follow`). */
  schemaChanges?: SchemaChangesMode | '';
};

export type PreflightCheckMessage = PreflightCheck__Output;
export type PreflightReportMessage = PreflightReport__Output;
export type TableStatusMessage = TableStatus__Output;
export type TableValidationMessage = TableValidation__Output;
export type SequenceSetMessage = SequenceSet__Output;
export type CutoverReportMessage = CutoverReport__Output;
/** One part of a cutover's application outage (`pgferry.agent.v1.OutagePart`). */
export type OutagePartMessage = OutagePart__Output;
/** The continuous verification's progress (`pgferry.agent.v1.VerificationStatus`); null in a status while it does not run. */
export type VerificationStatusMessage = VerificationStatus__Output;
/** One schema change applied on the target during the sync (`pgferry.agent.v1.SchemaChange`). */
export type SchemaChangeMessage = SchemaChange__Output;
/** The schema changes followed during the sync (`pgferry.agent.v1.SchemaChangesStatus`); null in a status before the sync. */
export type SchemaChangesStatusMessage = SchemaChangesStatus__Output;
/** The write fence on the source database (`pgferry.agent.v1.FenceStatus`). */
export type FenceStatusMessage = FenceStatus__Output;
/**
 * The reverse sync of a migration with a rollback window (`pgferry.agent.v1.ReverseSyncStatus`): the target's
 * changes streamed back into the old source after the cutover; null in a status without one.
 */
export type ReverseSyncStatusMessage = ReverseSyncStatus__Output;

/** The reverse sync's states (`ReverseSyncStatus.state`). */
export const REVERSE_SYNC_STATES = ['prepared', 'streaming', 'dropped', 'failed'] as const;
export type ReverseSyncStateName = (typeof REVERSE_SYNC_STATES)[number];

/**
 * A migration's status (`pgferry.agent.v1.Migration`); `cutover`, `fence`, `reverse` and `cutback` (the last
 * cutback's report, the same shape as the cutover's) are null when absent.
 */
export type MigrationMessage = Migration__Output;
export type DeleteMigrationResponseMessage = DeleteMigrationResponse__Output;
/** The comparison of the target's schema with the source's (`pgferry.agent.v1.SchemaDiffResponse`). */
export type SchemaDiffMessage = SchemaDiffResponse__Output;

/** The fence states (`FenceStatus.state`). */
export const FENCE_STATES = ['none', 'up', 'lift-pending', 'kept'] as const;
export type FenceStateName = (typeof FENCE_STATES)[number];

/**
 * What a cutover checks of the rows inside the fence: `changes` (the
 * agent's default: only the rows applied since the continuous verification
 * checked their table, and every table it has not verified), `full` (every
 * row of every table; `checksums` is its older name), `counts` (row counts
 * only) or `none`.
 */
export const CUTOVER_VALIDATIONS = ['changes', 'full', 'checksums', 'counts', 'none'] as const;
export type CutoverValidation = (typeof CUTOVER_VALIDATIONS)[number];

/** A cutover request (`pgferry.agent.v1.CutoverRequest`): the agent's defaults for what is left out. */
export type CutoverRequestMessage = Partial<Omit<CutoverRequest__Output, 'id' | 'validation'>> & {
  id: string;
  /** One of CUTOVER_VALIDATIONS (agent default `changes`). */
  validation?: CutoverValidation | '';
};

/** The standard health statuses (`grpc.health.v1.HealthCheckResponse.ServingStatus`). */
export const SERVING_STATUSES = ['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'] as const;
export type ServingStatus = (typeof SERVING_STATUSES)[number];

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/** An error from a call to the agent, with the agent's code and remedy. */
export class AgentError extends Error {
  /**
   * The agent's stable code (`pgferry-code`, e.g. `MIGRATION_NOT_FOUND`), or,
   * when the agent did not answer with one: `AGENT_UNREACHABLE`,
   * `AGENT_TIMEOUT`, `UNAUTHENTICATED`, `CANCELLED` or `AGENT_ERROR`.
   */
  readonly code: string;
  /** What fixes it (`pgferry-remedy`, or a client-side suggestion). */
  readonly remedy: string;
  /** The gRPC status code (`grpc.status`). */
  readonly grpcCode: number;
  /** The gRPC status name, e.g. `NOT_FOUND`. */
  readonly grpcStatus: string;
  /** The RPC that failed, e.g. `GetMigration`. */
  readonly method: string;
  constructor(message: string, opts: { code: string; remedy: string; grpcCode: number; method: string; cause?: unknown }) {
    super(message, opts.cause !== undefined ? { cause: opts.cause } : undefined);
    this.name = 'AgentError';
    this.code = opts.code;
    this.remedy = opts.remedy;
    this.grpcCode = opts.grpcCode;
    this.grpcStatus = grpc.status[opts.grpcCode] ?? String(opts.grpcCode);
    this.method = opts.method;
  }
  /** message + remedy, as shown to a person. */
  get detail(): string {
    return this.remedy ? `${this.message} Fix: ${this.remedy}` : this.message;
  }
}

export function isAgentError(e: unknown): e is AgentError {
  return e instanceof AgentError || (typeof e === 'object' && e !== null && (e as { name?: unknown }).name === 'AgentError');
}

/** The single place where a gRPC failure becomes an `AgentError`. */
export function toAgentError(e: unknown, method: string, endpoint: string): AgentError {
  if (e instanceof AgentError) return e;
  const se = e as Partial<grpc.ServiceError> | undefined;
  const grpcCode = typeof se?.code === 'number' ? se.code : grpc.status.UNKNOWN;
  const meta = se?.metadata instanceof grpc.Metadata ? se.metadata : undefined;
  const first = (key: string): string | undefined => {
    const v = meta?.get(key)[0];
    return v === undefined ? undefined : Buffer.isBuffer(v) ? v.toString('utf8') : String(v);
  };
  let details = (se?.details || se?.message || String(e)).trim();
  const agentCode = first('pgferry-code');
  const agentRemedy = first('pgferry-remedy-bin') ?? first('pgferry-remedy');
  // The agent's details may already end with "Fix: <remedy>": keep the fact and the remedy apart.
  if (agentRemedy && details.endsWith(`Fix: ${agentRemedy}`)) details = details.slice(0, -`Fix: ${agentRemedy}`.length).trim();
  if (agentCode) {
    return new AgentError(details, { code: agentCode, remedy: agentRemedy ?? '', grpcCode, method, cause: e });
  }
  switch (grpcCode) {
    case grpc.status.UNAVAILABLE:
      return new AgentError(`The pgferry agent at ${endpoint} is unreachable (${method}): ${details}.`, {
        code: 'AGENT_UNREACHABLE',
        grpcCode,
        method,
        cause: e,
        remedy: `Check that the agent is running (\`pgferry agent --listen ${endpoint}\`), that the endpoint is right and reachable from here, and that TLS settings match the agent's (CA certificate, or insecure for a local agent).`,
      });
    case grpc.status.DEADLINE_EXCEEDED:
      return new AgentError(`The pgferry agent at ${endpoint} did not answer ${method} in time: ${details}.`, {
        code: 'AGENT_TIMEOUT',
        grpcCode,
        method,
        cause: e,
        remedy: 'Check that the agent is healthy and not overloaded; retry, or raise the call timeout.',
      });
    case grpc.status.UNAUTHENTICATED:
      return new AgentError(`The pgferry agent at ${endpoint} rejected the credentials (${method}): ${details}.`, {
        code: 'UNAUTHENTICATED',
        grpcCode,
        method,
        cause: e,
        remedy: 'Give the token the agent was started with.',
      });
    case grpc.status.CANCELLED:
      return new AgentError(`${method} was cancelled: ${details}.`, { code: 'CANCELLED', remedy: '', grpcCode, method, cause: e });
    default:
      return new AgentError(`The pgferry agent at ${endpoint} failed ${method}: ${details}.`, {
        code: 'AGENT_ERROR',
        remedy: agentRemedy ?? '',
        grpcCode,
        method,
        cause: e,
      });
  }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/** How to reach and authenticate to an agent. */
export interface AgentClientOptions {
  /** `host:port` of the agent, e.g. `10.0.0.4:7443`. */
  endpoint: string;
  /** Bearer token sent as `authorization: Bearer <token>` on every call. Default: none. */
  token?: string;
  /** PEM text of the CA that signed the agent's certificate; turns on TLS verified against it. */
  caCert?: string;
  /** PEM text of this client's certificate, for an agent that requires mutual TLS (with `clientKey`). */
  clientCert?: string;
  /** PEM text of the private key of `clientCert`. */
  clientKey?: string;
  /**
   * Plain-text gRPC (no TLS). Default: `false`, except that a loopback
   * endpoint (127.0.0.0/8, ::1, localhost) without `caCert` or `clientCert`
   * is plain text. Any other endpoint without `caCert` uses TLS verified
   * against the system roots.
   */
  insecure?: boolean;
  /** Deadline of calls without a specific one, in ms. Default: 30000. */
  defaultTimeoutMs?: number;
}

/** Options of one call. */
export interface CallOptions {
  /** This call's deadline in ms (overrides the method's default). */
  timeoutMs?: number;
  /** Cancels the call when aborted. */
  signal?: AbortSignal;
}

/** Deadlines of the calls, in ms. */
export const DEFAULT_TIMEOUT_MS = 30_000;
export const START_MIGRATION_TIMEOUT_MS = 120_000;
/** Added to the cutover's own timeout to get the Cutover call's deadline. */
export const CUTOVER_DEADLINE_MARGIN_MS = 30_000;
/** The agent's default cutover timeout (CutoverRequest.timeout_ms). */
export const AGENT_DEFAULT_CUTOVER_TIMEOUT_MS = 300_000;
/** Default deadline of a WatchMigration stream. */
export const WATCH_TIMEOUT_MS = 3_600_000;

/** True when `endpoint` names this machine (127.0.0.0/8, ::1, localhost, a unix socket). */
export function isLoopbackEndpoint(endpoint: string): boolean {
  if (endpoint.startsWith('unix:')) return true;
  const host = splitHostPort(endpoint)?.host.toLowerCase();
  if (!host) return false;
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/** Split `host:port` / `[v6]:port`; undefined when it is not of that form. */
export function splitHostPort(endpoint: string): { host: string; port: number } | undefined {
  const target = endpoint.replace(/^dns:(\/\/[^/]*\/)?/, '');
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(target) ?? /^([^:\s/]+):(\d+)$/.exec(target);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  return { host: m[1]!, port };
}

/** Whether calls to `opts.endpoint` go over TLS (see `AgentClientOptions.insecure`). */
export function usesTls(opts: Pick<AgentClientOptions, 'endpoint' | 'caCert' | 'insecure' | 'clientCert'>): boolean {
  if (opts.caCert || opts.clientCert) return true;
  if (opts.insecure) return false;
  return !isLoopbackEndpoint(opts.endpoint);
}

const LOADER_OPTIONS: protoLoader.Options = { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true };

type Ctor = new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ChannelOptions) => grpc.Client;
let cachedCtors: { migration: Ctor; health: Ctor } | undefined;

/** The folder holding the package's .proto files (dist/api/client.js → ../../api/proto). */
export function protoRoot(): string {
  return join(__dirname, '..', '..', 'api', 'proto');
}

function serviceConstructors(): { migration: Ctor; health: Ctor } {
  if (cachedCtors) return cachedCtors;
  const agentDef = protoLoader.loadSync('pgferry/agent/v1/agent.proto', { ...LOADER_OPTIONS, includeDirs: [protoRoot()] });
  const healthDir = join(dirname(require.resolve('grpc-health-check/package.json')), 'proto');
  const healthDef = protoLoader.loadSync('health/v1/health.proto', { ...LOADER_OPTIONS, includeDirs: [healthDir] });
  const agentPkg = grpc.loadPackageDefinition(agentDef) as unknown as { pgferry: { agent: { v1: { MigrationService: Ctor } } } };
  const healthPkg = grpc.loadPackageDefinition(healthDef) as unknown as { grpc: { health: { v1: { Health: Ctor } } } };
  cachedCtors = { migration: agentPkg.pgferry.agent.v1.MigrationService, health: healthPkg.grpc.health.v1.Health };
  return cachedCtors;
}

type UnaryMethod = (
  req: unknown,
  meta: grpc.Metadata,
  opts: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res?: unknown) => void,
) => grpc.ClientUnaryCall;
type StreamMethod = (req: unknown, meta: grpc.Metadata, opts: grpc.CallOptions) => grpc.ClientReadableStream<unknown>;

/**
 * A client of one agent. Create one per task and `close()` it when done.
 *
 * @example
 * const agent = new AgentClient({ endpoint: '127.0.0.1:7443', token: process.env.PGFERRY_TOKEN });
 * try {
 *   const m = await agent.getMigration('orders');
 *   console.log(m.phase, m.lagBytes);
 * } finally {
 *   agent.close();
 * }
 */
export class AgentClient {
  readonly endpoint: string;
  private readonly token?: string;
  private readonly defaultTimeoutMs: number;
  private readonly migration: grpc.Client;
  private readonly healthClient: grpc.Client;

  constructor(opts: AgentClientOptions) {
    this.endpoint = opts.endpoint;
    this.token = opts.token || undefined;
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!!opts.clientCert !== !!opts.clientKey) {
      throw new AgentError('Mutual TLS needs both a client certificate and its key; only one was given.', {
        code: 'INVALID_CLIENT_OPTIONS',
        remedy: 'Give both `clientCert` and `clientKey` (PEM texts), or neither.',
        grpcCode: grpc.status.INVALID_ARGUMENT,
        method: 'connect',
      });
    }
    const pem = (text?: string) => (text ? Buffer.from(text) : null);
    const credentials = usesTls(opts)
      ? grpc.credentials.createSsl(pem(opts.caCert), pem(opts.clientKey), pem(opts.clientCert))
      : grpc.credentials.createInsecure();
    const ctors = serviceConstructors();
    const channelOptions: grpc.ChannelOptions = { 'grpc.max_receive_message_length': 64 * 1024 * 1024 };
    this.migration = new ctors.migration(opts.endpoint, credentials, channelOptions);
    // Both stubs share one channel (grpc-js pools subchannels by address and credentials).
    this.healthClient = new ctors.health(opts.endpoint, credentials, channelOptions);
  }

  /** Close the channels; pending calls fail with CANCELLED. */
  close(): void {
    this.migration.close();
    this.healthClient.close();
  }

  /** Read-only checks of source and target for a spec (never changes anything). */
  preflight(spec: MigrationSpecMessage, opts?: CallOptions): Promise<PreflightReportMessage> {
    return this.unary('Preflight', { spec }, opts) as Promise<PreflightReportMessage>;
  }

  /** Start a migration; idempotent by id. Deadline 120 s unless `opts.timeoutMs`. */
  startMigration(spec: MigrationSpecMessage, opts?: CallOptions): Promise<MigrationMessage> {
    return this.unary('StartMigration', { spec }, { timeoutMs: START_MIGRATION_TIMEOUT_MS, ...opts }) as Promise<MigrationMessage>;
  }

  getMigration(id: string, opts?: CallOptions): Promise<MigrationMessage> {
    return this.unary('GetMigration', { id }, opts) as Promise<MigrationMessage>;
  }

  async listMigrations(opts?: CallOptions): Promise<MigrationMessage[]> {
    const res = (await this.unary('ListMigrations', {}, opts)) as { migrations: MigrationMessage[] };
    return res.migrations;
  }

  /**
   * Stream a migration's status (at most every `intervalMs`) to `onUpdate`
   * until the stream ends, `onUpdate` returns `true` (stop watching), `signal`
   * aborts (rejects with CANCELLED) or the deadline passes (default 1 hour).
   */
  watchMigration(
    id: string,
    intervalMs: number,
    onUpdate: (m: MigrationMessage) => boolean | void,
    signal?: AbortSignal,
    opts?: { timeoutMs?: number },
  ): Promise<void> {
    const method = 'WatchMigration';
    if (signal?.aborted) return Promise.reject(toAgentError({ code: grpc.status.CANCELLED, details: 'aborted before the call' }, method, this.endpoint));
    return new Promise<void>((resolve, reject) => {
      const fn = (this.migration as unknown as Record<string, StreamMethod>)['watchMigration']!.bind(this.migration);
      const call = fn({ id, intervalMs }, this.metadata(), { deadline: Date.now() + (opts?.timeoutMs ?? WATCH_TIMEOUT_MS) });
      let settled = false;
      let stoppedByUs = false;
      const finish = (err?: unknown) => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener('abort', onAbort);
        if (err === undefined) resolve();
        else reject(toAgentError(err, method, this.endpoint));
      };
      const onAbort = () => {
        call.cancel();
        finish({ code: grpc.status.CANCELLED, details: 'aborted by the caller' });
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      call.on('data', (m: unknown) => {
        if (settled || stoppedByUs) return;
        let stop: boolean | void;
        try {
          stop = onUpdate(m as MigrationMessage);
        } catch (e) {
          stoppedByUs = true;
          call.cancel();
          settled = true;
          signal?.removeEventListener('abort', onAbort);
          reject(e);
          return;
        }
        if (stop === true) {
          stoppedByUs = true;
          call.cancel();
          finish();
        }
      });
      call.on('error', (e: grpc.ServiceError) => {
        if (stoppedByUs && e.code === grpc.status.CANCELLED) {
          finish();
          return;
        }
        finish(e);
      });
      call.on('end', () => finish());
    });
  }

  /** Stop a migration and drop its slot and publication on the source (the target's data stays). */
  deleteMigration(id: string, opts?: CallOptions): Promise<DeleteMigrationResponseMessage> {
    return this.unary('DeleteMigration', { id }, opts) as Promise<DeleteMigrationResponseMessage>;
  }

  /**
   * Cut over: returns when the cutover completed or failed. Deadline: the
   * cutover's `timeoutMs` (agent default 300 s) + 30 s, unless `opts.timeoutMs`.
   */
  cutover(req: CutoverRequestMessage, opts?: CallOptions): Promise<MigrationMessage> {
    const timeoutMs = (req.timeoutMs || AGENT_DEFAULT_CUTOVER_TIMEOUT_MS) + CUTOVER_DEADLINE_MARGIN_MS;
    return this.unary('Cutover', req, { timeoutMs, ...opts }) as Promise<MigrationMessage>;
  }

  /**
   * Cut back to the old source after a completed cutover with a rollback window (the same fenced, verified
   * switch in the other direction; idempotent): returns when the cutback completed or failed. Deadline: as
   * `cutover`'s.
   */
  cutback(req: CutoverRequestMessage, opts?: CallOptions): Promise<MigrationMessage> {
    const timeoutMs = (req.timeoutMs || AGENT_DEFAULT_CUTOVER_TIMEOUT_MS) + CUTOVER_DEADLINE_MARGIN_MS;
    return this.unary('Cutback', req, { timeoutMs, ...opts }) as Promise<MigrationMessage>;
  }

  /** Cancel a cutover that is still waiting for lag (before the fence). */
  cancelCutover(id: string, opts?: CallOptions): Promise<MigrationMessage> {
    return this.unary('CancelCutover', { id }, opts) as Promise<MigrationMessage>;
  }

  /** Pause a migration until `resumeMigration` (idempotent; the slot keeps the WAL meanwhile). */
  pauseMigration(id: string, opts?: CallOptions): Promise<MigrationMessage> {
    return this.unary('PauseMigration', { id }, opts) as Promise<MigrationMessage>;
  }

  /** Resume a paused migration from where it stopped (idempotent). */
  resumeMigration(id: string, opts?: CallOptions): Promise<MigrationMessage> {
    return this.unary('ResumeMigration', { id }, opts) as Promise<MigrationMessage>;
  }

  /**
   * Lift the migration's fence on the source now (idempotent). `afterCutover`
   * also lifts the fence a completed cutover keeps on purpose.
   */
  unfence(id: string, opts: CallOptions & { afterCutover?: boolean } = {}): Promise<MigrationMessage> {
    return this.unary('Unfence', { id, afterCutover: !!opts.afterCutover }, opts) as Promise<MigrationMessage>;
  }

  /** Compare the target's schema with the source's now (read-only on both). */
  schemaDiff(id: string, opts?: CallOptions): Promise<SchemaDiffMessage> {
    return this.unary('SchemaDiff', { id }, opts) as Promise<SchemaDiffMessage>;
  }

  /** The agent's serving status from the standard health service (`service` '' = the whole agent). */
  async health(service = '', opts?: CallOptions): Promise<ServingStatus> {
    const res = (await this.unary('Check', { service }, opts, this.healthClient)) as { status: ServingStatus };
    return res.status;
  }

  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    if (this.token) md.set('authorization', `Bearer ${this.token}`);
    return md;
  }

  private unary(method: string, req: unknown, opts: CallOptions = {}, client: grpc.Client = this.migration): Promise<unknown> {
    if (opts.signal?.aborted) {
      return Promise.reject(toAgentError({ code: grpc.status.CANCELLED, details: 'aborted before the call' }, method, this.endpoint));
    }
    const name = method[0]!.toLowerCase() + method.slice(1);
    const fn = (client as unknown as Record<string, UnaryMethod>)[name]!.bind(client);
    return new Promise((resolve, reject) => {
      const deadline = Date.now() + (opts.timeoutMs ?? this.defaultTimeoutMs);
      const onAbort = () => call.cancel();
      const call = fn(req, this.metadata(), { deadline }, (err, res) => {
        opts.signal?.removeEventListener('abort', onAbort);
        if (err) reject(toAgentError(err, method, this.endpoint));
        else resolve(res);
      });
      opts.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}
