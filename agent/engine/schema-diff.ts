/**
 * schema-diff — the schema verification's comparison: the source's
 * descriptors against the target's, object by object and field by field,
 * after mapping the source's roles to the target's.
 *
 * Input: two `SchemaObject[]` (schema-describe.ts), the role map and the
 * differences the user accepted.
 * Output: `SchemaDifference[]` (empty when the schemas match), and their
 * human text (`formatSchemaDiff`: one line per difference).
 */
import { displayRole, type SchemaObject } from './schema-describe';

export const SCHEMA_DIFFERENCE_WHATS = ['missing-on-target', 'extra-on-target', 'definition', 'owner', 'acl', 'enabled', 'comment'] as const;
export type SchemaDifferenceWhat = (typeof SCHEMA_DIFFERENCE_WHATS)[number];

export interface SchemaDifference {
  /** The object, as `SchemaObject.identity` names it (with the source's roles mapped). */
  identity: string;
  kind: string;
  what: SchemaDifferenceWhat;
  /**
   * The source's side: its definition, owner, comment or enabled state; for
   * `acl`, the privileges only the source has, `; `-separated. Absent when
   * the source has none.
   */
  source?: string;
  /** The target's side, likewise (for `acl`, the privileges only the target has). */
  target?: string;
  /** The identity is among `accept`: reported, but not a failure. */
  accepted: boolean;
}

export interface DiffOptions {
  /** Source role → target role, applied to the source's owners, grantees, policy roles and default privileges. */
  roleMap?: Record<string, string>;
  /** Identities whose differences the user accepted. */
  accept?: string[];
}

const ACL_ENTRY = /^(GRANT|REVOKE) (\S+) (TO|FROM) (.+?)( WITH GRANT OPTION)?$/;

/** A displayed role (`PUBLIC`, `app`, `"App"`) with the map applied. */
function mapDisplayedRole(role: string, map: Record<string, string>): string {
  if (role === 'PUBLIC') return role;
  const name = role.startsWith('"') ? role.slice(1, -1).replace(/""/g, '"') : role;
  return name in map ? displayRole(map[name]) : role;
}

/** The source's object as it should be on the target: its roles mapped. */
function mapRoles(o: SchemaObject, map: Record<string, string>): SchemaObject {
  if (Object.keys(map).length === 0) return o;
  const m: SchemaObject = { ...o };
  if (o.owner !== undefined) m.owner = map[o.owner] ?? o.owner;
  if (o.acl) {
    m.acl = o.acl
      .map((entry) => {
        const x = ACL_ENTRY.exec(entry);
        return x ? `${x[1]} ${x[2]} ${x[3]} ${mapDisplayedRole(x[4], map)}${x[5] ?? ''}` : entry;
      })
      .sort();
  }
  if (o.roles) m.roles = o.roles.map((r) => mapDisplayedRole(r, map)).sort();
  if (o.role !== undefined && o.role in map) {
    const suffix = ` for role ${displayRole(o.role)}`;
    m.role = map[o.role];
    if (o.identity.endsWith(suffix)) m.identity = `${o.identity.slice(0, -suffix.length)} for role ${displayRole(m.role)}`;
  }
  return m;
}

/** What is compared as the definition: a policy's roles are part of it. */
const definitionOf = (o: SchemaObject): string => (o.roles ? `${o.definition} TO ${o.roles.join(', ')}` : o.definition);
/** What a missing or extra object shows: its definition, else (default privileges) its privileges. */
const contentOf = (o: SchemaObject): string | undefined => definitionOf(o) || (o.acl ?? []).join('; ') || undefined;

/**
 * Compares the source's schema with the target's. Every object of either
 * side is matched by identity; a matched pair is compared on its
 * definition, owner, privileges, enabled state and comment.
 *
 * @example
 * const diffs = diffSchemas(await describeSchema(src, which), await describeSchema(tgt, which), { roleMap: { app: 'app_v2' } });
 * console.log(formatSchemaDiff(diffs, objects));
 */
export function diffSchemas(source: SchemaObject[], target: SchemaObject[], opts: DiffOptions = {}): SchemaDifference[] {
  const map = opts.roleMap ?? {};
  const accept = new Set(opts.accept ?? []);
  const src = new Map(source.map((o) => mapRoles(o, map)).map((o) => [o.identity, o]));
  const tgt = new Map(target.map((o) => [o.identity, o]));
  const out: SchemaDifference[] = [];
  const add = (o: SchemaObject, what: SchemaDifferenceWhat, s: string | undefined, t: string | undefined) =>
    out.push({
      identity: o.identity,
      kind: o.kind,
      what,
      ...(s === undefined ? {} : { source: s }),
      ...(t === undefined ? {} : { target: t }),
      accepted: accept.has(o.identity),
    });
  for (const [id, s] of src) {
    const t = tgt.get(id);
    if (!t) {
      add(s, 'missing-on-target', contentOf(s), undefined);
      continue;
    }
    if (definitionOf(s) !== definitionOf(t)) add(s, 'definition', definitionOf(s), definitionOf(t));
    if (s.owner !== t.owner) add(s, 'owner', s.owner, t.owner);
    const [sAcl, tAcl] = [new Set(s.acl ?? []), new Set(t.acl ?? [])];
    const onlySource = [...sAcl].filter((a) => !tAcl.has(a));
    const onlyTarget = [...tAcl].filter((a) => !sAcl.has(a));
    if (onlySource.length > 0 || onlyTarget.length > 0) add(s, 'acl', onlySource.join('; ') || undefined, onlyTarget.join('; ') || undefined);
    if (s.enabled !== t.enabled) add(s, 'enabled', s.enabled, t.enabled);
    if (s.comment !== t.comment) add(s, 'comment', s.comment, t.comment);
  }
  for (const [id, t] of tgt) if (!src.has(id)) add(t, 'extra-on-target', undefined, contentOf(t));
  const order = (w: SchemaDifferenceWhat) => SCHEMA_DIFFERENCE_WHATS.indexOf(w);
  return out.sort((a, b) => (a.identity < b.identity ? -1 : a.identity > b.identity ? 1 : order(a.what) - order(b.what)));
}

// ───────────────────────────── human text ─────────────────────────────

/** Two long texts cut around where they first differ, each on one line. */
function around(a: string, b: string): [string, string] {
  const max = 100;
  if (a.length <= max && b.length <= max) return [JSON.stringify(a), JSON.stringify(b)];
  let p = 0;
  while (p < a.length && p < b.length && a[p] === b[p]) p++;
  const from = Math.max(0, p - 30);
  const cut = (s: string) => `${from > 0 ? '…' : ''}${JSON.stringify(s.slice(from, from + max))}${from + max < s.length ? '…' : ''}`;
  return [cut(a), cut(b)];
}

const NONE = '(none)';

function describeDifference(d: SchemaDifference): string {
  switch (d.what) {
    case 'missing-on-target':
      return 'missing on the target';
    case 'extra-on-target':
      return 'on the target only, not on the source';
    case 'definition': {
      const [s, t] = around(d.source ?? '', d.target ?? '');
      return `definition differs: source ${s} vs target ${t}`;
    }
    case 'owner':
      return `owner differs: source ${d.source ?? NONE} vs target ${d.target ?? NONE}`;
    case 'acl':
      return `privileges differ: only on the source ${d.source ?? NONE}; only on the target ${d.target ?? NONE}`;
    case 'enabled':
      return `enabled state differs: source ${d.source ?? NONE} vs target ${d.target ?? NONE}`;
    case 'comment':
      return `comment differs: source ${d.source === undefined ? NONE : JSON.stringify(d.source)} vs target ${d.target === undefined ? NONE : JSON.stringify(d.target)}`;
  }
}

/**
 * The differences as text, one line each (`<object>: <what differs>`,
 * `[accepted]` after an accepted one); for none, one line saying the
 * schemas match, with the number of objects compared when given.
 */
export function formatSchemaDiff(diffs: SchemaDifference[], objectsCompared?: number): string {
  if (diffs.length === 0) {
    return objectsCompared === undefined
      ? `The target's schema matches the source.`
      : `The target's schema matches the source: ${objectsCompared} objects compared.`;
  }
  return diffs.map((d) => `${d.identity}: ${describeDifference(d)}${d.accepted ? ' [accepted]' : ''}`).join('\n');
}
