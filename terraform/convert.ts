/**
 * convert — between Terraform's values and the Pulumi provider's: attribute
 * names (snake_case ↔ camelCase, by the schema, so a map's keys such as
 * role names stay as given), argument paths (`tables.include[1]` → an
 * AttributePath), and the shared messages (argument names in backticks and
 * Pulumi commands put in Terraform's words).
 *
 * Input: decoded Terraform objects and schema attributes. Output: the plain
 * props the provider's lifecycle takes, and back.
 */
import { ARG_NAMES, UNKNOWN } from '../provider/args';
import { argumentAttrs, impliedType, type Attr } from './schema';
import type { CtyType } from './values';

export type Props = Record<string, unknown>;
const isRecord = (v: unknown): v is Props => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A Terraform object → the provider's props: camelCase keys, null left out, unknown kept as the sentinel. */
export function toProps(value: unknown, attrs: readonly Attr[]): Props {
  const out: Props = {};
  if (!isRecord(value)) return out;
  for (const a of attrs) {
    const v = value[a.name];
    if (v === null || v === undefined) continue;
    out[a.key] = v === UNKNOWN ? UNKNOWN : a.nested ? toProps(v, a.nested) : v;
  }
  return out;
}

/** The provider's props → a Terraform object holding every attribute (null when absent). */
export function fromProps(props: Props | undefined, attrs: readonly Attr[]): Props {
  const out: Props = {};
  for (const a of attrs) {
    const v = props?.[a.key];
    if (v === undefined || v === null) out[a.name] = null;
    else if (v === UNKNOWN) out[a.name] = UNKNOWN;
    else out[a.name] = a.nested ? (isRecord(v) ? fromProps(v, a.nested) : null) : v;
  }
  return out;
}

/** One step of an AttributePath as the proto has it. */
export type PathStep = { attribute_name: string } | { element_key_string: string } | { element_key_int: number };

/**
 * A provider argument path (`source.port`, `tables.include[1]`,
 * `roles.map.app_owner`) as Terraform's steps and its Terraform spelling.
 * A path the schema does not know ends where the schema does.
 */
export function pathOf(property: string, attrs: readonly Attr[] = argumentAttrs()): { steps: PathStep[]; name: string } {
  const tokens = [...property.matchAll(/([^.[\]]+)|\[(\d+)\]/g)].map((m) => (m[2] !== undefined ? Number(m[2]) : m[1]!));
  const steps: PathStep[] = [];
  const names: string[] = [];
  let level: readonly Attr[] | undefined = attrs;
  let type: CtyType | undefined;
  for (const t of tokens) {
    if (typeof t === 'number') {
      steps.push({ element_key_int: t });
      names[names.length - 1] += `[${t}]`;
      type = Array.isArray(type) && type[0] !== 'object' ? (type[1] as CtyType) : undefined;
      continue;
    }
    if (Array.isArray(type) && type[0] === 'map') {
      steps.push({ element_key_string: t });
      names.push(t);
      type = type[1] as CtyType;
      level = undefined;
      continue;
    }
    const a: Attr | undefined = level?.find((x) => x.key === t || x.name === t);
    if (!a) break;
    steps.push({ attribute_name: a.name });
    names.push(a.name);
    level = a.nested;
    type = a.nested ? undefined : impliedType(a);
  }
  return { steps, name: names.join('.') };
}

/** Pulumi's words for what to run, and Terraform's. */
const COMMANDS: Array<[RegExp, string]> = [
  [/`?pulumi up`?/g, '`terraform apply`'],
  [/`?pulumi preview`?/g, '`terraform plan`'],
  [/`?pulumi refresh`?/g, '`terraform apply -refresh-only`'],
  [/`?pulumi destroy`?/g, '`terraform destroy`'],
  [/`?pulumi state delete`?/g, '`terraform state rm`'],
];

/**
 * A shared message in Terraform's words: every backticked argument path
 * (`cutoverOptions.timeoutMs`) as its attribute (`cutover_options.timeout_ms`),
 * and the Pulumi commands as Terraform's.
 */
export function terraformText(message: string): string {
  const args = new Set<string>(ARG_NAMES);
  let text = message.replace(/`([A-Za-z_][A-Za-z0-9_]*)((?:\.[^`.\s[\]:]+|\[\d+\])*)(: [^`]*)?`/g, (whole, head: string, rest: string, value?: string) => {
    if (!args.has(head)) return whole;
    const p = pathOf(`${head}${rest}`);
    if (p.name.split(/[.[]/).length < `${head}${rest}`.split(/[.[]/).length) return whole;
    // `schemaMode: 'existing'` (a Pulumi argument with its value) is `schema_mode = "existing"` here.
    return value ? `\`${p.name} = ${value.slice(2).replace(/'([^']*)'/g, '"$1"')}\`` : `\`${p.name}\``;
  });
  for (const [re, to] of COMMANDS) text = text.replace(re, to);
  return text;
}
