/**
 * check — validation of a Migration's arguments, as data.
 *
 * `validateInputs` turns every problem into a `CheckFailure { property, reason }`
 * whose property is the argument's path (`source.port`, `tables.include[1]`)
 * and whose reason names the field in backticks and says how to fix it.
 * Values the engine does not know yet (the preview sentinel) are skipped.
 *
 * The agent's read-only Preflight is mapped here too: each failed check of its
 * report becomes a CheckFailure on the argument that fixes it, and a failure
 * to reach the agent becomes one on `agent.*`.
 */
import {
  AGENT_FIELDS,
  APPLY_FIELDS,
  ARG_NAMES,
  COPY_FIELDS,
  CUTOVER_OPTION_FIELDS,
  CUTOVER_VALIDATIONS,
  ENDPOINT_FIELDS,
  MIGRATION_ID_PATTERN,
  ROLE_MISSING,
  ROLES_FIELDS,
  SCHEMA_CHANGES,
  SCHEMA_MODES,
  SSL_MODES,
  TABLES_FIELDS,
  UNKNOWN,
  VERIFICATION_FIELDS,
  VERIFICATION_LIMITS,
} from './args';
import type { PreflightReportMessage } from '../api/client';
import { tablePatternError } from '../agent/engine/table-pattern';
import { ROLLBACK_WINDOW_MESSAGE, isRollbackWindow } from '../agent/engine/spec';

export interface CheckFailure {
  property: string;
  reason: string;
}

const isUnknown = (v: unknown): boolean => v === UNKNOWN;
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const present = (v: unknown): boolean => v !== undefined && v !== null;
const show = (v: unknown): string => (typeof v === 'string' ? `'${v.length > 60 ? `${v.slice(0, 57)}...` : v}'` : JSON.stringify(v));

/** Slot and publication names (agent/engine/spec.ts identifierish, at most 63 bytes). */
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_$]*$/;
/** `host:port` or `[v6]:port`, optionally `dns:` prefixed, or `unix:/path`. */
const AGENT_ENDPOINT = /^(?:unix:.+|(?:dns:(?:\/\/[^/]*\/)?)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5})$/;

class Failures {
  readonly list: CheckFailure[] = [];
  add(property: string, reason: string): void {
    this.list.push({ property, reason });
  }
}

function unknownFields(f: Failures, base: string, obj: Record<string, unknown>, allowed: readonly string[]): void {
  for (const k of Object.keys(obj)) {
    if (k === '__provider' || allowed.includes(k)) continue;
    const path = base ? `${base}.${k}` : k;
    const near = allowed.find((a) => a.toLowerCase() === k.toLowerCase()) ?? allowed.find((a) => a.toLowerCase().startsWith(k.toLowerCase().slice(0, 3)));
    f.add(
      path,
      `\`${path}\` is not a known argument.${near ? ` Did you mean \`${base ? `${base}.` : ''}${near}\`?` : ''} Allowed here: ${allowed.map((a) => `\`${a}\``).join(', ')}.`,
    );
  }
}

function checkString(f: Failures, path: string, v: unknown, opts: { required?: string; nonEmpty?: boolean } = {}): boolean {
  if (isUnknown(v)) return false;
  if (!present(v)) {
    if (opts.required) f.add(path, `\`${path}\` is required. ${opts.required}`);
    return false;
  }
  if (typeof v !== 'string') {
    f.add(path, `\`${path}\` must be a string, got ${show(v)}.`);
    return false;
  }
  if (opts.nonEmpty && v.length === 0) {
    f.add(path, `\`${path}\` must not be empty.${opts.required ? ` ${opts.required}` : ''}`);
    return false;
  }
  return true;
}

function checkBoolean(f: Failures, path: string, v: unknown): void {
  if (isUnknown(v) || !present(v)) return;
  if (typeof v !== 'boolean') f.add(path, `\`${path}\` must be \`true\` or \`false\`, got ${show(v)}.`);
}

function checkInt(f: Failures, path: string, v: unknown, min: number, max: number, hint: string): void {
  if (isUnknown(v) || !present(v)) return;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `at least ${min}` : `from ${min} to ${max}`;
    f.add(path, `\`${path}\` must be an integer ${range}, got ${show(v)}. ${hint}`);
  }
}

function checkNumber(f: Failures, path: string, v: unknown, min: number, hint: string): void {
  if (isUnknown(v) || !present(v)) return;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= min) f.add(path, `\`${path}\` must be a number above ${min}, got ${show(v)}. ${hint}`);
}

function checkOneOf(f: Failures, path: string, v: unknown, allowed: readonly string[], hint = ''): void {
  if (isUnknown(v) || !present(v)) return;
  if (typeof v !== 'string' || !allowed.includes(v)) {
    f.add(path, `\`${path}\` must be one of ${allowed.map((a) => `'${a}'`).join(', ')}, got ${show(v)}.${hint ? ` ${hint}` : ''}`);
  }
}

function checkObject(f: Failures, path: string, v: unknown, required: boolean, example: string): v is Record<string, unknown> {
  if (isUnknown(v)) return false;
  if (!present(v)) {
    if (required) f.add(path, `\`${path}\` is required: give it as ${example}.`);
    return false;
  }
  if (!isObject(v)) {
    f.add(path, `\`${path}\` must be an object such as ${example}, got ${show(v)}.`);
    return false;
  }
  return true;
}

function validateAgent(f: Failures, v: unknown): void {
  if (!checkObject(f, 'agent', v, true, "`{ endpoint: '10.0.0.4:7443', token }`")) return;
  unknownFields(f, 'agent', v, AGENT_FIELDS);
  if (
    checkString(f, 'agent.endpoint', v.endpoint, {
      required: "Set it to the agent's `host:port`, e.g. '10.0.0.4:7443' (what `pgferry agent --listen` was given).",
      nonEmpty: true,
    })
  ) {
    if (!AGENT_ENDPOINT.test(v.endpoint as string)) {
      f.add(
        'agent.endpoint',
        `\`agent.endpoint\` must be \`host:port\`, e.g. '10.0.0.4:7443' or '[::1]:7443', got ${show(v.endpoint)}. Give the address the agent listens on, without a scheme or path.`,
      );
    } else {
      const port = Number(/:(\d+)$/.exec(v.endpoint as string)?.[1] ?? '1');
      if (!(v.endpoint as string).startsWith('unix:') && (port < 1 || port > 65535)) {
        f.add('agent.endpoint', `\`agent.endpoint\` has port ${port}, outside 1–65535. Give the port the agent listens on.`);
      }
    }
  }
  checkString(f, 'agent.token', v.token);
  if (checkString(f, 'agent.caCert', v.caCert) && !(v.caCert as string).includes('-----BEGIN CERTIFICATE-----')) {
    f.add(
      'agent.caCert',
      '`agent.caCert` must be PEM text (starting with `-----BEGIN CERTIFICATE-----`), not a file name. Read the file into the program, e.g. `fs.readFileSync("ca.pem", "utf8")`.',
    );
  }
  if (checkString(f, 'agent.clientCert', v.clientCert) && !(v.clientCert as string).includes('-----BEGIN CERTIFICATE-----')) {
    f.add(
      'agent.clientCert',
      '`agent.clientCert` must be PEM text (starting with `-----BEGIN CERTIFICATE-----`), not a file name. Read the file into the program, e.g. `fs.readFileSync("client.pem", "utf8")`.',
    );
  }
  if (checkString(f, 'agent.clientKey', v.clientKey) && !/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(v.clientKey as string)) {
    f.add(
      'agent.clientKey',
      '`agent.clientKey` must be PEM text of a private key (`-----BEGIN PRIVATE KEY-----`), not a file name. Pass it as a secret, e.g. `config.requireSecret("agentClientKey")`.',
    );
  }
  for (const [given, missing] of [
    ['clientCert', 'clientKey'],
    ['clientKey', 'clientCert'],
  ] as const) {
    if (present(v[given]) && !isUnknown(v[given]) && !present(v[missing])) {
      f.add(
        `agent.${missing}`,
        `\`agent.${missing}\` is required with \`agent.${given}\`: mutual TLS needs the client certificate and its private key. Give both, or neither.`,
      );
    }
  }
  checkBoolean(f, 'agent.insecure', v.insecure);
  if (v.insecure === true && ((typeof v.caCert === 'string' && v.caCert.length > 0) || present(v.clientCert))) {
    f.add(
      'agent.insecure',
      '`agent.insecure` is `true` but `agent.caCert` or `agent.clientCert` is set: TLS cannot be both off and in use. Remove them for a plain-text agent, or set `agent.insecure` to `false`.',
    );
  }
}

function validateEndpoint(f: Failures, side: 'source' | 'target', v: unknown): void {
  const example =
    side === 'source'
      ? '`{ host, port: 5432, database, user, password }` or `{ connectionString }`'
      : "`{ host, database, user, password, sslMode: 'require' }` or `{ connectionString }`";
  if (!checkObject(f, side, v, true, example)) return;
  unknownFields(f, side, v, ENDPOINT_FIELDS);
  const hasCs = present(v.connectionString);
  if (hasCs && checkString(f, `${side}.connectionString`, v.connectionString, { nonEmpty: true })) {
    if (!/^postgres(ql)?:\/\//i.test(v.connectionString as string)) {
      f.add(
        `${side}.connectionString`,
        `\`${side}.connectionString\` must be a URI such as 'postgresql://user:password@host:5432/database?sslmode=require'. Convert a key=value string, or give \`${side}.host\`, \`${side}.database\`, \`${side}.user\` and \`${side}.password\` instead.`,
      );
    }
  }
  for (const field of ['host', 'database', 'user'] as const) {
    checkString(f, `${side}.${field}`, v[field], {
      nonEmpty: true,
      required: hasCs ? undefined : `Give \`${side}.${field}\`, or the whole endpoint as \`${side}.connectionString\`.`,
    });
  }
  checkInt(f, `${side}.port`, v.port, 1, 65535, `Set \`${side}.port\` to the port the server listens on (PostgreSQL's default is 5432).`);
  checkString(f, `${side}.password`, v.password);
  checkOneOf(f, `${side}.sslMode`, v.sslMode, SSL_MODES);
  checkString(f, `${side}.sslRootCert`, v.sslRootCert);
  if ((v.sslMode === 'verify-ca' || v.sslMode === 'verify-full') && !present(v.sslRootCert) && !hasCs) {
    f.add(
      `${side}.sslRootCert`,
      `\`${side}.sslRootCert\` is required when \`${side}.sslMode\` is '${v.sslMode}': give the PEM text of the CA that signed the server's certificate, or use sslMode 'require' (encrypted, not verified).`,
    );
  }
}

function validateStringList(f: Failures, path: string, v: unknown, nonEmpty: boolean): void {
  if (isUnknown(v) || !present(v)) return;
  if (!Array.isArray(v)) {
    f.add(path, `\`${path}\` must be a list of 'schema.table' patterns, e.g. ['public.*'], got ${show(v)}.`);
    return;
  }
  if (nonEmpty && v.length === 0)
    f.add(path, `\`${path}\` must name at least one pattern, e.g. ['public.*'] (leave it out to migrate every table of schema public).`);
  v.forEach((p, i) => {
    if (isUnknown(p)) return;
    if (typeof p !== 'string') {
      f.add(`${path}[${i}]`, `\`${path}[${i}]\` must be a 'schema.table' pattern (a string, e.g. 'public.*'), got ${show(p)}.`);
      return;
    }
    // The agent's own grammar (agent/engine/table-pattern.ts: pure, no driver), so Check accepts exactly what the agent does.
    const bad = tablePatternError(p);
    if (bad) f.add(`${path}[${i}]`, `\`${path}[${i}]\` ${show(p)} ${bad.problem}. ${bad.fix}`);
  });
}

/** What is wrong with a role name (1 to 63 bytes of any text, as PostgreSQL allows), or null. */
function roleNameProblem(r: string): string | null {
  if (r.length === 0) return 'is empty';
  if (Buffer.byteLength(r, 'utf8') > 63) return 'is longer than 63 bytes, the most PostgreSQL keeps of a role name';
  return null;
}

/** `roles`: `map` from source role names to target role names, `missing` one of ROLE_MISSING. */
function validateRoles(f: Failures, v: unknown): void {
  if (!checkObject(f, 'roles', v, false, "`{ map: { app_owner: 'app' }, missing: 'fail' }`")) return;
  unknownFields(f, 'roles', v, ROLES_FIELDS);
  checkOneOf(f, 'roles.missing', v.missing, ROLE_MISSING);
  if (!checkObject(f, 'roles.map', v.map, false, "`{ app_owner: 'app' }` (source role → target role)")) return;
  for (const [from, to] of Object.entries(v.map)) {
    const path = `roles.map.${from}`;
    const keyProblem = roleNameProblem(from);
    if (keyProblem) {
      f.add('roles.map', `\`roles.map\` has a source role name that ${keyProblem} (${show(from)}). Name the role as it is on the source.`);
    }
    if (isUnknown(to)) continue;
    if (typeof to !== 'string') {
      f.add(path, `\`${path}\` must be the name of a target role (a string), got ${show(to)}.`);
      continue;
    }
    const valueProblem = roleNameProblem(to);
    if (valueProblem) {
      f.add(
        path,
        `\`${path}\` ${valueProblem}. Give the target role that takes over what '${from}' owns and is granted, or leave '${from}' out to keep its name (the target then needs a role named '${from}').`,
      );
    }
  }
}

/** `verification`: the continuous verification's read rate, range size, and the switch that turns it off. */
function validateVerification(f: Failures, v: unknown): void {
  if (!checkObject(f, 'verification', v, false, '`{ rowsPerSecond: 100000, rangeRows: 50000 }`')) return;
  unknownFields(f, 'verification', v, VERIFICATION_FIELDS);
  const { rowsPerSecond: rate, rangeRows: range } = VERIFICATION_LIMITS;
  checkInt(
    f,
    'verification.rowsPerSecond',
    v.rowsPerSecond,
    rate.min,
    rate.max,
    'Give the most rows the verification reads per second on each side, e.g. 100000 (the default); lower it to spare a busy source, or set `verification.disabled` to turn the verification off.',
  );
  checkInt(
    f,
    'verification.rangeRows',
    v.rangeRows,
    range.min,
    range.max,
    'Give the rows per key range the verification compares (and re-copies when it differs), e.g. 50000 (the default).',
  );
  checkBoolean(f, 'verification.disabled', v.disabled);
}

/**
 * Validate a Migration's arguments; every problem names its field and its fix.
 * Unknown values (the preview sentinel) are not checked.
 */
export function validateInputs(news: Record<string, unknown>): CheckFailure[] {
  const f = new Failures();
  unknownFields(f, '', news, ARG_NAMES);
  validateAgent(f, news.agent);
  validateEndpoint(f, 'source', news.source);
  validateEndpoint(f, 'target', news.target);

  if (checkObject(f, 'tables', news.tables, false, "`{ include: ['public.*'], exclude: ['public.audit_log'] }`")) {
    const t = news.tables as Record<string, unknown>;
    unknownFields(f, 'tables', t, TABLES_FIELDS);
    validateStringList(f, 'tables.include', t.include, true);
    validateStringList(f, 'tables.exclude', t.exclude, false);
  }
  checkOneOf(f, 'schemaMode', news.schemaMode, SCHEMA_MODES);
  checkBoolean(f, 'overwriteTarget', news.overwriteTarget);

  if (checkString(f, 'migrationId', news.migrationId, { required: "Give an id such as 'orders' (lowercase letters, digits, _).", nonEmpty: true })) {
    if (!MIGRATION_ID_PATTERN.test(news.migrationId as string)) {
      f.add(
        'migrationId',
        `\`migrationId\` must start with a lowercase letter and hold only a-z, 0-9 and _ (at most 40 characters), got ${show(news.migrationId)}. It names the replication slot and publication ('pgferry_<id>'); pick e.g. 'orders_2024'.`,
      );
    }
  }
  for (const name of ['slotName', 'publicationName'] as const) {
    if (checkString(f, name, news[name]) && (!IDENTIFIER.test(news[name] as string) || Buffer.byteLength(news[name] as string) > 63)) {
      f.add(
        name,
        `\`${name}\` must be a plain PostgreSQL identifier (letters, digits, _, $; at most 63 bytes), got ${show(news[name])}. Leave it out to use 'pgferry_<migrationId>'.`,
      );
    }
  }

  if (checkObject(f, 'copy', news.copy, false, '`{ workers: 2, indexJobs: 2 }`')) {
    const c = news.copy as Record<string, unknown>;
    unknownFields(f, 'copy', c, COPY_FIELDS);
    checkInt(f, 'copy.workers', c.workers, 1, 32, 'Each worker holds one source and one target connection; 2–4 suits most servers.');
    checkInt(f, 'copy.splitBytes', c.splitBytes, 1, Number.MAX_SAFE_INTEGER, 'Give a size in bytes, e.g. 67108864 (64 MiB).');
    checkInt(f, 'copy.indexJobs', c.indexJobs, 1, 16, 'Index builds run at once after the load; 2 suits most servers.');
  }
  if (checkObject(f, 'apply', news.apply, false, '`{ batchChanges: 10000, batchMs: 200 }`')) {
    const a = news.apply as Record<string, unknown>;
    unknownFields(f, 'apply', a, APPLY_FIELDS);
    checkInt(f, 'apply.batchChanges', a.batchChanges, 1, 4294967295, 'Give the most changes per target transaction, e.g. 10000.');
    checkInt(f, 'apply.batchMs', a.batchMs, 1, 4294967295, 'Give the longest a batch stays open in ms, e.g. 200.');
  }
  validateRoles(f, news.roles);
  validateVerification(f, news.verification);
  checkOneOf(
    f,
    'schemaChanges',
    news.schemaChanges,
    SCHEMA_CHANGES,
    "'follow' (default) applies the source's schema changes on the target during the sync; 'stop' stops the sync with SCHEMA_DRIFT.",
  );

  checkBoolean(f, 'waitForSync', news.waitForSync);
  checkNumber(f, 'createTimeoutMinutes', news.createTimeoutMinutes, 0, 'Give the minutes Create may wait for the migration to be in sync, e.g. 30.');
  checkBoolean(f, 'cutover', news.cutover);
  if (checkObject(f, 'cutoverOptions', news.cutoverOptions, false, "`{ maxLagSeconds: 5, validation: 'changes' }`")) {
    const o = news.cutoverOptions as Record<string, unknown>;
    unknownFields(f, 'cutoverOptions', o, CUTOVER_OPTION_FIELDS);
    checkInt(f, 'cutoverOptions.maxLagBytes', o.maxLagBytes, 0, Number.MAX_SAFE_INTEGER, 'Give the lag in bytes below which writes are fenced, e.g. 1048576.');
    checkNumber(f, 'cutoverOptions.maxLagSeconds', o.maxLagSeconds, 0, 'Give the lag in seconds below which writes are fenced, e.g. 5.');
    checkInt(f, 'cutoverOptions.timeoutMs', o.timeoutMs, 1000, 4294967295, 'Give the longest the whole cutover may take in ms, e.g. 300000.');
    checkOneOf(
      f,
      'cutoverOptions.validation',
      o.validation,
      CUTOVER_VALIDATIONS,
      "'changes' (default) checks inside the fence only the rows applied since the continuous verification; 'full' every row ('checksums' is its older name); 'counts' row counts; 'none' nothing.",
    );
    checkBoolean(f, 'cutoverOptions.skipSequences', o.skipSequences);
    const accept = o.acceptSchemaDifferences;
    if (accept !== undefined && !(Array.isArray(accept) && accept.every((x) => typeof x === 'string' && x.trim() !== ''))) {
      f.add(
        'cutoverOptions.acceptSchemaDifferences',
        `\`cutoverOptions.acceptSchemaDifferences\` must be a list of objects as \`pgferry schema diff\` names them, e.g. ['function rental.f(integer)'], got ${show(accept)}.`,
      );
    }
  }
  if (checkString(f, 'rollbackWindow', news.rollbackWindow) && !isRollbackWindow(news.rollbackWindow as string)) {
    // The agent's own rule and words (agent/engine/spec.ts), so that Check refuses exactly what the agent does.
    f.add('rollbackWindow', `\`rollbackWindow\` ${ROLLBACK_WINDOW_MESSAGE}, got ${show(news.rollbackWindow)}. Leave it out to migrate without a way back.`);
  }
  checkBoolean(f, 'cutback', news.cutback);
  return f.list;
}

/** Which argument fixes each of the agent's preflight checks (agent/engine/preflight.ts names). */
export const PREFLIGHT_PROPERTY: Readonly<Record<string, string>> = {
  source_connection: 'source',
  source_version: 'source',
  wal_level: 'source',
  replication_slots: 'source',
  wal_senders: 'source',
  replication_privilege: 'source.user',
  create_privilege: 'source.user',
  table_ownership: 'source.user',
  select_privilege: 'source.user',
  slot_name: 'slotName',
  publication_name: 'publicationName',
  table_selection: 'tables',
  replica_identity: 'tables',
  partitioned_tables: 'tables',
  unlogged_tables: 'tables',
  large_objects: 'tables',
  target_connection: 'target',
  same_database: 'target',
  target_version: 'target',
  target_encoding: 'target',
  target_privilege: 'target.user',
  target_tables: 'schemaMode',
  target_empty: 'overwriteTarget',
  target_column_types: 'schemaMode',
  // The schema stage's checks (agent/engine/preflight-schema.ts).
  schema_roles: 'roles',
  schema_role_membership: 'roles',
  schema_extensions: 'target',
  schema_not_migrated: 'tables',
  schema_objects: 'tables',
  // What the way back needs (agent/engine/preflight-reverse.ts): set up the servers, or remove `rollbackWindow`.
  reverse_wal_level: 'rollbackWindow',
  reverse_replication_slots: 'rollbackWindow',
  reverse_replication_privilege: 'rollbackWindow',
  reverse_publication_privilege: 'rollbackWindow',
  reverse_session_replication_role: 'rollbackWindow',
  reverse_schema_privilege: 'rollbackWindow',
};

/** The argument a preflight check is about (by name, then by prefix; `source` otherwise). */
export function preflightProperty(checkName: string): string {
  if (PREFLIGHT_PROPERTY[checkName]) return PREFLIGHT_PROPERTY[checkName]!;
  if (checkName.startsWith('reverse_')) return 'rollbackWindow';
  return checkName.startsWith('target') ? 'target' : checkName.startsWith('table') ? 'tables' : 'source';
}

/** Each failed check of a preflight report as a CheckFailure (warnings are not failures). */
export function failuresFromPreflight(report: PreflightReportMessage): CheckFailure[] {
  return report.checks
    .filter((c) => c.verdict === 'fail')
    .map((c) => ({
      property: preflightProperty(c.name),
      reason: `Preflight check '${c.name}' failed: ${c.message}${c.remedy ? ` Fix: ${c.remedy}` : ''}`,
    }));
}

/** Map an INVALID_SPEC message's backticked spec paths to argument paths (`id` → `migrationId`, `tables.include.0` → `tables.include[0]`). */
export function specPathToProperty(path: string): string {
  const parts = path.split('.');
  if (parts[0] === 'id') parts[0] = 'migrationId';
  return parts.reduce((acc, p) => (/^\d+$/.test(p) ? `${acc}[${p}]` : acc ? `${acc}.${p}` : p), '');
}

/** An agent error during Check as CheckFailures on the arguments that fix it. */
export function failuresFromAgentError(e: { code?: string; message: string; remedy?: string; grpcStatus?: string }, endpoint: string): CheckFailure[] {
  const fix = e.remedy ? ` Fix: ${e.remedy}` : '';
  switch (e.code) {
    case 'AGENT_UNREACHABLE':
      return [
        {
          property: 'agent.endpoint',
          reason: `Cannot reach the pgferry agent at \`agent.endpoint\` '${endpoint}': ${e.message} Fix: start the agent (\`pgferry agent --listen ${endpoint}\`), check that \`agent.endpoint\` is its address and reachable from where Pulumi runs, and that TLS matches (set \`agent.caCert\` to the CA of the agent's certificate, or \`agent.insecure: true\` for a plain-text agent).`,
        },
      ];
    case 'AGENT_TIMEOUT':
      return [
        {
          property: 'agent.endpoint',
          reason: `The pgferry agent at \`agent.endpoint\` '${endpoint}' did not answer the preflight in time: ${e.message}${fix}`,
        },
      ];
    case 'UNAUTHENTICATED':
      return [
        {
          property: 'agent.token',
          reason: `The pgferry agent at '${endpoint}' rejected \`agent.token\`: ${e.message} Fix: set \`agent.token\` to the token the agent was started with (e.g. \`config.requireSecret("agentToken")\`).`,
        },
      ];
    case 'INVALID_SPEC': {
      const paths = [...new Set([...e.message.matchAll(/`([A-Za-z0-9_.]+)`/g)].map((m) => m[1]!))];
      const reason = `The agent rejected the spec: ${e.message}${fix}`;
      return paths.length ? paths.map((p) => ({ property: specPathToProperty(p), reason })) : [{ property: 'migrationId', reason }];
    }
    default:
      return [
        { property: 'agent', reason: `The pgferry agent at '${endpoint}' failed the preflight (${e.code ?? e.grpcStatus ?? 'error'}): ${e.message}${fix}` },
      ];
  }
}
