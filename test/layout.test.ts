/**
 * The layout is the architecture: each layer imports only itself and the
 * layers below it, and no module imports itself back through others.
 *
 *   api            the proto, the types generated from it, the client every front-end uses
 *   agent/engine   the pipeline's stages and the supervisor (PostgreSQL, state)
 *   agent/server   the agent's gRPC service (typed against the proto), auth, TLS, metrics, logging
 *   provider       the Pulumi dynamic provider
 *   terraform      the Terraform/OpenTofu provider (plugin protocol 6), over the same provider modules
 *   dev            demo, test bed, sample data
 *   agent/cli      the `pgferry` command (runs the agent, talks to it, runs the demo)
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';

const ROOT = join(__dirname, '..', '..');
/** Lowest first: a layer may import its own and those before it. */
const LAYERS = ['api', 'agent/engine', 'agent/server', 'provider', 'terraform', 'dev', 'agent/cli'] as const;

function sources(dir: string): string[] {
  return readdirSync(join(ROOT, dir)).flatMap((n) => {
    const p = join(dir, n);
    if (statSync(join(ROOT, p)).isDirectory()) return sources(p);
    return n.endsWith('.ts') && !n.endsWith('.d.ts') ? [p] : [];
  });
}
const layerOf = (file: string) => LAYERS.findIndex((l) => file.startsWith(`${l}/`));

/** Relative imports of a file (static, dynamic and require), as repository paths without extension. */
function importsOf(file: string): string[] {
  const text = readFileSync(join(ROOT, file), 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/(?:from|import|require)\s*\(?\s*['"](\.{1,2}\/[^'"]+)['"]/g)) {
    out.push(normalize(join(dirname(file), m[1])).replace(/\.js$/, ''));
  }
  return out;
}

describe('layout: layers as folders', function () {
  const files = LAYERS.flatMap((l) => sources(l));
  const graph = new Map(files.map((f) => [f.replace(/\.ts$/, ''), importsOf(f)]));

  it('puts every source file of the product in a layer', () => {
    const stray = ['agent', 'provider', 'terraform', 'api', 'dev']
      .flatMap((d) =>
        readdirSync(join(ROOT, d))
          .filter((n) => n.endsWith('.ts'))
          .map((n) => `${d}/${n}`),
      )
      .filter((f) => layerOf(f) < 0);
    assert.deepEqual(stray, []);
  });

  it('imports only from the same layer or a lower one', () => {
    const wrong: string[] = [];
    for (const [from, tos] of graph) {
      for (const to of tos) {
        if (!graph.has(to) && /\.json$/.test(to)) continue; // package.json (read from dist/ at run time): data, not a layer
        const a = layerOf(`${from}.ts`);
        const b = layerOf(`${to}.ts`);
        if (b < 0 || b > a) wrong.push(`${from} → ${relative(ROOT, join(ROOT, to))}`);
      }
    }
    assert.deepEqual(wrong, []);
  });

  it('has no import cycle', () => {
    const state = new Map<string, 'open' | 'done'>();
    const cycles: string[] = [];
    const visit = (n: string, path: string[]) => {
      if (state.get(n) === 'done') return;
      if (state.get(n) === 'open') {
        cycles.push([...path.slice(path.indexOf(n)), n].join(' → '));
        return;
      }
      state.set(n, 'open');
      for (const m of graph.get(n) ?? []) if (graph.has(m)) visit(m, [...path, n]);
      state.set(n, 'done');
    };
    for (const n of graph.keys()) visit(n, []);
    assert.deepEqual(cycles, []);
  });
});
