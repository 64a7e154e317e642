/**
 * spec-file — the migration spec the `preflight` and `start` commands read
 * from `--spec FILE` (docs/cli.md): JSON with the fields of the Pulumi
 * resource's arguments, checked against the spec's shape, with secrets
 * named as `{"env": "VAR"}` or `{"file": "path"}` instead of held.
 * A bad file is an INVALID_SPEC error (exit 2) naming the field and the fix.
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import type { MigrationSpecMessage } from '../../api/client';
import { PgferryError } from '../engine/errors';
import { tablePatternError } from '../engine/table-pattern';
import { DEFAULTS, SCHEMA_CHANGES, VERIFICATION_LIMITS } from '../../provider/args';

/** Top-level keys of the Pulumi resource that a spec file may carry and the CLI ignores. */
export const PULUMI_ONLY_KEYS = ['agent', 'waitForSync', 'createTimeoutMinutes', 'cutover', 'cutoverOptions', 'cutback'] as const;

/** `stringMap`: an object of string values under any keys (`roles.map`: source role → target role). */
type Kind = 'string' | 'number' | 'boolean' | 'strings' | 'stringMap' | Record<string, unknown>;
const ENDPOINT_SHAPE: Record<string, Kind> = {
  connectionString: 'string',
  host: 'string',
  port: 'number',
  database: 'string',
  user: 'string',
  password: 'string',
  sslMode: 'string',
  sslRootCert: 'string',
};
/** The spec's shape (agent/engine/spec.ts), for the checks the wire format would otherwise hide. */
const SPEC_SHAPE: Record<string, Kind> = {
  id: 'string',
  migrationId: 'string',
  source: ENDPOINT_SHAPE,
  target: ENDPOINT_SHAPE,
  tables: { include: 'strings', exclude: 'strings' },
  schemaMode: 'string',
  overwriteTarget: 'boolean',
  slotName: 'string',
  publicationName: 'string',
  copy: { workers: 'number', splitBytes: 'number', indexJobs: 'number' },
  apply: { batchChanges: 'number', batchMs: 'number' },
  roles: { map: 'stringMap', missing: 'string' },
  verification: { rowsPerSecond: 'number', rangeRows: 'number', disabled: 'boolean' },
  schemaChanges: 'string',
  rollbackWindow: 'string',
};
const SECRET_KEYS = new Set(['password', 'connectionString']);
/** Whole-number knobs checked here, so that the message names the fix (the agent checks them all again). */
const INTEGER_RANGES: Record<string, { min: number; max: number; fix: string }> = {
  'verification.rowsPerSecond': {
    ...VERIFICATION_LIMITS.rowsPerSecond,
    fix: `Give the most rows the verification reads per second on each side, e.g. ${DEFAULTS.verification.rowsPerSecond} (the default); lower it to spare a busy source, or set "disabled": true to turn the verification off.`,
  },
  'verification.rangeRows': {
    ...VERIFICATION_LIMITS.rangeRows,
    fix: `Give the rows per key range the verification compares and repairs, e.g. ${DEFAULTS.verification.rangeRows} (the default).`,
  },
};

/** Fields with a few allowed values checked here, so that the message names them (the agent checks them all again). */
const ONE_OF: Record<string, { allowed: readonly string[]; fix: string }> = {
  schemaChanges: {
    allowed: SCHEMA_CHANGES,
    fix: `Write "schemaChanges": "${DEFAULTS.schemaChanges}" (the default: the target follows the source's schema changes during the sync) or "stop" (the sync stops with SCHEMA_DRIFT).`,
  },
};

/**
 * Read a spec file: JSON with the fields of the Pulumi resource's arguments
 * (agent/engine/spec.ts; `id` or `migrationId`). Any string value may instead be
 * `{"env": "NAME"}` (the environment variable's value) or `{"file": "path"}`
 * (the file's text without its final newline; relative to the spec file).
 * Pulumi-only keys (`agent`, `cutover`, …) are ignored.
 *
 * @example
 * { "id": "orders",
 *   "source": { "host": "10.0.0.5", "database": "shop", "user": "ferry", "password": { "env": "SRC_PW" } },
 *   "target": { "host": "db.example.com", "database": "shop", "user": "ferry", "password": { "file": "target.pw" }, "sslMode": "require" },
 *   "tables": { "include": ["public.*"] } }
 */
export function loadSpecFile(path: string, env: NodeJS.ProcessEnv = process.env, warn: (msg: string) => void = () => undefined): MigrationSpecMessage {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new PgferryError('INVALID_SPEC', `The spec file '${path}' cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'}).`, 'Fix --spec.', {
      cause: e,
    });
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new PgferryError(
      'INVALID_SPEC',
      `The spec file '${path}' is not valid JSON: ${(e as Error).message}.`,
      'Fix the JSON (a linter such as `jq . FILE` points at the spot).',
      { cause: e },
    );
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new PgferryError('INVALID_SPEC', `The spec file '${path}' must hold a JSON object.`, 'Write the spec as { "id": …, "source": {…}, "target": {…} }.');
  }
  const base = dirname(path);
  const bad = (field: string, what: string, fix: string) => new PgferryError('INVALID_SPEC', `\`${field}\` in the spec file '${path}' ${what}.`, fix);
  const resolveRef = (v: unknown, field: string): unknown => {
    if (!v || typeof v !== 'object' || Array.isArray(v)) return v;
    const keys = Object.keys(v);
    const o = v as Record<string, unknown>;
    if (keys.length === 1 && keys[0] === 'env') {
      if (typeof o.env !== 'string' || !o.env) throw bad(field, 'has an `env` reference without a variable name', 'Write {"env": "VARIABLE_NAME"}.');
      const val = env[o.env];
      if (val === undefined || val === '')
        throw bad(
          field,
          `refers to the environment variable ${o.env}, which is not set`,
          `Set ${o.env} (e.g. \`export ${o.env}=…\` or read it from your secret store) before running pgferry.`,
        );
      return val;
    }
    if (keys.length === 1 && keys[0] === 'file') {
      if (typeof o.file !== 'string' || !o.file) throw bad(field, 'has a `file` reference without a path', 'Write {"file": "path/to/file"}.');
      const p = isAbsolute(o.file) ? o.file : resolve(base, o.file);
      try {
        return readFileSync(p, 'utf8').replace(/\r?\n$/, '');
      } catch (e) {
        throw bad(
          field,
          `refers to the file '${p}', which cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
          'Fix the path (relative paths start at the spec file).',
        );
      }
    }
    return v;
  };
  const walk = (v: unknown, shape: Record<string, Kind>, prefix: string): Record<string, unknown> => {
    const out: Record<string, unknown> = {};
    for (const [k, raw] of Object.entries(v as Record<string, unknown>)) {
      const field = prefix ? `${prefix}.${k}` : k;
      if (!prefix && (PULUMI_ONLY_KEYS as readonly string[]).includes(k)) continue;
      const kind = shape[k];
      if (kind === undefined) {
        throw bad(field, 'is not a spec field', `Remove it, or use one of: ${Object.keys(shape).join(', ')}.`);
      }
      // A role map's keys are role names: one named `env` or `file` is not a reference.
      const x = kind === 'stringMap' ? raw : resolveRef(raw, field);
      if (x === null || x === undefined) continue;
      if (kind === 'stringMap') {
        if (typeof x !== 'object' || Array.isArray(x) || !Object.values(x).every((r) => typeof r === 'string'))
          throw bad(field, 'must be an object of role names', `Write \`${field}\` as { "source_role": "target_role", … }.`);
        out[k] = { ...x };
        continue;
      }
      if (typeof kind === 'object') {
        if (typeof x !== 'object' || Array.isArray(x)) throw bad(field, 'must be an object', `Write \`${field}\` as { ${Object.keys(kind).join(', ')} }.`);
        out[k] = walk(x, kind as Record<string, Kind>, field);
        continue;
      }
      const ok = kind === 'strings' ? Array.isArray(x) && x.every((s) => typeof s === 'string') : typeof x === kind;
      if (!ok) throw bad(field, `must be ${kind === 'strings' ? 'an array of strings' : `a ${kind}`}`, `Correct \`${field}\`.`);
      const range = INTEGER_RANGES[field];
      if (range && (!Number.isInteger(x) || (x as number) < range.min || (x as number) > range.max))
        throw bad(field, `must be a whole number from ${range.min} to ${range.max}, got ${String(x)}`, range.fix);
      const oneOf = ONE_OF[field];
      if (oneOf && !oneOf.allowed.includes(x as string))
        throw bad(field, `must be one of ${oneOf.allowed.map((a) => `'${a}'`).join(', ')}, got '${String(x)}'`, oneOf.fix);
      if (SECRET_KEYS.has(k) && typeof raw === 'string' && raw !== '' && (k === 'password' || /:[^:@/]+@/.test(raw))) {
        warn(`the spec file '${path}' holds \`${field}\` in clear text; prefer {"env": "VAR"} or {"file": "path"} (docs/cli.md).`);
      }
      if (prefix === 'tables') {
        (x as string[]).forEach((p, i) => {
          const e = tablePatternError(p);
          if (e) throw bad(`${field}[${i}]`, `('${p}') ${e.problem}`, e.fix);
        });
      }
      out[k] = x;
    }
    return out;
  };
  const spec = walk(doc, SPEC_SHAPE, '');
  if (spec.migrationId !== undefined) {
    if (spec.id !== undefined && spec.id !== spec.migrationId)
      throw bad('migrationId', `('${String(spec.migrationId)}') differs from \`id\` ('${String(spec.id)}')`, 'Keep one of them.');
    spec.id = spec.migrationId;
    delete spec.migrationId;
  }
  for (const req of ['id', 'source', 'target'] as const) {
    if (spec[req] === undefined)
      throw bad(
        req,
        'is missing',
        req === 'id'
          ? 'Add "id": "a_name" (lowercase letters, digits, _).'
          : `Add "${req}": { "host", "database", "user", "password" } or { "connectionString" }.`,
      );
  }
  return spec as unknown as MigrationSpecMessage;
}
