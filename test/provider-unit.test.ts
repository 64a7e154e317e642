/**
 * The Migration provider without an agent: the declaration as the SDK sends
 * it, then Check and Diff (what `pulumi preview` runs), Update's refusal to
 * undo a completed cutover, and how failures to reach the agent read — all
 * through the real dynamic-provider host shipped in @pulumi/pulumi.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import { freePort } from '../dev/testbed';
import {
  schemas,
  DEFAULT_VERIFICATION,
  ROLE_MISSING as AGENT_ROLE_MISSING,
  SCHEMA_CHANGES as AGENT_SCHEMA_CHANGES,
  SCHEMA_MODES as AGENT_SCHEMA_MODES,
  SSL_MODES as AGENT_SSL_MODES,
} from '../agent/engine/spec';
import { VALIDATIONS as AGENT_VALIDATIONS } from '../agent/engine/state';
import {
  CUTOVER_VALIDATIONS,
  DEFAULTS,
  MIGRATION_ID_PATTERN,
  ROLE_MISSING,
  SCHEMA_CHANGES,
  SCHEMA_MODES,
  SECRET_OUTPUTS,
  SSL_MODES,
  UNKNOWN,
  VERIFICATION_LIMITS,
  deriveMigrationId,
  type MigrationInputs,
} from '../provider/args';
import { AgentClient, isAgentError } from '../api/client';
import { buildOutputs, echoArgs, redactConnectionString, resolveConnection, secretPartsFromInputs, toSpec } from '../provider/outputs';
import type { MigrationMessage } from '../api/client';
import { migrationStatus } from './support/status-fixture';
import { BAD_INPUTS, expectedFragments } from './support/bad-inputs';
import { ProviderHost, declareMigration, pathsContaining, secretPaths, urnOf, MIGRATION_TYPE, type Declared, type Props } from './support/provider-host';

const SOURCE_PW = 'src-Secret-4711';
const TARGET_PW = 'tgt-Secret-0815';
const TOKEN = 'agent-Token-9999';

function clone<T>(v: T): T {
  return JSON.parse(JSON.stringify(v)) as T;
}

/** A status as the agent reports it (test data for the old state diff() receives). */
const status = migrationStatus;

describe('provider without an agent: declaration, Check, Diff through the real host', function () {
  this.timeout(60_000);
  let host: ProviderHost;
  let declared: Declared;
  let deadEndpoint: string;
  let news: Props;
  const urn = urnOf('orders');

  before(async function () {
    deadEndpoint = `127.0.0.1:${await freePort()}`;
    declared = await declareMigration('orders', {
      agent: { endpoint: deadEndpoint, token: TOKEN },
      source: { host: '127.0.0.1', port: 5433, database: 'shop', user: 'postgres', password: SOURCE_PW, sslMode: 'disable' },
      target: { host: '127.0.0.1', port: 5434, database: 'shop', user: 'postgres', password: TARGET_PW, sslMode: 'disable' },
      tables: { include: ['public.*'], exclude: ['public.audit_log'] },
    });
    news = declared.plainInputs;
    host = await ProviderHost.start();
  });
  after(async function () {
    await host?.stop();
  });

  /** The old outputs of a created migration (what the engine hands diff() and update()). */
  function oldOutputs(inputs: Props, m: MigrationMessage = status()): Props {
    const a = inputs as unknown as MigrationInputs;
    return { ...buildOutputs(echoArgs(a), secretPartsFromInputs(a), m), __provider: declared.providerText };
  }

  it('declares a dynamic resource whose serialized provider captures nothing but a require of pgferry', function () {
    assert.equal(declared.type, MIGRATION_TYPE);
    assert.match(declared.providerText, /require\('pgferry\/dist\/provider\/lifecycle\.js'\)/);
    for (const secret of [SOURCE_PW, TARGET_PW, TOKEN]) assert.ok(!declared.providerText.includes(secret));
    assert.doesNotMatch(declared.providerText, /__awaiter|grpc|zod/);
  });

  it('marks passwords and the token secret in the inputs and lists the secret outputs', function () {
    const secret = secretPaths(declared.inputs);
    for (const value of [SOURCE_PW, TARGET_PW, TOKEN]) {
      const paths = pathsContaining(declared.inputs, value);
      assert.ok(paths.length > 0);
      for (const p of paths)
        assert.ok(
          secret.some((s) => p === s || p.startsWith(`${s}.`)),
          `${p} is not under a secret (${secret.join(', ')})`,
        );
    }
    for (const name of SECRET_OUTPUTS) assert.ok(declared.additionalSecretOutputs.includes(name), `${name} is not in additionalSecretOutputs`);
  });

  it("derives the migration id from the resource name, within the agent's id rule", async function () {
    assert.equal(news.migrationId, 'orders');
    const names = ['Orders-DB.v2', '2024 billing', 'x', 'ÄÖÜ', 'a'.repeat(60), `${'a'.repeat(60)}b`, '__weird__name__'];
    const ids = names.map(deriveMigrationId);
    for (const id of ids) {
      assert.match(id, MIGRATION_ID_PATTERN);
      assert.ok(schemas().MigrationSpecSchema.shape.id.safeParse(id).success, `agent rejects ${id}`);
    }
    assert.equal(new Set(ids).size, ids.length, 'two names map to one id');
    assert.equal(deriveMigrationId('Orders-DB.v2'), 'orders_db_v2');
    const d = await declareMigration('Billing Q3', {
      agent: { endpoint: deadEndpoint },
      source: { connectionString: 'postgresql://u:p@h/d' },
      target: { connectionString: 'postgresql://u:p@h2/d' },
    });
    assert.equal(d.plainInputs.migrationId, 'billing_q3');
  });

  it("keeps its allowed values equal to the agent's spec", function () {
    assert.deepEqual([...SSL_MODES], [...AGENT_SSL_MODES]);
    assert.deepEqual([...SCHEMA_MODES], [...AGENT_SCHEMA_MODES]);
    assert.deepEqual([...ROLE_MISSING], [...AGENT_ROLE_MISSING]);
    assert.deepEqual([...CUTOVER_VALIDATIONS], [...AGENT_VALIDATIONS]);
    assert.deepEqual(DEFAULTS.verification, { ...DEFAULT_VERIFICATION });
    assert.deepEqual([...SCHEMA_CHANGES], [...AGENT_SCHEMA_CHANGES]);
    const bare = { id: 'x', source: { connectionString: 'postgresql://h/d' }, target: { connectionString: 'postgresql://h/d' } };
    assert.equal(schemas().MigrationSpecSchema.parse(bare).schemaChanges, DEFAULTS.schemaChanges);
    // The bounds Check enforces are exactly the agent's: the edges pass, one past them fails.
    const verification = (v: Record<string, unknown>) =>
      schemas().MigrationSpecSchema.safeParse({
        id: 'x',
        source: { connectionString: 'postgresql://h/d' },
        target: { connectionString: 'postgresql://h/d' },
        verification: v,
      }).success;
    for (const [field, { min, max }] of Object.entries(VERIFICATION_LIMITS)) {
      assert.ok(verification({ [field]: min }) && verification({ [field]: max }), `${field} ${min}..${max} passes the agent`);
      assert.ok(!verification({ [field]: min - 1 }), `${field} ${min - 1} fails the agent`);
      if (max < 4294967295) assert.ok(!verification({ [field]: max + 1 }), `${field} ${max + 1} fails the agent`);
    }
  });

  it('Configure answers acceptSecrets false, so the engine unwraps secrets', async function () {
    assert.deepEqual(await host.configure(), { acceptSecrets: false });
  });

  it('Check passes valid inputs through unchanged', async function () {
    const olds = { ...clone(news), cutover: false };
    const res = await host.check(urn, olds, { ...clone(news), cutover: false });
    assert.deepEqual(res.failures, []);
    assert.equal(res.inputs.__provider, declared.providerText);
    assert.equal((res.inputs.source as Props).password, SOURCE_PW);
  });

  it('Check with unknown values (preview) reports nothing and skips the preflight', async function () {
    const n = clone(news);
    (n.target as Props).host = UNKNOWN;
    (n.target as Props).password = UNKNOWN;
    (n.agent as Props).token = UNKNOWN;
    (n.source as Props).port = UNKNOWN;
    // The agent is unreachable: a preflight attempt would be a failure on `agent.endpoint`.
    assert.deepEqual((await host.check(urn, {}, n)).failures, []);
    const whole = { ...clone(news), agent: UNKNOWN, target: UNKNOWN, tables: UNKNOWN };
    assert.deepEqual((await host.check(urn, {}, whole)).failures, []);
  });

  // The bad inputs both front-ends refuse (test/support/bad-inputs.ts; test/terraform.test.ts runs the same table through `terraform plan`).
  for (const c of BAD_INPUTS) {
    it(`Check refuses ${c.what}: each failure on the argument that fixes it, named in backticks, with its fix`, async function () {
      const { failures } = await host.check(urn, {}, { ...clone(news), ...clone(c.change) });
      assert.deepEqual(failures.map((f) => f.property).sort(), c.refusals.map((r) => r.property).sort(), JSON.stringify(failures));
      for (const r of c.refusals) {
        const reason = failures.find((f) => f.property === r.property)!.reason;
        assert.ok(reason.includes(`\`${r.property}\``), `reason of ${r.property} does not name it: ${reason}`);
        for (const s of expectedFragments(r)) assert.ok(reason.includes(s), `reason of ${r.property} does not say ${s}: ${reason}`);
      }
    });
  }

  it('Check takes good `roles`, and does not check unknown role names (preview)', async function () {
    // Role names are any text of up to 63 bytes, as PostgreSQL allows; unknown values (preview) are not checked.
    const good = { ...clone(news), roles: { map: { 'App Owner': 'app', reporting: UNKNOWN }, missing: 'skip' } };
    assert.ok(!(await host.check(urn, clone(news), good)).failures.some((f) => f.property.startsWith('roles')));
  });

  it('Check takes good `verification` knobs and unknown ones (preview)', async function () {
    // Good values and unknown ones (preview) pass; `verification` unknown also skips the preflight, like `apply`.
    const good = { ...clone(news), verification: { rowsPerSecond: 20_000, rangeRows: UNKNOWN, disabled: false } };
    assert.ok(!(await host.check(urn, clone(news), good)).failures.some((f) => f.property.startsWith('verification')));
    assert.deepEqual((await host.check(urn, {}, { ...clone(news), verification: UNKNOWN })).failures, []);
  });

  it('Check takes every `cutoverOptions.validation` the agent does', async function () {
    for (const validation of CUTOVER_VALIDATIONS) {
      const n = { ...clone(news), cutoverOptions: { validation } };
      assert.ok(!(await host.check(urn, clone(news), n)).failures.some((f) => f.property.startsWith('cutoverOptions')), validation);
    }
  });

  it('Check takes `schemaChanges` follow, stop or unknown; the agent gets a good one as given', async function () {
    for (const schemaChanges of [...SCHEMA_CHANGES, UNKNOWN]) {
      assert.deepEqual((await host.check(urn, clone(news), { ...clone(news), schemaChanges })).failures, [], schemaChanges);
    }
    const spec = toSpec({ ...clone(news), schemaChanges: 'stop' } as unknown as MigrationInputs);
    assert.equal(schemas().MigrationSpecSchema.parse(spec).schemaChanges, 'stop');
    assert.equal(toSpec(clone(news) as unknown as MigrationInputs).schemaChanges, undefined, 'absent: the agent default');
  });

  it('sends `verification` to the agent in the spec, which the agent accepts as given', function () {
    const a = { ...clone(news), verification: { rowsPerSecond: 20_000, disabled: true } } as unknown as MigrationInputs;
    const spec = toSpec(a);
    assert.deepEqual(spec.verification, { rowsPerSecond: 20_000, disabled: true });
    const parsed = schemas().MigrationSpecSchema.parse(spec);
    assert.deepEqual(parsed.verification, { rowsPerSecond: 20_000, rangeRows: DEFAULT_VERIFICATION.rangeRows, disabled: true });
    assert.equal(toSpec(clone(news) as unknown as MigrationInputs).verification, undefined, 'absent: the agent default');
  });

  it('Check with all values known and the agent down fails on `agent.endpoint` with how to fix it', async function () {
    const { failures } = await host.check(urn, {}, clone(news));
    assert.equal(failures.length, 1);
    assert.equal(failures[0]!.property, 'agent.endpoint');
    assert.match(failures[0]!.reason, /pgferry agent --listen/);
    assert.match(failures[0]!.reason, new RegExp(deadEndpoint.replace(/\./g, '\\.')));
  });

  it('Check of an in-place change (cutover) does not run the preflight', async function () {
    const { failures } = await host.check(urn, clone(news), { ...clone(news), cutover: true });
    assert.deepEqual(failures, []);
  });

  it('Check of a replacing change runs the preflight (and reports the agent down)', async function () {
    const n = clone(news);
    (n.source as Props).host = '10.1.2.3';
    const { failures } = await host.check(urn, clone(news), n);
    assert.deepEqual(
      failures.map((f) => f.property),
      ['agent.endpoint'],
    );
  });

  describe('Diff, given the old outputs as the engine does', function () {
    let olds: Props;
    before(function () {
      olds = oldOutputs(news);
    });
    const diff = (n: Props) => host.diff('orders', urn, olds, n);
    const edit = (f: (n: Props) => void): Props => {
      const n = clone(news);
      f(n);
      return n;
    };

    it('reports no change for the same arguments (defaults equal to absent values)', async function () {
      assert.deepEqual(await diff(clone(news)), { changes: 'none', replaces: [], deleteBeforeReplace: false });
      assert.equal(
        (
          await diff(
            edit((n) => {
              n.schemaMode = 'create';
              n.cutover = false;
              n.overwriteTarget = false;
            }),
          )
        ).changes,
        'none',
      );
    });

    it('reports no change when `verification` is given empty', async function () {
      assert.equal((await diff(edit((x) => void (x.verification = {})))).changes, 'none');
    });

    it('reports no change when `roles` is given as its default', async function () {
      const n = edit((x) => {
        x.roles = { map: {}, missing: 'fail' };
      });
      assert.equal((await diff(n)).changes, 'none');
    });

    for (const [what, change, field] of [
      [
        'the source host changes',
        (n: Props) => {
          (n.source as Props).host = '10.0.0.9';
        },
        'source',
      ],
      [
        'the target database changes',
        (n: Props) => {
          (n.target as Props).database = 'shop2';
        },
        'target',
      ],
      [
        'the table selection changes',
        (n: Props) => {
          n.tables = { include: ['public.orders'] };
        },
        'tables',
      ],
      [
        'the schema mode changes',
        (n: Props) => {
          n.schemaMode = 'existing';
        },
        'schemaMode',
      ],
      [
        'the migration id changes',
        (n: Props) => {
          n.migrationId = 'orders_v2';
        },
        'migrationId',
      ],
      [
        'the target host is unknown (preview)',
        (n: Props) => {
          (n.target as Props).host = UNKNOWN;
        },
        'target',
      ],
      [
        'the whole source is unknown (preview)',
        (n: Props) => {
          n.source = UNKNOWN;
        },
        'source',
      ],
    ] as const) {
      it(`replaces, deleting first, when ${what}`, async function () {
        assert.deepEqual(await diff(edit(change)), { changes: 'some', replaces: [field], deleteBeforeReplace: true });
      });
    }

    for (const [what, change] of [
      [
        'cutover goes false → true',
        (n: Props) => {
          n.cutover = true;
        },
      ],
      [
        'a source password rotates',
        (n: Props) => {
          (n.source as Props).password = 'rotated';
        },
      ],
      [
        'the agent token rotates',
        (n: Props) => {
          (n.agent as Props).token = 'rotated-token';
        },
      ],
      [
        'the agent endpoint moves',
        (n: Props) => {
          (n.agent as Props).endpoint = '10.0.0.5:7443';
        },
      ],
      [
        'the agent token is unknown (preview)',
        (n: Props) => {
          (n.agent as Props).token = UNKNOWN;
        },
      ],
      [
        'copy knobs change',
        (n: Props) => {
          n.copy = { workers: 4 };
        },
      ],
      [
        'apply knobs change',
        (n: Props) => {
          n.apply = { batchMs: 50 };
        },
      ],
      [
        'verification knobs change (the running migration takes them up)',
        (n: Props) => {
          n.verification = { rowsPerSecond: 20_000 };
        },
      ],
      [
        'the verification is switched off',
        (n: Props) => {
          n.verification = { disabled: true };
        },
      ],
      [
        '`schemaChanges` changes (the running migration takes it up)',
        (n: Props) => {
          n.schemaChanges = 'stop';
        },
      ],
      [
        'the role mapping changes (it applies to the next start)',
        (n: Props) => {
          n.roles = { map: { app_owner: 'app' } };
        },
      ],
      [
        'cutover options change',
        (n: Props) => {
          n.cutoverOptions = { validation: 'counts' };
        },
      ],
      [
        'a password is unknown (preview)',
        (n: Props) => {
          (n.target as Props).password = UNKNOWN;
        },
      ],
    ] as const) {
      it(`updates in place when ${what}`, async function () {
        assert.deepEqual(await diff(edit(change)), { changes: 'some', replaces: [], deleteBeforeReplace: false });
      });
    }
  });

  it('Update refuses `cutover` true → false after the cutover completed, saying why and what to do', async function () {
    const done = status({
      phase: 'completed',
      activeEndpoint: 'target',
      cutover: {
        state: 'completed',
        fenceStartedAt: '',
        fenceEndedAt: '',
        writeDowntimeMs: 120,
        fenceLsn: '0/3000060',
        tables: [],
        sequences: [],
        warnings: [],
        validation: 'checksums',
        validationOk: true,
        completedAt: '2026-01-01T00:00:00Z',
        error: '',
        attempts: 1,
        largeObjects: null,
        outageMs: 120,
        outageParts: [],
        schemaCheck: null,
      },
    });
    const olds = oldOutputs({ ...clone(news), cutover: true }, done);
    await assert.rejects(host.update('orders', urn, olds, { ...clone(news), cutover: false }), (e: Error) => {
      assert.match(e.message, /`cutover` cannot go back to `false`/);
      assert.match(e.message, /2026-01-01T00:00:00Z/);
      assert.match(e.message, /Fix: keep `cutover: true`/);
      return true;
    });
  });

  it('Read and Delete against an unreachable agent fail naming `agent.endpoint` (Delete also the slot to drop by hand)', async function () {
    const olds = oldOutputs(news);
    await assert.rejects(host.read('orders', urn, olds), /`agent\.endpoint`/);
    await assert.rejects(host.delete('orders', urn, olds), (e: Error) => {
      assert.match(e.message, /`agent\.endpoint`/);
      assert.match(e.message, /pg_drop_replication_slot\('pgferry_orders'\)/);
      return true;
    });
  });

  it('outputs hold passwords and the token only in secret outputs; echoed connection strings are redacted', function () {
    const a = {
      ...clone(news),
      source: { connectionString: `postgresql://app:${SOURCE_PW}@db.internal:5432/shop?sslmode=require` },
    } as unknown as MigrationInputs;
    for (const m of [status(), status({ phase: 'completed', activeEndpoint: 'target' })]) {
      const outs = buildOutputs(echoArgs(a), secretPartsFromInputs(a), m);
      for (const secret of [SOURCE_PW, TARGET_PW, TOKEN]) {
        for (const p of pathsContaining(outs, secret)) {
          assert.ok((SECRET_OUTPUTS as readonly string[]).includes(p.split('.')[0]!), `${p} holds a secret outside the secret outputs`);
        }
      }
      assert.equal((outs.source as Props).connectionString, 'postgresql://app:***@db.internal:5432/shop?sslmode=require');
    }
    const before = buildOutputs(echoArgs(a), secretPartsFromInputs(a), status());
    const after = buildOutputs(echoArgs(a), secretPartsFromInputs(a), status({ phase: 'completed', activeEndpoint: 'target' }));
    assert.equal(before.activeEndpoint, 'source');
    assert.equal(before.activeConnection.host, 'db.internal');
    assert.equal(before.activeConnection.password, SOURCE_PW);
    assert.equal(after.activeEndpoint, 'target');
    assert.equal(after.activeConnection.port, 5434);
    assert.equal(after.activeConnection.password, TARGET_PW);
    assert.equal(before.pausedAt, undefined, 'no pausedAt while it runs');
    const paused = buildOutputs(echoArgs(a), secretPartsFromInputs(a), status({ paused: true, pausedAt: '2026-11-29T10:00:00.000Z' }));
    assert.equal(paused.pausedAt, '2026-11-29T10:00:00.000Z');
  });

  it('outputs show how much is verified and how recently, and the cutover outage with its parts', function () {
    const a = clone(news) as unknown as MigrationInputs;
    const verification = {
      state: 'verifying',
      tablesTotal: 5,
      tablesVerified: 4,
      rowsVerified: 1_200_000,
      rowsEstimated: 1_500_000,
      lastVerifiedAt: '2026-12-01T10:00:05.000Z',
      oldestVerifiedAt: '',
      tablesChanged: 2,
      keysChanged: 120,
      rangesRepaired: 1,
      rowsRepaired: 2,
      repairs: ['2026-12-01T09:59:00.000Z public.orders: 2 row(s) rewritten from the source, key (17), (42)'],
      lastError: '',
    };
    const syncing = buildOutputs(echoArgs(a), secretPartsFromInputs(a), status({ verification }));
    assert.deepEqual(
      {
        verificationState: syncing.verificationState,
        verificationTablesTotal: syncing.verificationTablesTotal,
        tablesVerified: syncing.tablesVerified,
        rowsVerified: syncing.rowsVerified,
        lastVerifiedAt: syncing.lastVerifiedAt,
        oldestVerifiedAt: syncing.oldestVerifiedAt,
        rowsRepaired: syncing.rowsRepaired,
        verificationRepairs: syncing.verificationRepairs,
        verificationError: syncing.verificationError,
      },
      {
        verificationState: 'verifying',
        verificationTablesTotal: 5,
        tablesVerified: 4,
        rowsVerified: 1_200_000,
        lastVerifiedAt: '2026-12-01T10:00:05.000Z',
        oldestVerifiedAt: undefined,
        rowsRepaired: 2,
        verificationRepairs: verification.repairs,
        verificationError: undefined,
      },
    );
    assert.equal(buildOutputs(echoArgs(a), secretPartsFromInputs(a), status()).verificationState, undefined, 'absent while it does not run');
    const parts = [
      { part: 'grace', ms: 100 },
      { part: 'drain', ms: 30 },
      { part: 'sequences', ms: 5 },
      { part: 'verification', ms: 12 },
      { part: 'completing', ms: 3 },
    ];
    const cutover = {
      state: 'completed',
      fenceStartedAt: '',
      fenceEndedAt: '',
      writeDowntimeMs: 150,
      fenceLsn: '0/3000060',
      tables: [],
      sequences: [],
      warnings: [],
      validation: 'changes',
      validationOk: true,
      completedAt: '2026-12-01T10:01:00.000Z',
      error: '',
      attempts: 1,
      largeObjects: null,
      outageMs: 150,
      outageParts: parts,
      schemaCheck: null,
    };
    const done = buildOutputs(
      echoArgs(a),
      secretPartsFromInputs(a),
      status({ phase: 'completed', activeEndpoint: 'target', cutover, verification: { ...verification, state: 'paused' } }),
    );
    assert.equal(done.verificationState, undefined, 'nothing to verify once the target is the database of record');
    assert.equal(done.outageMs, 150);
    assert.deepEqual(done.outageParts, { grace: 100, drain: 30, sequences: 5, verification: 12, completing: 3 });
    assert.deepEqual(Object.keys(done.outageParts!), ['grace', 'drain', 'sequences', 'verification', 'completing'], 'in the order they happened');
    assert.equal(done.writeDowntimeMs, done.outageMs, 'the older name of the same figure');
    // A report from an agent before the outage existed: its write downtime stands in for the outage.
    const older = buildOutputs(echoArgs(a), secretPartsFromInputs(a), status({ cutover: { ...cutover, outageMs: 0, outageParts: [] } }));
    assert.equal(older.outageMs, 150);
    assert.equal(older.outageParts, undefined);
  });

  it('outputs carry the schema changes followed: how many, the last, the recent ones and the kept tables', function () {
    const a = clone(news) as unknown as MigrationInputs;
    const recent = [
      { at: '2026-12-01T10:00:01.000Z', object: 'public.orders.note', change: 'column added', statement: 'ALTER TABLE public.orders ADD COLUMN note text' },
      { at: '2026-12-01T10:00:02.000Z', object: 'public.audit', change: 'table dropped on the source, kept', statement: '' },
    ];
    const schemaChanges = {
      mode: 'follow',
      applied: 7,
      lastAppliedAt: '2026-12-01T10:00:02.000Z',
      recent,
      keptTables: ['public.audit'],
      lastReconciledAt: '2026-12-01T10:00:30.000Z',
      lastError: '',
    };
    const out = buildOutputs(echoArgs({ ...a, schemaChanges: 'follow' }), secretPartsFromInputs(a), status({ schemaChanges }));
    assert.deepEqual(
      [out.schemaChanges, out.schemaChangesApplied, out.lastSchemaChangeAt, out.recentSchemaChanges, out.keptTables],
      ['follow', 7, '2026-12-01T10:00:02.000Z', recent, ['public.audit']],
    );
    const none = buildOutputs(
      echoArgs(a),
      secretPartsFromInputs(a),
      status({ schemaChanges: { ...schemaChanges, applied: 0, lastAppliedAt: '', recent: [], keptTables: [] } }),
    );
    assert.deepEqual([none.schemaChangesApplied, none.lastSchemaChangeAt, none.recentSchemaChanges, none.keptTables], [0, undefined, undefined, undefined]);
    assert.equal(buildOutputs(echoArgs(a), secretPartsFromInputs(a), status()).schemaChangesApplied, undefined, 'absent before the sync');
  });

  it('parses and redacts connection strings in both password forms', function () {
    assert.equal(redactConnectionString('postgres://u:p%40ss@h/d?password=x&sslmode=require'), 'postgres://u:***@h/d?password=***&sslmode=require');
    const c = resolveConnection({ connectionString: 'postgresql://us%40er:p%3Aw@[::1]:6543/my%20db?sslmode=verify-full' });
    assert.deepEqual(
      { ...c, connectionString: undefined },
      { host: '::1', port: 6543, database: 'my db', user: 'us@er', password: 'p:w', sslMode: 'verify-full', connectionString: undefined },
    );
    assert.equal(c.connectionString, 'postgresql://us%40er:p%3Aw@[::1]:6543/my%20db?sslmode=verify-full');
  });
});

describe('agent client without an agent', function () {
  let blackHole: Server;
  let blackHolePort: number;
  before(async function () {
    blackHole = createServer(() => {
      /* accept and never answer */
    });
    await new Promise<void>((r) => blackHole.listen(0, '127.0.0.1', () => r()));
    blackHolePort = (blackHole.address() as { port: number }).port;
  });
  after(function () {
    blackHole?.close();
  });

  it('turns a refused connection into AGENT_UNREACHABLE with a remedy', async function () {
    const c = new AgentClient({ endpoint: `127.0.0.1:${await freePort()}` });
    try {
      await assert.rejects(c.health('', { timeoutMs: 5000 }), (e: unknown) => {
        assert.ok(isAgentError(e));
        assert.equal(e.code, 'AGENT_UNREACHABLE');
        assert.equal(e.grpcStatus, 'UNAVAILABLE');
        assert.match(e.remedy, /pgferry agent --listen/);
        return true;
      });
    } finally {
      c.close();
    }
  });

  it('enforces the deadline of a call to a server that never answers (AGENT_TIMEOUT)', async function () {
    const c = new AgentClient({ endpoint: `127.0.0.1:${blackHolePort}` });
    const t0 = Date.now();
    try {
      await assert.rejects(
        c.getMigration('orders', { timeoutMs: 700 }),
        (e: unknown) => isAgentError(e) && (e.code === 'AGENT_TIMEOUT' || e.code === 'AGENT_UNREACHABLE'),
      );
      assert.ok(Date.now() - t0 < 5000);
    } finally {
      c.close();
    }
  });

  it('cancels a call when its AbortSignal aborts', async function () {
    const c = new AgentClient({ endpoint: `127.0.0.1:${blackHolePort}` });
    const ac = new AbortController();
    try {
      const p = c.getMigration('orders', { signal: ac.signal, timeoutMs: 30_000 });
      setTimeout(() => ac.abort(), 200);
      await assert.rejects(p, (e: unknown) => isAgentError(e) && e.code === 'CANCELLED');
    } finally {
      c.close();
    }
  });
});
