/**
 * apply-target — the target tables as the apply stage writes them: one
 * catalog read of their columns, each source relation mapped onto its
 * table, and whether values may travel in binary form.
 *
 * Input: the tables' qualified names, the stream's Relation messages, the
 * source's published columns. Output: `TargetTable`s, `RelMap`s, and the
 * reason a stream must send text (`TextModeNeeded` when it is found late).
 */
import { qi, qn } from './conn';
import { PgferryError } from './errors';
import type { Lsn } from './lsn';
import type { RelationMessage } from './pgoutput';
import type { ApplyMode, ApplySession } from './apply-session';

/** Statement text and parameter layout for one table, operation and set of sent columns (built in apply-shapes.ts, cached here per table). */
export interface Shape {
  /** null: the statement would change nothing (every column it could set is generated or unsent). */
  text: string | null;
  /** Source column index per `text[]` parameter, in parameter order. */
  cols: number[];
  /** INSERT: the COPY statement for long runs. */
  copyText?: string;
  /**
   * Binary INSERT: run after its COPY, in the same transaction, fails unless
   * the written columns still have the types the session read. A binary COPY
   * casts nothing: a column whose type changed on the target since (bigint
   * to double precision, say) would read the bytes as the new type without
   * an error. The COPY's lock keeps the type from changing after it.
   */
  copyCheck?: string;
}

/** A target table as the apply statements need it. */
export interface TargetColumn {
  name: string;
  /**
   * The type to cast the text value to: format_type without the modifier, so
   * the column's own modifier applies on assignment (an error when a value does
   * not fit, where an explicit cast would truncate it silently). Typeless
   * `character` and `bit` mean length 1, so those become bpchar / bit varying.
   */
  castType: string;
  generated: boolean;
  identityAlways: boolean;
  /** ` COLLATE x` when the column's collation is not its type's default (equality must use the column's). */
  collate: string;
  /** Its type has a collation (text-like): comparing two values may cost a locale comparison. */
  collatable: boolean;
  /** OID of `castType`: the element type of its binary array parameters. */
  castOid: number;
  /** The column's own type OID and modifier (schema-follow-columns.ts compares built-in ones with the stream's). */
  typeOid: number;
  typmod: number;
  /**
   * Values may travel in binary form (RelMap.binary): a built-in base type
   * (no user-type OIDs inside its binary form, the same OID on every server)
   * with binary send and receive functions, not an array (an array of arrays
   * cannot be one `unnest` parameter).
   */
  binaryOk: boolean;
}
export interface TargetTable {
  schema: string;
  name: string;
  quoted: string;
  partitioned: boolean;
  /**
   * Row counts of its statements are checked by the agent before COMMIT, not
   * by the server (checkedOnServer, apply-statements.ts): BEFORE INSERT row
   * triggers fire on it (or a partition) in the apply session, and one may
   * skip a row of a COPY; or it has rules, which a statement inside WITH
   * cannot go through.
   */
  countsHere: boolean;
  columns: Map<string, TargetColumn>;
}

/** A source relation mapped onto its target table. */
export interface RelMap {
  rel: RelationMessage;
  target: TargetTable;
  /** Target column per source column, null when the target generates it (never written). */
  cols: (TargetColumn | null)[];
  /** Source column indexes that are written (not generated on the target). */
  writeIdx: number[];
  keyIdx: number[];
  full: boolean;
  overriding: boolean;
  syncLsn: Lsn;
  /**
   * The stream sends this table's values in binary form (pgoutput 'b'):
   * statements take binary COPY rows and arrays of the column types. Only
   * when every written column is `binaryOk` with the source's type OID.
   */
  binary: boolean;
  /** Statement shapes by operation and sent-column mask. */
  shapes: Map<string, Shape>;
}

/**
 * A value came as text in a binary-mode stream (its type has no binary send
 * function on the source, or the source's type differs from what was
 * checked): the stream must be restarted in text mode. sync.ts does that
 * (the batch is rolled back and re-sent; nothing of it was committed).
 */
export class TextModeNeeded extends Error {
  constructor(
    readonly table: string,
    readonly column: string | null,
    why = `column ${column} of ${table} came as text in a binary stream`,
  ) {
    super(why);
    this.name = 'TextModeNeeded';
  }
}

/** The target tables named by `keys` (qualified, quoted names), by key; a table that does not exist is absent. */
export async function readTargets(session: ApplySession, keys: string[], mode: ApplyMode): Promise<Map<string, TargetTable>> {
  const out = new Map<string, TargetTable>();
  if (keys.length === 0) return out;
  // counts_here (see TargetTable.countsHere): rules on the table or any of
  // its partitions, or BEFORE INSERT row triggers that fire in this session
  // (session_replication_role replica: ENABLE REPLICA / ALWAYS ones; else
  // the ordinary ones too).
  const r = await session.query(
    `
    SELECT n.nspname AS schema, c.relname AS relname, c.relkind::text AS kind, a.attname AS name,
           EXISTS (SELECT 1 FROM pg_class p
                    WHERE (p.oid = c.oid OR p.oid IN (SELECT relid FROM pg_partition_tree(c.oid)))
                      AND (p.relhasrules OR EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = p.oid
                             AND g.tgenabled = ANY($2::"char"[]) AND (g.tgtype & 7) = 7))) AS counts_here,
           CASE a.atttypid WHEN 'bpchar'::regtype THEN 'bpchar' WHEN '_bpchar'::regtype THEN 'bpchar[]'
                           WHEN 'bit'::regtype THEN 'bit varying' WHEN '_bit'::regtype THEN 'bit varying[]'
                           ELSE format_type(a.atttypid, NULL) END AS cast_type,
           CASE a.atttypid WHEN 'bit'::regtype THEN 'varbit'::regtype ELSE a.atttypid END::int AS cast_oid,
           a.atttypid::int AS type_oid, a.atttypmod AS typmod,
           -- RelMap.binary: a built-in base type, not an array, with binary send and receive
           -- (not the reg* types: their binary form is the object's OID, which names another object, or none, on the target)
           -- (nor bit, whose values are cast to bit varying)
           a.atttypid < 16384 AND t.typtype = 'b' AND t.typcategory <> 'A' AND t.typsend <> 0 AND t.typreceive <> 0 AND t.typname NOT LIKE 'reg%' AND t.typname <> 'bit' AS binary_ok,
           a.attgenerated <> '' AS generated, a.attidentity = 'a' AS identity_always, t.typcollation <> 0 AS collatable,
           CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END AS collation
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_type t ON t.oid = a.atttypid
      LEFT JOIN pg_collation co ON co.oid = a.attcollation
      LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
     WHERE c.oid IN (SELECT to_regclass(k) FROM unnest($1::text[]) AS k) AND c.relkind IN ('r', 'p')
     ORDER BY c.oid, a.attnum`,
    [keys, mode === 'replica' ? ['R', 'A'] : ['O', 'A']],
  );
  for (const row of r.rows) {
    const key = qn(row.schema, row.relname);
    let t = out.get(key);
    if (!t) {
      t = {
        schema: row.schema,
        name: row.relname,
        quoted: key,
        partitioned: row.kind === 'p',
        countsHere: row.counts_here,
        columns: new Map<string, TargetColumn>(),
      };
      out.set(key, t);
    }
    if (row.name === null) continue;
    t.columns.set(row.name, {
      name: row.name,
      castType: row.cast_type,
      generated: row.generated,
      identityAlways: row.identity_always,
      collate: row.collation ? ` COLLATE ${row.collation}` : '',
      collatable: row.collatable,
      castOid: row.cast_oid,
      typeOid: row.type_oid,
      typmod: row.typmod,
      binaryOk: row.binary_ok,
    });
  }
  return out;
}

/** A column of `rel` that `target` lacks (the target has drifted), if any. */
export function missingColumn(rel: RelationMessage, target: TargetTable): RelationMessage['columns'][number] | undefined {
  return rel.columns.find((c) => !target.columns.has(c.name));
}

/**
 * `rel` mapped onto its target table `target` (undefined: the target lacks
 * it), for a stream that sends values in binary form when `binary`.
 */
export function relMap(rel: RelationMessage, key: string, target: TargetTable | undefined, syncLsn: Lsn, binary: boolean): RelMap {
  if (!target) {
    throw new PgferryError(
      'SCHEMA_DRIFT',
      `Table ${key} receives changes from the source but does not exist on the target.`,
      `Create ${key} on the target with the source's definition, then start the migration again with the same spec (pgferry start --spec FILE, or pulumi up), which resumes it.`,
    );
  }
  const lacking = missingColumn(rel, target);
  if (lacking) {
    throw new PgferryError(
      'SCHEMA_DRIFT',
      `Column ${qi(lacking.name)} of table ${key} exists on the source but not on the target.`,
      `Add the column on the target (ALTER TABLE ${key} ADD COLUMN ${qi(lacking.name)} <its type on the source>), then start the migration again with the same spec (pgferry start --spec FILE, or pulumi up), which resumes it.`,
    );
  }
  const cols = rel.columns.map((c) => {
    const t = target.columns.get(c.name)!;
    return t.generated ? null : t;
  });
  const writeIdx = cols.flatMap((c, i) => (c ? [i] : []));
  const map: RelMap = {
    rel,
    target,
    cols,
    writeIdx,
    keyIdx: rel.replicaIdentity === 'f' ? [] : rel.keyIndexes,
    // No key columns: UPDATE/DELETE can only have reached us with a full old
    // tuple ('O'), e.g. a partitioned root without a key whose leaf
    // partitions are REPLICA IDENTITY FULL (the source refuses them otherwise).
    full: rel.replicaIdentity === 'f' || rel.keyIndexes.length === 0,
    overriding: writeIdx.some((i) => cols[i]!.identityAlways),
    syncLsn,
    binary,
    shapes: new Map(),
  };
  if (binary) {
    // sync.ts checked the source's catalog before it chose binary; the
    // stream's own description of the table has the last word (a column's
    // type may have changed since). REPLICA IDENTITY FULL rows are matched
    // as the source's text (see `singleStatement`), so they need text too.
    if (map.full) throw new TextModeNeeded(key, null, keylessReason(key));
    for (const i of writeIdx) {
      const why = notBinaryReason(key, rel.columns[i].name, cols[i]!, rel.columns[i].typeOid);
      if (why) throw new TextModeNeeded(key, qi(rel.columns[i].name), why);
    }
  }
  return map;
}

/** A column the source publishes, as `binaryBlocker` checks it. */
export interface PublishedColumn {
  schema: string;
  table: string;
  identity: string;
  column: string;
  typeOid: number;
}

/**
 * What keeps the stream from sending binary values (null: nothing), given
 * the source's published columns and the target tables read so far: a table
 * without a replica identity key (`identity` 'f': its rows are matched as
 * text), or a column whose target type is not `binaryOk` or is not the
 * source's type. Tables the target lacks are left to `relMap`, which names them.
 */
export function binaryBlocker(targets: Map<string, TargetTable>, columns: PublishedColumn[]): string | null {
  for (const c of columns) {
    const key = qn(c.schema, c.table);
    const t = targets.get(key);
    if (!t) continue;
    if (c.identity === 'f') return keylessReason(key);
    const col = t.columns.get(c.column);
    if (!col || col.generated) continue;
    const why = notBinaryReason(key, c.column, col, c.typeOid);
    if (why) return why;
  }
  return null;
}

/** Why a table's values cannot travel in binary form: it has no replica identity key. */
function keylessReason(key: string): string {
  return `${key} has no replica identity key (REPLICA IDENTITY FULL or none): its rows are matched as text`;
}

/** Why a column's values cannot travel in binary form (null: they can), given the source's type OID. */
function notBinaryReason(key: string, column: string, col: TargetColumn, sourceTypeOid: number): string | null {
  if (!col.binaryOk) return `${key}.${qi(column)} is of a type whose values travel only as text (user-defined, domain, array, range, reg* or bit)`;
  if (col.castOid !== sourceTypeOid) return `${key}.${qi(column)} has another type on the target (${col.castType})`;
  return null;
}
