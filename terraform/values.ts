/**
 * values — Terraform's values on the wire: cty types and their msgpack
 * encoding (`DynamicValue.msgpack`), read and written with @msgpack/msgpack.
 *
 * The encoding (Terraform's docs/plugin-protocol/object-wire-format.md): an
 * object is a map holding every attribute of its type (null when absent), a
 * list or set an array, a map a map, a number an integer, a float or a
 * decimal string; an unknown value is any msgpack extension (type 0, or 12
 * with refinements), written here as type 0; a value of the `dynamic` type
 * is a pair [type as JSON, value]. Unknown values become the provider's
 * UNKNOWN sentinel, as in a Pulumi preview, so the shared checks treat them
 * alike.
 *
 * Input: msgpack bytes and the schema's type. Output: plain JS values (and
 * back).
 */
import { ExtData, ExtensionCodec, decode, encode } from '@msgpack/msgpack';
import { UNKNOWN } from '../provider/args';

/** A cty type, as its JSON form: `"string"`, `["list","string"]`, `["object",{…}]`, `"dynamic"`. */
export type CtyType =
  'string' | 'number' | 'bool' | 'dynamic' | readonly ['list' | 'set' | 'map', CtyType] | readonly ['object', { readonly [name: string]: CtyType }];

/** Terraform's unknown value: extension 0 with one zero byte, as Terraform itself writes it. */
const UNKNOWN_EXT = new ExtData(0, Uint8Array.of(0));

const codec = new ExtensionCodec();
for (const type of [0, 12]) {
  // Every extension Terraform sends means "unknown" (12 carries refinements we do not need).
  codec.register({ type, encode: () => null, decode: () => UNKNOWN });
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);

/** Read a value of type `type` from what @msgpack/msgpack decoded. */
function fromWire(raw: unknown, type: CtyType): unknown {
  if (raw === null || raw === undefined) return null;
  if (raw === UNKNOWN) return UNKNOWN;
  if (type === 'dynamic') {
    // JSON state writes a dynamic value as { value, type }; msgpack as [type, value].
    if (isRecord(raw) && 'type' in raw && 'value' in raw) return fromWire(raw.value, raw.type as CtyType);
    if (!Array.isArray(raw) || raw.length !== 2) throw new Error(`a dynamic value must be [type, value], got ${typeof raw}`);
    return fromWire(raw[1], JSON.parse(Buffer.from(raw[0] as Uint8Array).toString('utf8')) as CtyType);
  }
  if (type === 'number') return typeof raw === 'string' ? Number(raw) : typeof raw === 'bigint' ? Number(raw) : raw;
  if (type === 'string' || type === 'bool') return raw;
  const [kind, inner] = type;
  if (kind === 'list' || kind === 'set') return (raw as unknown[]).map((x) => fromWire(x, inner as CtyType));
  if (kind === 'map') {
    return Object.fromEntries(Object.entries(raw as Record<string, unknown>).map(([k, x]) => [k, fromWire(x, inner as CtyType)]));
  }
  const attrs = inner as { readonly [name: string]: CtyType };
  const obj = raw as Record<string, unknown>;
  return Object.fromEntries(Object.entries(attrs).map(([k, t]) => [k, fromWire(obj[k], t)]));
}

/** The cty type of a plain JS value (for a `dynamic` attribute). */
export function typeOf(v: unknown): CtyType {
  if (typeof v === 'number') return 'number';
  if (typeof v === 'boolean') return 'bool';
  if (Array.isArray(v)) {
    const types = [...new Set(v.map((x) => JSON.stringify(typeOf(x))))];
    return ['list', types.length === 1 ? (JSON.parse(types[0]!) as CtyType) : 'string'];
  }
  if (isRecord(v)) return ['object', Object.fromEntries(Object.entries(v).map(([k, x]) => [k, typeOf(x)]))];
  return 'string';
}

/** Write a value of type `type` as @msgpack/msgpack encodes it. */
function toWire(v: unknown, type: CtyType): unknown {
  if (v === UNKNOWN) return UNKNOWN_EXT;
  if (v === null || v === undefined) return null;
  if (type === 'dynamic') {
    const t = typeOf(v);
    return [Buffer.from(JSON.stringify(t)), toWire(v, t)];
  }
  if (type === 'string') return typeof v === 'string' ? v : JSON.stringify(v);
  if (type === 'number' || type === 'bool') return v;
  const [kind, inner] = type;
  if (kind === 'list' || kind === 'set') return (v as unknown[]).map((x) => toWire(x, inner as CtyType));
  if (kind === 'map') return Object.fromEntries(Object.entries(v as Record<string, unknown>).map(([k, x]) => [k, toWire(x, inner as CtyType)]));
  const attrs = inner as { readonly [name: string]: CtyType };
  const obj = v as Record<string, unknown>;
  return Object.fromEntries(Object.entries(attrs).map(([k, t]) => [k, toWire(obj[k], t)]));
}

/** Decode a `DynamicValue`: msgpack (plan, apply, config) or JSON (raw state). Empty means null. */
export function decodeValue(dv: { msgpack?: Buffer | Uint8Array; json?: Buffer | Uint8Array } | null | undefined, type: CtyType): unknown {
  if (dv?.msgpack && dv.msgpack.length > 0) return fromWire(decode(dv.msgpack, { extensionCodec: codec }), type);
  if (dv?.json && dv.json.length > 0) return fromWire(JSON.parse(Buffer.from(dv.json).toString('utf8')), type);
  return null;
}

/** Encode a value of `type` as a `DynamicValue` (msgpack). */
export function encodeValue(v: unknown, type: CtyType): { msgpack: Buffer } {
  return { msgpack: Buffer.from(encode(toWire(v, type), { extensionCodec: codec })) };
}

/** The JSON bytes of a type, as `Schema.Attribute.type` carries it. */
export function typeJson(type: CtyType): Buffer {
  return Buffer.from(JSON.stringify(type));
}

/** True when `v` is, or contains, an unknown value. */
export function hasUnknown(v: unknown): boolean {
  if (v === UNKNOWN) return true;
  if (Array.isArray(v)) return v.some(hasUnknown);
  if (isRecord(v)) return Object.values(v).some(hasUnknown);
  return false;
}
