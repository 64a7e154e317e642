/**
 * The table selection's grammar (agent/engine/table-pattern.ts), rule by
 * rule: quoting, escaping, Unicode, case folding, wildcards, the 63-byte
 * limit; and the spec, the provider's Check and the CLI's spec file accept
 * and reject exactly the same patterns. No server needed.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSpec } from '../agent/engine/spec';
import { MAX_NAME_BYTES, parseTablePattern, patternMatches, quoteName, tablePatternError, truncateName } from '../agent/engine/table-pattern';
import { validateInputs } from '../provider/check';
import { loadSpecFile } from '../agent/cli/spec-file';

/** Which of `names` (`[schema, table]`) the pattern selects. */
function selected(pattern: string, names: Array<[string, string]>): string[] {
  const p = parseTablePattern(pattern);
  return names.filter(([s, t]) => patternMatches(p, s, t)).map(([s, t]) => `${s}|${t}`);
}

function problem(pattern: string): string {
  const e = tablePatternError(pattern);
  assert.ok(e, `expected ${JSON.stringify(pattern)} to be rejected`);
  return e.problem;
}

describe('table patterns: the grammar', () => {
  describe('quoting', () => {
    it('keeps a quoted name exact: case, spaces, dots and punctuation', () => {
      const p = parseTablePattern('"Sales Dept"."Orders.2024"');
      assert.equal(p.schema.exact, 'Sales Dept');
      assert.equal(p.table.exact, 'Orders.2024');
      assert.deepEqual(
        selected('"Sales"."Orders"', [
          ['Sales', 'Orders'],
          ['sales', 'orders'],
          ['SALES', 'ORDERS'],
        ]),
        ['Sales|Orders'],
      );
    });

    it('selects the issue\'s schema SPECIAL "@/\\#~_- by its quoted name', () => {
      const p = parseTablePattern('"SPECIAL ""@/\\#~_-".*');
      assert.equal(p.schema.exact, 'SPECIAL "@/\\#~_-');
      assert.equal(p.table.exact, null);
      assert.deepEqual(
        selected('"SPECIAL ""@/\\#~_-".*', [
          ['SPECIAL "@/\\#~_-', 't'],
          ['special "@/\\#~_-', 't'],
        ]),
        ['SPECIAL "@/\\#~_-|t'],
      );
    });

    it('takes * and ? inside quotes literally, and as wildcards outside', () => {
      const names: Array<[string, string]> = [
        ['x*', '?'],
        ['xy', 'a'],
        ['x*', 'a'],
      ];
      assert.deepEqual(selected('"x*"."?"', names), ['x*|?']);
      assert.deepEqual(selected('x*.?', names), ['x*|?', 'xy|a', 'x*|a']);
    });

    it('joins quoted and unquoted pieces of one part, each by its own rule', () => {
      const names: Array<[string, string]> = [
        ['Sales2024', 't'],
        ['sales2024', 't'],
        ['SalesX', 'T_1'],
      ];
      assert.deepEqual(selected('"Sales"*.t', names), ['Sales2024|t']);
      assert.deepEqual(selected('"Sales"X.T_?', names), []); // unquoted X folds to x
      assert.deepEqual(selected('"SalesX"."T_"?', names), ['SalesX|T_1']);
    });
  });

  describe('escaping', () => {
    it('reads "" inside quotes as one double quote', () => {
      assert.equal(parseTablePattern('"x""y".t').schema.exact, 'x"y');
      assert.equal(parseTablePattern('"""".""""""').schema.exact, '"');
      assert.equal(parseTablePattern('"""".""""""').table.exact, '""');
      assert.equal(parseTablePattern('s."a""."""').table.exact, 'a"."');
    });

    it('rejects what PostgreSQL would reject, saying what is wrong', () => {
      assert.match(problem('"abc.t'), /never closed/);
      assert.match(problem('s."t""'), /never closed/);
      assert.match(problem('"".t'), /empty quoted name/);
      assert.match(problem('a.b.c'), /more than one '\.'/);
      assert.match(problem('orders'), /names no schema/);
      assert.match(problem('"a.b"'), /names no schema/);
      assert.match(problem('.t'), /empty schema name/);
      assert.match(problem('s.'), /empty table name/);
      assert.match(problem(''), /is empty/);
      assert.match(problem('s.a\0b'), /NUL/);
      assert.match(problem('s."a\0b"'), /NUL/);
    });

    it('quotes names back the way PostgreSQL writes them', () => {
      assert.equal(quoteName('orders'), 'orders');
      assert.equal(quoteName('Orders'), '"Orders"');
      assert.equal(quoteName('SPECIAL "@/\\#~_-'), '"SPECIAL ""@/\\#~_-"');
      for (const name of ['Orders', 'x"y', 'a.b', 'select', 'données']) {
        assert.equal(parseTablePattern(`s.${quoteName(name)}`).table.exact, name);
      }
    });
  });

  describe('Unicode', () => {
    it('matches names in any script, quoted or not', () => {
      assert.deepEqual(selected('données.журнал', [['données', 'журнал']]), ['données|журнал']);
      assert.deepEqual(selected('"日本"."表 1"', [['日本', '表 1']]), ['日本|表 1']);
    });

    it('lets ? match one character, also outside the Basic Multilingual Plane', () => {
      const names: Array<[string, string]> = [
        ['s', 'café'],
        ['s', 'cafe'],
        ['s', 'caf🐘'],
        ['s', 'cafée'],
      ];
      assert.deepEqual(selected('s.caf?', names), ['s|café', 's|cafe', 's|caf🐘']);
    });

    it('lets * match names that hold newlines', () => {
      assert.deepEqual(selected('s.*', [['s', 'a\nb']]), ['s|a\nb']);
    });
  });

  describe('case', () => {
    it('folds unquoted ASCII letters to lower case, like PostgreSQL', () => {
      assert.deepEqual(
        selected('Public.Orders', [
          ['public', 'orders'],
          ['Public', 'Orders'],
        ]),
        ['public|orders'],
      );
    });

    it('keeps the case of letters beyond ASCII, as PostgreSQL does in a UTF-8 database', () => {
      // CREATE TABLE ÉCOLE.CAFÉ () creates "École"."cafÉ" in a UTF-8 database.
      assert.deepEqual(
        selected('ÉCOLE.CAFÉ', [
          ['École', 'cafÉ'],
          ['école', 'café'],
          ['ÉCOLE', 'CAFÉ'],
        ]),
        ['École|cafÉ'],
      );
    });
  });

  describe('the 63-byte limit', () => {
    it('accepts a name of exactly 63 bytes, multi-byte characters included', () => {
      const ascii = 'a'.repeat(MAX_NAME_BYTES);
      const wide = `${'é'.repeat(31)}x`; // 62 + 1 bytes
      assert.equal(Buffer.byteLength(wide), MAX_NAME_BYTES);
      assert.equal(parseTablePattern(`${ascii}."${wide}"`).table.exact, wide);
    });

    it('rejects a longer name, offering the name PostgreSQL would have stored', () => {
      const long = 'é'.repeat(32); // 64 bytes
      const e = tablePatternError(`s."${long}"`);
      assert.ok(e);
      assert.match(e.problem, /at least 64 bytes/);
      assert.ok(e.fix.includes(`"${'é'.repeat(31)}"`), e.fix);
      assert.equal(truncateName(long), 'é'.repeat(31));
      assert.ok(tablePatternError(`${'a'.repeat(64)}.*`));
      assert.equal(tablePatternError(`${'a'.repeat(62)}*.*`), undefined);
    });
  });
});

describe('table patterns: the spec, the provider and the CLI agree', () => {
  const VALID = ['public.*', '"SPECIAL ""@/\\#~_-".*', '"Sales"."Orders"', 'données.журнал', 'public."select"', 'my schema.my table'];
  const INVALID = ['orders', 'a.b.c', '"abc.t', '"".t', 's.', `s."${'é'.repeat(32)}"`];
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'pgferry-patterns-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const endpoint = { host: 'h', database: 'd', user: 'u' };
  const viaSpec = (p: string) => {
    try {
      parseSpec({ id: 'a', source: endpoint, target: endpoint, tables: { include: [p] } });
      return true;
    } catch (e) {
      assert.equal((e as { code?: string }).code, 'INVALID_SPEC');
      assert.ok((e as Error).message.includes('`tables.include.0`'), (e as Error).message);
      return false;
    }
  };
  const viaProvider = (p: string) => {
    const failures = validateInputs({ migrationId: 'a', source: endpoint, target: endpoint, tables: { include: [p] } });
    return !failures.some((f) => f.property === 'tables.include[0]');
  };
  const viaCli = (p: string) => {
    const f = join(dir, 'spec.json');
    writeFileSync(f, JSON.stringify({ id: 'a', source: endpoint, target: endpoint, tables: { include: ['public.*'], exclude: [p] } }));
    try {
      loadSpecFile(f, {});
      return true;
    } catch (e) {
      assert.equal((e as { code?: string }).code, 'INVALID_SPEC');
      assert.ok((e as Error).message.includes('`tables.exclude[0]`'), (e as Error).message);
      return false;
    }
  };

  for (const p of VALID) {
    it(`accepts ${JSON.stringify(p)} everywhere`, () => {
      assert.deepEqual([viaSpec(p), viaProvider(p), viaCli(p)], [true, true, true]);
    });
  }
  for (const p of INVALID) {
    it(`rejects ${JSON.stringify(p)} everywhere`, () => {
      assert.deepEqual([viaSpec(p), viaProvider(p), viaCli(p)], [false, false, false]);
    });
  }
});
