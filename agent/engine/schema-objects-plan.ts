/**
 * schema-objects-plan — the whole database's plan: the tables' DDL (from
 * schema.ts) and every other object of the migrated schemas, in the order
 * the source's own dependency graph (pg_depend) requires.
 *
 * Input: a source connection under canonical settings, the migrated
 * schemas, the selected tables, their DDL as one block, the types' DDL, and
 * the role mapping.
 * Output: `ObjectPlan`: the pre-data statements in dependency order, the
 * finish (after the load: statistics, matviews refreshed, triggers and rules
 * created disabled, policies, comments, owners, grants, default privileges),
 * the handover (at the cutover), and what it could not carry.
 *
 * The tables are one node of the graph: what they use (types, functions of
 * defaults, checks and index expressions, collations) comes before them,
 * what uses them (views, functions returning their rows, SQL-standard
 * bodies) after. Functions with classic bodies are created with
 * `check_function_bodies = off` (set by the apply), as their bodies may name
 * tables created later.
 */
import type pg from 'pg';
import { qi, qn, ql } from './conn';
import type { SchemaStatement } from './schema-ddl';
import {
  readCasts,
  readClassIds,
  readComments,
  readDefaultAcls,
  readDependEdges,
  readExtensions,
  readFunctions,
  readOperators,
  readOwnedObjects,
  readPolicies,
  readRelFlags,
  readRules,
  readStatistics,
  readTextSearch,
  readTriggers,
  readViews,
  refKey,
  type ClassIds,
  type DependRow,
  type ObjRef,
} from './schema-objects-read';
import {
  castStatement,
  columnOptionStatements,
  commentStatement,
  functionKind,
  functionName,
  functionStatement,
  operatorName,
  operatorStatement,
  policyStatement,
  rowSecurityStatements,
  triggerOrRuleStatements,
  tsConfigStatements,
  tsDictStatement,
  viewStatement,
} from './schema-objects';
import { defaultPrivilegeStatements, grantStatements, mapRole, ownerStatement, type RoleMapping } from './schema-privileges';

export interface ObjectsInput {
  c: pg.Client;
  sourceMajor: number;
  /** The migrated schemas: name → oid. */
  schemas: Map<string, number>;
  /** Schemas the plan creates (their owner and grants are set too; `public` is the target's own). */
  createdSchemas: Set<string>;
  /** The selected tables' oids, and their kinds ('r', 'p'). */
  tables: Map<number, string>;
  /** The sequences the plan creates, and those that follow their table's owner. */
  sequences: Array<{ oid: number; followsTable: boolean }>;
  /** Types pgferry creates: oid → statements. */
  types: Array<{ oid: number; statements: SchemaStatement[] }>;
  /** The tables' DDL (sequences, tables, constraints, sequence owners), as one node. */
  tableBlock: SchemaStatement[];
  /** Extensions the tables and types need: name → schema. */
  extensions: Map<string, string | null>;
  roles: RoleMapping;
}

export interface MatviewRef {
  name: string;
  /** A unique index allows REFRESH … CONCURRENTLY (readers are not blocked). */
  concurrent: boolean;
}

export interface ObjectPlan {
  preData: SchemaStatement[];
  finish: SchemaStatement[];
  handover: SchemaStatement[];
  matviews: MatviewRef[];
  /** Every target role the statements name. */
  roles: Set<string>;
  /** Extensions the plan creates, with the source's version. */
  extensions: Array<{ name: string; version: string; schema: string }>;
  warnings: string[];
}

interface Node {
  ref: ObjRef;
  label: string;
  statements: SchemaStatement[];
  /** Set when the node cannot be created (and neither can what depends on it). */
  skip?: string;
}

export async function planObjects(inp: ObjectsInput): Promise<ObjectPlan> {
  const { c } = inp;
  const ids = await readClassIds(c);
  const nsp = [...inp.schemas.values()];
  const tableOids = [...inp.tables.keys()];
  const warnings: string[] = [];
  const [functions, operators, casts, ts, views] = [
    await readFunctions(c, nsp),
    await readOperators(c, nsp),
    await readCasts(c, nsp),
    await readTextSearch(c, nsp),
    await readViews(c, nsp, tableOids),
  ];
  const block: Node = { ref: { classid: ids.pg_class, objid: -1 }, label: 'the tables', statements: inp.tableBlock };
  const nodes = new Map<string, Node>();
  const add = (n: Node) => nodes.set(refKey(n.ref), n);
  for (const t of inp.types) add({ ref: { classid: ids.pg_type, objid: t.oid }, label: t.statements[0]?.object ?? `type ${t.oid}`, statements: t.statements });
  for (const f of functions)
    add({ ref: { classid: ids.pg_proc, objid: f.oid }, label: `${functionKind(f).toLowerCase()} ${functionName(f)}`, statements: [functionStatement(f)] });
  for (const o of operators) add({ ref: { classid: ids.pg_operator, objid: o.oid }, label: `operator ${operatorName(o)}`, statements: [operatorStatement(o)] });
  for (const k of casts) add({ ref: { classid: ids.pg_cast, objid: k.oid }, label: `cast (${k.source} AS ${k.target})`, statements: [castStatement(k)] });
  for (const d of ts.dicts)
    add({ ref: { classid: ids.pg_ts_dict, objid: d.oid }, label: `text search dictionary ${qn(d.schema, d.name)}`, statements: [tsDictStatement(d)] });
  for (const g of ts.configs)
    add({ ref: { classid: ids.pg_ts_config, objid: g.oid }, label: `text search configuration ${qn(g.schema, g.name)}`, statements: tsConfigStatements(g) });
  for (const v of views) {
    const n: Node = {
      ref: { classid: ids.pg_class, objid: v.oid },
      label: `${v.kind === 'm' ? 'materialized view' : 'view'} ${qn(v.schema, v.name)}`,
      statements: [viewStatement(v)],
    };
    if (v.missing.length > 0)
      n.skip = `it reads ${v.missing.join(', ')}, which ${v.missing.length === 1 ? 'is' : 'are'} not migrated (select ${v.missing.length === 1 ? 'it' : 'them'} in \`tables\`, or create ${v.missing.length === 1 ? 'it' : 'them'} on the target before the cutover and recreate the view)`;
    add(n);
  }
  const edges = await readDependEdges(c, [...[...nodes.values()].map((n) => n.ref), ...tableOids.map((objid) => ({ classid: ids.pg_class, objid }))]);
  const extNames = new Set(inp.extensions.keys());
  for (const e of edges) if (e.ext) extNames.add(e.ext);
  const order = orderByDependencies(ids, nodes, block, inp.tables, edges, warnings);

  const extensions = await readExtensions(c, nsp, [...extNames]);
  const viewOids = views.filter((v) => !nodes.get(refKey({ classid: ids.pg_class, objid: v.oid }))?.skip).map((v) => v.oid);
  const finish = await finishStatements(inp, ids, { functions, operators, ts, views: views.filter((v) => viewOids.includes(v.oid)) });
  return {
    preData: [...extensions.map(extensionStatement), ...order.flatMap((n) => n.statements)],
    finish: finish.statements,
    handover: finish.handover,
    // In the order they are created: a materialized view over another is refreshed after it.
    matviews: order
      .filter((n) => n.ref.classid === ids.pg_class && n !== block)
      .map((n) => views.find((v) => v.oid === n.ref.objid)!)
      .filter((v) => v.kind === 'm')
      .map((v) => ({ name: qn(v.schema, v.name), concurrent: v.concurrent_ok })),
    roles: new Set(finish.statements.flatMap((s) => s.roles ?? [])),
    extensions,
    warnings,
  };
}

/**
 * CREATE EXTENSION at the source's version when the target offers it, else
 * at the target's default version (the preflight warns of the difference).
 */
function extensionStatement(x: { name: string; version: string; schema: string }): SchemaStatement {
  const create = (version: boolean) =>
    `CREATE EXTENSION IF NOT EXISTS ${qi(x.name)} WITH SCHEMA ${qi(x.schema)}${version ? ` VERSION ${ql(x.version)}` : ''} CASCADE`;
  return {
    kind: 'extension',
    object: qi(x.name),
    sql:
      `DO $pgferry$ BEGIN IF EXISTS (SELECT 1 FROM pg_catalog.pg_available_extension_versions WHERE name = ${ql(x.name)} AND version = ${ql(x.version)}) ` +
      `THEN EXECUTE ${ql(create(true))}; ELSE EXECUTE ${ql(create(false))}; END IF; END $pgferry$`,
    existsSql: `SELECT 1 FROM pg_catalog.pg_extension WHERE extname = ${ql(x.name)}`,
  };
}

/**
 * The nodes in an order where each comes after everything it depends on
 * (depth first, in the nodes' own order otherwise). A dependency cycle is
 * broken where it is found, with a warning; a node that depends on a
 * skipped one is skipped too.
 */
function orderByDependencies(
  ids: ClassIds,
  nodes: Map<string, Node>,
  block: Node,
  tables: Map<number, string>,
  edges: DependRow[],
  warnings: string[],
): Node[] {
  const nodeOf = (classid: number, objid: number): Node | undefined =>
    classid === ids.pg_class && tables.has(objid) ? block : nodes.get(refKey({ classid, objid }));
  const deps = new Map<Node, Set<Node>>();
  for (const e of edges) {
    const from = nodeOf(e.classid, e.objid);
    const to = nodeOf(e.refclassid, e.refobjid);
    if (!from || !to || from === to) continue;
    if (!deps.has(from)) deps.set(from, new Set());
    deps.get(from)!.add(to);
  }
  const out: Node[] = [];
  const state = new Map<Node, 'visiting' | 'done'>();
  const visit = (n: Node, path: Node[]) => {
    if (state.get(n) === 'done') return;
    if (state.get(n) === 'visiting') {
      warnings.push(`Dependency cycle among ${[...path.slice(path.indexOf(n)), n].map((x) => x.label).join(' → ')}: created in the source's catalog order.`);
      return;
    }
    state.set(n, 'visiting');
    for (const d of deps.get(n) ?? []) {
      visit(d, [...path, n]);
      if (d.skip && !n.skip) n.skip = `it depends on ${d.label}, which is not created`;
    }
    state.set(n, 'done');
    if (n.skip) {
      warnings.push(`${n.label[0].toUpperCase()}${n.label.slice(1)} is not created on the target: ${n.skip}.`);
      return;
    }
    out.push(n);
  };
  for (const n of nodes.values()) if (n.ref.classid === ids.pg_type) visit(n, []);
  for (const n of nodes.values()) if (n.ref.classid !== ids.pg_type && n.ref.classid !== ids.pg_class) visit(n, []);
  visit(block, []);
  for (const n of nodes.values()) visit(n, []);
  return out;
}

/** The objects of the migrated schemas the plan read (besides tables and types). */
interface ObjectsRead {
  functions: Awaited<ReturnType<typeof readFunctions>>;
  operators: Awaited<ReturnType<typeof readOperators>>;
  ts: Awaited<ReturnType<typeof readTextSearch>>;
  views: Awaited<ReturnType<typeof readViews>>;
}

interface Finish {
  statements: SchemaStatement[];
  handover: SchemaStatement[];
}

/** The statements of the finish and the handover: everything that must not act during the load and the sync, and the privileges. */
async function finishStatements(inp: ObjectsInput, ids: ClassIds, objs: ObjectsRead): Promise<Finish> {
  const { c, roles: m, sourceMajor } = inp;
  const tableOids = [...inp.tables.keys()];
  const relOids = [...tableOids, ...objs.views.map((v) => v.oid)];
  const isTable = new Set(tableOids);
  const out: SchemaStatement[] = [];
  const handover: SchemaStatement[] = [];
  const flags = await readRelFlags(c, tableOids);
  for (const t of flags) out.push(...columnOptionStatements(t));
  // Materialized views' indexes (before the refresh that fills them).
  const mvIndexes = await c.query<{ name: string; def: string }>(
    `SELECT quote_ident(n.nspname) || '.' || quote_ident(ic.relname) AS name, pg_get_indexdef(i.indexrelid) AS def
       FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
      WHERE i.indrelid = ANY($1::oid[]) ORDER BY 1`,
    [objs.views.filter((v) => v.kind === 'm').map((v) => v.oid)],
  );
  for (const x of mvIndexes.rows) out.push({ kind: 'index', object: x.name, sql: x.def });
  for (const s of await readStatistics(c, tableOids)) {
    out.push({ kind: 'statistics', object: qn(s.schema, s.name), sql: s.def }, ownerStatement('STATISTICS', qn(s.schema, s.name), s.owner, m));
  }
  for (const t of await readTriggers(c, relOids)) {
    const r = triggerOrRuleStatements('TRIGGER', t, isTable.has(t.rel));
    out.push(...r.finish);
    handover.push(...r.handover);
  }
  for (const t of await readRules(c, relOids)) {
    const r = triggerOrRuleStatements('RULE', t, !t.on_view);
    out.push(...r.finish);
    handover.push(...r.handover);
  }
  for (const p of await readPolicies(c, tableOids))
    out.push(
      policyStatement(
        p,
        p.roles.map((r) => mapRole(m, r)),
      ),
    );
  for (const t of flags) handover.push(...rowSecurityStatements(t));

  const commented: ObjRef[] = [
    ...[...inp.createdSchemas].map((s) => ({ classid: ids.pg_namespace, objid: inp.schemas.get(s)! })).filter((r) => r.objid !== undefined),
    ...inp.types.map((t) => ({ classid: ids.pg_type, objid: t.oid })),
    ...objs.functions.map((f) => ({ classid: ids.pg_proc, objid: f.oid })),
    ...objs.operators.map((o) => ({ classid: ids.pg_operator, objid: o.oid })),
    ...objs.ts.dicts.map((d) => ({ classid: ids.pg_ts_dict, objid: d.oid })),
    ...objs.ts.configs.map((g) => ({ classid: ids.pg_ts_config, objid: g.oid })),
    ...relOids.map((objid) => ({ classid: ids.pg_class, objid })),
    ...inp.sequences.map((s) => ({ classid: ids.pg_class, objid: s.oid })),
  ];
  const triggers = await c.query<{ oid: number; classid: number }>(
    `SELECT oid::int, 'pg_trigger'::regclass::oid::int AS classid FROM pg_trigger WHERE tgrelid = ANY($1::oid[]) AND NOT tgisinternal
     UNION ALL SELECT oid::int, 'pg_rewrite'::regclass::oid::int FROM pg_rewrite WHERE ev_class = ANY($1::oid[]) AND rulename <> '_RETURN'
     UNION ALL SELECT oid::int, 'pg_policy'::regclass::oid::int FROM pg_policy WHERE polrelid = ANY($1::oid[])
     UNION ALL SELECT oid::int, 'pg_statistic_ext'::regclass::oid::int FROM pg_statistic_ext WHERE stxrelid = ANY($1::oid[])`,
    [relOids],
  );
  commented.push(...triggers.rows.map((r) => ({ classid: r.classid, objid: r.oid })));
  for (const row of await readComments(c, commented)) {
    const s = commentStatement(row);
    if (s) out.push(s);
  }
  out.push(...(await privilegeStatements(inp, objs, flags, m, sourceMajor)));
  for (const d of await readDefaultAcls(c, [...inp.schemas.values()])) out.push(...defaultPrivilegeStatements(d, m, sourceMajor));
  return { statements: out, handover };
}

/** Owners, then grants: an ALTER OWNER moves the old owner's grants to the new one. */
async function privilegeStatements(
  inp: ObjectsInput,
  objs: ObjectsRead,
  flags: Awaited<ReturnType<typeof readRelFlags>>,
  m: RoleMapping,
  sourceMajor: number,
): Promise<SchemaStatement[]> {
  const owners: SchemaStatement[] = [];
  const grants: SchemaStatement[] = [];
  const owned = await readOwnedObjects(
    inp.c,
    [...inp.createdSchemas].map((s) => inp.schemas.get(s)!).filter((o) => o !== undefined),
    inp.types.map((t) => t.oid),
    inp.sequences.map((s) => s.oid),
  );
  // A sequence owned by a migrated table follows that table's owner (ALTER SEQUENCE … OWNER TO is refused for it).
  const followers = new Set(inp.sequences.filter((s) => s.followsTable).map((s) => s.oid));
  for (const o of owned) {
    const alter = o.kind === 'schema' ? 'SCHEMA' : o.kind === 'domain' ? 'DOMAIN' : o.kind === 'sequence' ? 'SEQUENCE' : 'TYPE';
    if (!(o.kind === 'sequence' && followers.has(o.oid))) owners.push(ownerStatement(alter, o.name, o.owner, m));
    const grantKind = o.kind === 'schema' ? 'SCHEMA' : o.kind === 'sequence' ? 'SEQUENCE' : 'TYPE';
    grants.push(...grantStatements({ grantKind, name: o.name, owner: o.owner, acl: o.acl }, m, sourceMajor));
  }
  for (const t of flags) {
    const name = qn(t.schema, t.name);
    owners.push(ownerStatement('TABLE', name, t.owner, m));
    grants.push(...grantStatements({ grantKind: 'TABLE', name, owner: t.owner, acl: t.acl, columns: t.columns }, m, sourceMajor));
  }
  for (const v of objs.views) {
    const name = qn(v.schema, v.name);
    owners.push(ownerStatement(v.kind === 'm' ? 'MATERIALIZED VIEW' : 'VIEW', name, v.owner, m));
    grants.push(...grantStatements({ grantKind: 'TABLE', name, owner: v.owner, acl: v.acl }, m, sourceMajor));
  }
  for (const f of objs.functions) {
    owners.push(ownerStatement(functionKind(f), functionName(f), f.owner, m));
    grants.push(...grantStatements({ grantKind: 'ROUTINE', name: functionName(f), owner: f.owner, acl: f.acl }, m, sourceMajor));
  }
  for (const o of objs.operators) owners.push(ownerStatement('OPERATOR', operatorName(o), o.owner, m));
  for (const d of objs.ts.dicts) owners.push(ownerStatement('TEXT SEARCH DICTIONARY', qn(d.schema, d.name), d.owner, m));
  for (const g of objs.ts.configs) owners.push(ownerStatement('TEXT SEARCH CONFIGURATION', qn(g.schema, g.name), g.owner, m));
  return [...owners, ...grants];
}
