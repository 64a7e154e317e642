/**
 * schema — the schema stage: the DDL the selected tables need on the target,
 * built from the SOURCE catalog (never pg_dump: its version would have to
 * match the source, which may be an older major than the target).
 *
 * Input: a source connection and the `TableInfo[]` of `selectTables()`.
 * Output: a `SchemaPlan`:
 *   - `preData`, run before the load in ONE target transaction by
 *     `applyPreData()` (schema-apply.ts): schemas, extensions, collations,
 *     sequences (values are set at cutover), types (recursively,
 *     dependencies first), tables and partitions (parents first),
 *     PRIMARY KEY / UNIQUE / CHECK constraints, sequence ownership;
 *   - `postData`, run after the load (by indexes.ts, several at once):
 *     secondary indexes, EXCLUDE constraints, replica identities, then
 *     foreign keys. Each post-data statement is independent of the others of
 *     its wave and carries an `existsSql` probe so a rerun skips what is built;
 *   - `sequences` for the cutover to set, and `warnings` for what is not
 *     migrated (triggers, policies, foreign keys to unselected tables,
 *     functions the DDL needs but pgferry does not create).
 *
 * The catalog reads are in schema-read.ts, the DDL of each object in
 * schema-ddl.ts; this file holds the plan, one step per object class;
 * schema-apply.ts runs it on the target.
 */
import type pg from 'pg';
import type { TableInfo } from './catalog';
import { qi, qn, ql } from './conn';
import { PgferryError } from './errors';
import {
  BUILTIN_SCHEMAS,
  readCollations,
  readColumns,
  readConstraints,
  readIndexes,
  readRelations,
  readSequences,
  readTypeGraph,
  typeChildren,
  withCanonicalSettings,
  type ColRow,
  type ConRow,
  type IndexRow,
  type RelRow,
  type SeqRow,
  type TypeGraph,
} from './schema-read';
import {
  collationStatement,
  columnDefinition,
  constraintExistsSql,
  relationExistsSql,
  replicaIdentityIndexExistsSql,
  sequenceOptions,
  typeStatements,
  type SchemaStatement,
} from './schema-ddl';

import { readSchemaOids, readSchemaTypes } from './schema-objects-read';
import { planObjects, type MatviewRef } from './schema-objects-plan';
import { NO_ROLE_MAPPING, type RoleMapping } from './schema-privileges';

export type { MatviewRef } from './schema-objects-plan';
export { NO_ROLE_MAPPING, type RoleMapping } from './schema-privileges';
export { SCHEMA_STATEMENT_KINDS, type SchemaStatement, type SchemaStatementKind } from './schema-ddl';
export { applyFinish, applyPostDataStatement, applyPreData, verifyExistingSchema, type ApplyPreDataOptions } from './schema-apply';

export interface SequenceRef {
  schema: string;
  name: string;
  /** Owning column, if any, as 'schema.table.column' (each part quoted with `qi`). */
  ownedBy?: string;
}

export interface SchemaPlan {
  /** Before the load, in one transaction, in dependency order. */
  preData: SchemaStatement[];
  /** After the load: indexes, constraints, foreign keys (parallel waves). */
  postData: SchemaStatement[];
  /**
   * After the post-data, in one transaction: statistics, materialized views
   * refreshed, triggers and rules (disabled), policies, comments, owners,
   * grants and default privileges.
   */
  finish: SchemaStatement[];
  /** At the cutover, after the drain: triggers, rules and row security as on the source. */
  handover: SchemaStatement[];
  /** Materialized views, refreshed in the finish and again after the handover. */
  matviews: MatviewRef[];
  /** Target roles the plan names (after the mapping). */
  roles: string[];
  /** Extensions the plan creates, at the source's version. */
  extensions: Array<{ name: string; version: string; schema: string }>;
  sequences: SequenceRef[];
  warnings: string[];
}

export interface PlanOptions {
  /** The migrated schemas (default: those of the selected tables). */
  schemas?: string[];
  roles?: RoleMapping;
}

// ───────────────────────────── the plan ─────────────────────────────

/**
 * Build the DDL the selected tables need, from the source catalog.
 * Read-only on the source; the session's settings are restored afterwards.
 *
 * @example
 *   const { tables } = await selectTables(source, spec.tables);
 *   const plan = await planSchema(source, tables);
 *   await applyPreData(target, plan);      // then load, then plan.postData
 */
export async function planSchema(source: pg.Client, tables: TableInfo[], opts: PlanOptions = {}): Promise<SchemaPlan> {
  return withCanonicalSettings(source, () => buildPlan(source, tables, opts));
}

/** What the steps of the plan share: the selected relations and their columns, and what the steps add to. */
interface PlanContext {
  c: pg.Client;
  rels: Map<number, RelRow>;
  /** The selected tables' oids. */
  selected: Set<number>;
  columns: Map<number, ColRow[]>;
  /** The relations, parents before their partitions. */
  ordered: RelRow[];
  /** The schemas the plan creates objects in. */
  schemas: Set<string>;
  warnings: string[];
}

async function buildPlan(c: pg.Client, tables: TableInfo[], opts: PlanOptions): Promise<SchemaPlan> {
  const oids = [...new Set(tables.map((t) => t.oid))];
  const rels = await readSelectedRelations(c, tables, oids);
  const selected = new Set(oids);
  const schemaNames = [...new Set([...(opts.schemas ?? []), ...tables.map((t) => t.schema)])].sort();
  const schemaOids = await readSchemaOids(c, schemaNames);
  const sourceMajor = Math.floor(Number((await c.query("SELECT current_setting('server_version_num') AS v")).rows[0].v) / 10000);
  const ctx: PlanContext = {
    c,
    rels,
    selected,
    columns: await readColumns(c, oids),
    ordered: parentsFirst(rels, selected),
    schemas: new Set(schemaNames),
    warnings: [],
  };
  const sequences = await readSequences(c, oids, schemaNames);
  const graph = await readTypeGraph(c, oids, ctx.columns, { types: await readSchemaTypes(c, [...schemaOids.values()]), schemas: new Set(schemaNames) });
  const types = typeStatementsInOrder(ctx, graph);
  const seq = sequenceStatements(ctx, sequences);
  const preTables = tableStatements(ctx, seq.identityByColumn);
  const cons = await readConstraints(c, oids);
  const indexes = await readIndexes(c, oids);
  const con = await constraintStatements(ctx, cons);
  const idx = indexStatements(ctx, indexes);
  const postIdentity = identityStatements(ctx, indexes, idx.identityDone);
  const roles = opts.roles ?? NO_ROLE_MAPPING;
  const objects = await planObjects({
    c,
    sourceMajor,
    schemas: schemaOids,
    createdSchemas: new Set(schemaNames.filter((s) => s !== 'public')),
    tables: new Map([...rels.values()].map((r) => [r.oid, r.kind])),
    sequences: sequences.map((s) => ({ oid: s.oid, followsTable: s.owner_rel !== null && selected.has(s.owner_rel) })),
    types,
    tableBlock: [...seq.create, ...preTables, ...con.pre, ...seq.owners],
    extensions: graph.extensions,
    roles,
  });
  for (const x of objects.extensions) ctx.schemas.add(x.schema);
  const ns = await namespaceStatements(ctx, graph);
  ctx.warnings.push(...graph.foreign.values(), ...objects.warnings);
  return {
    preData: [...ns.schemas, ...ns.collations, ...objects.preData],
    postData: [...idx.statements, ...con.exclude, ...postIdentity, ...con.foreign],
    finish: objects.finish,
    handover: objects.handover,
    matviews: objects.matviews,
    roles: [...objects.roles].sort(),
    extensions: objects.extensions,
    sequences: sequences.map(sequenceRef),
    warnings: ctx.warnings,
  };
}

/** The selected relations, by oid; fails when one of them no longer exists. */
async function readSelectedRelations(c: pg.Client, tables: TableInfo[], oids: number[]): Promise<Map<number, RelRow>> {
  const rels = await readRelations(c, oids);
  const gone = tables.filter((t) => !rels.has(t.oid));
  if (gone.length > 0) {
    throw new PgferryError(
      'SCHEMA_FAILED',
      `Selected table(s) ${gone.map((t) => qn(t.schema, t.name)).join(', ')} no longer exist on the source.`,
      'Start the migration again so that the table selection is read afresh.',
    );
  }
  return rels;
}

/** A partition is created with PARTITION OF only when its parent is migrated too. */
function partitionOfSelected(r: RelRow, selected: Set<number>): boolean {
  return r.is_partition && r.parent_oid !== null && selected.has(r.parent_oid);
}

function relName(rels: Map<number, RelRow>, oid: number): string {
  const r = rels.get(oid)!;
  return qn(r.schema, r.name);
}

/** The relations, parents before their partitions, then by schema and name. */
function parentsFirst(rels: Map<number, RelRow>, selected: Set<number>): RelRow[] {
  const depth = (r: RelRow): number => (partitionOfSelected(r, selected) ? 1 + depth(rels.get(r.parent_oid!)!) : 0);
  return [...rels.values()].sort((a, b) => depth(a) - depth(b) || a.schema.localeCompare(b.schema) || a.name.localeCompare(b.name));
}

/** The types to create, each after the types it is built from, with their statements. */
function typeStatementsInOrder(ctx: PlanContext, g: TypeGraph): Array<{ oid: number; statements: SchemaStatement[] }> {
  const out: Array<{ oid: number; statements: SchemaStatement[] }> = [];
  const visited = new Set<number>();
  const visit = (oid: number) => {
    if (visited.has(oid)) return;
    visited.add(oid);
    const t = g.types.get(oid);
    if (!t || BUILTIN_SCHEMAS.has(t.schema) || t.ext) return;
    for (const dep of typeChildren(t, g)) visit(dep);
    if (t.is_array || t.typtype === 'm' || t.typtype === 'p') return;
    const stmts = typeStatements(t, g, ctx.warnings);
    if (stmts.length > 0) ctx.schemas.add(t.schema);
    if (stmts.length > 0) out.push({ oid: t.oid, statements: stmts });
  };
  [...g.roots].sort((a, b) => a - b).forEach(visit);
  return out;
}

/**
 * CREATE SEQUENCE for the sequences the tables use, and OWNED BY for those
 * of serial columns. An identity column's sequence is created with its
 * column: those are returned by column (`rel:attnum`) instead.
 */
function sequenceStatements(ctx: PlanContext, sequences: SeqRow[]) {
  const create: SchemaStatement[] = [];
  const owners: SchemaStatement[] = [];
  const identityByColumn = new Map<string, SeqRow>();
  for (const s of sequences) {
    const ownerSelected = s.owner_rel !== null && ctx.selected.has(s.owner_rel);
    if (s.deptype === 'i' && ownerSelected) {
      identityByColumn.set(`${s.owner_rel}:${s.owner_attnum}`, s);
      continue;
    }
    ctx.schemas.add(s.schema);
    create.push({
      kind: 'sequence',
      object: qn(s.schema, s.name),
      sql: `CREATE ${s.persistence === 'u' ? 'UNLOGGED ' : ''}SEQUENCE ${qn(s.schema, s.name)} AS ${s.type} ${sequenceOptions(s)}`,
    });
    if (s.deptype === 'a' && ownerSelected) {
      owners.push({
        kind: 'sequence-owner',
        object: qn(s.schema, s.name),
        sql: `ALTER SEQUENCE ${qn(s.schema, s.name)} OWNED BY ${qn(s.owner_schema!, s.owner_table!)}.${qi(s.owner_column!)}`,
      });
    }
  }
  return { create, owners, identityByColumn };
}

/** CREATE TABLE for each relation, parents before their partitions. */
function tableStatements(ctx: PlanContext, identityByColumn: Map<string, SeqRow>): SchemaStatement[] {
  const out: SchemaStatement[] = [];
  for (const r of ctx.ordered) {
    ctx.schemas.add(r.schema);
    const name = qn(r.schema, r.name);
    const unlogged = r.persistence === 'u' ? 'UNLOGGED ' : '';
    const withOpts = r.options && r.options.length > 0 ? ` WITH (${r.options.join(', ')})` : '';
    const partBy = r.kind === 'p' && r.partkey ? ` PARTITION BY ${r.partkey}` : '';
    if (partitionOfSelected(r, ctx.selected)) {
      out.push({
        kind: 'partition',
        object: name,
        existsSql: relationExistsSql(r.schema, r.name),
        sql: `CREATE ${unlogged}TABLE ${name} PARTITION OF ${relName(ctx.rels, r.parent_oid!)} ${r.bound}${partBy}${withOpts}`,
      });
      out.push(...partitionDifferences(ctx, r));
      continue;
    }
    if (r.is_partition) {
      ctx.warnings.push(
        `${name} is a partition of ${r.parent_oid !== null && ctx.rels.has(r.parent_oid) ? relName(ctx.rels, r.parent_oid) : 'a table'} that is not selected: it is created as a standalone table.`,
      );
    } else if (r.n_parents > 0) {
      ctx.warnings.push(`${name} inherits from another table: table inheritance is not recreated, it is created as a standalone table with all its columns.`);
    }
    const defs = (ctx.columns.get(r.oid) ?? []).map((col) => columnDefinition(col, identityByColumn.get(`${r.oid}:${col.attnum}`)));
    out.push({
      kind: 'table',
      object: name,
      existsSql: relationExistsSql(r.schema, r.name),
      sql: `CREATE ${unlogged}TABLE ${name} (\n${defs.map((d) => `    ${d}`).join(',\n')}\n)${partBy}${withOpts}`,
    });
  }
  return out;
}

/** What a partition holds differently from its parent: column defaults and NOT NULL. */
function partitionDifferences(ctx: PlanContext, r: RelRow): SchemaStatement[] {
  const name = qn(r.schema, r.name);
  const out: SchemaStatement[] = [];
  const parentCols = new Map((ctx.columns.get(r.parent_oid!) ?? []).map((p) => [p.name, p]));
  for (const col of ctx.columns.get(r.oid) ?? []) {
    const p = parentCols.get(col.name);
    if (!p || col.generated || p.generated || col.identity || p.identity) continue;
    if ((col.default_expr ?? null) !== (p.default_expr ?? null)) {
      out.push({
        kind: 'partition',
        object: name,
        sql: `ALTER TABLE ${name} ALTER COLUMN ${qi(col.name)} ${col.default_expr ? `SET DEFAULT ${col.default_expr}` : 'DROP DEFAULT'}`,
      });
    }
    if (col.not_null && !p.not_null) {
      out.push({ kind: 'partition', object: name, sql: `ALTER TABLE ${name} ALTER COLUMN ${qi(col.name)} SET NOT NULL` });
    }
  }
  return out;
}

/**
 * The constraints, in the tables' order: PRIMARY KEY, UNIQUE and CHECK
 * before the load; EXCLUDE and foreign keys (to selected tables only) after.
 */
async function constraintStatements(ctx: PlanContext, cons: ConRow[]) {
  const pre: SchemaStatement[] = [];
  const exclude: SchemaStatement[] = [];
  const foreign: SchemaStatement[] = [];
  const orderIndex = new Map(ctx.ordered.map((r, i) => [r.oid, i]));
  cons.sort((a, b) => orderIndex.get(a.rel)! - orderIndex.get(b.rel)!);
  for (const k of cons) {
    const r = ctx.rels.get(k.rel)!;
    const inPartitionTree = partitionOfSelected(r, ctx.selected);
    // Partitions get their parent's constraints by inheritance (Schema guard 1:
    // declaring them again fails with "already exists"); a foreign key
    // referencing a partitioned table has one internal child per partition
    // (Schema guard 2: those come with the parent constraint).
    if (inPartitionTree && k.inhcount > 0) continue;
    if (k.parent_con !== 0 && (inPartitionTree || k.type === 'f')) continue;
    const table = qn(r.schema, r.name);
    const stmt: SchemaStatement = {
      kind: 'constraint',
      object: `${table}.${qi(k.name)}`,
      sql: `ALTER TABLE ${table} ADD CONSTRAINT ${qi(k.name)} ${k.def}`,
      existsSql: constraintExistsSql(r.schema, r.name, k.name),
    };
    if (k.type === 'x') {
      exclude.push(stmt);
    } else if (k.type === 'f') {
      if (!ctx.selected.has(k.ref_rel)) {
        const refName = await ctx.c.query<{ n: string }>('SELECT $1::oid::regclass::text AS n', [k.ref_rel]);
        ctx.warnings.push(
          `Foreign key ${qi(k.name)} on ${table} references ${refName.rows[0]?.n ?? 'a table'}, which is not selected: the constraint is not created on the target.`,
        );
        continue;
      }
      foreign.push({ ...stmt, kind: 'foreign-key' });
    } else {
      delete stmt.existsSql;
      pre.push(stmt);
    }
  }
  return { pre, exclude, foreign };
}

/**
 * CREATE INDEX for the secondary indexes (those behind constraints come with
 * them); an index that is its table's replica identity is built with it
 * (its table is in `identityDone`).
 */
function indexStatements(ctx: PlanContext, indexes: IndexRow[]) {
  const statements: SchemaStatement[] = [];
  const identityDone = new Set<number>();
  for (const i of indexes) {
    const r = ctx.rels.get(i.rel)!;
    if (i.backs_constraint) continue;
    // Indexes attached to a parent's index are created by the parent's CREATE INDEX.
    if (i.is_partition && partitionOfSelected(r, ctx.selected)) continue;
    const table = qn(r.schema, r.name);
    if (!i.valid) {
      ctx.warnings.push(`Index ${qn(r.schema, i.name)} on ${table} is invalid on the source (a failed or unfinished build): it is not created on the target.`);
      continue;
    }
    // pg_get_indexdef says ON ONLY for a partitioned table, which would create
    // an invalid index that covers no partition; without ONLY it cascades.
    const def = i.def.replace(/^(CREATE (?:UNIQUE )?INDEX (?:"(?:[^"]|"")*"|[^\s"]+) ON )ONLY /, '$1');
    if (i.replident && r.replident === 'i') {
      // The replica identity needs this index: build both in one statement so
      // no ordering between parallel post-data jobs is needed.
      identityDone.add(r.oid);
      statements.push({
        kind: 'replica-identity',
        object: table,
        sql: `${def.replace(/^CREATE (UNIQUE )?INDEX /, 'CREATE $1INDEX IF NOT EXISTS ')};\nALTER TABLE ${table} REPLICA IDENTITY USING INDEX ${qi(i.name)}`,
        existsSql: replicaIdentityIndexExistsSql(r.schema, r.name, i.name),
      });
      continue;
    }
    statements.push({ kind: 'index', object: qn(r.schema, i.name), sql: def, existsSql: relationExistsSql(r.schema, i.name) });
  }
  return { statements, identityDone };
}

/**
 * REPLICA IDENTITY FULL, NOTHING, or USING INDEX where the index step did
 * not set it with its index; and, per table, a warning for the triggers and
 * row-level security that pgferry does not migrate.
 */
function identityStatements(ctx: PlanContext, indexes: IndexRow[], identityDone: Set<number>): SchemaStatement[] {
  const out: SchemaStatement[] = [];
  for (const r of ctx.ordered) {
    const table = qn(r.schema, r.name);
    if (r.replident === 'f' || r.replident === 'n') {
      out.push({
        kind: 'replica-identity',
        object: table,
        sql: `ALTER TABLE ${table} REPLICA IDENTITY ${r.replident === 'f' ? 'FULL' : 'NOTHING'}`,
        existsSql: `${relationExistsSql(r.schema, r.name)} AND c.relreplident = '${r.replident}'`,
      });
    } else if (r.replident === 'i' && !identityDone.has(r.oid)) {
      const idx = indexes.find((i) => i.rel === r.oid && i.replident);
      if (!idx) continue;
      out.push({
        kind: 'replica-identity',
        object: table,
        sql: `ALTER TABLE ${table} REPLICA IDENTITY USING INDEX ${qi(idx.name)}`,
        existsSql: replicaIdentityIndexExistsSql(r.schema, r.name, idx.name),
      });
    }
  }
  return out;
}

/** CREATE SCHEMA and CREATE COLLATION for what the plan's objects need (extensions: schema-objects-plan.ts). */
async function namespaceStatements(ctx: PlanContext, g: TypeGraph) {
  for (const [, s] of g.extensions) if (s) ctx.schemas.add(s);
  const collations: SchemaStatement[] = [];
  for (const row of await readCollations(ctx.c, [...g.collations])) {
    ctx.schemas.add(row.schema);
    collations.push(collationStatement(row));
  }
  const schemas = [...ctx.schemas]
    .filter((s) => !BUILTIN_SCHEMAS.has(s))
    .sort()
    .map((s): SchemaStatement => ({
      kind: 'schema',
      object: qi(s),
      sql: `CREATE SCHEMA IF NOT EXISTS ${qi(s)}`,
      existsSql: `SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = ${ql(s)}`,
    }));
  return { schemas, collations };
}

function sequenceRef(s: SeqRow): SequenceRef {
  const ref: SequenceRef = { schema: s.schema, name: s.name };
  if (s.owner_schema && s.owner_table && s.owner_column) ref.ownedBy = `${qn(s.owner_schema, s.owner_table)}.${qi(s.owner_column)}`;
  return ref;
}

/**
 * All sequences the selected tables use — owned by their columns (serial,
 * identity) or referenced by a column default via nextval() — and every other
 * sequence of the migrated `schemas`, for the cutover to set. Each is listed once, ordered by schema and name.
 */
export async function listSequences(source: pg.Client, tables: TableInfo[], schemas: string[] = []): Promise<SequenceRef[]> {
  return (await readSequences(source, [...new Set(tables.map((t) => t.oid))], schemas)).map(sequenceRef);
}
