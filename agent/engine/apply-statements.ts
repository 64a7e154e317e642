/**
 * apply-statements — the SQL text and parameters of each step of a batch's
 * plan (apply-plan.ts): a group's set-based statement with its COPY data or
 * array parameters, or one change's own statement.
 *
 * Input: a Plan's steps. Output: `Statement`s in execution order, for
 * apply.ts to send; those whose row count must hold are made to fail on the
 * server when it does not (`checkedOnServer`), so COMMIT can follow them.
 */
import { qi, ql } from './conn';
import { PgferryError } from './errors';
import { formatLsn, type Lsn } from './lsn';
import { UNCHANGED_TOAST, type Tuple } from './pgoutput';
import type { PipelineValue } from './pipeline';
import { valueMissing, type Group, type Plan, type RowChange, type Single, type Step, type TruncateChange } from './apply-plan';

/** One statement of a batch: `step` is what it applies, `expectRows` the row count that must hold (null: none). */
export interface Statement {
  text: string;
  values: PipelineValue[];
  step: Step;
  expectRows: number | null;
  onShort: 'fail' | 'warn';
  /** COPY … FROM STDIN text-format data, when the statement is a COPY. */
  copyData?: Buffer;
}

/**
 * The plan's statements, in execution order (`onStep` is told which step
 * is being built, for errors), and whether the batch can commit in the
 * same part as its changes: every row count that must hold is then
 * checked by the server (`checkedOnServer`). Not so when a table's counts
 * are checked by the agent (TargetTable.countsHere: triggers that may skip
 * a row of a COPY, whose count SQL cannot check, or rules), nor in a
 * one-change-per-statement replay (a failure there names its change).
 */
export function batchStatements(plan: Plan, safe: boolean, onStep: (s: Step) => void): { sts: Statement[]; oneTrip: boolean } {
  const sts: Statement[] = [];
  let oneTrip = !safe;
  for (const step of plan.steps()) {
    onStep(step);
    const st = step.kind === 'group' ? groupStatement(step, plan) : singleStatement(step);
    if (!st) continue;
    if (step.kind === 'group' ? step.map.target.countsHere : step.change.op !== 'TRUNCATE' && step.change.map.target.countsHere) oneTrip = false;
    sts.push(st);
    if (st.copyData && step.kind === 'group' && step.shape.copyCheck)
      sts.push({ text: step.shape.copyCheck, values: [], step, expectRows: null, onShort: 'warn' });
  }
  return { sts, oneTrip };
}

/** The statement of a group built by the plan; null when it would change nothing. */
function groupStatement(g: Group, plan: Plan): Statement | null {
  const s = g.shape;
  if (s.text === null) return null;
  if (g.op === 'INSERT') {
    if (g.map.writeIdx.length === 0) return { text: s.text, values: [g.rows], step: g, expectRows: g.rows, onShort: 'fail' };
    if (g.copy) return { text: s.copyText!, values: [], copyData: plan.copyData(g), step: g, expectRows: g.rows, onShort: 'fail' };
    return { text: s.text, values: plan.insertArrays(g), step: g, expectRows: g.rows, onShort: 'fail' };
  }
  const values = g.arrays!.map((a) => a.finish());
  if (g.op === 'DELETE') return { text: s.text, values, step: g, expectRows: g.keys!.size, onShort: 'warn' };
  return { text: s.text, values, step: g, expectRows: g.rows, onShort: 'fail' };
}

/** The SQL for one change; null when it would change nothing. */
export function singleStatement(run: Single): Statement | null {
  if (run.op === 'TRUNCATE') {
    const c = run.change as TruncateChange;
    // ONLY keeps inheritance children (published separately) out; a
    // partitioned root publishes for all its partitions, so it is truncated whole.
    const list = c.maps.map((m) => (m.target.partitioned ? '' : 'ONLY ') + m.target.quoted).join(', ');
    return { text: `TRUNCATE ${list}${c.restartIdentity ? ' RESTART IDENTITY' : ''}`, values: [], step: run, expectRows: null, onShort: 'warn' };
  }
  const c = run.change as RowChange;
  const m = c.map;
  const col = (i: number) => m.cols[i]!;
  const name = (i: number) => qi(m.rel.columns[i].name);
  const params = new Params();

  if (run.op === 'INSERT') {
    if (m.writeIdx.length === 0) {
      // A table without columns (or only generated ones): the row carries no values.
      return { text: `INSERT INTO ${m.target.quoted} DEFAULT VALUES`, values: [], step: run, expectRows: 1, onShort: 'fail' };
    }
    const vals = m.writeIdx.map((i) => params.typed(value(c.newTuple!, i, c), col(i).castType));
    return {
      text: `INSERT INTO ${m.target.quoted} (${m.writeIdx.map(name).join(', ')})${m.overriding ? ' OVERRIDING SYSTEM VALUE' : ''} VALUES (${vals.join(', ')})`,
      values: params.values,
      step: run,
      expectRows: 1,
      onShort: 'fail',
    };
  }

  if (run.form === 'full') {
    // REPLICA IDENTITY FULL: duplicates are possible, so match every old
    // column and touch exactly one row (tableoid too: ctids repeat across
    // partitions). Values are compared as the type's output text, the form
    // the source sent: format('%s') calls the output function, whereas
    // `::text` is a different cast for some types (boolean gives 'true' not
    // 't', inet adds '/32', character(n) drops its padding), and comparing
    // as typed values needs an equality operator that json, xml or point lack.
    const old = c.oldTuple!;
    const match =
      m.writeIdx
        .filter((i) => old[i] !== UNCHANGED_TOAST)
        .map((i) =>
          old[i] === null ? `t.${name(i)} IS NULL` : `(t.${name(i)} IS NOT NULL AND format('%s', t.${name(i)}) = ${params.text(old[i] as string | Buffer)})`,
        )
        .join(' AND ') || 'true';
    const pick = `WITH s AS MATERIALIZED (SELECT t.tableoid AS toid, t.ctid AS tid FROM ${m.target.quoted} AS t WHERE ${match} LIMIT 1)`;
    const target = 'WHERE t.ctid = (SELECT tid FROM s) AND t.tableoid = (SELECT toid FROM s)';
    if (run.op === 'DELETE')
      return { text: `${pick} DELETE FROM ${m.target.quoted} AS t ${target}`, values: params.values, step: run, expectRows: 1, onShort: 'warn' };
    const nu = c.newTuple!;
    const present = m.writeIdx.filter((i) => nu[i] !== UNCHANGED_TOAST);
    const set = present.filter((i) => !col(i).identityAlways);
    const guard = present
      .filter((i) => col(i).identityAlways)
      .map((i) => ` AND t.${name(i)} IS NOT DISTINCT FROM ${params.typed(value(nu, i, c), col(i).castType)}`)
      .join('');
    if (set.length === 0) return null;
    const sets = set.map((i) => `${name(i)} = ${params.typed(value(nu, i, c), col(i).castType)}`).join(', ');
    return { text: `${pick} UPDATE ${m.target.quoted} AS t SET ${sets} ${target}${guard}`, values: params.values, step: run, expectRows: 1, onShort: 'fail' };
  }

  if (m.keyIdx.length === 0) {
    throw new PgferryError(
      'APPLY_FAILED',
      `${run.op} on ${m.target.quoted} (source transaction at ${formatLsn(c.lsn)}) cannot be applied: the source table has no replica identity to find the row by.`,
      `On the source: ALTER TABLE ${m.target.quoted} REPLICA IDENTITY FULL (or add a primary key), then copy the table again.`,
    );
  }
  const keyCond = (tuple: Tuple) => m.keyIdx.map((i) => `t.${name(i)} = ${params.typed(value(tuple, i, c), col(i).castType)}${col(i).collate}`).join(' AND ');

  if (run.op === 'DELETE') {
    return { text: `DELETE FROM ${m.target.quoted} AS t WHERE ${keyCond(c.oldTuple!)}`, values: params.values, step: run, expectRows: 1, onShort: 'warn' };
  }

  // UPDATE. The key is matched on the old key when it changed ('K' sent), else on the new tuple.
  const keyChange = run.form === 'key-change';
  const nu = c.newTuple!;
  const present = m.writeIdx.filter((i) => nu[i] !== UNCHANGED_TOAST);
  // Guard 5 (unchanged TOAST): absent values are left out of SET, never written.
  const set = present.filter((i) => (keyChange || !m.keyIdx.includes(i)) && !(col(i).identityAlways && !(keyChange && m.keyIdx.includes(i))));
  const guardIdx = present.filter((i) => col(i).identityAlways && !set.includes(i) && !m.keyIdx.includes(i));
  if (set.length === 0) return null;
  const sets = set.map((i) => `${name(i)} = ${params.typed(value(nu, i, c), col(i).castType)}`).join(', ');
  const where = keyCond(keyChange ? c.oldTuple! : nu);
  const guards = guardIdx.map((i) => ` AND t.${name(i)} IS NOT DISTINCT FROM ${params.typed(value(nu, i, c), col(i).castType)}`).join('');
  return { text: `UPDATE ${m.target.quoted} AS t SET ${sets} WHERE ${where}${guards}`, values: params.values, step: run, expectRows: 1, onShort: 'fail' };
}

/**
 * `st` (an INSERT, UPDATE or DELETE with an expected row count) made to
 * fail on the server when it touches another number of rows, so the batch's
 * COMMIT can follow it in the same pipeline part: the rows it touched are
 * counted through RETURNING, and a count that differs is cast to bigint from
 * a text that says what happened, which fails with that text in the message
 * (SQL has no function to raise an error; this needs none created on the
 * target). Any failure of the fast path leads to the one-change-per-statement
 * replay, which names the change. Statements without a count that must hold
 * pass unchanged.
 */
export function checkedOnServer(st: Statement): Statement {
  if (st.expectRows === null || st.onShort !== 'fail' || st.copyData) return st;
  const k = `$${st.values.length + 1}::bigint`;
  const what = ql(`pgferry: ${st.step.op} on ${stepTable(st.step)} touched `);
  return {
    ...st,
    text: `WITH m AS (${st.text} RETURNING 1) SELECT CASE WHEN n = ${k} THEN n ELSE (${what} || n || ' of ' || ${k} || ' rows on the target')::bigint END FROM (SELECT count(*) AS n FROM m) AS c`,
    values: [...st.values, st.expectRows],
  };
}

/** Bind parameters in order. */
class Params {
  readonly values: PipelineValue[] = [];
  /**
   * A value of `type`: text is sent as text and cast by the target's input
   * function; a binary value (binary stream) is sent in binary format as a
   * parameter of that type, read by its receive function.
   */
  typed(v: string | Buffer | null, type: string): string {
    this.values.push(v);
    return Buffer.isBuffer(v) ? `$${this.values.length}::${type}` : `$${this.values.length}::text::${type}`;
  }
  /** A value compared as the source's output text (REPLICA IDENTITY FULL rows, which never travel in binary: sync.ts). */
  text(v: string | Buffer): string {
    if (Buffer.isBuffer(v)) throw new Error('a binary value where only text can be compared (REPLICA IDENTITY FULL in a binary stream)');
    this.values.push(v);
    return `$${this.values.length}::text`;
  }
}

/** Column `i` of `t`, which the statement for `c` needs: an unchanged TOAST value (not sent) is an error. */
export function value(t: Tuple, i: number, c: RowChange): string | Buffer | null {
  const v = t[i];
  if (v === UNCHANGED_TOAST) throw valueMissing(c.op, c.map, i, c.lsn);
  return v;
}

/** The table (or tables, for a TRUNCATE) a step writes. */
export function stepTable(s: Step): string {
  if (s.kind === 'group') return s.map.target.quoted;
  const c = s.change;
  return c.op === 'TRUNCATE' ? c.maps.map((m) => m.target.quoted).join(', ') : c.map.target.quoted;
}

/** The source transaction of a step's (first) change. */
export function stepLsn(s: Step): Lsn {
  return s.kind === 'group' ? s.firstLsn : s.change.lsn;
}
