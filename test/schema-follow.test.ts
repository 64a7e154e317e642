/**
 * Schema changes on the source during the sync, as a user meets them: the
 * application changes its schema while it writes (columns added, dropped,
 * retyped and renamed, a new table, an index, a view, a function, an enum
 * value, a TRUNCATE), and uses each new shape at once; with `schemaChanges`
 * at its default (follow) the target follows, through a kill -9 of the
 * agent, and the cutover passes with every write and the whole schema equal.
 * With `stop`, or on a change the target cannot follow, the migration fails
 * naming the object and the fix; after the fix it resumes and loses nothing.
 * PostgreSQL 14 → 17, a real agent process, a live writer.
 */
import assert from 'node:assert/strict';
import { startCluster, type Cluster } from '../dev/testbed';
import { AgentClient, isAgentError, type MigrationMessage, type MigrationSpecMessage, type SchemaChangeMessage } from '../api/client';
import { startAgent, type AgentProcess } from './support/agent';
import { assertSameData } from './support/compare';
import { pollUntil } from './support/running';
import { assertWritesHeld, shapeWriter, type Shape, type ShapeWriter } from './support/schema-writer';

/** Commits the writer makes in each new shape before the next step. */
const STEP_WRITES = 20;
/** How long a step may wait for the agent (it fails fast when the migration fails). */
const WAIT_MS = 90_000;

/** The application's tables: `accounts` changes shape, `scratch` is truncated. */
const SEED = `CREATE TABLE accounts (id bigserial PRIMARY KEY, client_seq int NOT NULL, c1 text, n integer NOT NULL DEFAULT 0, note text);
INSERT INTO accounts (client_seq, c1, n, note) SELECT -g, 'c1 ' || g, g, 'seed ' || g FROM generate_series(1, 300) g;
CREATE TABLE scratch (id int PRIMARY KEY, v text);
INSERT INTO scratch SELECT g, 's' || g FROM generate_series(1, 200) g;`;

interface AccountsColumns {
  c1?: boolean;
  c2?: boolean;
  /** `n` is a bigint: values above 2^31. */
  big?: boolean;
  /** `note` is called `remark`. */
  remark?: boolean;
}

/** One row inserted into `accounts` and one seeded row updated, in the columns `o` says exist. */
function accountsStatements(seq: number, o: AccountsColumns): Array<[string, unknown[]]> {
  const note = o.remark ? 'remark' : 'note';
  const n = (base: number) => (o.big ? base + seq : seq % 100_000);
  const cols = ['client_seq', 'n', note];
  const vals: unknown[] = [seq, n(3_000_000_000), `tx ${seq}`];
  if (o.c1) {
    cols.push('c1');
    vals.push(`c1 ${seq}`);
  }
  if (o.c2) {
    cols.push('c2');
    vals.push(seq % 13);
  }
  const insert = `INSERT INTO accounts (${cols.join(', ')}) VALUES (${vals.map((_, i) => `$${i + 1}`).join(', ')})`;
  const update = `UPDATE accounts SET n = $1, ${note} = $2${o.c2 ? ', c2 = $4' : ''} WHERE id = $3`;
  const updateVals: unknown[] = [n(2 ** 32), `updated by ${seq}`, (seq % 100) + 1, ...(o.c2 ? [seq % 17] : [])];
  return [
    [insert, vals],
    [update, updateVals],
  ];
}

const accounts = (name: string, o: AccountsColumns): Shape => ({ name, tables: ['accounts'], statements: (i) => accountsStatements(i, o) });

/** `base` plus a row in the new table `accounts_log` (mood `m`), and reads of the new view and function when `reads`. */
const withLog = (base: Shape, name: string, m: string, reads: boolean): Shape => ({
  name,
  tables: [...base.tables, 'accounts_log'],
  statements: (i) => [
    ...base.statements(i),
    ['INSERT INTO accounts_log (client_seq, v, m) VALUES ($1, $2, $3)', [i, `log ${i}`, m]],
    ...(reads ? [['SELECT accounts_total(), (SELECT count(*) FROM accounts_recent)', []] as [string, unknown[]]] : []),
  ],
});

const S = (() => {
  const remark = accounts('note renamed remark', { c2: true, big: true, remark: true });
  const reads = withLog(remark, 'using the view and the function', 'calm', true);
  return {
    base: accounts('base', { c1: true }),
    c2: accounts('with c2', { c1: true, c2: true }),
    noC1: accounts('without c1', { c2: true }),
    big: accounts('n bigint', { c2: true, big: true }),
    remark,
    log: withLog(remark, 'with accounts_log', 'calm', false),
    reads,
    moodX: withLog(remark, "mood 'x'", 'x', true),
  };
})();

/** A DDL on the source; the writer switches to `before` ahead of it (it stops using what goes away) or to `after` once it is committed. */
interface Step {
  ddl: string;
  before?: Shape;
  after?: Shape;
}

/** The first column change: a column with a default, written at once. */
const ADD_C2: Step = { ddl: 'ALTER TABLE accounts ADD COLUMN c2 int NOT NULL DEFAULT 7', after: S.c2 };

/** Up to the kill -9. */
const BEFORE_KILL: Step[] = [
  { ddl: "CREATE TYPE mood AS ENUM ('calm', 'busy')" },
  ADD_C2,
  { before: S.noC1, ddl: 'ALTER TABLE accounts DROP COLUMN c1' },
  { ddl: 'ALTER TABLE accounts ALTER COLUMN n TYPE bigint', after: S.big },
];

/** After the restart, with the migration paused: the stream brings them once the source's catalog is past them. */
const WHILE_PAUSED: Step[] = [
  { ddl: 'ALTER TABLE accounts RENAME COLUMN note TO remark', after: S.remark },
  { ddl: "CREATE TABLE accounts_log (id bigserial PRIMARY KEY, client_seq int NOT NULL, v text, m mood NOT NULL DEFAULT 'calm')", after: S.log },
];

/** After the migration resumed. */
const AFTER_RESUME: Step[] = [
  { ddl: 'CREATE INDEX accounts_c2_idx ON accounts (c2)' },
  { ddl: 'CREATE VIEW accounts_recent AS SELECT id, client_seq, remark, n FROM accounts WHERE id > 100' },
  { ddl: 'CREATE FUNCTION accounts_total() RETURNS numeric LANGUAGE sql STABLE AS $$SELECT sum(n) FROM accounts$$', after: S.reads },
  { ddl: "ALTER TYPE mood ADD VALUE 'x'", after: S.moodX },
  { ddl: "TRUNCATE scratch; INSERT INTO scratch VALUES (1000, 'after the truncate')" },
];

/** Each change the status (or the log) must list, as a pattern over its object, change and statement. */
const EXPECTED_CHANGES: Array<[string, RegExp[]]> = [
  ['c2 added', [/accounts/, /\bc2\b/, /add/i]],
  ['c1 dropped', [/accounts/, /\bc1\b/, /drop/i]],
  ['n retyped', [/accounts/, /\bn\b/, /bigint/i]],
  ['note renamed', [/accounts/, /remark/, /rename/i]],
  ['accounts_log created', [/accounts_log/, /creat/i]],
];

/** The clusters and the agent, started before the tests and stopped after them. */
interface Harness {
  source: Cluster;
  target: Cluster;
  agent: AgentProcess;
  client: AgentClient;
  n: number;
}

function harness(): Harness {
  const h = { n: 0 } as Harness;
  before(async function () {
    [h.source, h.target] = await Promise.all([startCluster({ version: 14, fast: true }), startCluster({ version: 17, fast: true })]);
    h.agent = await startAgent();
    h.client = new AgentClient({ endpoint: h.agent.endpoint });
  });
  after(async function () {
    h.client?.close();
    await h.agent?.stop();
    await Promise.all([h.source?.stop(), h.target?.stop()]);
  });
  return h;
}

type Spec = MigrationSpecMessage;

/** A fresh database seeded on the source with `seed`; returns its spec (id = the database's name). */
async function newDatabase(h: Harness, seed: string, extra: Partial<Spec> = {}): Promise<Spec> {
  const id = `sf${++h.n}`;
  await Promise.all([h.source.createDatabase(id), h.target.createDatabase(id)]);
  await h.source.query(seed, [], id);
  return {
    id,
    source: h.source.endpoint(id),
    target: h.target.endpoint(id),
    tables: { include: ['public.*'] },
    apply: { batchChanges: 500, batchMs: 20 },
    verification: { rangeRows: 500 },
    ...extra,
  };
}

/** Start (or resume) the migration and wait until it syncs. */
async function startSyncing(h: Harness, spec: Spec): Promise<void> {
  await h.client.startMigration(spec);
  await pollUntil(
    `${spec.id} syncing`,
    async () => {
      const m = await h.client.getMigration(spec.id!);
      if (m.phase === 'failed') throw new Error(await diagnose(h, spec.id!, m));
      return m.phase === 'syncing' ? m : undefined;
    },
    WAIT_MS,
  );
}

type ChangeEntry = Pick<SchemaChangeMessage, 'object' | 'change' | 'statement'>;

/** The agent's JSON log lines about migration `id`. */
function logLines(h: Harness, id: string): Array<Record<string, unknown>> {
  return h.agent
    .logs()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((x) => x.migration === id);
}

/** What to show when a step fails: the migration's error, its schema-changes status, and the agent's last warnings and schema-change lines. */
async function diagnose(h: Harness, id: string, m?: MigrationMessage): Promise<string> {
  const s = m ?? (await h.client.getMigration(id).catch(() => undefined));
  const lines = logLines(h, id)
    .filter((x) => Number(x.level) >= 40 || x.event === 'schema-change')
    .slice(-12)
    .map((x) => `  ${JSON.stringify(x)}`);
  const error = s ? `phase ${s.phase} ${s.errorCode}: ${s.errorMessage} Fix: ${s.errorRemedy}` : 'no status';
  return `${id}: ${error}\nschemaChanges: ${JSON.stringify(s?.schemaChanges)}\nagent log (${h.agent.logFile}):\n${lines.join('\n')}`;
}

/** Wait until the target's `table` holds the writer's commit `seq` (throws with the diagnosis at once if the migration failed). */
async function waitOnTarget(h: Harness, id: string, table: string, seq: number): Promise<void> {
  try {
    await pollUntil(
      `commit ${seq} in ${table} on the target`,
      async () => {
        const m = await h.client.getMigration(id);
        if (m.phase === 'failed') throw new Error(await diagnose(h, id, m));
        const r = await h.target.query(`SELECT 1 FROM ${table} WHERE client_seq = $1`, [seq], id).catch((e: { code?: string }) => {
          if (e.code === '42P01' || e.code === '42703') return { rows: [] }; // the table or column is not there yet
          throw e;
        });
        return r.rows.length ? true : undefined;
      },
      WAIT_MS,
    );
  } catch (e) {
    if (/^timed out/.test((e as Error).message)) throw new Error(`${(e as Error).message}\n${await diagnose(h, id)}`, { cause: e });
    throw e;
  }
}

/** Wait until the migration failed; `wrong` says (by looking at the target) that it went on instead, and how. */
async function waitFailed(h: Harness, id: string, wrong: () => Promise<string | undefined>): Promise<MigrationMessage> {
  return pollUntil(
    `${id} failed`,
    async () => {
      const m = await h.client.getMigration(id);
      if (m.phase === 'failed') return m;
      const how = await wrong();
      if (how) throw new Error(`the migration did not stop: ${how}\n${await diagnose(h, id, m)}`);
      return undefined;
    },
    WAIT_MS,
  );
}

/** The target holds the writer's commit `seq` in `table`. */
async function onTarget(h: Harness, id: string, table: string, seq: number): Promise<boolean> {
  return seq > 0 && (await h.target.query(`SELECT 1 FROM ${table} WHERE client_seq = $1`, [seq], id)).rows.length > 0;
}

/** The type of column `column` of `table` on the target ('' when it lacks it). */
async function targetColumnType(h: Harness, id: string, table: string, column: string): Promise<string> {
  const r = await h.target.query(
    `SELECT format_type(atttypid, atttypmod) AS t FROM pg_attribute WHERE attrelid = $1::regclass AND attname = $2 AND NOT attisdropped`,
    [table, column],
    id,
  );
  return (r.rows[0]?.t as string | undefined) ?? '';
}

/** Run `steps` on the source, the writer switching shapes around each and committing in the new one before the next. */
async function runSteps(h: Harness, id: string, w: ShapeWriter, steps: Step[]): Promise<void> {
  for (const s of steps) {
    if (s.before) {
      w.use(s.before);
      await w.writes(2);
    }
    await h.source.query(s.ddl, [], id);
    if (s.after) w.use(s.after);
    await w.writes(STEP_WRITES);
  }
}

/** The cutover (the writer still writing until the fence), then every check of the end state. */
async function cutoverAndCheck(h: Harness, id: string, w: ShapeWriter): Promise<MigrationMessage> {
  let done: MigrationMessage;
  try {
    done = await h.client.cutover({ id, timeoutMs: 120_000 }).catch(async (e: unknown) => {
      const why = isAgentError(e) ? `${e.code}: ${e.message} Fix: ${e.remedy}` : String(e);
      throw new Error(`the cutover failed: ${why}\n${await diagnose(h, id)}`, { cause: e });
    });
  } finally {
    await w.stop();
  }
  assert.equal(done.phase, 'completed', await diagnose(h, id, done));
  const rep = done.cutover!;
  assert.ok(
    rep.tables.every((t) => t.match),
    JSON.stringify(rep.tables),
  );
  assert.equal(rep.schemaCheck?.ok, true, `schema check: ${rep.schemaCheck?.differences.join('\n')}`);
  assert.deepEqual(
    rep.schemaCheck?.differences.filter((d) => !/\[accepted\]$/.test(d)),
    [],
  );
  await assertSameData(h.source, h.target, id);
  const t = await h.target.client(id);
  try {
    await assertWritesHeld(t, w);
  } finally {
    await t.end();
  }
  return done;
}

/**
 * The status' `schemaChanges` lists each expected change (the first ones made before the kill -9: the list
 * survives a restart), and the agent logged a `schema-change` line for each.
 */
function assertChangesListed(h: Harness, id: string, m: MigrationMessage): void {
  const status = m.schemaChanges;
  assert.ok(status, `no schemaChanges in the status\n${JSON.stringify(m)}`);
  assert.equal(status.mode, 'follow');
  const text = status.recent.map((e: ChangeEntry) => `${e.object} | ${e.change} | ${e.statement}`);
  const absent = EXPECTED_CHANGES.filter(([, res]) => !text.some((l) => res.every((re) => re.test(l)))).map(([what]) => what);
  assert.deepEqual(absent, [], `not listed in the status:\n${text.join('\n')}`);
  assert.ok(Number(status.applied) >= EXPECTED_CHANGES.length, `applied ${status.applied}`);
  const logged = logLines(h, id).filter((x) => x.event === 'schema-change');
  assert.ok(logged.length >= EXPECTED_CHANGES.length, `${logged.length} schema-change log lines:\n${logged.map((x) => JSON.stringify(x)).join('\n')}`);
}

describe('schema-follow: schema changes on the source during the sync (PostgreSQL 14 → 17)', function () {
  this.timeout(300_000);
  const h = harness();
  describe('followed (the default)', () => following(h));
  describe("with schemaChanges 'stop', or a change that cannot be followed", () => stopping(h));
});

function following(h: Harness): void {
  it('follows columns added, dropped, retyped and renamed, a new table, an index, a view, a function, an enum value and a TRUNCATE while the application writes, through a kill -9; the cutover passes with every write', async function () {
    const spec = await newDatabase(h, SEED);
    const id = spec.id!;
    await startSyncing(h, spec);
    const w = shapeWriter(() => h.source.client(id), S.base);
    try {
      await w.writes(STEP_WRITES);
      await runSteps(h, id, w, BEFORE_KILL);
      // kill -9 between two changes, the writer still writing; the restarted agent resumes the sync by itself.
      h.agent.kill();
      await h.agent.stop();
      await w.writes(30);
      await h.agent.restart();
      h.client.close();
      h.client = new AgentClient({ endpoint: h.agent.endpoint });
      await w.writes(10);
      await waitOnTarget(h, id, 'accounts', w.lastCommit('accounts'));
      assert.equal(await targetColumnType(h, id, 'accounts', 'n'), 'bigint');
      // The agent behind the catalog: a rename and a new table it meets in the stream after both are made.
      await pause(h, id);
      await runSteps(h, id, w, WHILE_PAUSED);
      await h.client.resumeMigration(id);
      await runSteps(h, id, w, AFTER_RESUME);
      await waitOnTarget(h, id, 'accounts_log', w.lastCommit('accounts_log'));
    } catch (e) {
      await w.stop();
      throw e;
    } finally {
      if (!h.agent.alive()) await reviveAgent(h);
    }
    const done = await cutoverAndCheck(h, id, w);
    assert.ok(w.committed.size > 0 && [...w.committed.values()].some((s) => s === S.moodX), "no commit used mood 'x'");
    assertChangesListed(h, id, await h.client.getMigration(id).catch(() => done));
    await h.client.deleteMigration(id);
  });
}

/** A kill test that failed before its restart leaves the next test a running agent. */
async function reviveAgent(h: Harness): Promise<void> {
  await h.agent.restart();
  h.client.close();
  h.client = new AgentClient({ endpoint: h.agent.endpoint });
}

/** `codes` keeps its codes as text ('A-1', …) until the application makes them integers. */
const CODES_SEED = `CREATE TABLE codes (id bigserial PRIMARY KEY, client_seq int NOT NULL, code text);
INSERT INTO codes (client_seq, code) SELECT -g, 'A-' || g FROM generate_series(1, 300) g;`;

const codesShape = (asInt: boolean): Shape => ({
  name: asInt ? 'code integer' : 'code text',
  tables: ['codes'],
  statements: (i) => [['INSERT INTO codes (client_seq, code) VALUES ($1, $2)', [i, asInt ? i : `A-${i}`]]],
});

function stopping(h: Harness): void {
  it('stops at the first change with SCHEMA_DRIFT naming the table and column; after the fix on the target, resumes and loses nothing', async function () {
    const spec = await newDatabase(h, SEED, { schemaChanges: 'stop' });
    const id = spec.id!;
    await startSyncing(h, spec);
    const w = shapeWriter(() => h.source.client(id), S.base);
    try {
      await w.writes(STEP_WRITES);
      await runSteps(h, id, w, [ADD_C2]);
      const failed = await waitFailed(h, id, async () =>
        (await targetColumnType(h, id, 'accounts', 'c2')) !== '' ? 'the target followed (it has c2)' : undefined,
      );
      assert.equal(failed.errorCode, 'SCHEMA_DRIFT', await diagnose(h, id, failed));
      assert.match(failed.errorMessage, /accounts/);
      assert.match(failed.errorMessage, /\bc2\b/);
      assert.match(failed.errorRemedy, /\bc2\b/, 'the remedy says how to add the column');
      assert.equal(await targetColumnType(h, id, 'accounts', 'c2'), '', 'nothing followed in stop mode');
      // The application goes on while the migration is stopped: the slot keeps it all.
      await w.writes(STEP_WRITES);
      await h.target.query('ALTER TABLE accounts ADD COLUMN c2 int NOT NULL DEFAULT 7', [], id);
      await startSyncing(h, spec);
      assert.equal((await h.client.getMigration(id)).schemaChanges?.mode, 'stop');
      await w.writes(STEP_WRITES);
      await waitOnTarget(h, id, 'accounts', w.lastCommit('accounts'));
    } catch (e) {
      await w.stop();
      throw e;
    }
    await cutoverAndCheck(h, id, w);
    await h.client.deleteMigration(id);
  });

  cannotFollow(h, false);
  shapeLagNotRepaired(h);
  // Not yet (issue 20's note): reached with old-shape rows not yet applied, the fix made by hand on the target
  // cannot take those rows (their old values need the source's USING, which no catalog keeps); the migration
  // fails again with APPLY_FAILED naming the row. Kept as a pending case, not a passing one.
  it.skip(
    'fails naming the column and a fix on a change the target cannot follow, reached with old-shape rows not yet applied (the agent lagging); after the fix, resumes and loses nothing',
  );
}

/**
 * A change the target cannot follow: the source retypes text codes ('A-1') to integers with a USING the
 * target's plain cast rejects. `lagging`: the agent is paused while the application writes in the old shape,
 * makes the change and writes in the new one, so the stream brings old-shape rows, then the change, in one go.
 */
function cannotFollow(h: Harness, lagging: boolean): void {
  const when = lagging ? 'reached with old-shape rows not yet applied (the agent lagging)' : 'once every earlier row is applied';
  it(`fails naming the column and a fix on a change the target cannot follow (text → integer USING on the source), ${when}; after the fix, resumes and loses nothing`, async function () {
    const spec = await newDatabase(h, CODES_SEED);
    const id = spec.id!;
    await startSyncing(h, spec);
    if (lagging) await pause(h, id);
    const w = shapeWriter(() => h.source.client(id), codesShape(false));
    const alter = 'ALTER TABLE codes ALTER COLUMN code TYPE integer USING substr(code, 3)::integer';
    try {
      await w.writes(STEP_WRITES);
      if (!lagging) await waitOnTarget(h, id, 'codes', w.lastCommit('codes'));
      await runSteps(h, id, w, [{ ddl: alter, after: codesShape(true) }]);
      if (lagging) await h.client.resumeMigration(id);
      const failed = await waitFailed(h, id, async () => {
        const type = await targetColumnType(h, id, 'codes', 'code');
        if (type !== 'text') return `the target's column is ${type} (the change was applied)`;
        const seq = w.lastCommit('codes');
        const intRow = w.committed.get(seq)?.name === 'code integer' && (await onTarget(h, id, 'codes', seq));
        return intRow ? `commit ${seq} (an integer code) was applied into the target's text column` : undefined;
      });
      assert.ok(['SCHEMA_DRIFT', 'SCHEMA_CHANGE_FAILED'].includes(failed.errorCode), await diagnose(h, id, failed));
      assert.match(failed.errorMessage, /codes/);
      assert.match(failed.errorMessage, /\bcode\b/);
      assert.notEqual(failed.errorRemedy, '', 'a remedy says how to fix it');
      assert.equal(await targetColumnType(h, id, 'codes', 'code'), 'text');
      // The fix the remedy names: the source's own change, made on the target by hand.
      await w.writes(STEP_WRITES);
      await h.target.query(alter, [], id);
      // `pgferry resume` retries a failed migration (as a start with the same spec does, used by the 'stop' case).
      await h.client.resumeMigration(id);
      await pollUntil(`${id} syncing`, async () => ((await h.client.getMigration(id)).phase === 'syncing' ? true : undefined), WAIT_MS);
      await w.writes(STEP_WRITES);
      await waitOnTarget(h, id, 'codes', w.lastCommit('codes'));
      assert.equal(await targetColumnType(h, id, 'codes', 'code'), 'integer', 'the fix stays');
    } catch (e) {
      await w.stop();
      throw e;
    }
    await cutoverAndCheck(h, id, w);
    await h.client.deleteMigration(id);
  });
}

/** Pause the migration (PauseMigration: nothing applies, the slot keeps WAL) and wait until it says so. */
/**
 * Regression (seen in CI: a table's rows differed after a cutover that passed): a column change committed on the
 * source before a verification round's point, with the table's next row after it, leaves the target in the old
 * shape at that point. Compared then, the rows changed before the change differ (the source's values went through
 * its USING) and were "repaired": the source's new values written into the target's old column, which the fix made
 * by hand later converted again. A round leaves such a table out, and its rows count as changed whole.
 */
function shapeLagNotRepaired(h: Harness): void {
  it('does not compare or repair a table whose column change the stream has not brought yet', async function () {
    const spec = await newDatabase(h, CODES_SEED);
    const id = spec.id!;
    await startSyncing(h, spec);
    await pollUntil('verified', async () => ((await h.client.getMigration(id)).verification?.state === 'verified' ? true : undefined), WAIT_MS);
    // Rows changed since the verification: the next key rounds compare them.
    await h.source.query("UPDATE codes SET code = 'A-' || (-client_seq + 1000) WHERE client_seq > -50", [], id);
    await pollUntil('the updates on the target', async () => {
      const r = await h.target.query("SELECT count(*)::int AS n FROM codes WHERE code = 'A-1001'", [], id);
      return r.rows[0].n === 1 ? true : undefined;
    });
    await h.source.query('ALTER TABLE codes ALTER COLUMN code TYPE integer USING substr(code, 3)::integer', [], id);
    // Key rounds run every 2 s while keys are pending: let several pass (nothing here depends on how long they take).
    await new Promise((r) => setTimeout(r, 8000));
    const m = await h.client.getMigration(id);
    assert.equal(m.verification?.rowsRepaired, 0, 'no row was rewritten across the two shapes');
    const odd = await h.target.query("SELECT count(*)::int AS n FROM codes WHERE code NOT LIKE 'A-%'", [], id);
    assert.equal(odd.rows[0].n, 0, "the target's rows keep their old-shape values");
    assert.equal(await targetColumnType(h, id, 'codes', 'code'), 'text');
    await h.client.deleteMigration(id);
  });
}

async function pause(h: Harness, id: string): Promise<void> {
  await h.client.pauseMigration(id);
  await pollUntil(`${id} paused`, async () => ((await h.client.getMigration(id)).paused ? true : undefined), WAIT_MS);
}
