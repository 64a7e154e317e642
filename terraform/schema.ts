/**
 * schema — the Terraform schemas of the provider block, the
 * `pgferry_migration` resource and the `pgferry_migration` data source,
 * derived from the Pulumi provider's own lists, so an argument or output
 * added there appears here without an edit:
 *
 * - arguments: `ARG_NAMES` and the field lists of provider/args.ts (names),
 *   typed by the agent API's proto (the same message the argument becomes),
 *   by `DEFAULTS`, or, for the agent connection, by the table below;
 * - outputs: `OUTPUT_NAMES`, typed by the table below (a new output not in
 *   it is a `dynamic` attribute, which holds any value);
 * - secrets: `SECRET_AGENT_FIELDS` and `SECRET_ENDPOINT_FIELDS` are
 *   write-only (never stored in the plan or the state) and sensitive.
 *
 * Terraform names are the Pulumi names in snake_case (`cutoverOptions.timeoutMs`
 * is `cutover_options.timeout_ms`); `key` keeps the Pulumi name.
 */
import * as protoLoader from '@grpc/proto-loader';
import {
  AGENT_FIELDS,
  APPLY_FIELDS,
  ARG_NAMES,
  COPY_FIELDS,
  CUTOVER_OPTION_FIELDS,
  DEFAULTS,
  ENDPOINT_FIELDS,
  OUTPUT_NAMES,
  ROLES_FIELDS,
  SECRET_AGENT_FIELDS,
  SECRET_ENDPOINT_FIELDS,
  TABLES_FIELDS,
  VERIFICATION_FIELDS,
} from '../provider/args';
import { protoRoot } from '../api/client';
import type { CtyType } from './values';

/** One attribute: a value of `type`, or a single nested object of `nested` attributes. */
export interface Attr {
  /** The Terraform name (snake_case). */
  name: string;
  /** The Pulumi provider's name (camelCase). */
  key: string;
  type?: CtyType;
  nested?: Attr[];
  /** `nested` is written as a block (`source { … }`), so Terraform points a diagnostic at the exact line inside it. */
  block?: boolean;
  required?: boolean;
  optional?: boolean;
  computed?: boolean;
  sensitive?: boolean;
  writeOnly?: boolean;
  description: string;
}

export const RESOURCE_TYPE = 'pgferry_migration';
export const DATA_SOURCE_TYPE = 'pgferry_migration';

/** `caCert` → `ca_cert`. */
export const snake = (key: string): string => key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase();

/** The cty type an attribute's values have. */
export function impliedType(a: Attr): CtyType {
  return a.nested ? objectType(a.nested) : (a.type ?? 'dynamic');
}
export function objectType(attrs: readonly Attr[]): CtyType {
  return ['object', Object.fromEntries(attrs.map((a) => [a.name, impliedType(a)]))];
}

// ---------------------------------------------------------------------------
// Types from the agent API's proto
// ---------------------------------------------------------------------------

type Field = { name: string; type: string; label: string; typeName: string };
type MessageType = { field: Field[]; nestedType: Array<{ name: string; options: { mapEntry?: boolean } | null; field: Field[] }> };
let api: protoLoader.PackageDefinition | undefined;
function message(name: string): MessageType | undefined {
  api ??= protoLoader.loadSync('pgferry/agent/v1/agent.proto', { keepCase: false, includeDirs: [protoRoot()] });
  return (api[`pgferry.agent.v1.${name}`] as { type?: MessageType } | undefined)?.type;
}

const SCALARS: Record<string, CtyType> = { TYPE_STRING: 'string', TYPE_BOOL: 'bool', TYPE_BYTES: 'string' };
function scalar(protoType: string): CtyType {
  return SCALARS[protoType] ?? (/^TYPE_(U?INT|S?FIXED|SINT|DOUBLE|FLOAT)/.test(protoType) ? 'number' : 'string');
}

/** The attribute a proto field becomes (messages as nested objects, maps as maps, repeated as lists). */
function protoAttr(msg: MessageType, key: string, depth = 0): Attr | undefined {
  const f = msg.field.find((x) => x.name === key);
  if (!f) return undefined;
  const base = { name: snake(key), key, optional: true, description: '' };
  if (f.type === 'TYPE_MESSAGE') {
    const entry = msg.nestedType.find((n) => n.name === f.typeName && n.options?.mapEntry);
    if (entry) return { ...base, type: ['map', scalar(entry.field.find((x) => x.name === 'value')?.type ?? 'TYPE_STRING')] };
    const inner = message(f.typeName);
    if (!inner || depth > 3) return { ...base, type: 'dynamic' };
    const nested = inner.field.map((x) => protoAttr(inner, x.name, depth + 1)!);
    return f.label === 'LABEL_REPEATED' ? { ...base, type: ['list', objectType(nested)] } : { ...base, nested };
  }
  return { ...base, type: f.label === 'LABEL_REPEATED' ? ['list', scalar(f.type)] : scalar(f.type) };
}

// ---------------------------------------------------------------------------
// The resource's arguments
// ---------------------------------------------------------------------------

/** The agent connection's fields are the client's options, not a proto message. */
const AGENT_TYPES = {
  endpoint: 'string',
  token: 'string',
  caCert: 'string',
  clientCert: 'string',
  clientKey: 'string',
  insecure: 'bool',
} as const satisfies Record<(typeof AGENT_FIELDS)[number], CtyType>;

/** The nested arguments: their field list and the proto message that types them. */
const NESTED: Record<string, { fields: readonly string[]; message?: string; secret?: readonly string[] }> = {
  agent: { fields: AGENT_FIELDS, secret: SECRET_AGENT_FIELDS },
  source: { fields: ENDPOINT_FIELDS, message: 'Endpoint', secret: SECRET_ENDPOINT_FIELDS },
  target: { fields: ENDPOINT_FIELDS, message: 'Endpoint', secret: SECRET_ENDPOINT_FIELDS },
  tables: { fields: TABLES_FIELDS, message: 'TableSelection' },
  copy: { fields: COPY_FIELDS, message: 'CopyOptions' },
  apply: { fields: APPLY_FIELDS, message: 'ApplyOptions' },
  roles: { fields: ROLES_FIELDS, message: 'RoleOptions' },
  verification: { fields: VERIFICATION_FIELDS, message: 'VerificationOptions' },
  cutoverOptions: { fields: CUTOVER_OPTION_FIELDS, message: 'CutoverRequest' },
};

/** Arguments Terraform needs given: it has no resource name to derive the id from. */
const REQUIRED = ['source', 'target', 'migrationId'];

function nestedArg(key: string, spec: (typeof NESTED)[string], secretsWriteOnly: boolean): Attr {
  const msg = spec.message ? message(spec.message) : undefined;
  const nested = spec.fields.map((f): Attr => {
    const fromProto = msg ? protoAttr(msg, f) : undefined;
    const type = (AGENT_TYPES as Record<string, CtyType>)[f] ?? fromProto?.type ?? 'string';
    const secret = spec.secret?.includes(f) ?? false;
    return {
      ...(fromProto?.nested ? fromProto : { name: snake(f), key: f, type }),
      optional: true,
      sensitive: secret,
      writeOnly: secret && secretsWriteOnly,
      description: '',
    };
  });
  return { name: snake(key), key, nested, block: true, description: '' };
}

/** A top-level argument that is not nested: typed by the spec's proto field, the cutover's, or its default. */
function scalarArg(key: string): Attr {
  const spec = message('MigrationSpec');
  const fromSpec = spec && protoAttr(spec, key === 'migrationId' ? 'id' : key);
  if (fromSpec) return { ...fromSpec, name: snake(key), key };
  const d = (DEFAULTS as Record<string, unknown>)[key];
  const type: CtyType = typeof d === 'boolean' ? 'bool' : typeof d === 'number' ? 'number' : typeof d === 'string' ? 'string' : 'dynamic';
  return { name: snake(key), key, type, description: '' };
}

/** The resource's arguments, from ARG_NAMES. */
export function argumentAttrs(): Attr[] {
  return ARG_NAMES.map((key) => {
    const a = NESTED[key] ? nestedArg(key, NESTED[key]!, true) : scalarArg(key);
    return { ...a, required: REQUIRED.includes(key), optional: !REQUIRED.includes(key), description: describeArg(key) };
  });
}

function describeArg(key: string): string {
  if (key === 'agent') return 'The agent that does the work; each field left out comes from the provider block.';
  if (key === 'migrationId') return "The migration's id on the agent (`^[a-z][a-z0-9_]{0,39}$`); names the slot and publication (`pgferry_<id>`).";
  return `As \`${key}\` of the Pulumi resource (docs/resources/migration.md).`;
}

// ---------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------

const CONNECTION_ATTRS: Attr[] = ['host', 'port', 'database', 'user', 'sslMode', 'connectionString'].map((key) => ({
  name: snake(key),
  key,
  type: key === 'port' ? 'number' : 'string',
  computed: true,
  description: '',
}));
const LIST_OF_STRINGS: CtyType = ['list', 'string'];

/** The types of the outputs (a name not listed is `dynamic`). */
const OUTPUT_TYPES: Record<string, CtyType | 'connection'> = {
  appliedLsn: 'string',
  verificationRepairs: LIST_OF_STRINGS,
  recentSchemaChanges: ['list', ['object', { at: 'string', object: 'string', change: 'string', statement: 'string' }]],
  keptTables: LIST_OF_STRINGS,
  outageParts: ['map', 'number'],
  validationOk: 'bool',
  schemaCheckOk: 'bool',
  cutoverWarnings: LIST_OF_STRINGS,
  schemaDifferences: LIST_OF_STRINGS,
  notes: LIST_OF_STRINGS,
  activeConnection: 'connection',
  sourceConnection: 'connection',
  targetConnection: 'connection',
};
/** Counters and figures: numbers. */
const NUMBER_OUTPUT = /^(tables|rows)[A-Z]|Total$|Ms$|Bytes$|Seconds$|^progress$|Applied$|Repaired$/;
/** Text: the phase, states, times, versions, LSNs and messages. */
const STRING_OUTPUT = /^(phase|error|validation|publication|replicationSlot|activeEndpoint|secretsDigest)$|State$|At$|Version$|Lsn$|Fence|Error$/;

function outputType(key: string): CtyType | 'connection' {
  if (OUTPUT_TYPES[key]) return OUTPUT_TYPES[key]!;
  if (NUMBER_OUTPUT.test(key)) return 'number';
  if (STRING_OUTPUT.test(key)) return 'string';
  return 'dynamic';
}

/**
 * Outputs Terraform does not keep: the agent's secrets (the state is not
 * encrypted; refresh and destroy take them from the provider block).
 */
const NOT_STORED = ['agentToken', 'agentClientKey'];
/** Outputs only a managed resource has (the data source knows no endpoints or secrets). */
const RESOURCE_ONLY = ['activeConnection', 'sourceConnection', 'targetConnection', 'secretsDigest', 'notes'];

/** The computed attributes: every output but the agent's secrets; connections without their password. */
export function outputAttrs(forDataSource = false): Attr[] {
  const args = new Set<string>(ARG_NAMES);
  return OUTPUT_NAMES.filter((k) => !NOT_STORED.includes(k) && !args.has(k) && !(forDataSource && RESOURCE_ONLY.includes(k))).map((key) => {
    const t = outputType(key);
    const base = { name: snake(key), key, computed: true, sensitive: key === 'secretsDigest', description: `As \`${key}\` of the Pulumi resource.` };
    return t === 'connection'
      ? { ...base, nested: CONNECTION_ATTRS, description: `As \`${key}\` of the Pulumi resource, without the password (the state is not encrypted).` }
      : { ...base, type: t };
  });
}

export const ID_ATTR: Attr = { name: 'id', key: 'id', type: 'string', computed: true, description: "The migration's id on the agent." };

/** The resource's attributes: id, arguments, outputs. */
export function resourceAttrs(): Attr[] {
  return [ID_ATTR, ...argumentAttrs(), ...outputAttrs()];
}

/** The data source: a running migration by id (the agent's secrets come from the provider block). */
export function dataSourceAttrs(): Attr[] {
  const agent = nestedArg('agent', { fields: AGENT_FIELDS.filter((f) => !(SECRET_AGENT_FIELDS as readonly string[]).includes(f)) }, false);
  return [
    ID_ATTR,
    { name: 'migration_id', key: 'migrationId', type: 'string', required: true, description: 'The id of the migration on the agent.' },
    { ...agent, optional: true, description: 'Where the agent is, when not the provider block’s endpoint (its token always comes from the provider block).' },
    ...outputAttrs(true),
  ];
}

/** The provider block: the agent connection shared by every migration (the agent client's options). */
export function providerAttrs(): Attr[] {
  return AGENT_FIELDS.map((key) => ({
    name: snake(key),
    key,
    type: AGENT_TYPES[key],
    optional: true,
    sensitive: (SECRET_AGENT_FIELDS as readonly string[]).includes(key),
    description: `The agent's \`${key}\` for every pgferry_migration that does not set \`agent.${snake(key)}\`.`,
  }));
}
