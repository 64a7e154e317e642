/**
 * cutover-verify — the rows' check inside the cutover's fence, with both
 * sides still (the source fenced and drained).
 *
 * `changes` (the default): a table the continuous verification (verify.ts)
 * verified, that nobody but pgferry wrote on the target since (the write
 * guard's notes, verify-guard.ts) and whose changes since were kept key by
 * key, is checked on exactly those keys: `unchanged` when there are none,
 * `changes` otherwise. Any other table is checked in `full`. So the fence
 * costs what changed since the verification, not what the database weighs.
 * `full` (older name `checksums`) checks every row of every table, `counts`
 * row counts, `none` nothing.
 *
 * Input: the fenced source and target connections, the migrated tables, the
 * verifier (null when it did not run). Output: one `TableValidation` per data
 * table, with its mode and the rows read on each side; warnings.
 */
import type pg from 'pg';
import { dataColumns, dataTables, tableKey, type TableInfo } from './catalog';
import { tableFingerprint, tableRowCount } from './checksum';
import type { TableValidation, Validation } from './state';
import type { Verifier } from './verify';
import { foreignWritesAfter } from './verify-guard';
import { differingKeys, keysRowHashes, type KeyValues } from './verify-ranges';

export interface FenceCheck {
  tables: TableValidation[];
  warnings: string[];
  /** Per table that differs, what differs (for the error). */
  details: Map<string, string>;
}

export async function checkRowsAtFence(
  src: pg.Client,
  tgt: pg.Client,
  tables: TableInfo[],
  validation: Validation,
  verifier: Verifier | null,
): Promise<FenceCheck> {
  const out: FenceCheck = { tables: [], warnings: [], details: new Map() };
  if (validation === 'none') return out;
  const data = dataTables(tables);
  if (validation === 'counts') {
    for (const t of data) out.tables.push(await counts(src, tgt, t));
    return out;
  }
  if (validation === 'full' || validation === 'checksums' || !verifier) {
    if (validation === 'changes')
      out.warnings.push('The continuous verification did not run in this agent process: every table was checked in full inside the fence.');
    for (const t of data) out.tables.push(await full(src, tgt, t));
    return out;
  }
  const foreign = await foreignWritesAfter(tgt, tables, verifier.verifiedSnapshots());
  for (const t of data) {
    const key = tableKey(t);
    const f = foreign.get(key);
    const changed = verifier.tracker.changedSinceVerified(key);
    if (f)
      out.warnings.push(
        `${key} was written on the target by someone other than pgferry since its verification (${f.ops.join(', ')}, last at ${f.lastAt}): checked in full.`,
      );
    if (f || changed === null || changed === 'whole') out.tables.push(await full(src, tgt, t));
    else out.tables.push(await byKeys(src, tgt, t, changed, out.details));
  }
  return out;
}

async function counts(src: pg.Client, tgt: pg.Client, t: TableInfo): Promise<TableValidation> {
  const [a, b] = await Promise.all([tableRowCount(src, t.schema, t.name), tableRowCount(tgt, t.schema, t.name)]);
  return {
    table: tableKey(t),
    sourceRows: a,
    targetRows: b,
    sourceChecksum: '',
    targetChecksum: '',
    match: a === b,
    mode: 'counts',
    rowsChecked: Math.max(a, b),
  };
}

async function full(src: pg.Client, tgt: pg.Client, t: TableInfo): Promise<TableValidation> {
  const cols = dataColumns(t).map((c) => c.name);
  const [a, b] = await Promise.all([tableFingerprint(src, t.schema, t.name, cols), tableFingerprint(tgt, t.schema, t.name, cols)]);
  return {
    table: tableKey(t),
    sourceRows: a.rows,
    targetRows: b.rows,
    sourceChecksum: a.checksum,
    targetChecksum: b.checksum,
    match: a.rows === b.rows && a.checksum === b.checksum,
    mode: 'full',
    rowsChecked: Math.max(a.rows, b.rows),
  };
}

/** Only the rows the apply changed since the table's verification, by exact key. */
async function byKeys(src: pg.Client, tgt: pg.Client, t: TableInfo, keys: KeyValues[], details: Map<string, string>): Promise<TableValidation> {
  const base = { table: tableKey(t), sourceChecksum: '', targetChecksum: '' };
  if (!keys.length) return { ...base, sourceRows: 0, targetRows: 0, match: true, mode: 'unchanged', rowsChecked: 0 };
  const [a, b] = await Promise.all([keysRowHashes(src, t, keys), keysRowHashes(tgt, t, keys)]);
  const differ = differingKeys(a, b);
  if (differ.length) {
    const shown = differ.slice(0, 3).map((k) => `(${k.join(', ')})`);
    details.set(base.table, `${differ.length} changed row(s) differ, key ${shown.join(', ')}${differ.length > 3 ? ', …' : ''}`);
  }
  return { ...base, sourceRows: a.size, targetRows: b.size, match: differ.length === 0, mode: 'changes', rowsChecked: keys.length };
}
