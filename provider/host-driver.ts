/**
 * host-driver — drive the pgferry Migration provider exactly as the Pulumi
 * engine does, without a Pulumi CLI. Used by `pgferry demo` (the README's
 * main job) and by the provider tests; not loaded by the Pulumi resource.
 *
 * 1. `declareMigration` runs a tiny Pulumi program under `setMocks` that
 *    declares a `pgferry.Migration` and captures what the SDK sends the
 *    engine: the inputs (with the serialized provider text in `__provider`)
 *    and the `additionalSecretOutputs` of the registration.
 * 2. `ProviderHost.start` starts the real dynamic-provider host shipped in
 *    @pulumi/pulumi (`cmd/dynamic-provider/index.js`) with its working
 *    directory in a throwaway "program directory" whose
 *    `node_modules/pgferry` links to this package, as in a user's program.
 * 3. Its methods speak the ResourceProvider gRPC protocol to that host with
 *    the SDK's own stubs (`provider_grpc_pb`, `provider_pb`, Struct).
 *
 * The host never exits by itself: call `stop()` in an `after` hook.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as pulumi from '@pulumi/pulumi';
import type { MigrationArgs } from './index';

/* The SDK's generated stubs are CommonJS without usable typings for our needs. */
const provrpc = require('@pulumi/pulumi/proto/provider_grpc_pb');
const provproto = require('@pulumi/pulumi/proto/provider_pb');
const statusproto = require('@pulumi/pulumi/proto/status_pb');
const pulumiDir = dirname(require.resolve('@pulumi/pulumi/package.json'));
const structproto = require(require.resolve('google-protobuf/google/protobuf/struct_pb', { paths: [pulumiDir] }));

/** The package root (dist/provider → ../..). */
export const PACKAGE_ROOT = resolve(__dirname, '..', '..');
export const HOST_SCRIPT = join(PACKAGE_ROOT, 'node_modules', '@pulumi', 'pulumi', 'cmd', 'dynamic-provider', 'index.js');
export const MIGRATION_TYPE = 'pulumi-nodejs:dynamic/pgferry:Migration';
/** The engine's marker of a secret value in a serialized property map. */
export const SECRET_SIG = '1b47061264138c4ac30d75fd1eb44270';
const SIG_KEY = '4dabf18193072939515e22adb298388d';

export type Props = Record<string, unknown>;

export function urnOf(name: string, project = 'proj', stack = 'test'): string {
  return `urn:pulumi:${stack}::${project}::${MIGRATION_TYPE}::${name}`;
}

/** Replace engine secret wrappers by their values (the engine does this for a provider without acceptSecrets). */
export function unwrapSecrets(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(unwrapSecrets);
  if (v && typeof v === 'object') {
    const o = v as Props;
    if (o[SIG_KEY] === SECRET_SIG) return unwrapSecrets(o.value);
    return Object.fromEntries(Object.entries(o).map(([k, x]) => [k, unwrapSecrets(x)]));
  }
  return v;
}

/** The dotted paths of secret-wrapped values in a serialized property map. */
export function secretPaths(v: unknown, base = ''): string[] {
  if (Array.isArray(v)) return v.flatMap((x, i) => secretPaths(x, `${base}[${i}]`));
  if (v && typeof v === 'object') {
    const o = v as Props;
    if (o[SIG_KEY] === SECRET_SIG) return [base];
    return Object.entries(o).flatMap(([k, x]) => secretPaths(x, base ? `${base}.${k}` : k));
  }
  return [];
}

/** Every dotted path in `v` whose string value contains `needle`. */
export function pathsContaining(v: unknown, needle: string, base = ''): string[] {
  if (typeof v === 'string') return v.includes(needle) ? [base] : [];
  if (Array.isArray(v)) return v.flatMap((x, i) => pathsContaining(x, needle, `${base}[${i}]`));
  if (v && typeof v === 'object') return Object.entries(v as Props).flatMap(([k, x]) => pathsContaining(x, needle, base ? `${base}.${k}` : k));
  return [];
}

export interface Declared {
  /** The inputs as the SDK sent them (secrets wrapped), `__provider` included. */
  inputs: Props;
  /** The inputs as the engine hands them to a provider without acceptSecrets. */
  plainInputs: Props;
  /** The serialized provider text. */
  providerText: string;
  /** The registration's additionalSecretOutputs. */
  additionalSecretOutputs: string[];
  /** The resource's type token as registered. */
  type: string;
}

/**
 * Run a program that declares `new pgferry.Migration(name, args)` under
 * `setMocks` and capture its registration.
 */
export async function declareMigration(name: string, args: MigrationArgs, opts: { preview?: boolean } = {}): Promise<Declared> {
  const mocksModule = require('@pulumi/pulumi/runtime/mocks') as {
    MockMonitor: { prototype: { registerResource: (req: unknown, cb: unknown) => Promise<void> } };
  };
  const proto = mocksModule.MockMonitor.prototype;
  const original = proto.registerResource;
  let secretOutputs: string[] = [];
  proto.registerResource = function (this: unknown, req: { getType(): string; getAdditionalsecretoutputsList(): string[] }, cb: unknown) {
    if (req.getType() === MIGRATION_TYPE) secretOutputs = req.getAdditionalsecretoutputsList();
    return original.call(this, req, cb);
  } as typeof original;
  try {
    const captured = new Promise<{ type: string; inputs: Props }>((resolveCapture) => {
      pulumi.runtime.setMocks(
        {
          newResource(a: pulumi.runtime.MockResourceArgs) {
            if (a.type === MIGRATION_TYPE) resolveCapture({ type: a.type, inputs: a.inputs });
            return { id: `${a.name}-id`, state: {} };
          },
          call() {
            return {};
          },
        },
        'proj',
        'test',
        opts.preview ?? false,
      );
    });
    const { Migration } = require('./index') as typeof import('./index');
    new Migration(name, args);
    const { type, inputs } = await captured;
    const providerText = inputs.__provider;
    if (typeof providerText !== 'string') throw new Error('the registration carries no __provider text');
    return { inputs, plainInputs: unwrapSecrets(inputs) as Props, providerText, additionalSecretOutputs: secretOutputs, type };
  } finally {
    proto.registerResource = original;
  }
}

export interface CheckReply {
  inputs: Props;
  failures: Array<{ property: string; reason: string }>;
}
export interface DiffReply {
  changes: 'unknown' | 'none' | 'some';
  replaces: string[];
  deleteBeforeReplace: boolean;
}
/** A gRPC error from the host; `initFailure` is set when the provider reported a partially created resource. */
export interface HostError extends Error {
  code?: number;
  details?: string;
  initFailure?: { id: string; properties: Props; reasons: string[] };
}

/** The real dynamic-provider host, in a throwaway program directory. */
export class ProviderHost {
  private stderr = '';
  private constructor(
    private readonly child: ChildProcess,
    private readonly client: grpc.Client & Record<string, (...a: unknown[]) => unknown>,
    readonly programDir: string,
    readonly port: number,
  ) {
    child.stderr?.on('data', (d: Buffer) => {
      this.stderr += d.toString();
    });
  }

  /** What the host wrote to stderr so far (the provider's diagnostics). */
  get log(): string {
    return this.stderr;
  }

  static async start(): Promise<ProviderHost> {
    const programDir = mkdtempSync(join(tmpdir(), 'pgferry-program-'));
    mkdirSync(join(programDir, 'node_modules'));
    symlinkSync(PACKAGE_ROOT, join(programDir, 'node_modules', 'pgferry'), 'dir');
    const child = spawn(process.execPath, [HOST_SCRIPT, '127.0.0.1:1'], { cwd: programDir, stdio: ['ignore', 'pipe', 'pipe'] });
    const port = await new Promise<number>((resolvePort, reject) => {
      let out = '';
      let err = '';
      const timer = setTimeout(() => reject(new Error(`the provider host printed no port in 30 s; stderr: ${err}`)), 30_000);
      child.stderr!.on('data', (d: Buffer) => {
        err += d.toString();
      });
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /^(\d+)\s*$/m.exec(out);
        if (m) {
          clearTimeout(timer);
          resolvePort(Number(m[1]));
        }
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`the provider host exited with ${code}: ${err}`));
      });
    });
    const client = new provrpc.ResourceProviderClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    return new ProviderHost(child, client, programDir, port);
  }

  /** Kill the host (it never exits by itself) and remove the program directory. */
  async stop(): Promise<void> {
    this.client.close();
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise<void>((r) => this.child.once('exit', () => r()));
      this.child.kill('SIGKILL');
      await exited;
    }
    rmSync(this.programDir, { recursive: true, force: true });
  }

  private call<T>(method: string, req: unknown): Promise<T> {
    return new Promise<T>((resolveCall, reject) => {
      const deadline = Date.now() + 15 * 60_000;
      (this.client[method] as (r: unknown, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, res: T) => void) => void).call(
        this.client,
        req,
        new grpc.Metadata(),
        { deadline },
        (e, res) => {
          if (e) reject(hostError(e));
          else resolveCall(res);
        },
      );
    });
  }

  /** A request of `Ctor` addressed to the resource `urn` (urn, name and type set, as the engine does). */
  private request(Ctor: new () => Record<string, (v: unknown) => void>, urn: string, id?: string): Record<string, (v: unknown) => void> {
    const req = new Ctor();
    if (id !== undefined) req.setId(id);
    req.setUrn(urn);
    req.setName(urn.split('::').pop()!);
    req.setType(MIGRATION_TYPE);
    return req;
  }

  async configure(): Promise<{ acceptSecrets: boolean }> {
    const req = new provproto.ConfigureRequest();
    req.setArgs(structproto.Struct.fromJavaScript({}));
    req.setVariablesMap?.({});
    const res = await this.call<{ getAcceptsecrets(): boolean }>('configure', req);
    return { acceptSecrets: res.getAcceptsecrets() };
  }

  async check(urn: string, olds: Props, news: Props): Promise<CheckReply> {
    const req = this.request(provproto.CheckRequest, urn);
    req.setOlds(structproto.Struct.fromJavaScript(olds));
    req.setNews(structproto.Struct.fromJavaScript(news));
    const res = await this.call<{ getInputs(): { toJavaScript(): Props }; getFailuresList(): Array<{ getProperty(): string; getReason(): string }> }>(
      'check',
      req,
    );
    return {
      inputs: res.getInputs().toJavaScript(),
      failures: res.getFailuresList().map((f) => ({ property: f.getProperty(), reason: f.getReason() })),
    };
  }

  async diff(id: string, urn: string, olds: Props, news: Props): Promise<DiffReply> {
    const req = this.request(provproto.DiffRequest, urn, id);
    req.setOlds(structproto.Struct.fromJavaScript(olds));
    req.setNews(structproto.Struct.fromJavaScript(news));
    const res = await this.call<{ getChanges(): number; getReplacesList(): string[]; getDeletebeforereplace(): boolean }>('diff', req);
    const kinds = {
      [provproto.DiffResponse.DiffChanges.DIFF_UNKNOWN]: 'unknown',
      [provproto.DiffResponse.DiffChanges.DIFF_NONE]: 'none',
      [provproto.DiffResponse.DiffChanges.DIFF_SOME]: 'some',
    } as Record<number, DiffReply['changes']>;
    return { changes: kinds[res.getChanges()]!, replaces: res.getReplacesList(), deleteBeforeReplace: res.getDeletebeforereplace() };
  }

  async create(urn: string, props: Props): Promise<{ id: string; properties: Props }> {
    const req = this.request(provproto.CreateRequest, urn);
    req.setProperties(structproto.Struct.fromJavaScript(props));
    const res = await this.call<{ getId(): string; getProperties(): { toJavaScript(): Props } }>('create', req);
    return { id: res.getId(), properties: res.getProperties().toJavaScript() };
  }

  async read(id: string, urn: string, props: Props): Promise<{ id: string; properties: Props }> {
    const req = this.request(provproto.ReadRequest, urn, id);
    req.setProperties(structproto.Struct.fromJavaScript(props));
    const res = await this.call<{ getId(): string; getProperties(): { toJavaScript(): Props } | undefined }>('read', req);
    return { id: res.getId(), properties: res.getProperties()?.toJavaScript() ?? {} };
  }

  async update(id: string, urn: string, olds: Props, news: Props): Promise<{ properties: Props }> {
    const req = this.request(provproto.UpdateRequest, urn, id);
    req.setOlds(structproto.Struct.fromJavaScript(olds));
    req.setNews(structproto.Struct.fromJavaScript(news));
    const res = await this.call<{ getProperties(): { toJavaScript(): Props } }>('update', req);
    return { properties: res.getProperties().toJavaScript() };
  }

  async delete(id: string, urn: string, props: Props): Promise<void> {
    const req = this.request(provproto.DeleteRequest, urn, id);
    req.setProperties(structproto.Struct.fromJavaScript(props));
    await this.call<unknown>('delete', req);
  }
}

function hostError(e: grpc.ServiceError): HostError {
  const err = new Error(e.details || e.message) as HostError;
  err.code = e.code;
  err.details = e.details;
  const bin = e.metadata?.get('grpc-status-details-bin')[0];
  if (bin && Buffer.isBuffer(bin)) {
    const status = statusproto.Status.deserializeBinary(new Uint8Array(bin));
    for (const any of status.getDetailsList() as Array<{ getTypeName(): string; unpack(fn: unknown, name: string): unknown }>) {
      if (any.getTypeName() !== 'pulumirpc.ErrorResourceInitFailed') continue;
      const detail = any.unpack(provproto.ErrorResourceInitFailed.deserializeBinary, 'pulumirpc.ErrorResourceInitFailed') as {
        getId(): string;
        getProperties(): { toJavaScript(): Props } | undefined;
        getReasonsList(): string[];
      };
      err.initFailure = { id: detail.getId(), properties: detail.getProperties()?.toJavaScript() ?? {}, reasons: detail.getReasonsList() };
    }
  }
  return err;
}
