/**
 * outputs — from arguments and the agent's status to the resource's outputs.
 *
 * Input: the arguments (plain, secrets included) or the previous outputs,
 * and a `Migration` message from the agent.
 * Output: `MigrationOutputs`, where the arguments are echoed without any
 * secret (diff() receives old outputs, so they must be there), passwords and
 * the token live only in the outputs the resource marks secret
 * (`SECRET_OUTPUTS`), and `activeConnection` follows the cutover (and the cutback).
 *
 * Also here: the migration spec sent to the agent, connection-string parsing
 * and redaction, the digest that lets diff() see a rotated secret without
 * keeping the secret itself in a plain output, and the way back from old
 * outputs to the echo and secret parts (Read, Delete).
 */
import { scryptSync } from 'node:crypto';
import {
  DEFAULTS,
  SSL_MODES,
  type ActiveEndpoint,
  type AgentArgs,
  type ConnectionOutput,
  type CutbackReportOutput,
  type EndpointArgs,
  type EndpointEcho,
  type MigrationInputs,
  type MigrationOutputs,
  type ReverseSyncOutput,
  type SslMode,
} from './args';
import type {
  CutoverReportMessage,
  CutoverRequestMessage,
  MigrationMessage,
  MigrationSpecMessage,
  ReverseSyncStatusMessage,
  SchemaChangesStatusMessage,
  VerificationStatusMessage,
} from '../api/client';

/** Drop `undefined` (and, with `dropNull`, `null`) deeply: a protobuf Struct holds neither. */
export function compact<T>(v: T, dropNull = true): T {
  if (Array.isArray(v)) return v.map((x) => compact(x, dropNull)) as T;
  if (v && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
      if (x === undefined || (dropNull && x === null)) continue;
      out[k] = compact(x, dropNull);
    }
    return out as T;
  }
  return v;
}

/** Parse a `postgres://` / `postgresql://` URI into its parts (percent-decoded). */
export function parseConnectionString(cs: string): { host?: string; port?: number; database?: string; user?: string; password?: string; sslMode?: string } {
  let url: URL;
  try {
    url = new URL(cs);
  } catch {
    return {};
  }
  const q = url.searchParams;
  const dec = (s: string) => {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  };
  const host = q.get('host') ?? (url.hostname ? dec(url.hostname.replace(/^\[|\]$/g, '')) : undefined);
  const portText = q.get('port') ?? url.port;
  return {
    host: host || undefined,
    port: portText ? Number(portText) : undefined,
    database: q.get('dbname') ?? (url.pathname.length > 1 ? dec(url.pathname.slice(1)) : undefined),
    user: q.get('user') ?? (url.username ? dec(url.username) : undefined),
    password: q.get('password') ?? (url.password ? dec(url.password) : undefined),
    sslMode: q.get('sslmode') ?? undefined,
  };
}

/** A connection string with its password (userinfo or `password=`) replaced by `***`. */
export function redactConnectionString(cs: string): string {
  return cs.replace(/^(postgres(?:ql)?:\/\/[^:/@?#]*:)[^@/?#]*@/i, '$1***@').replace(/([?&]password=)[^&#]*/gi, '$1***');
}

/** The endpoint as echoed in outputs: without `password`, the connection string redacted. */
export function echoEndpoint(e: EndpointArgs | undefined): EndpointEcho {
  if (!e) return {};
  const { password: _password, connectionString, ...rest } = e;
  return compact({ ...rest, connectionString: connectionString === undefined ? undefined : redactConnectionString(connectionString) });
}

function uriHost(host: string): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

/** The full connection (password included) an endpoint argument describes, defaults applied. */
export function resolveConnection(e: EndpointArgs): ConnectionOutput {
  const p = e.connectionString ? parseConnectionString(e.connectionString) : {};
  const host = p.host ?? e.host ?? 'localhost';
  const port = p.port ?? e.port ?? DEFAULTS.port;
  const database = p.database ?? e.database ?? '';
  const user = p.user ?? e.user ?? '';
  const password = p.password ?? e.password;
  const mode = p.sslMode ?? e.sslMode ?? DEFAULTS.sslMode;
  const sslMode: SslMode = (SSL_MODES as readonly string[]).includes(mode) ? (mode as SslMode) : DEFAULTS.sslMode;
  const auth = password ? `${encodeURIComponent(user)}:${encodeURIComponent(password)}` : encodeURIComponent(user);
  const connectionString = `postgresql://${auth}@${uriHost(host)}:${port}/${encodeURIComponent(database)}?sslmode=${sslMode}`;
  return compact({ host, port, database, user, password, sslMode, connectionString });
}

/** The spec the agent validates (agent/engine/spec.ts), from the arguments. */
export function toSpec(a: MigrationInputs): MigrationSpecMessage {
  const endpoint = (e: EndpointArgs) =>
    compact({
      connectionString: e.connectionString,
      host: e.host,
      port: e.port,
      database: e.database,
      user: e.user,
      password: e.password,
      sslMode: e.sslMode,
      sslRootCert: e.sslRootCert,
    });
  return compact({
    id: a.migrationId,
    source: endpoint(a.source),
    target: endpoint(a.target),
    tables: a.tables ? compact({ include: a.tables.include, exclude: a.tables.exclude }) : undefined,
    schemaMode: a.schemaMode,
    overwriteTarget: a.overwriteTarget,
    slotName: a.slotName,
    publicationName: a.publicationName,
    copy: a.copy ? compact({ ...a.copy }) : undefined,
    apply: a.apply ? compact({ ...a.apply }) : undefined,
    roles: a.roles ? compact({ map: a.roles.map ? { ...a.roles.map } : undefined, missing: a.roles.missing }) : undefined,
    verification: a.verification ? compact({ ...a.verification }) : undefined,
    schemaChanges: a.schemaChanges,
    rollbackWindow: a.rollbackWindow,
  });
}

/** The Cutover (and Cutback: the same request) request from the arguments (agent defaults for what is not given). */
export function toCutoverRequest(a: MigrationInputs): CutoverRequestMessage {
  const o = a.cutoverOptions ?? {};
  return compact({
    id: a.migrationId,
    maxLagBytes: o.maxLagBytes,
    maxLagSeconds: o.maxLagSeconds,
    timeoutMs: o.timeoutMs,
    validation: o.validation,
    skipSequences: o.skipSequences,
    acceptSchemaDifferences: o.acceptSchemaDifferences,
  });
}

/**
 * A digest of the database secrets (passwords, connection strings), salted
 * with the migration id: diff() compares it to see a rotation (the agent's
 * token and client key are kept as secret outputs and compared directly).
 * scrypt makes guessing a password from it expensive; the output is also
 * marked secret, so the state holds it encrypted.
 */
export function secretsDigest(a: Pick<MigrationInputs, 'migrationId' | 'source' | 'target'>): string {
  const material = JSON.stringify([
    a.source?.password ?? null,
    a.source?.connectionString ?? null,
    a.target?.password ?? null,
    a.target?.connectionString ?? null,
  ]);
  return scryptSync(material, `pgferry:${a.migrationId}`, 32, { N: 16384, r: 8, p: 1 }).toString('hex');
}

/** The arguments echoed into outputs, without secrets and with defaults applied. */
export function echoArgs(
  a: MigrationInputs,
): Pick<
  MigrationOutputs,
  | 'agent'
  | 'source'
  | 'target'
  | 'tables'
  | 'schemaMode'
  | 'overwriteTarget'
  | 'migrationId'
  | 'slotName'
  | 'publicationName'
  | 'copy'
  | 'apply'
  | 'roles'
  | 'verification'
  | 'schemaChanges'
  | 'waitForSync'
  | 'createTimeoutMinutes'
  | 'cutover'
  | 'cutoverOptions'
  | 'rollbackWindow'
  | 'cutback'
> {
  return compact({
    agent: compact({ endpoint: a.agent.endpoint, caCert: a.agent.caCert, clientCert: a.agent.clientCert, insecure: a.agent.insecure }),
    source: echoEndpoint(a.source),
    target: echoEndpoint(a.target),
    tables: {
      include: a.tables?.include ?? [...DEFAULTS.tables.include],
      exclude: a.tables?.exclude ?? [...DEFAULTS.tables.exclude],
    },
    schemaMode: a.schemaMode ?? DEFAULTS.schemaMode,
    overwriteTarget: a.overwriteTarget ?? DEFAULTS.overwriteTarget,
    migrationId: a.migrationId,
    slotName: a.slotName,
    publicationName: a.publicationName,
    copy: a.copy,
    apply: a.apply,
    roles: a.roles,
    verification: a.verification,
    schemaChanges: a.schemaChanges,
    waitForSync: a.waitForSync ?? DEFAULTS.waitForSync,
    createTimeoutMinutes: a.createTimeoutMinutes ?? DEFAULTS.createTimeoutMinutes,
    cutover: a.cutover ?? DEFAULTS.cutover,
    cutoverOptions: a.cutoverOptions,
    rollbackWindow: a.rollbackWindow,
    cutback: a.cutback ?? DEFAULTS.cutback,
  });
}

/** What the outputs need besides the echo: the secret parts. */
export interface SecretParts {
  sourceConnection: ConnectionOutput;
  targetConnection: ConnectionOutput;
  agentToken?: string;
  agentClientKey?: string;
  secretsDigest: string;
}

export function secretPartsFromInputs(a: MigrationInputs): SecretParts {
  return {
    sourceConnection: resolveConnection(a.source),
    targetConnection: resolveConnection(a.target),
    agentToken: a.agent.token || undefined,
    agentClientKey: a.agent.clientKey || undefined,
    secretsDigest: secretsDigest(a),
  };
}

/** Old outputs, or arguments given to `Migration.get`, as echo + secret parts. */
export function fromState(props: Record<string, unknown>): { echo: ReturnType<typeof echoArgs>; secrets: SecretParts; agent: AgentArgs | undefined } {
  const agentOut = props.agent as AgentArgs | undefined;
  const agent = agentOut?.endpoint
    ? compact({
        endpoint: agentOut.endpoint,
        caCert: agentOut.caCert,
        clientCert: agentOut.clientCert,
        insecure: agentOut.insecure,
        token: (props.agentToken as string | undefined) ?? agentOut.token,
        clientKey: (props.agentClientKey as string | undefined) ?? agentOut.clientKey,
      })
    : undefined;
  if (typeof props.secretsDigest !== 'string' && props.source && props.target && agent) {
    // Arguments (Migration.get): they still hold the secrets.
    const inputs = props as unknown as MigrationInputs;
    return { echo: echoArgs(inputs), secrets: secretPartsFromInputs(inputs), agent };
  }
  const empty: ConnectionOutput = { host: '', port: DEFAULTS.port, database: '', user: '', sslMode: DEFAULTS.sslMode, connectionString: '' };
  const echo = compact({
    agent: compact({ endpoint: agentOut?.endpoint ?? '', caCert: agentOut?.caCert, clientCert: agentOut?.clientCert, insecure: agentOut?.insecure }),
    source: echoEndpoint(props.source as EndpointArgs | undefined),
    target: echoEndpoint(props.target as EndpointArgs | undefined),
    tables: {
      include: (props.tables as MigrationInputs['tables'])?.include ?? [...DEFAULTS.tables.include],
      exclude: (props.tables as MigrationInputs['tables'])?.exclude ?? [...DEFAULTS.tables.exclude],
    },
    schemaMode: (props.schemaMode as MigrationInputs['schemaMode']) ?? DEFAULTS.schemaMode,
    overwriteTarget: (props.overwriteTarget as boolean | undefined) ?? DEFAULTS.overwriteTarget,
    migrationId: String(props.migrationId ?? ''),
    slotName: props.slotName as string | undefined,
    publicationName: props.publicationName as string | undefined,
    copy: props.copy as MigrationInputs['copy'],
    apply: props.apply as MigrationInputs['apply'],
    roles: props.roles as MigrationInputs['roles'],
    verification: props.verification as MigrationInputs['verification'],
    schemaChanges: props.schemaChanges as MigrationInputs['schemaChanges'],
    waitForSync: (props.waitForSync as boolean | undefined) ?? DEFAULTS.waitForSync,
    createTimeoutMinutes: (props.createTimeoutMinutes as number | undefined) ?? DEFAULTS.createTimeoutMinutes,
    cutover: (props.cutover as boolean | undefined) ?? DEFAULTS.cutover,
    cutoverOptions: props.cutoverOptions as MigrationInputs['cutoverOptions'],
    rollbackWindow: props.rollbackWindow as string | undefined,
    cutback: (props.cutback as boolean | undefined) ?? DEFAULTS.cutback,
  });
  const secrets: SecretParts = {
    sourceConnection: (props.sourceConnection as ConnectionOutput | undefined) ?? empty,
    targetConnection: (props.targetConnection as ConnectionOutput | undefined) ?? empty,
    agentToken: agent?.token,
    agentClientKey: agent?.clientKey,
    secretsDigest: String(props.secretsDigest ?? ''),
  };
  return { echo, secrets, agent };
}

/** The continuous verification's progress as outputs (none while it does not run). */
function verificationOutputs(v: VerificationStatusMessage | null): Partial<MigrationOutputs> {
  if (!v || !v.state) return {};
  return {
    verificationState: v.state,
    verificationTablesTotal: v.tablesTotal,
    tablesVerified: v.tablesVerified,
    rowsVerified: v.rowsVerified,
    lastVerifiedAt: v.lastVerifiedAt || undefined,
    oldestVerifiedAt: v.oldestVerifiedAt || undefined,
    rowsRepaired: v.rowsRepaired,
    verificationRepairs: v.repairs?.length ? v.repairs : undefined,
    verificationError: v.lastError || undefined,
  };
}

/** The schema changes followed during the sync as outputs (none before the sync). */
function schemaChangesOutputs(c: SchemaChangesStatusMessage | null): Partial<MigrationOutputs> {
  if (!c || !c.mode) return {};
  return {
    schemaChangesApplied: c.applied,
    lastSchemaChangeAt: c.lastAppliedAt || undefined,
    recentSchemaChanges: c.recent?.length ? c.recent.map(({ at, object, change, statement }) => ({ at, object, change, statement })) : undefined,
    keptTables: c.keptTables?.length ? [...c.keptTables] : undefined,
  };
}

/** The reverse sync as an output (none without a rollback window). */
function reverseSyncOutput(r: ReverseSyncStatusMessage | null): ReverseSyncOutput | undefined {
  if (!r || !r.state) return undefined;
  return compact({
    state: r.state,
    lagBytes: r.lagBytes,
    lagSeconds: r.lagSeconds,
    windowEndsAt: r.windowEndsAt || undefined,
    droppedAt: r.droppedAt || undefined,
    dropReason: r.dropReason || undefined,
    lastError: r.lastError || undefined,
  });
}

/** The last cutback's report as an output (none before one). */
function cutbackReportOutput(c: CutoverReportMessage | null): CutbackReportOutput | undefined {
  if (!c || !c.state) return undefined;
  const outage = outageOutputs(c);
  return compact({
    state: c.state,
    outageMs: outage.outageMs,
    outageParts: outage.outageParts,
    validation: c.validation || undefined,
    validationOk: c.state === 'completed' ? c.validationOk : undefined,
    fenceLsn: c.fenceLsn || undefined,
    completedAt: c.completedAt || undefined,
    warnings: c.warnings?.length ? c.warnings : undefined,
    error: c.error || undefined,
  });
}

/** The cutover's outage and its parts (part → ms, in order), once the fence went up. */
function outageOutputs(c: CutoverReportMessage | null): Pick<MigrationOutputs, 'outageMs' | 'outageParts' | 'writeDowntimeMs'> {
  if (!c || !(c.state === 'completed' || c.writeDowntimeMs > 0 || c.outageMs > 0)) return {};
  const outageMs = c.outageMs || c.writeDowntimeMs;
  // A part that came twice (it cannot today) is summed, so the parts still add up to the outage.
  const parts: Record<string, number> = {};
  for (const p of c.outageParts ?? []) parts[p.part] = (parts[p.part] ?? 0) + p.ms;
  return {
    outageMs,
    outageParts: Object.keys(parts).length ? parts : undefined,
    writeDowntimeMs: c.writeDowntimeMs || outageMs,
  };
}

/** The agent's status as outputs (the live part). */
export function liveOutputs(m: MigrationMessage): Partial<MigrationOutputs> {
  const c = m.cutover;
  const error = m.errorMessage ? `${m.errorCode ? `${m.errorCode}: ` : ''}${m.errorMessage}${m.errorRemedy ? ` Fix: ${m.errorRemedy}` : ''}` : undefined;
  return compact({
    phase: m.phase,
    tablesTotal: m.tablesTotal,
    tablesCopied: m.tablesCopied,
    rowsCopied: m.rowsCopied,
    progress: m.progress,
    lagBytes: m.lagBytes,
    lagSeconds: m.lagSeconds,
    retainedWalBytes: m.retainedWalBytes,
    appliedLsn: m.appliedLsn || undefined,
    replicationSlot: m.slotName || undefined,
    publication: m.publicationName || undefined,
    sourceVersion: m.sourceVersion || undefined,
    targetVersion: m.targetVersion || undefined,
    error,
    pausedAt: m.paused ? m.pausedAt : undefined,
    sourceFence: m.fence?.state || undefined,
    sourceFenceDetail:
      m.fence?.state === 'lift-pending'
        ? `lift pending on database '${m.fence.database}' since ${m.fence.since} (${m.fence.liftAttempts} attempt(s)${m.fence.lastLiftError ? `, last: ${m.fence.lastLiftError}` : ''}); the agent keeps retrying. By hand: ${m.fence.liftStatement}`
        : undefined,
    // After the cutover the target is the database of record: nothing is left to verify.
    ...(m.phase === 'completed' || m.phase === 'cut-back' || m.phase === 'deleted' ? {} : verificationOutputs(m.verification)),
    ...schemaChangesOutputs(m.schemaChanges),
    cutoverState: c?.state || undefined,
    ...outageOutputs(c),
    validationOk: c && c.state === 'completed' ? c.validationOk : undefined,
    validation: c?.validation || undefined,
    fenceLsn: c?.fenceLsn || undefined,
    cutoverCompletedAt: c?.completedAt || undefined,
    cutoverWarnings: c?.warnings?.length ? c.warnings : undefined,
    schemaCheckOk: c?.schemaCheck && c.schemaCheck.objects > 0 ? c.schemaCheck.ok : undefined,
    schemaDifferences: c?.schemaCheck?.differences?.length && !c.schemaCheck.ok ? c.schemaCheck.differences : undefined,
    reverseSync: reverseSyncOutput(m.reverse),
    cutbackReport: cutbackReportOutput(m.cutback),
    activeEndpoint: activeEndpointOf(m),
  });
}

/** `target` once the cutover completed, `source` before, and `source` again after a cutback. */
export function activeEndpointOf(m: MigrationMessage): ActiveEndpoint {
  if (m.phase === 'cut-back') return 'source';
  return m.activeEndpoint === 'target' || m.phase === 'completed' ? 'target' : 'source';
}

/** The outputs: echo + live status + secret parts, `activeConnection` chosen by the active endpoint. */
export function buildOutputs(echo: ReturnType<typeof echoArgs>, secrets: SecretParts, m: MigrationMessage, notes: string[] = []): MigrationOutputs {
  const live = liveOutputs(m);
  const active = activeEndpointOf(m);
  const out: MigrationOutputs = {
    ...echo,
    phase: m.phase,
    tablesTotal: 0,
    tablesCopied: 0,
    rowsCopied: 0,
    progress: 0,
    lagBytes: 0,
    lagSeconds: 0,
    retainedWalBytes: 0,
    ...live,
    activeEndpoint: active,
    notes,
    activeConnection: active === 'target' ? secrets.targetConnection : secrets.sourceConnection,
    sourceConnection: secrets.sourceConnection,
    targetConnection: secrets.targetConnection,
    agentToken: secrets.agentToken,
    agentClientKey: secrets.agentClientKey,
    secretsDigest: secrets.secretsDigest,
  };
  return compact(out);
}
