/**
 * The user's story through the real Terraform CLI (found on PATH; skipped,
 * saying so, where there is none): a configuration declares a
 * `pgferry_migration`, `terraform plan` runs the preflight, `apply` starts
 * it, a refresh shows progress, `terraform import` adopts it, `cutover =
 * true` cuts over under a live writer, and `destroy` cleans the source —
 * against two real clusters (14 → 17) and a real agent process. Then the bad
 * inputs `pulumi preview` refuses (test/support/bad-inputs.ts), refused by
 * `terraform plan` with the same messages on the same attributes.
 *
 * It writes dist/terraform-tests.txt (what ran, how long), which .ci/run
 * prints after `npm test`.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, startCluster, type Cluster } from '../dev/testbed';
import { ExtData, decode, encode } from '@msgpack/msgpack';
import { AGENT_FIELDS, ARG_NAMES, CUTOVER_OPTION_FIELDS, ENDPOINT_FIELDS, OUTPUT_NAMES, UNKNOWN } from '../provider/args';
import { fromProps, pathOf } from '../terraform/convert';
import { planMigration } from '../terraform/resource';
import { argumentAttrs, resourceAttrs, snake } from '../terraform/schema';
import { decodeValue, encodeValue, typeOf, type CtyType } from '../terraform/values';
import { startAgent, removeAgentDir, type AgentProcess } from './support/agent';
import { BAD_INPUTS, expectedFragments, type BadInput } from './support/bad-inputs';
import { LEDGER_SCHEMA, assertLedgerHolds, ledgerWriter, type LedgerWriter } from './support/ledger';
import { TerraformDir, diagnosticsOf, expr, findTerraform, hclMigration, type JsonDiagnostic, type RunResult } from './support/terraform';

const SOURCE_PW = 'src-Tf-Pw-14142135';
const TARGET_PW = 'tgt-Tf-Pw-17320508';
const TOKEN = 'tok-tf-22360679';
const DB = 'shop';
const MARKER = join(__dirname, '..', 'terraform-tests.txt');
const HEADER = `terraform {\n  required_providers {\n    pgferry = { source = "pgferry/pgferry" }\n  }\n}\n`;

type Values = Record<string, unknown>;

const terraform = findTerraform();
/** When this suite's first hook ran (the module loads with every other test file, long before). */
let started = 0;
const results: string[] = [];
/** Each terraform command of the end-to-end flow and its duration. */
let timings: string[] = [];

describe('terraform: the pgferry provider through the real Terraform CLI', function () {
  before(function () {
    started = Date.now();
    if (!terraform) {
      const why = 'no `terraform` on PATH: the Terraform provider tests are skipped (install Terraform 1.11+ to run them)';
      console.log(`      ${why}`);
      writeFileSync(MARKER, `terraform tests: SKIPPED (${why})\n`);
      this.skip();
    }
  });
  afterEach(function () {
    results.push(`${this.currentTest?.state ?? 'unknown'}: ${this.currentTest?.title}`);
  });
  after(function () {
    if (!terraform) return;
    const passed = results.filter((r) => r.startsWith('passed')).length;
    const s = ((Date.now() - started) / 1000).toFixed(1);
    writeFileSync(
      MARKER,
      `terraform tests: ran with ${terraform}, ${passed} of ${results.length} passed in ${s} s\n${[...results, ...timings].map((r) => `  ${r}\n`).join('')}`,
    );
  });

  describe('end to end: PostgreSQL 14 → 17 under a live writer, a real agent', function () {
    this.timeout(300_000);
    let source: Cluster;
    let target: Cluster;
    let agent: AgentProcess;
    let tf: TerraformDir;
    let writer: LedgerWriter | undefined;
    let onTarget = false;
    let config: { tables: Values; cutover: boolean; withDataSource: boolean };
    /** More arguments, for one plan. */
    let extra: Values = {};

    /** The configuration: a provider block for the agent, the migration, and optionally the data source. */
    function writeConfig(): { lines: Map<string, number> } {
      const provider = `provider "pgferry" {\n  endpoint = ${JSON.stringify(agent.endpoint)}\n  token    = var.agent_token\n}\n`;
      const vars = ['agent_token', 'source_password', 'target_password']
        .map((v) => `variable "${v}" {\n  type      = string\n  sensitive = true\n}\n`)
        .join('');
      const head = `${HEADER}${vars}${provider}`;
      const m = hclMigration(
        'orders',
        {
          migrationId: 'orders',
          source: { ...source.endpoint(DB), password: expr('var.source_password') },
          target: { ...target.endpoint(DB), password: expr('var.target_password') },
          tables: config.tables,
          waitForSync: true,
          createTimeoutMinutes: 4,
          cutover: config.cutover,
          cutoverOptions: { timeoutMs: 120_000, validation: 'checksums' },
          ...extra,
        },
        head.split('\n').length,
      );
      const data = config.withDataSource ? `data "pgferry_migration" "live" {\n  migration_id = "orders"\n}\n` : '';
      tf.write('main.tf', `${head}${m.text}${data}`);
      return m;
    }

    /** The resource's and the data source's attributes, as the state file holds them (read directly: no plugin start). */
    function stateValues(): { resource?: Values; data?: Values } {
      const state = JSON.parse(readFileSync(join(tf.dir, 'terraform.tfstate'), 'utf8')) as {
        resources?: Array<{ mode: string; instances: Array<{ attributes: Values }> }>;
      };
      const of = (mode: string) => state.resources?.find((r) => r.mode === mode)?.instances[0]?.attributes;
      return { resource: of('managed'), data: of('data') };
    }

    before(async function () {
      if (!terraform) return this.skip();
      [source, target] = await Promise.all([startCluster({ version: 14, fast: true }), startCluster({ version: 17, fast: true })]);
      await source.query(`ALTER ROLE postgres PASSWORD '${SOURCE_PW}'`);
      source.password = SOURCE_PW;
      await target.query(`ALTER ROLE postgres PASSWORD '${TARGET_PW}'`);
      target.password = TARGET_PW;
      await Promise.all([source.createDatabase(DB), target.createDatabase(DB)]);
      await source.query(
        `${LEDGER_SCHEMA}
        CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
        CREATE TABLE scratch (x int);  -- no replica identity: the preflight names it until it is excluded
        INSERT INTO customers (name) SELECT 'customer ' || g FROM generate_series(1, 50) g;
        INSERT INTO ledger (client_seq, note) SELECT -g, 'seed' FROM generate_series(1, 500) g;`,
        [],
        DB,
      );
      agent = await startAgent({ token: TOKEN });
      // Secrets as variables from the environment (never on a command line); the debug log is checked at the end.
      tf = TerraformDir.create(
        terraform,
        { TF_VAR_agent_token: TOKEN, TF_VAR_source_password: SOURCE_PW, TF_VAR_target_password: TARGET_PW },
        { debugLog: true },
      );
    });

    after(async function () {
      await writer?.stop();
      await agent?.stop();
      if (agent && !process.env.PGFERRY_KEEP_AGENT_DIR) {
        await new Promise((r) => setTimeout(r, 300));
        removeAgentDir(agent);
      }
      timings = (tf?.timings ?? []).map((t) => `terraform ${t.command}: ${t.ms} ms`);
      if (tf && !process.env.PGFERRY_KEEP_TF_DIR) tf.remove();
      await Promise.all([source?.stop(), target?.stop()]);
    });

    it("plan runs the agent's preflight: a table without a replica identity fails on `tables`, shown at a line of its block", async function () {
      config = { tables: { include: ['public.*'] }, cutover: false, withDataSource: false };
      const { lines } = writeConfig();
      const r = await tf.run(['plan', '-input=false', '-no-color', '-json']);
      assert.notEqual(r.code, 0);
      const errors = diagnosticsOf(r.stdout).filter((d) => d.severity === 'error');
      assert.deepEqual(
        errors.map((d) => d.summary),
        ['The preflight fails on `tables`'],
        r.stdout,
      );
      assert.match(errors[0]!.detail, /Preflight check 'replica_identity' failed: .*scratch.* Fix: /s);
      assert.equal(errors[0]!.range?.start.line, lines.get('tables.include'), 'the line inside the `tables` block');
    });

    it('plan shows the migration to create, without a password or token; apply starts it and waits for the sync', async function () {
      config = { tables: { include: ['public.*'], exclude: ['public.scratch'] }, cutover: false, withDataSource: false };
      writeConfig();
      const plan = await tf.ok(['plan', '-input=false', '-no-color', '-out=tfplan']);
      assert.match(plan, /pgferry_migration\.orders will be created/);
      assert.match(plan, /password\s+= \(write-only attribute\)/);
      assert.match(plan, /phase\s+= \(known after apply\)/);
      await tf.ok(['apply', '-input=false', '-no-color', 'tfplan']);
      const { resource } = stateValues();
      assert.equal(resource?.id, 'orders');
      assert.equal(resource?.phase, 'syncing');
      assert.equal(resource?.tables_total, 3);
      assert.equal(resource?.active_endpoint, 'source');
      const conn = resource?.active_connection as Values;
      assert.equal(conn.port, source.port);
      assert.equal(conn.database, DB);
      assert.doesNotMatch(String(conn.connection_string), /:[^@/]*@/, 'no password in the connection string');
      assert.equal((resource?.source as Values).password, null);
      writer = ledgerWriter(() => (onTarget ? target : source).client(DB));
    });

    it('refresh shows progress and lag; the data source reads the running migration by id', async function () {
      await waitFor('writes flowing', () => writer!.committed.size > 50);
      config.withDataSource = true;
      writeConfig();
      await tf.ok(['apply', '-refresh-only', '-auto-approve', '-input=false', '-no-color']);
      const { resource, data } = stateValues();
      assert.equal(resource?.phase, 'syncing');
      assert.equal(resource?.tables_copied, 3);
      assert.ok((resource?.rows_copied as number) >= 550, `rows_copied ${String(resource?.rows_copied)}`);
      assert.equal(typeof resource?.lag_bytes, 'number');
      assert.equal(typeof resource?.retained_wal_bytes, 'number');
      assert.equal(resource?.replication_slot, 'pgferry_orders');
      assert.equal(data?.phase, 'syncing');
      assert.equal(data?.replication_slot, 'pgferry_orders');
    });

    it('a change that needs a new migration plans as a replacement, saying why', async function () {
      // Loading into the tables the target has now (the preflight of the new migration passes): a different schema mode.
      extra = { schemaMode: 'existing', overwriteTarget: true };
      writeConfig();
      let plan: string;
      try {
        plan = await tf.ok(['plan', '-input=false', '-no-color']);
      } finally {
        extra = {};
        writeConfig();
      }
      assert.match(plan, /pgferry_migration\.orders must be replaced/);
      assert.match(plan, /schema_mode\s+= "existing" # forces replacement/);
      assert.match(plan, /Warning: Replacing the migration: `schema_mode` changed/);
      assert.match(plan.replace(/\s+/g, ' '), /the old migration is deleted first \(its replication slot and publication dropped on the source/);
    });

    it('import adopts the running migration; plan with `cutover = true` updates it in place, and apply cuts over under the writer', async function () {
      await tf.ok(['state', 'rm', '-no-color', 'pgferry_migration.orders']);
      await tf.ok(['import', '-input=false', '-no-color', 'pgferry_migration.orders', 'orders']);
      const imported = stateValues().resource;
      assert.equal(imported?.phase, 'syncing');
      assert.equal(imported?.replication_slot, 'pgferry_orders');
      config.cutover = true;
      writeConfig();
      const plan = await tf.ok(['plan', '-input=false', '-no-color', '-out=tfplan']);
      assert.match(plan, /pgferry_migration\.orders will be updated in-place/);
      assert.match(plan, /cutover\s+= true/);
      assert.doesNotMatch(plan, /must be replaced/);
      await tf.ok(['apply', '-input=false', '-no-color', 'tfplan']);
      onTarget = true;
      const { resource } = stateValues();
      assert.equal(resource?.phase, 'completed');
      assert.equal(resource?.active_endpoint, 'target');
      assert.equal(resource?.cutover, true);
      assert.equal(resource?.validation_ok, true);
      assert.equal(typeof resource?.write_downtime_ms, 'number');
      assert.ok((resource?.outage_ms as number) >= 0);
      assert.match(String(resource?.fence_lsn), /^[0-9A-F]+\/[0-9A-F]+$/i);
      assert.ok(resource?.cutover_completed_at);
      const conn = resource?.active_connection as Values;
      assert.equal(conn.port, target.port);
      assert.match(String(conn.connection_string), new RegExp(`^postgresql://postgres@127\\.0\\.0\\.1:${target.port}/${DB}\\?sslmode=disable$`));
      // The application follows the handover: a few more commits on the target, then every acknowledged one is there.
      const before = writer!.committed.size;
      await waitFor('writes on the target', () => writer!.committed.size > before + 20);
      await writer!.stop();
      const t = await target.client(DB);
      try {
        await assertLedgerHolds(t, writer!);
      } finally {
        await t.end();
      }
      writer = undefined;
      assert.equal((await tf.ok(['plan', '-input=false', '-no-color', '-detailed-exitcode'])).includes('No changes'), true);
    });

    it("destroy drops the slot and publication on the source and keeps the target's data", async function () {
      await tf.ok(['destroy', '-auto-approve', '-input=false', '-no-color']);
      assert.deepEqual((await source.query("SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'pgferry%'")).rows, []);
      assert.deepEqual((await source.query("SELECT pubname FROM pg_publication WHERE pubname LIKE 'pgferry%'", [], DB)).rows, []);
      assert.equal(Number((await target.query('SELECT count(*)::int AS n FROM customers', [], DB)).rows[0].n), 50);
    });

    it('no password or token in clear text in the state, the plan output or the logs', function () {
      const places: Array<[string, string]> = [
        ['printed output', tf.printed.join('\n')],
        ['terraform log', readFileSync(join(tf.dir, 'terraform.log'), 'utf8')],
        ['agent log', agent.logs()],
      ];
      for (const f of ['terraform.tfstate', 'terraform.tfstate.backup', 'tfplan']) {
        if (existsSync(join(tf.dir, f))) places.push([f, readFileSync(join(tf.dir, f), 'latin1')]);
      }
      assert.ok(places[1]![1].includes('pgferry'), 'the debug log holds the provider');
      for (const [where, text] of places) {
        for (const secret of [SOURCE_PW, TARGET_PW, TOKEN]) assert.ok(!text.includes(secret), `${where} holds a secret in clear text`);
      }
    });
  });

  describe('bad inputs: `terraform plan` refuses what `pulumi preview` refuses, with the same messages on the same attributes', function () {
    this.timeout(120_000);
    let deadPort: number;
    before(async function () {
      if (!terraform) return this.skip();
      deadPort = await freePort();
    });

    /** One configuration holding one resource per case; the provider block points at an agent nobody runs. */
    async function planCases(cases: BadInput[]): Promise<{ diags: JsonDiagnostic[]; lines: Array<Map<string, number>>; stdout: string }> {
      const tf = TerraformDir.create(terraform!);
      try {
        let text = `${HEADER}provider "pgferry" {\n  endpoint = "127.0.0.1:${deadPort}"\n}\n`;
        const lines = cases.map((c, i) => {
          const valid = {
            migrationId: `c${i}`,
            source: { host: '127.0.0.1', port: 5433, database: 'shop', user: 'postgres', password: 'pw', sslMode: 'disable' },
            target: { host: '127.0.0.1', port: 5434, database: 'shop', user: 'postgres', password: 'pw', sslMode: 'disable' },
          };
          const m = hclMigration(`c${i}`, { ...valid, ...c.change }, text.split('\n').length);
          text += m.text;
          return m.lines;
        });
        tf.write('main.tf', text);
        const r = await tf.run(['plan', '-input=false', '-no-color', '-json']);
        assert.notEqual(r.code, 0);
        return { diags: diagnosticsOf(r.stdout).filter((d) => d.severity === 'error'), lines, stdout: r.stdout };
      } finally {
        tf.remove();
      }
    }

    const byProvider = BAD_INPUTS.filter((c) => !c.refusals.some((r) => r.terraform === 'type'));
    const byTerraform = BAD_INPUTS.filter((c) => c.refusals.some((r) => r.terraform === 'type'));
    let provider: Promise<Awaited<ReturnType<typeof planCases>>>;
    let typed: Promise<Awaited<ReturnType<typeof planCases>>>;
    let example: Promise<RunResult>;
    let unknownPlan: Promise<RunResult>;
    before(function () {
      // All at once: each is a few seconds of Terraform and plugin start-up.
      provider = planCases(byProvider);
      typed = planCases(byTerraform);
      example = validateExample('local');
      unknownPlan = planWithUnknowns();
      for (const p of [provider, typed, example, unknownPlan]) p.catch(() => undefined);
    });

    /** A plan whose target host comes from a resource not created yet; the agent is down, so a preflight attempt would fail it. */
    async function planWithUnknowns(): Promise<RunResult> {
      const tf = TerraformDir.create(terraform!);
      try {
        const server = `resource "terraform_data" "server" {\n  input = "db.example.com"\n}\n`;
        const m = hclMigration('later', {
          migrationId: 'later',
          source: { host: '127.0.0.1', port: 5433, database: 'shop', user: 'postgres', password: 'pw' },
          target: { host: expr('terraform_data.server.output'), database: 'shop', user: 'postgres', password: 'pw' },
        });
        tf.write('main.tf', `${HEADER}provider "pgferry" {\n  endpoint = "127.0.0.1:${deadPort}"\n}\n${server}${m.text}`);
        return await tf.run(['plan', '-input=false', '-no-color']);
      } finally {
        tf.remove();
      }
    }

    /** `terraform validate` of an example configuration, in a copy (nothing written next to it). */
    async function validateExample(name: string): Promise<RunResult> {
      const tf = TerraformDir.create(terraform!);
      try {
        tf.write('main.tf', readFileSync(join(__dirname, '..', '..', 'examples', 'terraform', name, 'main.tf'), 'utf8'));
        return await tf.run(['validate', '-no-color']);
      } finally {
        tf.remove();
      }
    }

    it("plan with values not known yet (another resource's output) skips the preflight, as a Pulumi preview does", async function () {
      const r = await unknownPlan;
      assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
      assert.match(r.stdout, /pgferry_migration\.later will be created/);
      assert.match(r.stdout, /host\s+= \(known after apply\)/);
    });

    it('examples/terraform/local is a valid configuration for this provider', async function () {
      const r = await example;
      assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
      assert.match(r.stdout, /The configuration is valid/);
    });

    it('each case the provider refuses: every failure on its attribute (at its line), with the same message', async function () {
      const { diags, lines, stdout } = await provider;
      byProvider.forEach((c, i) => {
        const mine = diags.filter((d) => d.address === `pgferry_migration.c${i}`);
        const expected = c.refusals.filter((r) => r.terraform !== 'coerced');
        assert.deepEqual(mine.map((d) => d.summary).sort(), expected.map((r) => `Invalid \`${pathOf(r.property).name}\``).sort(), `${c.what}: ${stdout}`);
        for (const r of expected) {
          const d = mine.find((x) => x.summary === `Invalid \`${pathOf(r.property).name}\``)!;
          for (const s of expectedFragments(r, (p) => pathOf(p).name))
            assert.ok(d.detail.replace(/\s+/g, ' ').includes(s), `${c.what}: "${s}" not in ${d.detail}`);
          // Terraform shows the line of the argument (a map key or list element: the attribute's; one not given: its block's).
          const line = lineOf(lines[i]!, r.property);
          assert.equal(d.range?.start.line, line, `${c.what}: ${r.property}`);
        }
      });
    });

    it("each case Terraform's types refuse first: refused, naming the attribute", async function () {
      const { diags, lines, stdout } = await typed;
      byTerraform.forEach((c, i) => {
        const first = lines[i]!.get('migrationId')! - 1;
        const last = Math.max(...lines[i]!.values()) + 2;
        const mine = diags.filter((d) => (d.range?.start.line ?? 0) >= first && (d.range?.start.line ?? 0) <= last);
        for (const r of c.refusals) {
          const leaf = pathOf(r.property).name.split('.').pop()!;
          const name = r.property
            .split('.')
            .pop()!
            .replace(/[A-Z]/g, (x) => `_${x.toLowerCase()}`);
          assert.ok(
            mine.some((d) => `${d.summary} ${d.detail}`.includes(`"${name}"`) || `${d.summary} ${d.detail}`.includes(`"${leaf}"`)),
            `${c.what}: no refusal naming ${name}: ${stdout}`,
          );
        }
      });
    });
  });
});

describe('terraform provider without terraform: the schema follows the provider, values as Terraform encodes them', function () {
  it("has an attribute for every argument and field of the Pulumi resource, its secrets write-only, and every output but the agent's secrets", function () {
    const args = argumentAttrs();
    for (const key of ARG_NAMES)
      assert.ok(
        args.some((a) => a.key === key && a.name === snake(key)),
        `no attribute for \`${key}\``,
      );
    const nested = (key: string) => args.find((a) => a.key === key)!.nested!.map((n) => n.key);
    assert.deepEqual(nested('agent'), [...AGENT_FIELDS]);
    assert.deepEqual(nested('source'), [...ENDPOINT_FIELDS]);
    assert.deepEqual(nested('cutoverOptions'), [...CUTOVER_OPTION_FIELDS]);
    const secret = args.flatMap((a) => (a.nested ?? []).filter((n) => n.writeOnly && n.sensitive).map((n) => `${a.key}.${n.key}`));
    assert.deepEqual(secret.sort(), [
      'agent.clientKey',
      'agent.token',
      'source.connectionString',
      'source.password',
      'target.connectionString',
      'target.password',
    ]);
    const outs = resourceAttrs().filter((a) => a.computed);
    assert.deepEqual(
      OUTPUT_NAMES.filter((k) => !outs.some((a) => a.key === k)),
      ['agentToken', 'agentClientKey'],
    );
    assert.ok(
      outs.filter((a) => a.nested).every((a) => !a.nested!.some((n) => n.key === 'password')),
      'a connection output with a password',
    );
    assert.equal(args.find((a) => a.key === 'source')!.nested!.find((n) => n.key === 'port')!.type, 'number', 'typed by the proto');
  });

  it('reads unknown values (extension 0, and 12 with refinements) as the preview sentinel, and writes them back as extension 0', function () {
    const type: CtyType = ['object', { host: 'string', port: 'number', tags: ['list', 'string'] }];
    const wire = (v: unknown) => Buffer.from(encode(v));
    const refined = new ExtData(12, Uint8Array.of(0x81, 0x01, 0xc3));
    const v = decodeValue({ msgpack: wire({ host: new ExtData(0, Uint8Array.of(0)), port: 5432, tags: refined }) }, type) as Values;
    assert.deepEqual(v, { host: UNKNOWN, port: 5432, tags: UNKNOWN });
    const bytes = encodeValue({ host: UNKNOWN, port: 5432 }, type).msgpack;
    assert.ok(bytes.includes(Buffer.from([0xd4, 0x00, 0x00])), 'unknown as fixext 1, type 0 (what Terraform writes)');
    const back = decode(bytes) as Values;
    assert.deepEqual(Object.keys(back).sort(), ['host', 'port', 'tags'], 'every attribute of the object');
    assert.equal(back.tags, null, 'null when absent');
  });

  it('plans no replacement for the same endpoint given as a connection string (write-only, so not in the state)', async function () {
    const cs = 'postgresql://app:pw-1@db.example.com:5432/shop?sslmode=require';
    const config = fromProps({}, resourceAttrs());
    Object.assign(config, {
      migration_id: 'orders',
      source: { ...fromProps({}, argumentAttrs().find((a) => a.key === 'source')!.nested!), connection_string: cs },
      target: { ...fromProps({}, argumentAttrs().find((a) => a.key === 'target')!.nested!), connection_string: cs.replace('db.', 'db2.') },
      agent: { ...fromProps({}, argumentAttrs().find((a) => a.key === 'agent')!.nested!), endpoint: '127.0.0.1:1' },
    });
    const conn = (host: string) => ({
      host,
      port: 5432,
      database: 'shop',
      user: 'app',
      ssl_mode: 'require',
      connection_string: `postgresql://app@${host}:5432/shop?sslmode=require`,
    });
    const written = (c: Values) => ({ ...c, connection_string: null });
    const prior = {
      ...config,
      source: written(config.source as Values),
      target: written(config.target as Values),
      id: 'orders',
      phase: 'syncing',
      source_connection: conn('db.example.com'),
      target_connection: conn('db2.example.com'),
      secrets_digest: 'x',
    };
    const same = await planMigration(prior, prior, config, {});
    assert.deepEqual(same.requiresReplace, [], JSON.stringify(same.diagnostics));
    const moved = { ...config, source: { ...(config.source as Values), connection_string: cs.replace('db.', 'db3.') } };
    // Another host is a new migration: its preflight runs (and finds no agent at 127.0.0.1:1), as a replacing change's does.
    const other = await planMigration(prior, moved, moved, {});
    assert.deepEqual(
      other.diagnostics.map((d) => d.summary),
      ['Asking the agent fails on `agent.endpoint`'],
    );
    assert.match(other.diagnostics[0]!.detail, /Cannot reach the pgferry agent/);
  });

  it('writes a `dynamic` value as [type, value] and reads it back', function () {
    const value = { parts: { drain: 12, schema: 3 }, ok: true };
    const raw = decode(encodeValue(value, 'dynamic').msgpack) as [Uint8Array, unknown];
    assert.deepEqual(JSON.parse(Buffer.from(raw[0]).toString()), typeOf(value));
    assert.deepEqual(decodeValue(encodeValue(value, 'dynamic'), 'dynamic'), value);
  });
});

/** The line of an argument, or of the nearest enclosing one that was written. */
function lineOf(lines: Map<string, number>, property: string): number | undefined {
  for (let p = property.replace(/\[\d+\]$/, ''); p; p = p.includes('.') ? p.slice(0, p.lastIndexOf('.')) : '') {
    if (lines.has(p)) return lines.get(p);
  }
  return undefined;
}

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
