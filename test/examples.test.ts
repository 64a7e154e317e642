/**
 * The example programs: both typecheck against this package and the
 * installed Pulumi SDKs (resolved from the repository's node_modules, so no
 * separate install), and the Azure program, run under `setMocks`, declares
 * the server, firewall rule, database and migration and feeds the web app's
 * `DATABASE_URL` from `migration.activeConnection` — the source before the
 * cutover, the target after it.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import * as pulumi from '@pulumi/pulumi';
import { PACKAGE_ROOT, MIGRATION_TYPE, type Props } from './support/provider-host';

const run = promisify(execFile);
const EXAMPLES = resolve(PACKAGE_ROOT, 'examples');
/** Scratch space inside the package, so `pgferry` and `@pulumi/*` resolve from its node_modules. */
const SCRATCH = resolve(PACKAGE_ROOT, 'dist', 'test', '.examples');

describe('examples', function () {
  this.timeout(240_000);
  before(function () {
    mkdirSync(SCRATCH, { recursive: true });
  });
  after(function () {
    rmSync(SCRATCH, { recursive: true, force: true });
  });

  for (const name of ['azure', 'local']) {
    it(`examples/${name} typechecks against pgferry and the installed Pulumi SDKs`, async function () {
      const dir = join(EXAMPLES, name);
      const own = join(dir, 'tsconfig.json');
      const tsconfig = join(SCRATCH, `tsconfig.${name}.json`);
      // The example's own settings (when it has a tsconfig), with `pgferry` mapped to this package's typings.
      writeFileSync(
        tsconfig,
        JSON.stringify(
          {
            ...(name === 'azure' ? { extends: own } : {}),
            compilerOptions: {
              ...(name === 'azure'
                ? {}
                : { target: 'ES2022', module: 'node16', moduleResolution: 'node16', strict: true, skipLibCheck: true, lib: ['ES2022'], types: ['node'] }),
              noEmit: true,
              rootDir: PACKAGE_ROOT,
              typeRoots: [join(PACKAGE_ROOT, 'node_modules', '@types')],
              paths: { pgferry: [join(PACKAGE_ROOT, 'dist', 'provider', 'index.d.ts')] },
            },
            files: [join(dir, 'index.ts')],
          },
          null,
          2,
        ),
      );
      const tsc = join(PACKAGE_ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
      try {
        await run(process.execPath, [tsc, '-p', tsconfig], { cwd: PACKAGE_ROOT, maxBuffer: 16 << 20 });
      } catch (e) {
        const err = e as { stdout?: string; stderr?: string };
        assert.fail(`tsc reported errors in examples/${name}:\n${err.stdout ?? ''}${err.stderr ?? ''}`);
      }
    });
  }

  describe('examples/azure under setMocks', function () {
    const SOURCE_URL = 'postgresql://app:src-pw@legacy-db.example.com:5432/orders?sslmode=require';
    const TARGET_URL = 'postgresql://pgadmin:tgt-pw@orders-pg.postgres.database.azure.com:5432/orders?sslmode=require';
    let programFile: string;

    before(function () {
      const ts = require('typescript') as typeof import('typescript');
      const source = readFileSync(join(EXAMPLES, 'azure', 'index.ts'), 'utf8');
      const js = ts.transpileModule(source, {
        compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
      }).outputText;
      mkdirSync(join(SCRATCH, 'azure'), { recursive: true });
      programFile = join(SCRATCH, 'azure', 'index.js');
      writeFileSync(programFile, js);
    });

    /** Run the program once; the mocked Migration reports `active` as its active endpoint. */
    async function runProgram(active: 'source' | 'target'): Promise<Map<string, { type: string; inputs: Props }>> {
      const registered = new Map<string, { type: string; inputs: Props }>();
      let appInputs: (v: Props) => void = () => undefined;
      const appRegistered = new Promise<Props>((r) => {
        appInputs = r;
      });
      pulumi.runtime.setMocks(
        {
          newResource(a: pulumi.runtime.MockResourceArgs) {
            registered.set(`${a.type}::${a.name}`, { type: a.type, inputs: a.inputs });
            const state: Props = { ...a.inputs };
            if (a.type === 'azure-native:dbforpostgresql:Server') state.fullyQualifiedDomainName = `${a.name}.postgres.database.azure.com`;
            if (a.type === 'azure-native:dbforpostgresql:Database') state.name = a.inputs.databaseName;
            if (a.type === 'azure-native:web:WebApp') {
              state.defaultHostName = `${a.name}.azurewebsites.net`;
              appInputs(a.inputs);
            }
            if (a.type === MIGRATION_TYPE) {
              Object.assign(state, {
                phase: active === 'target' ? 'completed' : 'syncing',
                activeEndpoint: active,
                activeConnection: { connectionString: active === 'target' ? TARGET_URL : SOURCE_URL },
              });
            }
            return { id: `${a.name}-id`, state };
          },
          call() {
            return {};
          },
        },
        'pgferry-azure',
        'dev',
        false,
      );
      const p = (k: string) => `pgferry-azure:${k}`;
      pulumi.runtime.setAllConfig(
        {
          [p('agentEndpoint')]: '10.0.0.4:7443',
          [p('agentToken')]: 'tok-123',
          [p('agentIp')]: '203.0.113.7',
          [p('sourceHost')]: 'legacy-db.example.com',
          [p('sourceUser')]: 'app',
          [p('sourcePassword')]: 'src-pw',
          [p('targetAdminPassword')]: 'tgt-pw',
          [p('cutover')]: active === 'target' ? 'true' : 'false',
        },
        [p('agentToken'), p('sourcePassword'), p('targetAdminPassword')],
      );
      delete require.cache[programFile];
      require(programFile);
      await appRegistered;
      return registered;
    }

    it("declares the flexible server, the agent's firewall rule, the database and the migration into them", async function () {
      const r = await runProgram('source');
      const byType = (t: string) => [...r.values()].filter((x) => x.type === t);
      const [server] = byType('azure-native:dbforpostgresql:Server');
      assert.ok(server, 'no flexible server');
      assert.equal(server.inputs.version, '17');
      const [rule] = byType('azure-native:dbforpostgresql:FirewallRule');
      assert.ok(rule, 'no firewall rule');
      assert.equal(rule.inputs.startIpAddress, '203.0.113.7');
      assert.equal(rule.inputs.endIpAddress, '203.0.113.7');
      const [db] = byType('azure-native:dbforpostgresql:Database');
      assert.equal(db?.inputs.databaseName, 'orders');
      const [migration] = byType(MIGRATION_TYPE);
      assert.ok(migration, 'no pgferry.Migration');
      const target = migration.inputs.target as Props;
      const targetValue = (target.value ?? target) as Props;
      assert.equal(targetValue.host, 'orders-pg.postgres.database.azure.com');
      assert.equal(targetValue.sslMode, 'require');
      assert.equal(migration.inputs.cutover, false);
      assert.equal(migration.inputs.migrationId, 'orders');
    });

    it("feeds the web app's DATABASE_URL from activeConnection: the source before the cutover, the target after", async function () {
      for (const [active, url] of [
        ['source', SOURCE_URL],
        ['target', TARGET_URL],
      ] as const) {
        const r = await runProgram(active);
        const app = [...r.values()].find((x) => x.type === 'azure-native:web:WebApp');
        assert.ok(app, 'no web app');
        const settings = (app.inputs.siteConfig as { appSettings: Array<{ name: string; value: string }> }).appSettings;
        assert.equal(settings.find((s) => s.name === 'DATABASE_URL')?.value, url);
        assert.equal(settings.find((s) => s.name === 'DATABASE_ENDPOINT')?.value, active);
      }
    });
  });
});
