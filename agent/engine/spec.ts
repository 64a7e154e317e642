/**
 * spec — what a migration is: source, target, table selection and knobs.
 *
 * The spec is validated with zod (one schema gives both the TypeScript type and
 * the runtime check); every problem is reported with its field path so the
 * provider can turn it into a Pulumi CheckFailure and the CLI into a message.
 * The schemas are built on first use: loading zod costs ~40 ms of CPU, and an
 * agent that restarts to resume its migrations does not need it.
 */
import { createHash } from 'node:crypto';
import type * as Zod from 'zod';
import { PgferryError } from './errors';
import { tablePatternProblem } from './table-pattern';
import stableStringify from 'safe-stable-stringify';

export const SSL_MODES = ['disable', 'prefer', 'require', 'verify-ca', 'verify-full'] as const;
export type SslMode = (typeof SSL_MODES)[number];

export const SCHEMA_MODES = ['create', 'existing'] as const;
export type SchemaMode = (typeof SCHEMA_MODES)[number];

/** What to do with a role the target lacks (`roles.missing`). */
export const ROLE_MISSING = ['fail', 'skip'] as const;
export type RoleMissing = (typeof ROLE_MISSING)[number];

/** `verification` when the spec leaves it out (and in specs stored before it existed). */
export const DEFAULT_VERIFICATION: Readonly<{ rowsPerSecond: number; rangeRows: number; disabled: boolean }> = Object.freeze({
  rowsPerSecond: 100_000,
  rangeRows: 50_000,
  disabled: false,
});

/** What the sync does when the source's schema changes: follow it on the target, or stop with SCHEMA_DRIFT (schema-follow.ts). */
export const SCHEMA_CHANGES = ['follow', 'stop'] as const;
export type SchemaChanges = (typeof SCHEMA_CHANGES)[number];

/** `roles` when the spec leaves it out (and in specs stored before it existed). */
export const DEFAULT_ROLES: Readonly<{ map: Record<string, string>; missing: RoleMissing }> = Object.freeze({ map: {}, missing: 'fail' });

const identifierish = /^[A-Za-z_][A-Za-z0-9_$]*$/;

function build(z: typeof Zod.z) {
  const EndpointSchema = z
    .object({
      connectionString: z.string().min(1).optional(),
      host: z.string().min(1).optional(),
      port: z.number().int().min(1).max(65535).optional(),
      database: z.string().min(1).optional(),
      user: z.string().min(1).optional(),
      password: z.string().optional(),
      sslMode: z.enum(SSL_MODES).optional(),
      /** PEM text of the CA that signed the server certificate (verify-ca / verify-full). */
      sslRootCert: z.string().optional(),
    })
    .strict()
    .superRefine((e, ctx) => {
      if (!e.connectionString) {
        for (const f of ['host', 'database', 'user'] as const) {
          if (!e[f]) ctx.addIssue({ code: 'custom', path: [f], message: `is required (or give \`connectionString\`)` });
        }
      }
      if ((e.sslMode === 'verify-ca' || e.sslMode === 'verify-full') && !e.sslRootCert && !e.connectionString) {
        ctx.addIssue({ code: 'custom', path: ['sslRootCert'], message: `is required when sslMode is '${e.sslMode}' (PEM text of the server's CA)` });
      }
    });

  /** A table pattern: `schema.table` in table-pattern.ts's grammar (PostgreSQL's identifier rules, `*` and `?` wildcards). */
  const tablePattern = z.string().superRefine((p, ctx) => {
    const problem = tablePatternProblem(p);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  });

  /** What is wrong with a role name (any text of 1 to 63 bytes: NAMEDATALEN - 1), or null. */
  const roleNameProblem = (r: string): string | null =>
    r.length === 0 ? 'is empty' : Buffer.byteLength(r, 'utf8') > 63 ? 'is longer than 63 bytes (PostgreSQL truncates longer role names)' : null;
  const roleMap = z.record(z.string(), z.string()).superRefine((m, ctx) => {
    for (const [from, to] of Object.entries(m)) {
      const keyProblem = roleNameProblem(from);
      if (keyProblem)
        ctx.addIssue({ code: 'custom', path: [], message: `has a source role name that ${keyProblem} ('${from}'): give the role's name as on the source` });
      const valueProblem = roleNameProblem(to);
      if (valueProblem)
        ctx.addIssue({ code: 'custom', path: [from], message: `maps to a target role name that ${valueProblem}: give an existing target role` });
    }
  });

  const RoleOptionsSchema = z
    .object({
      /** Source role → target role; a role not named keeps its name on the target. */
      map: roleMap.default({}),
      /** A role the target lacks: `fail` the preflight, or `skip` what needs it (a warning each). */
      missing: z.enum(ROLE_MISSING, { message: `must be one of ${ROLE_MISSING.map((m) => `'${m}'`).join(', ')}` }).default('fail'),
    })
    .strict();

  const MigrationSpecSchema = z
    .object({
      id: z.string().regex(/^[a-z][a-z0-9_]{0,39}$/, {
        message: 'must start with a lowercase letter and contain only a-z, 0-9 and _ (at most 40 characters)',
      }),
      source: EndpointSchema,
      target: EndpointSchema,
      tables: z
        .object({
          include: z.array(tablePattern).min(1).default(['public.*']),
          exclude: z.array(tablePattern).default([]),
        })
        .strict()
        .default({ include: ['public.*'], exclude: [] }),
      /** `create`: pgferry creates the schema on the target; `existing`: the target tables exist already. */
      schemaMode: z.enum(SCHEMA_MODES).default('create'),
      /** Allow loading into target tables that already hold rows (they are truncated first). */
      overwriteTarget: z.boolean().default(false),
      slotName: z.string().regex(identifierish).max(63).optional(),
      publicationName: z.string().regex(identifierish).max(63).optional(),
      copy: z
        .object({
          /** Parallel copy workers (each holds one source and one target connection). */
          workers: z.number().int().min(1).max(32).default(2),
          /** Tables above this size (bytes) are split into ranges shared by several workers. */
          splitBytes: z
            .number()
            .int()
            .min(1)
            .default(64 * 1024 * 1024),
          /** Secondary indexes and foreign keys built at once after the load. */
          indexJobs: z.number().int().min(1).max(16).default(2),
        })
        .strict()
        .default({ workers: 2, splitBytes: 64 * 1024 * 1024, indexJobs: 2 }),
      apply: z
        .object({
          /** Source changes gathered into one target transaction, at most. */
          batchChanges: z.number().int().min(1).default(10000),
          /** Longest a batch stays open before it is committed, in ms. */
          batchMs: z.number().int().min(1).default(200),
        })
        .strict()
        .default({ batchChanges: 10000, batchMs: 200 }),
      /** How the source's roles are named on the target (owners, grants, policies, default privileges). */
      roles: RoleOptionsSchema.default({ map: {}, missing: 'fail' }),
      /** The continuous verification before the cutover (verify.ts). */
      verification: z
        .object({
          /** Rows read per second on each side, at most (the source's share of the work). */
          rowsPerSecond: z.number().int().min(1000).default(DEFAULT_VERIFICATION.rowsPerSecond),
          /** Rows per key range: the unit compared, re-checked and repaired. */
          rangeRows: z.number().int().min(100).max(1_000_000).default(DEFAULT_VERIFICATION.rangeRows),
          /** Off: the cutover then checks every table in full inside the fence. */
          disabled: z.boolean().default(false),
        })
        .strict()
        .default({ ...DEFAULT_VERIFICATION }),
      /** Source DDL during the sync: `follow` it on the target (schema-follow.ts), or `stop` with SCHEMA_DRIFT. */
      schemaChanges: z.enum(SCHEMA_CHANGES).default('follow'),
      rollbackWindow: z.string().refine(isRollbackWindow, { message: ROLLBACK_WINDOW_MESSAGE }).optional(), // reverse-sync.ts
    })
    .strict();

  return { EndpointSchema, MigrationSpecSchema };
}

type Schemas = ReturnType<typeof build>;
let built: Schemas | undefined;

/** The spec's zod schemas (built, and zod loaded, on first use). */
export function schemas(): Schemas {
  return (built ??= build((require('zod') as typeof Zod).z));
}

export type Endpoint = Zod.infer<Schemas['EndpointSchema']>;
export type MigrationSpecInput = Zod.input<Schemas['MigrationSpecSchema']>;
export type MigrationSpec = Zod.output<Schemas['MigrationSpecSchema']>;

export interface SpecIssue {
  path: string;
  message: string;
}

/** Validate a spec; throws INVALID_SPEC naming every bad field. */
export function parseSpec(input: unknown): MigrationSpec {
  const r = schemas().MigrationSpecSchema.safeParse(input);
  if (r.success) return r.data;
  const issues = specIssues(r.error);
  throw new PgferryError(
    'INVALID_SPEC',
    `The migration spec is invalid: ${issues.map((i) => `\`${i.path}\` ${i.message}`).join('; ')}.`,
    'Correct the fields named above.',
  );
}

export function specIssues(err: Zod.ZodError): SpecIssue[] {
  return err.issues.map((i) => ({ path: i.path.map(String).join('.') || '(root)', message: i.message }));
}

export function slotNameOf(spec: MigrationSpec): string {
  return spec.slotName ?? `pgferry_${spec.id}`;
}
export function publicationNameOf(spec: MigrationSpec): string {
  return spec.publicationName ?? `pgferry_${spec.id}`;
}

/**
 * The identity of a spec for idempotent starts: everything but the secrets
 * (a rotated password is the same migration).
 */
export function specFingerprint(spec: MigrationSpec): string {
  const strip = (e: Endpoint) => ({ ...e, password: undefined, connectionString: e.connectionString?.replace(/:[^:@/]*@/, '@') });
  // The default `roles` is left out, so specs stored before `roles` existed keep their fingerprint.
  const roles = isDefaultRoles(spec.roles) ? undefined : spec.roles;
  // `apply`, `verification`, `schemaChanges` and `rollbackWindow` are knobs a running migration takes up (service.ts): not its identity.
  const canon = {
    ...spec,
    source: strip(spec.source),
    target: strip(spec.target),
    apply: undefined,
    verification: undefined,
    schemaChanges: undefined,
    rollbackWindow: undefined,
    roles,
  };
  return createHash('sha256').update(stableJson(canon)).digest('hex').slice(0, 16);
}

export const ROLLBACK_WINDOW_MESSAGE = "must be a duration of at least ten seconds, such as '72h', '90m', '3d' or '1h30m' (units s, m, h, d)";
/** `rollbackWindow`, the way back (reverse-sync.ts): how long the old source follows the target after the cutover; absent: off. */
export const isRollbackWindow = (v: string): boolean => (durationMs(v) ?? 0) >= 10_000;

/** A duration such as `72h`, `90m`, `3d`, `1h30m`, `45s` in ms; null when it is not one. */
export function durationMs(text: string): number | null {
  const unit: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
  if (!/^(\d+(\.\d+)?[smhd])+$/.test(text)) return null;
  let ms = 0;
  for (const m of text.matchAll(/(\d+(?:\.\d+)?)([smhd])/g)) ms += Number(m[1]) * unit[m[2]];
  return Number.isFinite(ms) ? Math.round(ms) : null;
}

/** The spec's rollback window in ms, 0 when it has none. */
export function rollbackWindowMs(spec: MigrationSpec): number {
  return spec.rollbackWindow ? (durationMs(spec.rollbackWindow) ?? 0) : 0;
}

function isDefaultRoles(r: MigrationSpec['roles'] | undefined): boolean {
  return !r || ((r.missing ?? 'fail') === 'fail' && Object.keys(r.map ?? {}).length === 0);
}

/**
 * A stored spec with the defaults of fields added since it was stored (a
 * migration started before `roles` existed has none).
 */
export function withSpecDefaults(spec: MigrationSpec): MigrationSpec {
  const roles = (spec as Partial<MigrationSpec>).roles;
  const verification = { ...DEFAULT_VERIFICATION, ...(spec as Partial<MigrationSpec>).verification };
  // A migration stored before `schemaChanges` existed stopped at every change: it keeps doing so.
  const schemaChanges = (spec as Partial<MigrationSpec>).schemaChanges ?? 'stop';
  return { ...spec, roles: { map: { ...(roles?.map ?? {}) }, missing: roles?.missing ?? DEFAULT_ROLES.missing }, verification, schemaChanges };
}

/**
 * JSON with object keys sorted and undefined members left out, so that equal
 * specs give equal text (the fingerprint hashes it). safe-stable-stringify
 * (pino's own) writes exactly what the hand-rolled version it replaced wrote,
 * so stored fingerprints keep matching.
 */
export function stableJson(v: unknown): string {
  return stableStringify(v) ?? 'null';
}
