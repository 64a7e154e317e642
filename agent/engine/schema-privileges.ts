/**
 * schema-privileges — owners, grants and default privileges of the migrated
 * objects, through the user's role mapping.
 *
 * Input: the source's owner and ACL of each object (schema-objects-read.ts),
 * the `roles` argument, and the source's major version.
 * Output: `ALTER … OWNER TO`, `GRANT`/`REVOKE` and `ALTER DEFAULT
 * PRIVILEGES` statements that make the target's privileges equal the
 * source's, each naming the target roles it needs (so that, with
 * `roles.missing: 'skip'`, a statement for a role the target lacks is
 * skipped with a warning instead of failing).
 *
 * Grants are computed as a difference from what PostgreSQL gives a new
 * object (its owner everything, PUBLIC EXECUTE on functions and USAGE on
 * types): only what differs is granted or revoked, so a target that knows
 * more privileges than the source (MAINTAIN, 17) keeps its owner's.
 */
import { qi } from './conn';
import type { SchemaStatement } from './schema-ddl';
import type { AclEntry, DefaultAclRow } from './schema-objects-read';

export interface RoleMapping {
  /** Source role → target role. */
  map: Record<string, string>;
  /** What to do with a role the target lacks: fail in the preflight, or skip what needs it (with a warning per object). */
  missing: 'fail' | 'skip';
}

export const NO_ROLE_MAPPING: RoleMapping = { map: {}, missing: 'fail' };

/** The target role for a source role ('public' stays PUBLIC). */
export function mapRole(m: RoleMapping, role: string): string {
  return role === 'public' ? role : (m.map[role] ?? role);
}

const roleSql = (r: string) => (r === 'public' ? 'PUBLIC' : qi(r));

/** The kinds of object GRANT knows, with their privileges (oldest first; MAINTAIN is 17+). */
const PRIVILEGES: Record<string, string[]> = {
  TABLE: ['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER', 'MAINTAIN'],
  SEQUENCE: ['USAGE', 'SELECT', 'UPDATE'],
  FUNCTION: ['EXECUTE'],
  /** Functions, procedures and aggregates alike. */
  ROUTINE: ['EXECUTE'],
  TYPE: ['USAGE'],
  SCHEMA: ['USAGE', 'CREATE'],
};
/** What PUBLIC has on a new object of each kind. */
const PUBLIC_DEFAULT: Record<string, string[]> = { FUNCTION: ['EXECUTE'], ROUTINE: ['EXECUTE'], TYPE: ['USAGE'] };

/** Privileges the source's version knows (a source older than 17 has no MAINTAIN: never revoke it). */
function knownBy(sourceMajor: number, priv: string): boolean {
  return priv !== 'MAINTAIN' || sourceMajor >= 17;
}

export interface Grantable {
  /** GRANT's object kind: TABLE (tables, views, materialized views), SEQUENCE, ROUTINE, TYPE, SCHEMA. */
  grantKind: keyof typeof PRIVILEGES;
  /** The object as GRANT names it, e.g. `rental.film` or `rental.f(integer)`. */
  name: string;
  /** Source owner. */
  owner: string;
  acl: AclEntry[] | null;
  /** Per column, for tables. */
  columns?: Array<{ name: string; acl: AclEntry[] | null }>;
}

/**
 * GRANT/REVOKE statements that turn a new object's default privileges into
 * the source's ACL (nothing when the source's ACL is the default, NULL).
 */
export function grantStatements(o: Grantable, m: RoleMapping, sourceMajor: number): SchemaStatement[] {
  const out: SchemaStatement[] = [];
  const owner = mapRole(m, o.owner);
  const on = `${o.grantKind} ${o.name}`;
  const stmt = (sql: string, roles: string[]): SchemaStatement => ({ kind: 'grant', object: o.name, sql, roles: roles.filter((r) => r !== 'public') });
  if (o.acl) {
    const key = (g: string, p: string) => `${g}\u0000${p}`;
    const want = new Map(o.acl.map((e) => [key(mapRole(m, e.grantee), e.priv), e]));
    const defaults = new Set([...PRIVILEGES[o.grantKind].map((p) => key(owner, p)), ...(PUBLIC_DEFAULT[o.grantKind] ?? []).map((p) => key('public', p))]);
    for (const d of defaults) {
      const [g, p] = d.split('\u0000');
      if (!want.has(d) && knownBy(sourceMajor, p)) out.push(stmt(`REVOKE ${p} ON ${on} FROM ${roleSql(g)}`, [g]));
    }
    for (const [k, e] of want) {
      const g = mapRole(m, e.grantee);
      if (!defaults.has(k) || e.grantable) out.push(stmt(`GRANT ${e.priv} ON ${on} TO ${roleSql(g)}${e.grantable ? ' WITH GRANT OPTION' : ''}`, [g]));
    }
  }
  for (const col of o.columns ?? []) {
    for (const e of col.acl ?? []) {
      const g = mapRole(m, e.grantee);
      out.push(stmt(`GRANT ${e.priv} (${qi(col.name)}) ON ${o.name} TO ${roleSql(g)}${e.grantable ? ' WITH GRANT OPTION' : ''}`, [g]));
    }
  }
  return out;
}

/** `ALTER <kind> <name> OWNER TO <role>`. */
export function ownerStatement(alterKind: string, name: string, owner: string, m: RoleMapping): SchemaStatement {
  const role = mapRole(m, owner);
  return { kind: 'owner', object: name, sql: `ALTER ${alterKind} ${name} OWNER TO ${qi(role)}`, roles: [role] };
}

const DEFACL_KIND: Record<string, { grantKind: keyof typeof PRIVILEGES; plural: string }> = {
  r: { grantKind: 'TABLE', plural: 'TABLES' },
  S: { grantKind: 'SEQUENCE', plural: 'SEQUENCES' },
  f: { grantKind: 'FUNCTION', plural: 'FUNCTIONS' },
  T: { grantKind: 'TYPE', plural: 'TYPES' },
  n: { grantKind: 'SCHEMA', plural: 'SCHEMAS' },
};

/**
 * ALTER DEFAULT PRIVILEGES for one pg_default_acl row. A row for a schema
 * only adds to the global defaults; a global row (no schema) replaces them,
 * so it is stated as a difference from PostgreSQL's built-in defaults.
 */
export function defaultPrivilegeStatements(d: DefaultAclRow, m: RoleMapping, sourceMajor: number): SchemaStatement[] {
  const kind = DEFACL_KIND[d.objtype];
  if (!kind || (d.schema && d.objtype === 'n')) return [];
  const role = mapRole(m, d.role);
  const prefix = `ALTER DEFAULT PRIVILEGES FOR ROLE ${qi(role)}${d.schema ? ` IN SCHEMA ${qi(d.schema)}` : ''}`;
  const object = `default privileges of ${qi(role)}${d.schema ? ` in schema ${qi(d.schema)}` : ''} on ${kind.plural.toLowerCase()}`;
  const stmt = (sql: string, g: string): SchemaStatement => ({ kind: 'grant', object, sql, roles: [role, g].filter((r) => r !== 'public') });
  const out: SchemaStatement[] = [];
  const key = (g: string, p: string) => `${g}\u0000${p}`;
  const want = new Map(d.acl.map((e) => [key(mapRole(m, e.grantee), e.priv), e]));
  if (!d.schema) {
    const defaults = new Set([...PRIVILEGES[kind.grantKind].map((p) => key(role, p)), ...(PUBLIC_DEFAULT[kind.grantKind] ?? []).map((p) => key('public', p))]);
    for (const k of defaults) {
      const [g, p] = k.split('\u0000');
      if (!want.has(k) && knownBy(sourceMajor, p)) out.push(stmt(`${prefix} REVOKE ${p} ON ${kind.plural} FROM ${roleSql(g)}`, g));
    }
    for (const [k, e] of want) {
      if (defaults.has(k) && !e.grantable) continue;
      const g = mapRole(m, e.grantee);
      out.push(stmt(`${prefix} GRANT ${e.priv} ON ${kind.plural} TO ${roleSql(g)}${e.grantable ? ' WITH GRANT OPTION' : ''}`, g));
    }
    return out;
  }
  for (const e of d.acl) {
    const g = mapRole(m, e.grantee);
    out.push(stmt(`${prefix} GRANT ${e.priv} ON ${kind.plural} TO ${roleSql(g)}${e.grantable ? ' WITH GRANT OPTION' : ''}`, g));
  }
  return out;
}
