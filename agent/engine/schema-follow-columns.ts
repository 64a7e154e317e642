/**
 * schema-follow-columns — a table's columns changed on the source, and the
 * target follows at that point of the stream: columns added, dropped,
 * renamed, or of another type.
 *
 * Input: the stream's Relation message of a table (its published columns at
 * that point of the stream, in column-number order), the target's columns,
 * the source's catalog, and the record of which source column number each
 * target column follows (`pgferry.follow_columns`). Output: the ALTER TABLE
 * statements that give the target that shape, run by the apply inside the
 * batch's target transaction (apply.ts `followShape`), so a change and the
 * applied position commit together (a kill -9 replays both).
 *
 * Why the record: a Relation message names columns but does not number them,
 * so `note` renamed to `remark` looks like a drop and an add. A rename keeps
 * its column number (attnum) on the source, a drop and add does not; the
 * record keeps each target column's source number from when the table was
 * first streamed, and moves with every change followed. The source's catalog
 * is read now, which may be ahead of the stream (a later change already
 * made): names are matched through it only where it cannot mislead, and a
 * column the record cannot attribute to the source is left alone (never
 * dropped). What the stream cannot say exactly (NOT NULL, defaults changed
 * later, identity) is set at the fence, where the stream has caught up with
 * the catalog (`fenceColumnChanges`).
 */
import type pg from 'pg';
import { connect, qi, qn, ql } from './conn';
import { isTransientError, PgferryError, redact } from './errors';
import type { Endpoint } from './spec';
import type { RelationMessage } from './pgoutput';
import type { TargetTable } from './apply-target';

/** Target column name → the source column number it follows. */
export type ColumnRecord = Map<string, number>;

/** A live column of a table, as the catalog describes it (both sides read alike). */
export interface CatalogColumn {
  attnum: number;
  name: string;
  /** format_type with its modifier, every non-built-in name schema-qualified. */
  type: string;
  notNull: boolean;
  default: string | null;
  generated: boolean;
}

/** One change made on the target. */
export interface ShapeChange {
  /** The column (`public.t.c`) or table. */
  object: string;
  change: string;
  statement: string;
}

/**
 * Live columns of the tables `keys` (qualified, quoted names), by key.
 * Under search_path pg_catalog, so types and defaults print qualified.
 */
export async function readCatalogColumns(c: pg.Client | { query: pg.Client['query'] }, keys: string[]): Promise<Map<string, CatalogColumn[]>> {
  const out = new Map<string, CatalogColumn[]>();
  if (keys.length === 0) return out;
  const r = await (c as pg.Client).query(
    `SELECT n.nspname AS schema, c.relname AS table, a.attnum, a.attname AS name,
            pg_catalog.format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null,
            pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS def, a.attgenerated <> '' AS generated
       FROM pg_catalog.pg_attribute a
       JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
       LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE a.attrelid IN (SELECT pg_catalog.to_regclass(k) FROM unnest($1::text[]) AS k) AND a.attnum > 0 AND NOT a.attisdropped
      ORDER BY c.oid, a.attnum`,
    [keys],
  );
  for (const row of r.rows) {
    const key = qn(row.schema, row.table);
    let list = out.get(key);
    if (!list) out.set(key, (list = []));
    list.push({ attnum: row.attnum, name: row.name, type: row.type, notNull: row.not_null, default: row.def, generated: row.generated });
  }
  return out;
}

/** Run `fn` with search_path pg_catalog on `c` (inside the caller's transaction when there is one: SET LOCAL would end with it). */
export async function withCatalogPath<T>(c: { query: pg.Client['query'] }, fn: () => Promise<T>): Promise<T> {
  const saved = (await (c as pg.Client).query("SELECT current_setting('search_path') AS sp")).rows[0].sp as string;
  await (c as pg.Client).query("SELECT pg_catalog.set_config('search_path', 'pg_catalog', false)");
  try {
    return await fn();
  } finally {
    await (c as pg.Client).query('SELECT pg_catalog.set_config($1, $2, false)', ['search_path', saved]).catch(() => undefined);
  }
}

/** The record of a table first seen: each target column that the source has (not generated), by its source number. */
export function initialRecord(target: Pick<TargetTable, 'columns'>, source: CatalogColumn[]): ColumnRecord {
  const rec: ColumnRecord = new Map();
  for (const s of source) if (!s.generated && target.columns.has(s.name) && !target.columns.get(s.name)!.generated) rec.set(s.name, s.attnum);
  return rec;
}

/**
 * A Relation message that the target's shape does not match (cheap: no
 * catalog read): a column the target lacks, a column the record attributes
 * to the source that the stream no longer sends, or a built-in column type
 * that differs (user types have other OIDs on the target: compared by name
 * at the fence).
 */
export function shapeDiffers(
  rel: RelationMessage,
  target: TargetTable,
  record: ColumnRecord | undefined,
  before: RelationMessage | undefined,
  typesFromTarget: boolean,
): boolean {
  const sent = new Set<string>();
  const was = new Map(before?.columns.map((c) => [c.name, c]));
  for (const c of rel.columns) {
    sent.add(c.name);
    const t = target.columns.get(c.name);
    if (!t) return true;
    // A type the stream changed; or, when pgferry created the target (not the user's own schema, whose
    // types may differ on purpose), a built-in type the target does not have.
    const w = was.get(c.name);
    if (w && (w.typeOid !== c.typeOid || w.typeMod !== c.typeMod)) return true;
    if (!w && typesFromTarget && c.typeOid < 16384 && (t.typeOid !== c.typeOid || t.typmod !== c.typeMod)) return true;
  }
  if (record) for (const name of record.keys()) if (!sent.has(name) && target.columns.has(name)) return true;
  return false;
}

/** A column as the stream (or, at the fence, the catalog) says the source has it now. */
export interface WantedColumn {
  name: string;
  /** Its source number, when known. */
  attnum?: number;
  type: string;
  default: string | null;
  notNull: boolean;
}

export interface ShapePlan {
  changes: ShapeChange[];
  /** The record once these changes are made. */
  record: ColumnRecord;
  /** Target columns not attributed to the source that the source does not send: left as they are. */
  kept: string[];
}

/**
 * The statements that turn the target's columns `current` into `wanted`
 * (both in column-number order; generated columns left out of both).
 * `exact`: `wanted` is the source at the target's point (the fence): NOT
 * NULL and defaults are followed too; in the stream they are the catalog's
 * now, which may be ahead, so only an added column's default is taken (its
 * existing rows get the value the source gave them).
 */
export function planShape(key: string, current: CatalogColumn[], wanted: WantedColumn[], record: ColumnRecord, exact: boolean): ShapePlan {
  const cur = current.filter((c) => !c.generated);
  const curByName = new Map(cur.map((c) => [c.name, c]));
  const wantedNames = new Set(wanted.map((w) => w.name));
  const fresh = wanted.filter((w) => !curByName.has(w.name));
  const gone = cur.filter((c) => !wantedNames.has(c.name));
  const next: ColumnRecord = new Map(record);
  const changes: ShapeChange[] = [];
  const kept: string[] = [];
  const used = new Set<WantedColumn>();
  const renamedFrom = new Set<string>();
  const col = (name: string) => `${key}.${qi(name)}`;
  // Renames: the stream's new name is at the number the record has for the old one.
  for (const g of gone) {
    const num = record.get(g.name);
    if (num === undefined) continue;
    let to = fresh.find((w) => !used.has(w) && w.attnum === num);
    // The catalog is ahead (renamed again since): the only new name it cannot number, at the old one's place.
    if (!to && !wanted.some((w) => w.attnum === num)) {
      const unknown = fresh.filter((w) => !used.has(w) && w.attnum === undefined);
      if (unknown.length === 1 && gone.filter((x) => record.has(x.name)).length === 1) to = unknown[0];
    }
    if (!to) continue;
    used.add(to);
    renamedFrom.add(g.name);
    next.delete(g.name);
    next.set(to.name, num);
    changes.push({
      object: col(to.name),
      change: `column renamed from ${g.name}`,
      statement: `ALTER TABLE ${key} RENAME COLUMN ${qi(g.name)} TO ${qi(to.name)}`,
    });
    curByName.delete(g.name);
    curByName.set(to.name, { ...g, name: to.name });
  }
  for (const g of gone) {
    if (renamedFrom.has(g.name)) continue;
    if (!record.has(g.name)) {
      kept.push(g.name); // not known to come from the source: pgferry does not drop it
      continue;
    }
    next.delete(g.name);
    curByName.delete(g.name);
    changes.push({ object: col(g.name), change: 'column dropped', statement: `ALTER TABLE ${key} DROP COLUMN ${qi(g.name)}` });
  }
  for (const w of wanted) {
    const c = curByName.get(w.name);
    if (!c) continue;
    if (c.type !== w.type) {
      changes.push({
        object: col(w.name),
        change: `type changed from ${c.type} to ${w.type}`,
        statement: `ALTER TABLE ${key} ALTER COLUMN ${qi(w.name)} TYPE ${w.type} USING ${qi(w.name)}::${w.type}`,
      });
    }
    if (exact && c.default !== w.default) {
      const st = w.default === null ? 'DROP DEFAULT' : `SET DEFAULT ${w.default}`;
      changes.push({
        object: col(w.name),
        change: w.default === null ? 'default dropped' : 'default set',
        statement: `ALTER TABLE ${key} ALTER COLUMN ${qi(w.name)} ${st}`,
      });
    }
    if (exact && c.notNull !== w.notNull) {
      const st = w.notNull ? 'SET NOT NULL' : 'DROP NOT NULL';
      changes.push({
        object: col(w.name),
        change: w.notNull ? 'NOT NULL set' : 'NOT NULL dropped',
        statement: `ALTER TABLE ${key} ALTER COLUMN ${qi(w.name)} ${st}`,
      });
    }
  }
  for (const w of fresh) {
    if (used.has(w)) continue;
    const def = w.default !== null ? ` DEFAULT ${w.default}` : '';
    const nn = exact && w.notNull ? ' NOT NULL' : '';
    changes.push({ object: col(w.name), change: 'column added', statement: `ALTER TABLE ${key} ADD COLUMN ${qi(w.name)} ${w.type}${def}${nn}` });
    if (w.attnum !== undefined) next.set(w.name, w.attnum);
  }
  return { changes, record: next, kept };
}

/**
 * The stream's columns of `rel` as `planShape` wants them: types formatted
 * on the source from the message's own type OIDs and modifiers (exact at
 * that point of the stream), numbers and an added column's default from the
 * catalog (only for a name the catalog still has).
 */
export async function wantedFromStream(src: pg.Client, rel: RelationMessage, catalog: CatalogColumn[]): Promise<WantedColumn[]> {
  const r = await withCatalogPath(src, () =>
    src.query('SELECT pg_catalog.format_type(o, m) AS t FROM unnest($1::oid[], $2::int[]) WITH ORDINALITY AS x(o, m, i) ORDER BY i', [
      rel.columns.map((c) => c.typeOid),
      rel.columns.map((c) => c.typeMod),
    ]),
  );
  const byName = new Map(catalog.map((c) => [c.name, c]));
  return rel.columns.map((c, i) => {
    const s = byName.get(c.name);
    const type = r.rows[i].t as string;
    // The catalog's column of that name is this one only if it has the stream's type.
    const same = s && !s.generated && s.type === type;
    return { name: c.name, attnum: same ? s.attnum : undefined, type, default: same ? s.default : null, notNull: same ? s.notNull : false };
  });
}

/** The records of a migration's tables, from the target. */
export async function readRecords(tgt: { query: pg.Client['query'] }, migrationId: string): Promise<Map<string, ColumnRecord>> {
  const r = await (tgt as pg.Client).query('SELECT table_name, attnums FROM pgferry.follow_columns WHERE migration_id = $1', [migrationId]);
  return new Map(r.rows.map((row) => [row.table_name as string, new Map(Object.entries(row.attnums as Record<string, number>))]));
}

/** Upsert one table's record (in the caller's transaction). */
export function recordStatement(migrationId: string, key: string, rec: ColumnRecord): string {
  return `INSERT INTO pgferry.follow_columns (migration_id, table_name, attnums) VALUES (${ql(migrationId)}, ${ql(key)}, ${ql(JSON.stringify(Object.fromEntries(rec)))}::jsonb)
    ON CONFLICT (migration_id, table_name) DO UPDATE SET attnums = EXCLUDED.attnums`;
}

/** Note one applied change in `pgferry.schema_changes` (in the caller's transaction). */
export function changeRecordStatement(migrationId: string, c: ShapeChange): string {
  return `INSERT INTO pgferry.schema_changes (migration_id, object, change, statement) VALUES (${ql(migrationId)}, ${ql(c.object)}, ${ql(c.change)}, ${ql(c.statement)})`;
}

/** Something that runs SQL on the target: the apply session, inside the batch's transaction. */
export type RunSql = (text: string, values?: unknown[]) => Promise<pg.QueryResult>;

/**
 * The stream-order follower of one apply session (apply.ts): the records of
 * the migration's tables, and a source connection of its own for the
 * catalog (opened on the first change to follow).
 */
export class ShapeFollower {
  private records = new Map<string, ColumnRecord>();
  private src: pg.Client | null = null;
  /** The stream's last description of each table in this session. */
  private readonly seen = new Map<string, RelationMessage>();
  /** Tables whose last description was the session's first (compared with the target, not with the stream). */
  private readonly firstSeen = new Set<string>();

  /** `typesFromTarget`: pgferry created the target's tables (schemaMode 'create'), so their types are the source's. */
  constructor(
    private readonly migrationId: string,
    private readonly source: Endpoint,
    private readonly typesFromTarget: boolean,
  ) {}

  /**
   * Read the records; a table without one (first streamed, or by an agent
   * before this) gets one from the source's catalog now, written at once.
   */
  async init(run: RunSql, targets: Map<string, Pick<TargetTable, 'columns'>>): Promise<void> {
    this.records = await readRecords({ query: run } as unknown as pg.Client, this.migrationId);
    const missing = [...targets.keys()].filter((k) => !this.records.has(k));
    if (missing.length === 0) return;
    const src = await this.connection();
    const catalog = await withCatalogPath(src, () => readCatalogColumns(src, missing));
    const sts: string[] = [];
    for (const key of missing) {
      const cols = catalog.get(key);
      if (!cols) continue;
      const rec = initialRecord(targets.get(key)!, cols);
      this.records.set(key, rec);
      sts.push(recordStatement(this.migrationId, key, rec));
    }
    if (sts.length) await run(sts.join(';\n'));
  }

  /** The stream's shape of `rel` is not the target's (see `shapeDiffers`). */
  differs(rel: RelationMessage, key: string, target: TargetTable): boolean {
    const before = this.seen.get(key);
    this.seen.set(key, rel);
    if (before) this.firstSeen.delete(key);
    else this.firstSeen.add(key);
    return shapeDiffers(rel, target, this.records.get(key), before, this.typesFromTarget);
  }

  /**
   * Make the target's columns of `key` what `rel` says, with `run` inside the
   * batch's target transaction: the statements, the new record and one
   * `pgferry.schema_changes` row each. A statement the target refuses
   * throws SCHEMA_DRIFT naming it (the caller rolls the batch back).
   */
  async follow(rel: RelationMessage, key: string, target: Pick<TargetTable, 'columns'>, run: RunSql): Promise<ShapePlan> {
    const src = await this.connection();
    const catalog = (await withCatalogPath(src, () => readCatalogColumns(src, [key]))).get(key) ?? [];
    const wanted = await wantedFromStream(src, rel, catalog);
    const tq = { query: run } as unknown as pg.Client;
    const current = (await withCatalogPath(tq, () => readCatalogColumns(tq, [key]))).get(key) ?? [];
    const record = this.records.get(key) ?? initialRecord(target, catalog);
    if (this.firstSeen.has(key)) keepTypesAhead(wanted, current, catalog);
    const plan = planShape(key, current, wanted, record, false);
    await runChanges(run, this.migrationId, key, plan);
    this.records.set(key, plan.record);
    return plan;
  }

  async close(): Promise<void> {
    const c = this.src;
    this.src = null;
    await c?.end().catch(() => undefined);
  }

  private async connection(): Promise<pg.Client> {
    return (this.src ??= await connect('source', this.source, { applicationName: 'pgferry-follow' }));
  }
}

/**
 * The session's first description of a table, replayed from before a change
 * the target already has (a fix made by hand after a change pgferry could not
 * follow, or a change followed before a restart): a column whose target type
 * is the source's type now is not turned back to the stream's older one.
 */
function keepTypesAhead(wanted: WantedColumn[], current: CatalogColumn[], catalog: CatalogColumn[]): void {
  const cur = new Map(current.map((c) => [c.name, c]));
  const cat = new Map(catalog.map((c) => [c.name, c]));
  for (const w of wanted) {
    const t = cur.get(w.name);
    if (t && t.type !== w.type && cat.get(w.name)?.type === t.type) w.type = t.type;
  }
}

/** Run a plan's statements, its record and its change rows; a refused statement throws SCHEMA_DRIFT naming it. */
export async function runChanges(run: RunSql, migrationId: string, key: string, plan: ShapePlan): Promise<void> {
  for (const c of plan.changes) {
    try {
      await run(c.statement);
    } catch (e) {
      if (isTransientError(e)) throw e;
      throw new PgferryError(
        'SCHEMA_DRIFT',
        `The source changed ${c.object} (${c.change}) and the target refused to follow: ${redact((e as Error).message)} (statement: ${c.statement}).`,
        `Make the change on the target by hand (for a type change, ALTER TABLE ... ALTER COLUMN ... TYPE ... USING an expression that converts the values), then resume the migration (pgferry resume ${migrationId}, or start it again with the same spec: pgferry start --spec FILE, or pulumi up): it goes on from the change and follows the source from there.`,
      );
    }
  }
  if (plan.changes.length === 0) return;
  await run([recordStatement(migrationId, key, plan.record), ...plan.changes.map((c) => changeRecordStatement(migrationId, c))].join(';\n'));
}

/**
 * At the fence (the stream drained: the catalog is the stream's point), the
 * column changes of every table in `keys` that the stream did not bring
 * (a table with no row changed since), NOT NULL and defaults included.
 */
export async function fenceColumnChanges(src: pg.Client, tgt: pg.Client, migrationId: string, keys: string[]): Promise<Map<string, ShapePlan>> {
  const [srcCat, tgtCat] = [await withCatalogPath(src, () => readCatalogColumns(src, keys)), await withCatalogPath(tgt, () => readCatalogColumns(tgt, keys))];
  const records = await readRecords(tgt, migrationId);
  const out = new Map<string, ShapePlan>();
  for (const key of keys) {
    const s = srcCat.get(key);
    const t = tgtCat.get(key);
    if (!s || !t) continue;
    const wanted = s.filter((c) => !c.generated).map((c) => ({ name: c.name, attnum: c.attnum, type: c.type, default: c.default, notNull: c.notNull }));
    const record = records.get(key) ?? initialRecord({ columns: new Map(t.map((c) => [c.name, { generated: c.generated }])) } as never, s);
    const plan = planShape(key, t, wanted, record, true);
    if (plan.changes.length) out.set(key, plan);
  }
  return out;
}
