/**
 * server — the agent's gRPC surface (`pgferry.agent.v1.MigrationService`
 * from proto/pgferry/agent/v1/agent.proto, plus the standard
 * `grpc.health.v1.Health`).
 *
 * Each handler completes exactly once; failures become a gRPC status from
 * the one table below, with `pgferry-code` and `pgferry-remedy` in the
 * trailing metadata. A bearer token, when configured, is required on every
 * call but health and compared in constant time.
 */
import { join } from 'node:path';
import { timingSafeEqual, createHash } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { HealthImplementation } from 'grpc-health-check';
import { PgferryError, asPgferryError, redact, type ErrorCode } from './errors';
import type { AgentService } from './service';
import type { MigrationStatus } from './migration';

export const PROTO_PATH = join(__dirname, '..', '..', 'proto', 'pgferry', 'agent', 'v1', 'agent.proto');
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
  if (err.remedy) md.set('pgferry-remedy', redact(err.remedy).replace(/[\r\n]+/g, ' '));
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

export function specFromProto(msg: unknown): unknown {
  return clean(msg) ?? {};
}

export function statusToProto(s: MigrationStatus): Record<string, unknown> {
  return { ...s, cutover: s.cutover ?? null };
}

export interface ServerOptions {
  /** Returns the accepted tokens (re-read on every call so a token file can be rotated). */
  tokens?: () => string[];
  credentials?: grpc.ServerCredentials;
}

function tokenOk(md: grpc.Metadata, tokens: string[]): boolean {
  const auth = md.get('authorization')[0];
  if (typeof auth !== 'string' || !auth.startsWith('Bearer ')) return false;
  const given = createHash('sha256').update(auth.slice(7)).digest();
  let ok = false;
  for (const t of tokens) {
    // Equal-length digests: timingSafeEqual leaks neither content nor length.
    if (timingSafeEqual(given, createHash('sha256').update(t).digest())) ok = true;
  }
  return ok;
}

export function createServer(svc: AgentService, opts: ServerOptions = {}): grpc.Server {
  const server = new grpc.Server();
  const health = new HealthImplementation({ '': 'SERVING', [SERVICE_NAME]: 'SERVING' });
  health.addToServer(server);

  const guard = (call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>, method: string) => {
    if (!opts.tokens) return;
    const tokens = opts.tokens();
    if (!tokenOk(call.metadata, tokens)) {
      svc.log('warn', `rejected ${method}: missing or wrong bearer token`, { peer: call.getPeer() });
      throw new PgferryError('UNAUTHENTICATED', 'The call has no valid bearer token.', 'Pass the agent token (`agent.token` in Pulumi, --token-file for the CLI).');
    }
  };

  const unary = <Req, Res>(method: string, fn: (req: Req) => Promise<Res>) =>
    (call: grpc.ServerUnaryCall<Req, Res>, callback: grpc.sendUnaryData<Res>) => {
      Promise.resolve().then(() => { guard(call as never, method); return fn(call.request); })
        .then((res) => callback(null, res), (e) => {
          const se = toServiceError(e);
          if (se.code !== grpc.status.NOT_FOUND && se.code !== grpc.status.UNAUTHENTICATED) svc.log('warn', `${method} failed: ${se.details}`, {});
          callback(se as grpc.ServiceError, null);
        });
    };

  server.addService(loadServiceDefinition(), {
    Preflight: unary('Preflight', async (req: { spec: unknown }) => svc.preflight(specFromProto(req.spec))),
    StartMigration: unary('StartMigration', async (req: { spec: unknown }) => statusToProto(await svc.startMigration(specFromProto(req.spec)))),
    GetMigration: unary('GetMigration', async (req: { id: string }) => statusToProto(await svc.status(req.id))),
    ListMigrations: unary('ListMigrations', async () => ({ migrations: (await svc.list()).map(statusToProto) })),
    DeleteMigration: unary('DeleteMigration', async (req: { id: string }) => ({ id: req.id, dropped: await svc.delete(req.id) })),
    Cutover: unary('Cutover', async (req: Record<string, unknown>) => statusToProto(await svc.cutover(req as never))),
    CancelCutover: unary('CancelCutover', async (req: { id: string }) => statusToProto(await svc.cancelCutover(req.id))),
    WatchMigration: (call: grpc.ServerWritableStream<{ id: string; intervalMs: number }, unknown>) => {
      let timer: NodeJS.Timeout | undefined;
      let ended = false;
      const end = (e?: unknown) => {
        if (ended) return;
        ended = true;
        if (timer) clearTimeout(timer);
        if (e) call.destroy(toServiceError(e) as grpc.ServiceError); else call.end();
      };
      call.on('cancelled', () => end());
      try { guard(call as never, 'WatchMigration'); svc.get(call.request.id); } catch (e) { end(e); return; }
      const interval = Math.max(100, call.request.intervalMs || 1000);
      let last = '';
      const tick = async () => {
        if (ended) return;
        try {
          const s = await svc.status(call.request.id);
          const text = JSON.stringify(s);
          if (text !== last) { last = text; call.write(statusToProto(s)); }
          if (s.phase === 'completed' || s.phase === 'deleted') { end(); return; }
        } catch (e) {
          const err = asPgferryError(e);
          if (err.code === 'MIGRATION_NOT_FOUND') { end(); return; }
          end(e); return;
        }
        timer = setTimeout(() => void tick(), interval);
      };
      void tick();
    },
  });
  return server;
}

export function listen(server: grpc.Server, address: string, credentials = grpc.ServerCredentials.createInsecure()): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, credentials, (err, port) => (err ? reject(err) : resolve(port)));
  });
}
