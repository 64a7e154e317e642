/**
 * server — the agent's gRPC surface (`pgferry.agent.v1.MigrationService`
 * from api/proto/pgferry/agent/v1/agent.proto, plus the standard
 * `grpc.health.v1.Health`).
 *
 * Each handler completes exactly once; failures become a gRPC status from
 * the one table below, with `pgferry-code` and `pgferry-remedy` in the
 * trailing metadata. When the agent has tokens (auth.ts), every call but
 * health needs `authorization: Bearer <token>`; a call without a valid one
 * fails with UNAUTHENTICATED and is logged with its peer and the reason,
 * never the token. Transport security (TLS, mutual TLS) comes from the
 * credentials given to `listen` (tls.ts).
 */
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { HealthImplementation } from 'grpc-health-check';
import { PgferryError, asPgferryError, redact, registerSecret, type ErrorCode } from '../engine/errors';
import type { AuthRejectReason, TokenAuth } from './auth';
import type { AgentService } from './service';
import type { MigrationStatus } from '../engine/migration';
import type { Migration__Output } from '../../api/generated/pgferry/agent/v1/Migration';

export const PROTO_PATH = join(__dirname, '..', '..', '..', 'api', 'proto', 'pgferry', 'agent', 'v1', 'agent.proto');
export const SERVICE_NAME = 'pgferry.agent.v1.MigrationService';

/** The one place error codes become gRPC status codes. */
export const GRPC_STATUS_BY_CODE: Record<ErrorCode, grpc.status> = {
  INVALID_SPEC: grpc.status.INVALID_ARGUMENT,
  MIGRATION_NOT_FOUND: grpc.status.NOT_FOUND,
  MIGRATION_EXISTS_DIFFERENT_SPEC: grpc.status.ALREADY_EXISTS,
  SOURCE_UNREACHABLE: grpc.status.UNAVAILABLE,
  TARGET_UNREACHABLE: grpc.status.UNAVAILABLE,
  AUTH_FAILED: grpc.status.PERMISSION_DENIED,
  DATABASE_NOT_FOUND: grpc.status.FAILED_PRECONDITION,
  INSUFFICIENT_PRIVILEGE: grpc.status.PERMISSION_DENIED,
  PREFLIGHT_FAILED: grpc.status.FAILED_PRECONDITION,
  SLOT_NAME_TAKEN: grpc.status.FAILED_PRECONDITION,
  SCHEMA_FAILED: grpc.status.INTERNAL,
  COPY_FAILED: grpc.status.INTERNAL,
  APPLY_FAILED: grpc.status.INTERNAL,
  SCHEMA_DRIFT: grpc.status.FAILED_PRECONDITION,
  CUTOVER_FAILED: grpc.status.ABORTED,
  CUTOVER_TIMEOUT: grpc.status.DEADLINE_EXCEEDED,
  CUTOVER_CANCELLED: grpc.status.CANCELLED,
  WRONG_PHASE: grpc.status.FAILED_PRECONDITION,
  UNAUTHENTICATED: grpc.status.UNAUTHENTICATED,
  STATE_CORRUPT: grpc.status.DATA_LOSS,
  INTERNAL: grpc.status.INTERNAL,
};

export function loadServiceDefinition(): grpc.ServiceDefinition {
  const def = protoLoader.loadSync(PROTO_PATH, { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { pgferry: { agent: { v1: { MigrationService: grpc.ServiceClientConstructor } } } };
  return pkg.pgferry.agent.v1.MigrationService.service;
}

export function toServiceError(e: unknown): Partial<grpc.ServiceError> {
  const err = asPgferryError(e);
  const md = new grpc.Metadata();
  md.set('pgferry-code', err.code);
  if (err.remedy) {
    const remedy = redact(err.remedy).replace(/[\r\n]+/g, ' ');
    // An ASCII metadata value may hold only printable ASCII (grpc-js throws otherwise, and that
    // would end the agent): the exact text travels UTF-8 encoded in the binary header.
    md.set('pgferry-remedy-bin', Buffer.from(remedy, 'utf8'));
    md.set('pgferry-remedy', remedy.replace(/[^\x20-\x7e]/g, '?'));
  }
  return { code: GRPC_STATUS_BY_CODE[err.code] ?? grpc.status.INTERNAL, details: redact(err.detail), metadata: md };
}

/** Proto3 sends '' and 0 for unset fields; the spec wants them absent. */
function clean(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(clean);
  if (v && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
      const c = clean(x);
      if (c === '' || c === 0 || c === null || c === undefined) continue;
      if (typeof c === 'object' && !Array.isArray(c) && Object.keys(c as object).length === 0) continue;
      if (Array.isArray(c) && c.length === 0) continue;
      out[k] = c;
    }
    return out;
  }
  return v;
}

/**
 * The spec from its proto message. `roles.map` is a proto map: its keys and
 * values are role names, kept as they came (an empty one is for the spec's
 * validation to name, not for `clean` to drop); an empty `roles.missing`
 * means unset.
 */
export function specFromProto(msg: unknown): unknown {
  const spec = (clean(msg) ?? {}) as Record<string, unknown>;
  const map = (msg as { roles?: { map?: Record<string, string> } } | null | undefined)?.roles?.map;
  if (map && Object.keys(map).length > 0) spec.roles = { ...(spec.roles as object | undefined), map: { ...map } };
  return spec;
}

/**
 * The status as the API's `Migration`: typed against the proto's generated
 * shape, so a field the proto gains and the engine does not fill (or fills
 * with another type) fails the build.
 */
export function statusToProto(s: MigrationStatus): Migration__Output {
  return {
    ...s,
    cutover: reportToProto(s.cutover),
    cutback: reportToProto(s.cutback),
    reverse: s.reverse ? { ...s.reverse, fence: s.reverse.fence ?? null } : null,
  };
}

/** A cutover's (or a cutback's: the same shape) report as the API's `CutoverReport`; null when there is none. */
function reportToProto(c: MigrationStatus['cutover']): Migration__Output['cutover'] {
  if (!c) return null;
  return {
    ...c,
    tables: c.tables.map((t) => ({ ...t, mode: t.mode ?? '', rowsChecked: t.rowsChecked ?? 0 })),
    largeObjects: c.largeObjects ?? null,
    schemaCheck: c.schemaCheck ?? null,
    outageMs: c.outageMs ?? c.writeDowntimeMs,
    outageParts: c.outageParts ?? [],
  };
}

/** Remember the passwords of an incoming spec so that `redact()` scrubs them from anything that leaves the agent. */
export function registerSpecSecrets(spec: unknown): void {
  const s = spec as { source?: Record<string, unknown>; target?: Record<string, unknown> } | undefined;
  for (const e of [s?.source, s?.target]) {
    if (!e) continue;
    if (typeof e.password === 'string') registerSecret(e.password);
    if (typeof e.connectionString === 'string') {
      const m = /^[a-z]+:\/\/[^:/@\s]+:([^@\s]+)@/i.exec(e.connectionString);
      if (m) {
        registerSecret(m[1]);
        try {
          registerSecret(decodeURIComponent(m[1]));
        } catch {
          /* not URI-encoded */
        }
      }
      const kv = /(?:^|\s)password\s*=\s*('[^']*'|\S+)/i.exec(e.connectionString);
      if (kv) registerSecret(kv[1].replace(/^'|'$/g, ''));
    }
  }
}

/** The gRPC status name of a code, e.g. `UNAUTHENTICATED`. */
export function grpcStatusName(code: grpc.status | undefined): string {
  return code === undefined ? 'UNKNOWN' : (grpc.status[code] ?? String(code));
}

export interface ServerOptions {
  /**
   * Checks the bearer token of every call but health (auth.ts). Default: no
   * token required (only sensible on loopback; cli.ts enforces that).
   */
  auth?: TokenAuth;
  /** Hears about every finished call (metrics.ts). Default: none. */
  onCall?: (method: string, status: string, code?: string) => void;
}

type AnyCall = grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>;

/** The migration a request is about, for log lines. */
function migrationOf(req: unknown): string | undefined {
  const r = req as { id?: unknown; spec?: { id?: unknown } } | undefined;
  const id = typeof r?.id === 'string' && r.id ? r.id : typeof r?.spec?.id === 'string' ? r.spec.id : undefined;
  return id && /^[a-z][a-z0-9_]{0,39}$/.test(id) ? id : undefined;
}

/** At most this many refused calls are logged one by one per minute. */
export const REJECTIONS_LOGGED_PER_MINUTE = 20;

const REASON_TEXT: Record<AuthRejectReason, string> = {
  missing: 'no authorization metadata',
  malformed: "authorization metadata is not 'Bearer <token>'",
  wrong: 'the bearer token is not one the agent accepts',
  'no-tokens': 'the agent has no usable token (token file missing or empty)',
};

/** Checks a call's bearer token; throws UNAUTHENTICATED (and logs the refusal) without a valid one. */
type Guard = (call: AnyCall, method: string) => void;
/** Records a finished call (metrics, and a log line for failures); returns the gRPC error for a failed one. */
type Finished = (method: string, e?: unknown, req?: unknown) => Partial<grpc.ServiceError> | undefined;

/**
 * A logger of refused calls that logs at most REJECTIONS_LOGGED_PER_MINUTE a
 * minute, so that a client hammering with bad tokens cannot fill the disk
 * (pgferry_errors_total{code="UNAUTHENTICATED"} still counts every one).
 */
function rejectionLogger(svc: AgentService): (msg: string, fields: object) => void {
  let windowStart = 0;
  let loggedInWindow = 0;
  let suppressed = 0;
  return (msg, fields) => {
    const now = Date.now();
    if (now - windowStart >= 60_000) {
      if (suppressed) svc.log('warn', `${suppressed} more call(s) were rejected in the previous minute (not logged one by one)`, { suppressed });
      windowStart = now;
      loggedInWindow = 0;
      suppressed = 0;
    }
    if (loggedInWindow < REJECTIONS_LOGGED_PER_MINUTE) {
      loggedInWindow++;
      svc.log('warn', msg, fields);
    } else suppressed++;
  };
}

function callGuard(auth: TokenAuth | undefined, logRejection: (msg: string, fields: object) => void): Guard {
  return (call, method) => {
    if (!auth) return;
    const verdict = auth.verify(call.metadata);
    if (!verdict.ok) {
      logRejection(`rejected ${method}: ${REASON_TEXT[verdict.reason]}`, { peer: call.getPeer(), method, reason: verdict.reason });
      throw new PgferryError(
        'UNAUTHENTICATED',
        `The call has no valid bearer token (${REASON_TEXT[verdict.reason]}).`,
        "Send `authorization: Bearer <token>` with a token from the agent's --token-file (`agent.token` in Pulumi; --token-file, --token or PGFERRY_TOKEN for the CLI).",
      );
    }
  };
}

function callFinisher(svc: AgentService, onCall: ServerOptions['onCall']): Finished {
  return (method, e, req) => {
    if (e === undefined) {
      onCall?.(method, 'OK');
      return undefined;
    }
    const err = asPgferryError(e);
    const se = toServiceError(err);
    onCall?.(method, grpcStatusName(se.code), err.code);
    const migration = migrationOf(req);
    if (se.code !== grpc.status.NOT_FOUND && se.code !== grpc.status.UNAUTHENTICATED) {
      svc.log('warn', `${method} failed: ${se.details}`, { method, code: err.code, ...(migration ? { migration } : {}) });
    }
    return se;
  };
}

/**
 * WatchMigration: a status message whenever the status changes, checked every
 * `intervalMs` (at least 100 ms, default 1 s), until the migration completes,
 * is deleted or the client cancels.
 */
function watchMigrationHandler(svc: AgentService, guard: Guard, finished: Finished) {
  return (call: grpc.ServerWritableStream<{ id: string; intervalMs: number }, unknown>) => {
    const method = 'WatchMigration';
    let timer: NodeJS.Timeout | undefined;
    let ended = false;
    const end = (e?: unknown) => {
      if (ended) return;
      ended = true;
      if (timer) clearTimeout(timer);
      const se = finished(method, e, call.request);
      if (se) call.destroy(se as grpc.ServiceError);
      else call.end();
    };
    call.on('cancelled', () => end());
    try {
      guard(call as AnyCall, method);
      svc.get(call.request.id);
    } catch (e) {
      end(e);
      return;
    }
    const interval = Math.max(100, call.request.intervalMs || 1000);
    let last = '';
    const tick = async () => {
      if (ended) return;
      try {
        const s = await svc.status(call.request.id);
        const text = JSON.stringify(s);
        if (text !== last) {
          last = text;
          call.write(statusToProto(s));
        }
        if (s.phase === 'completed' || s.phase === 'cut-back' || s.phase === 'deleted') {
          end();
          return;
        }
      } catch (e) {
        const err = asPgferryError(e);
        if (err.code === 'MIGRATION_NOT_FOUND') {
          end();
          return;
        }
        end(e);
        return;
      }
      timer = setTimeout(() => void tick(), interval);
    };
    void tick();
  };
}

export function createServer(svc: AgentService, opts: ServerOptions = {}): grpc.Server {
  const server = new grpc.Server();
  const health = new HealthImplementation({ '': 'SERVING', [SERVICE_NAME]: 'SERVING' });
  health.addToServer(server);
  const guard = callGuard(opts.auth, rejectionLogger(svc));
  const finished = callFinisher(svc, opts.onCall);

  const unary =
    <Req, Res>(method: string, fn: (req: Req) => Promise<Res>) =>
    (call: grpc.ServerUnaryCall<Req, Res>, callback: grpc.sendUnaryData<Res>) => {
      Promise.resolve()
        .then(() => {
          guard(call as AnyCall, method);
          registerSpecSecrets((call.request as { spec?: unknown } | undefined)?.spec);
          return fn(call.request);
        })
        .then(
          (res) => {
            finished(method);
            callback(null, res);
          },
          (e) => {
            callback(finished(method, e, call.request) as grpc.ServiceError, null);
          },
        );
    };

  server.addService(loadServiceDefinition(), {
    Preflight: unary('Preflight', async (req: { spec: unknown }) => svc.preflight(specFromProto(req.spec))),
    StartMigration: unary('StartMigration', async (req: { spec: unknown }) => statusToProto(await svc.startMigration(specFromProto(req.spec)))),
    GetMigration: unary('GetMigration', async (req: { id: string }) => statusToProto(await svc.status(req.id))),
    ListMigrations: unary('ListMigrations', async () => ({ migrations: (await svc.list()).map(statusToProto) })),
    DeleteMigration: unary('DeleteMigration', async (req: { id: string }) => ({ id: req.id, dropped: await svc.delete(req.id) })),
    Cutover: unary('Cutover', async (req: Record<string, unknown>) => statusToProto(await svc.cutover(req as never))),
    Cutback: unary('Cutback', async (req: Record<string, unknown>) => statusToProto(await svc.cutback(req as never))),
    CancelCutover: unary('CancelCutover', async (req: { id: string }) => statusToProto(await svc.cancelCutover(req.id))),
    PauseMigration: unary('PauseMigration', async (req: { id: string }) => statusToProto(await svc.pause(req.id))),
    ResumeMigration: unary('ResumeMigration', async (req: { id: string }) => statusToProto(await svc.resume(req.id))),
    Unfence: unary('Unfence', async (req: { id: string; afterCutover?: boolean }) =>
      statusToProto(await svc.unfence(req.id, { afterCutover: !!req.afterCutover })),
    ),
    SchemaDiff: unary('SchemaDiff', async (req: { id: string }) => {
      const d = await svc.schemaDiff(req.id);
      return {
        id: d.id,
        equal: d.equal,
        objects: d.objects,
        differences: d.differences.map((x) => ({
          object: x.identity,
          kind: x.kind,
          what: x.what,
          source: x.source ?? '',
          target: x.target ?? '',
          accepted: x.accepted,
        })),
        text: d.text,
      };
    }),
    WatchMigration: watchMigrationHandler(svc, guard, finished),
  });
  return server;
}

/** Bind `server` on `address` (HOST:PORT; port 0 picks a free one) with `credentials` (default: plain text). */
export function listen(server: grpc.Server, address: string, credentials = grpc.ServerCredentials.createInsecure()): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, credentials, (err, port) => (err ? reject(err) : resolve(port)));
  });
}
