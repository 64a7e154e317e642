/**
 * The bad inputs both front-ends refuse before anything starts — `pulumi
 * preview` (the provider's Check) and `terraform plan` — one table for both
 * suites (test/provider-unit.test.ts, test/terraform.test.ts).
 *
 * Each case changes top-level arguments of a valid declaration (Pulumi's
 * names) and lists the refusals: the argument that fixes it and what its
 * message says. In `says`, `{path}` stands for the argument as the
 * front-end spells it in backticks (`cutoverOptions.timeoutMs` for Pulumi,
 * `cutover_options.timeout_ms` for Terraform). `terraform` tells what
 * Terraform does instead where its own type system speaks first: `'type'`
 * (it refuses the value itself, naming the attribute, before the provider
 * sees it) or `'coerced'` (the value is converted to the declared type and
 * is then valid). A case is all `'type'` refusals or none, since Terraform
 * stops at them before it plans.
 */
export interface Refusal {
  /** The argument (Pulumi path) the failure is on. */
  property: string;
  /** Fragments of the message, each found in it as is (`{path}` filled in per front-end). */
  says: string[];
  terraform?: 'type' | 'coerced';
}

export interface BadInput {
  what: string;
  change: Record<string, unknown>;
  refusals: Refusal[];
}

export const BAD_INPUTS: BadInput[] = [
  {
    what: 'an agent endpoint with a scheme and path',
    change: { agent: { endpoint: 'https://agent.example.com/grpc' } },
    refusals: [{ property: 'agent.endpoint', says: ["{agent.endpoint} must be `host:port`, e.g. '10.0.0.4:7443'", 'without a scheme or path'] }],
  },
  {
    what: 'a source port out of range, and verify-full without a CA',
    change: { source: { host: '127.0.0.1', port: 70000, database: 'shop', user: 'postgres', sslMode: 'verify-full' } },
    refusals: [
      { property: 'source.port', says: ['{source.port} must be an integer from 1 to 65535, got 70000.', "PostgreSQL's default is 5432"] },
      { property: 'source.sslRootCert', says: ["{source.sslRootCert} is required when {source.sslMode} is 'verify-full'"] },
    ],
  },
  {
    what: 'a target without a host and an unknown sslMode',
    change: { target: { database: 'shop', user: 'postgres', sslMode: 'strict' } },
    refusals: [
      { property: 'target.host', says: ['{target.host} is required. Give {target.host}, or the whole endpoint as {target.connectionString}.'] },
      { property: 'target.sslMode', says: ["{target.sslMode} must be one of 'disable', 'prefer', 'require', 'verify-ca', 'verify-full', got 'strict'."] },
    ],
  },
  {
    what: 'a table pattern without a schema',
    change: { tables: { include: ['orders'] } },
    refusals: [{ property: 'tables.include[0]', says: ["{tables.include[0]} 'orders' names no schema. Write 'schema.table'"] }],
  },
  {
    what: 'a migration id with capitals and a dash',
    change: { migrationId: 'Orders-2024' },
    refusals: [{ property: 'migrationId', says: ['{migrationId} must start with a lowercase letter and hold only a-z, 0-9 and _', "got 'Orders-2024'"] }],
  },
  {
    what: 'no copy workers',
    change: { copy: { workers: 0 } },
    refusals: [{ property: 'copy.workers', says: ['{copy.workers} must be an integer from 1 to 32, got 0.'] }],
  },
  {
    what: 'an unknown validation and a too short cutover timeout',
    change: { cutoverOptions: { validation: 'md5', timeoutMs: 10 } },
    refusals: [
      {
        property: 'cutoverOptions.validation',
        says: ["{cutoverOptions.validation} must be one of 'changes', 'full', 'checksums', 'counts', 'none', got 'md5'."],
      },
      { property: 'cutoverOptions.timeoutMs', says: ['{cutoverOptions.timeoutMs} must be an integer from 1000 to 4294967295, got 10.'] },
    ],
  },
  {
    what: "'checksum' for 'checksums'",
    change: { cutoverOptions: { validation: 'checksum' } },
    refusals: [
      {
        property: 'cutoverOptions.validation',
        says: ["{cutoverOptions.validation} must be one of 'changes', 'full', 'checksums', 'counts', 'none', got 'checksum'. 'changes' (default)"],
      },
    ],
  },
  {
    what: 'an argument that does not exist',
    change: { sourceDb: 'x' },
    refusals: [{ property: 'sourceDb', says: ['{sourceDb} is not a known argument.'], terraform: 'type' }],
  },
  {
    what: 'bad role names and an unknown `missing`',
    change: { roles: { map: { '': 'app', app_owner: '', reporting: 'r'.repeat(64), auditor: 7 }, missing: 'ignore' } },
    refusals: [
      { property: 'roles.map', says: ["{roles.map} has a source role name that is empty (''). Name the role as it is on the source."] },
      { property: 'roles.map.app_owner', says: ["{roles.map.app_owner} is empty. Give the target role that takes over what 'app_owner' owns"] },
      { property: 'roles.map.reporting', says: ['{roles.map.reporting} is longer than 63 bytes'] },
      { property: 'roles.map.auditor', says: ['{roles.map.auditor} must be the name of a target role (a string), got 7.'], terraform: 'coerced' },
      { property: 'roles.missing', says: ["{roles.missing} must be one of 'fail', 'skip', got 'ignore'."] },
    ],
  },
  {
    what: 'an unknown `roles` field',
    change: { roles: { map: {}, strict: true } },
    refusals: [{ property: 'roles.strict', says: ['{roles.strict} is not a known argument.'], terraform: 'type' }],
  },
  {
    what: '`roles` that is not an object',
    change: { roles: 'app' },
    refusals: [{ property: 'roles', says: ['{roles} must be an object such as'], terraform: 'type' }],
  },
  {
    what: 'verification knobs out of range',
    change: { verification: { rowsPerSecond: 500, rangeRows: 2_000_000 } },
    refusals: [
      { property: 'verification.rowsPerSecond', says: ['{verification.rowsPerSecond} must be an integer from 1000 to 4294967295, got 500.', 'e.g. 100000'] },
      { property: 'verification.rangeRows', says: ['{verification.rangeRows} must be an integer from 100 to 1000000, got 2000000.', 'e.g. 50000'] },
    ],
  },
  {
    what: 'a non-boolean verification switch and a misspelt verification field',
    change: { verification: { disabled: 'yes', rowsPerSec: 1 } },
    refusals: [
      { property: 'verification.disabled', says: ["{verification.disabled} must be `true` or `false`, got 'yes'."], terraform: 'type' },
      { property: 'verification.rowsPerSec', says: ['Did you mean {verification.rowsPerSecond}?'], terraform: 'type' },
    ],
  },
  {
    what: 'a fractional range size',
    change: { verification: { rangeRows: 1000.5 } },
    refusals: [{ property: 'verification.rangeRows', says: ['{verification.rangeRows} must be an integer from 100 to 1000000, got 1000.5.'] }],
  },
  {
    what: '`verification` that is not an object',
    change: { verification: 'fast' },
    refusals: [{ property: 'verification', says: ['{verification} must be an object such as'], terraform: 'type' }],
  },
  {
    what: 'a `schemaChanges` other than follow or stop',
    change: { schemaChanges: 'ignore' },
    refusals: [{ property: 'schemaChanges', says: ["{schemaChanges} must be one of 'follow', 'stop', got 'ignore'. 'follow' (default)"] }],
  },
];

/** A refusal's message fragments with `{path}` spelled by `name` (in backticks). */
export function expectedFragments(r: Refusal, name: (path: string) => string = (p) => p): string[] {
  return r.says.map((s) => s.replace(/\{([^}]+)\}/g, (_m, p: string) => `\`${name(p)}\``));
}
