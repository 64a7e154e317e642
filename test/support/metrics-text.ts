/**
 * The Prometheus text exposition format (0.0.4), parsed strictly for tests,
 * and a scrape of an agent's metrics endpoint.
 */
import assert from 'node:assert/strict';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
export interface Exposition {
  help: Map<string, string>;
  type: Map<string, string>;
  samples: Sample[];
}

/** Parse the Prometheus text format (0.0.4); throws on any line it cannot read. */
export function parseExposition(text: string): Exposition {
  const out: Exposition = { help: new Map(), type: new Map(), samples: [] };
  for (const [i, line] of text.split('\n').entries()) {
    if (line === '') continue;
    let m = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (m) {
      out.help.set(m[1], m[2]);
      continue;
    }
    m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (m) {
      out.type.set(m[1], m[2]);
      continue;
    }
    if (line.startsWith('#')) continue;
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([^ ]+)(?: -?\d+)?$/.exec(line);
    if (!m) throw new Error(`line ${i + 1} is not a sample: ${line}`);
    const labels: Record<string, string> = {};
    if (m[2]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/y;
      let pos = 0;
      while (pos < m[2].length) {
        re.lastIndex = pos;
        const l = re.exec(m[2]);
        if (!l) throw new Error(`line ${i + 1} has malformed labels: ${line}`);
        labels[l[1]] = l[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
        pos = re.lastIndex;
      }
    }
    const v = m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : Number(m[3]);
    // Prometheus reads values with Go's strconv.ParseFloat, which takes NaN in any case;
    // prom-client writes `Nan` (e.g. the event-loop lag mean when two scrapes come back to back).
    if (Number.isNaN(v) && m[3].toLowerCase() !== 'nan') throw new Error(`line ${i + 1} has a bad value: ${line}`);
    out.samples.push({ name: m[1], labels, value: v });
  }
  return out;
}

/** The family a sample belongs to (histogram/summary suffixes folded). */
export const family = (e: Exposition, name: string) => (e.type.has(name) ? name : name.replace(/_(bucket|sum|count)$/, ''));

export function pick(e: Exposition, name: string, labels: Record<string, string> = {}): Sample[] {
  return e.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
}
export function one(e: Exposition, name: string, labels: Record<string, string> = {}): number {
  const s = pick(e, name, labels);
  assert.equal(s.length, 1, `exactly one ${name}${JSON.stringify(labels)}, found ${s.length}`);
  return s[0].value;
}
export const sum = (e: Exposition, name: string, labels: Record<string, string> = {}) => pick(e, name, labels).reduce((a, s) => a + s.value, 0);

/** GET /metrics of an agent on loopback, parsed. */
export async function scrape(port: number): Promise<Exposition> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(res.status, 200);
  return parseExposition(await res.text());
}
