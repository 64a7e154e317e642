/**
 * schema-follow-columns: the statements that follow a table's new shape, from
 * the stream's columns, the target's and the record of source column numbers.
 * Pure planning (no server); the stream path against real clusters is in
 * schema-follow.test.ts.
 */
import assert from 'node:assert/strict';
import { planShape, type CatalogColumn, type ColumnRecord, type WantedColumn } from '../agent/engine/schema-follow-columns';

const K = 'public.t';
const cur = (name: string, attnum: number, type = 'integer', extra: Partial<CatalogColumn> = {}): CatalogColumn => ({
  attnum,
  name,
  type,
  notNull: false,
  default: null,
  generated: false,
  ...extra,
});
const want = (name: string, attnum: number | undefined, type = 'integer', extra: Partial<WantedColumn> = {}): WantedColumn => ({
  name,
  attnum,
  type,
  default: null,
  notNull: false,
  ...extra,
});
const rec = (...pairs: Array<[string, number]>): ColumnRecord => new Map(pairs);
const statements = (p: ReturnType<typeof planShape>) => p.changes.map((c) => c.statement);

describe('schema-follow-columns: following a table shape', function () {
  it('tells a rename (same source column number) from a drop and an add', function () {
    const current = [cur('id', 1), cur('note', 2, 'text')];
    const renamed = planShape(K, current, [want('id', 1), want('remark', 2, 'text')], rec(['id', 1], ['note', 2]), false);
    assert.deepEqual(statements(renamed), ['ALTER TABLE public.t RENAME COLUMN note TO remark']);
    assert.deepEqual(
      [...renamed.record],
      [
        ['id', 1],
        ['remark', 2],
      ],
    );
    const replaced = planShape(K, current, [want('id', 1), want('remark', 3, 'text')], rec(['id', 1], ['note', 2]), false);
    assert.deepEqual(statements(replaced), ['ALTER TABLE public.t DROP COLUMN note', 'ALTER TABLE public.t ADD COLUMN remark text']);
  });

  it("renames when the source's catalog is ahead (the column renamed again since): the one new name it cannot number takes the old one's place", function () {
    const p = planShape(K, [cur('id', 1), cur('note', 2, 'text')], [want('id', 1), want('remark', undefined, 'text')], rec(['id', 1], ['note', 2]), false);
    assert.deepEqual(statements(p), ['ALTER TABLE public.t RENAME COLUMN note TO remark']);
  });

  it('adds a column with the default the source gave its existing rows, and NOT NULL only where the stream is exact (the fence)', function () {
    const current = [cur('id', 1)];
    const wanted = [want('id', 1), want('c2', 2, 'integer', { default: '7', notNull: true })];
    assert.deepEqual(statements(planShape(K, current, wanted, rec(['id', 1]), false)), ['ALTER TABLE public.t ADD COLUMN c2 integer DEFAULT 7']);
    assert.deepEqual(statements(planShape(K, current, wanted, rec(['id', 1]), true)), ['ALTER TABLE public.t ADD COLUMN c2 integer DEFAULT 7 NOT NULL']);
  });

  it('changes a type with a cast, and at the fence NOT NULL and defaults too', function () {
    const p = planShape(
      K,
      [cur('id', 1), cur('n', 2)],
      [want('id', 1), want('n', 2, 'bigint', { notNull: true, default: '0' })],
      rec(['id', 1], ['n', 2]),
      true,
    );
    assert.deepEqual(statements(p), [
      'ALTER TABLE public.t ALTER COLUMN n TYPE bigint USING n::bigint',
      'ALTER TABLE public.t ALTER COLUMN n SET DEFAULT 0',
      'ALTER TABLE public.t ALTER COLUMN n SET NOT NULL',
    ]);
  });

  it('never drops a target column the record does not attribute to the source, nor a generated one; nothing to do gives nothing', function () {
    const current = [cur('id', 1), cur('mine', 2, 'text'), cur('g', 3, 'integer', { generated: true })];
    const p = planShape(K, current, [want('id', 1)], rec(['id', 1]), true);
    assert.deepEqual(statements(p), []);
    assert.deepEqual(p.kept, ['mine']);
    assert.deepEqual(statements(planShape(K, [cur('id', 1)], [want('id', 1)], rec(['id', 1]), true)), []);
  });

  it('quotes names that need it', function () {
    const p = planShape('public."T"', [cur('id', 1)], [want('id', 1), want('Odd Name', 2, 'text')], rec(['id', 1]), false);
    assert.deepEqual(statements(p), ['ALTER TABLE public."T" ADD COLUMN "Odd Name" text']);
  });
});
