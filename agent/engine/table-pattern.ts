/**
 * table-pattern — the grammar of a table selection's patterns
 * (`tables.include`, `tables.exclude`): `schema.table`, parsed into two name
 * matchers. The spec (spec.ts), the catalog (catalog.ts), the provider's
 * Check (provider/check.ts) and the CLI's spec file read patterns through
 * this one file, so all of them accept and match the same names. It imports
 * nothing: the provider loads it without the PostgreSQL driver.
 *
 * Input: a pattern's text. Output: `{ schema, table }` matchers, or the
 * problem with the pattern and how to fix it.
 *
 * The rules are PostgreSQL's own for identifiers, plus psql's wildcards:
 * - a `.` outside double quotes separates the schema from the table; each
 *   part is a run of quoted and unquoted pieces (`"Sales"*`);
 * - inside double quotes everything is literal and exact (case, `.`, `*`,
 *   spaces, any Unicode); `""` stands for one `"`;
 * - outside quotes ASCII `A`–`Z` fold to lower case (other letters are kept,
 *   as PostgreSQL does in a UTF-8 database), `*` matches any run of
 *   characters and `?` exactly one;
 * - a name holds at most 63 bytes (NAMEDATALEN - 1), never NUL, never nothing.
 *
 * @example
 * parseTablePattern('public.*')                    // every table of schema public
 * parseTablePattern('"Sales"."Orders"')            // exactly Sales.Orders
 * parseTablePattern('"SPECIAL ""@/\\#~_-".*')      // schema SPECIAL "@/\#~_-
 * parseTablePattern('Billing.Invoice_?')           // billing.invoice_1, billing.invoice_a, …
 */

/** The longest PostgreSQL name, in bytes (NAMEDATALEN - 1). */
export const MAX_NAME_BYTES = 63;

/** One side of a pattern (the schema's or the table's name). */
export interface NameMatcher {
  /** The name when the part has no wildcard, else null. */
  readonly exact: string | null;
  /** Anchored, Unicode-aware; tests a whole name. */
  readonly regex: RegExp;
  test(name: string): boolean;
}

export interface TablePattern {
  /** The pattern as written. */
  readonly text: string;
  readonly schema: NameMatcher;
  readonly table: NameMatcher;
}

/** A pattern that does not follow the grammar: `problem` says what is wrong, `fix` how to write it; `message` both. */
export class TablePatternError extends Error {
  constructor(
    readonly pattern: string,
    readonly problem: string,
    readonly fix: string,
  ) {
    super(`${problem}. ${fix.replace(/\.$/, '')}`);
    this.name = 'TablePatternError';
  }
}

/** A piece of a part: literal text (already folded or unquoted) or a wildcard. */
type Piece = { lit: string } | { any: 'run' | 'one' };

const EXAMPLE = `Write 'schema.table' (either part may hold '*', e.g. 'public.*'; quote a name that holds capitals, '.', '*', '?' or '"': '"Sales"."Orders"', '"a.b"."x""y"').`;

/** PostgreSQL's downcase_identifier in a UTF-8 database: ASCII A–Z only. */
function fold(ch: string): string {
  return ch >= 'A' && ch <= 'Z' ? String.fromCharCode(ch.charCodeAt(0) + 32) : ch;
}

/** Split `text` into its schema part and table part, as pieces. */
function scan(text: string): Piece[][] {
  const parts: Piece[][] = [[]];
  const push = (p: Piece) => {
    const cur = parts[parts.length - 1];
    const last = cur[cur.length - 1];
    if ('lit' in p && last && 'lit' in last) cur[cur.length - 1] = { lit: last.lit + p.lit };
    else cur.push(p);
  };
  const chars = [...text];
  let i = 0;
  while (i < chars.length) {
    const ch = chars[i];
    if (ch === '\0') throw new TablePatternError(text, `holds a NUL character (at character ${i + 1})`, 'Remove it: no PostgreSQL name can hold NUL.');
    if (ch === '"') {
      const start = i;
      let lit = '';
      for (i++; ; i++) {
        if (i >= chars.length) {
          throw new TablePatternError(
            text,
            `has a quoted name that is never closed (the '"' at character ${start + 1})`,
            `End it with '"', and write a '"' inside a quoted name as '""' ('"x""y".*').`,
          );
        }
        if (chars[i] === '"') {
          if (chars[i + 1] === '"') {
            lit += '"';
            i++;
            continue;
          }
          break;
        }
        if (chars[i] === '\0')
          throw new TablePatternError(text, `holds a NUL character (at character ${i + 1})`, 'Remove it: no PostgreSQL name can hold NUL.');
        lit += chars[i];
      }
      if (lit === '')
        throw new TablePatternError(
          text,
          `has an empty quoted name '""' at character ${start + 1}`,
          `Name the schema or table: PostgreSQL names are never empty. ${EXAMPLE}`,
        );
      push({ lit });
      i++;
      continue;
    }
    if (ch === '.') {
      if (parts.length === 2) {
        throw new TablePatternError(text, "has more than one '.' outside double quotes", `Quote a name that holds a '.' ('public."a.b"'). ${EXAMPLE}`);
      }
      parts.push([]);
    } else if (ch === '*') push({ any: 'run' });
    else if (ch === '?') push({ any: 'one' });
    else push({ lit: fold(ch) });
    i++;
  }
  return parts;
}

const escapeRegex = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

/** Cut `name` to at most `max` UTF-8 bytes on a character boundary (PostgreSQL's truncation). */
export function truncateName(name: string, max = MAX_NAME_BYTES): string {
  let out = '';
  let bytes = 0;
  for (const ch of name) {
    const n = Buffer.byteLength(ch, 'utf8');
    if (bytes + n > max) break;
    out += ch;
    bytes += n;
  }
  return out;
}

/** A name quoted for SQL (`"Sales"`, `"x""y"`); lower-case ASCII names without specials stay bare. */
export function quoteName(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : `"${name.replace(/"/g, '""')}"`;
}

function matcher(text: string, what: 'schema' | 'table', pieces: Piece[]): NameMatcher {
  if (pieces.length === 0) throw new TablePatternError(text, `has an empty ${what} name`, EXAMPLE);
  const literal = pieces.map((p) => ('lit' in p ? p.lit : '')).join('');
  const minBytes = Buffer.byteLength(literal, 'utf8') + pieces.filter((p) => 'any' in p && p.any === 'one').length;
  const exact = pieces.every((p) => 'lit' in p) ? literal : null;
  if (minBytes > MAX_NAME_BYTES) {
    const fix =
      exact !== null
        ? `Write the name as PostgreSQL stored it, cut to ${MAX_NAME_BYTES} bytes: ${quoteName(truncateName(exact))}.`
        : 'Shorten the literal text of the pattern.';
    throw new TablePatternError(
      text,
      `names a ${what} of at least ${minBytes} bytes, but PostgreSQL names hold at most ${MAX_NAME_BYTES} bytes (longer ones are cut when created), so it can match nothing`,
      fix,
    );
  }
  const body = pieces.map((p) => ('lit' in p ? escapeRegex(p.lit) : p.any === 'run' ? '.*' : '.')).join('');
  const regex = new RegExp(`^${body}$`, 'su');
  return { exact, regex, test: exact !== null ? (name) => name === exact : (name) => regex.test(name) };
}

/** Parse a pattern; throws TablePatternError naming what is wrong and how to write it. */
export function parseTablePattern(text: string): TablePattern {
  if (text === '') throw new TablePatternError(text, 'is empty', EXAMPLE);
  const parts = scan(text);
  if (parts.length === 1) throw new TablePatternError(text, 'names no schema', EXAMPLE);
  return { text, schema: matcher(text, 'schema', parts[0]), table: matcher(text, 'table', parts[1]) };
}

/** What is wrong with a pattern and how to write it, or undefined when it is valid. */
export function tablePatternError(text: string): TablePatternError | undefined {
  try {
    parseTablePattern(text);
    return undefined;
  } catch (e) {
    if (e instanceof TablePatternError) return e;
    throw e;
  }
}

/** `tablePatternError`'s message: what is wrong and how to write it (undefined when valid). */
export function tablePatternProblem(text: string): string | undefined {
  return tablePatternError(text)?.message;
}

/** Does the pattern select `schema.table` (names as the catalog holds them)? */
export function patternMatches(p: TablePattern, schema: string, table: string): boolean {
  return p.schema.test(schema) && p.table.test(table);
}
