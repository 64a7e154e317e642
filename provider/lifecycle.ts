/**
 * lifecycle — what the Migration provider does in each step Pulumi drives:
 * check → diff → create → read → update → delete.
 *
 * The serialized provider object (index.ts) only `require`s this module, so
 * the code that runs is the one installed in the user's program directory,
 * and nothing but plain data is captured in the stack's state. It talks only
 * to the agent (client.ts), one client per call; it never touches PostgreSQL.
 *
 * Engine facts this relies on: secrets arrive unwrapped (the host answers
 * Configure with acceptSecrets false) and the engine re-marks outputs listed
 * in additionalSecretOutputs; preview sends the UNKNOWN sentinel and calls
 * only check and diff; diff and update receive the old *outputs*; Create and
 * Update get no timeout or cancellation, so ours are explicit.
 */
import type { CheckResult, DiffResult, CreateResult, ReadResult, UpdateResult } from '@pulumi/pulumi/dynamic';
import {
  DEFAULTS,
  PREFLIGHT_ARGS,
  REPLACE_ON_CHANGE,
  UNKNOWN,
  containsUnknown,
  type AgentArgs,
  type EndpointArgs,
  type MigrationInputs,
  type MigrationOutputs,
} from './args';
import { failuresFromAgentError, failuresFromPreflight, validateInputs, type CheckFailure } from './check';
import { AgentClient, isAgentError, type AgentError, type MigrationMessage } from '../api/client';
import { buildOutputs, compact, echoArgs, echoEndpoint, fromState, secretPartsFromInputs, secretsDigest, toCutoverRequest, toSpec } from './outputs';
import stableStringify from 'safe-stable-stringify';
import { cutbackFailures, cutbackHint, runCutback, windowNote, windowTooLate } from './cutback';

type Props = Record<string, unknown>;

/** Phases from which a migration is in sync (Create with waitForSync returns). */
const IN_SYNC_PHASES = ['syncing', 'cutting-over', 'completed'] as const;
const PREFLIGHT_TIMEOUT_MS = 90_000;
const WATCH_INTERVAL_MS = 1000;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/** Canonical JSON in which a null member means the same as an absent one. */
function stable(v: unknown): string {
  return stableStringify(v ?? null, (_k: string, x: unknown) => (x === null ? undefined : x)) ?? 'null';
}

/** An empty object and an absent one mean the same (defaults). */
function same(a: unknown, b: unknown): boolean {
  const norm = (v: unknown) => (v && typeof v === 'object' && !Array.isArray(v) && Object.keys(compact(v as Props)).length === 0 ? undefined : v);
  return stable(norm(a)) === stable(norm(b));
}

function isEmpty(o: Props | undefined): boolean {
  return !o || Object.keys(o).filter((k) => k !== '__provider').length === 0;
}

function clientFor(agent: AgentArgs): AgentClient {
  return new AgentClient({
    endpoint: agent.endpoint,
    token: agent.token || undefined,
    caCert: agent.caCert || undefined,
    clientCert: agent.clientCert || undefined,
    clientKey: agent.clientKey || undefined,
    insecure: agent.insecure,
  });
}

/** The endpoint's identity for diff: the echoed (password-free) fields with defaults. */
function endpointIdentity(e: EndpointArgs | undefined): unknown {
  if (containsUnknown(e) && typeof e !== 'object') return e;
  const echo = echoEndpoint(e);
  if (echo.connectionString !== undefined) return echo;
  return { ...echo, port: echo.port ?? DEFAULTS.port, sslMode: echo.sslMode ?? DEFAULTS.sslMode };
}

/** `roles` with its defaults, so that an absent value equals the default one. */
function rolesIdentity(r: MigrationInputs['roles'] | undefined): unknown {
  if (containsUnknown(r) && typeof r !== 'object') return r;
  return { map: r?.map ?? DEFAULTS.roles.map, missing: r?.missing ?? DEFAULTS.roles.missing };
}

function tablesIdentity(t: { include?: string[]; exclude?: string[] } | undefined): unknown {
  if (containsUnknown(t) && typeof t !== 'object') return t;
  return { include: t?.include ?? DEFAULTS.tables.include, exclude: t?.exclude ?? DEFAULTS.tables.exclude };
}

/** The value of a replace-on-change argument, comparable between old outputs and new inputs. */
function replaceKey(field: (typeof REPLACE_ON_CHANGE)[number], v: Props): unknown {
  switch (field) {
    case 'source':
      return endpointIdentity(v.source as EndpointArgs | undefined);
    case 'target':
      return endpointIdentity(v.target as EndpointArgs | undefined);
    case 'tables':
      return tablesIdentity(v.tables as MigrationInputs['tables']);
    case 'schemaMode':
      return v.schemaMode ?? DEFAULTS.schemaMode;
    default:
      return v[field];
  }
}

/** `text` ending in a full stop (agent messages may or may not have one). */
function sentence(text: string): string {
  const t = text.trim();
  return /[.!?]$/.test(t) ? t : `${t}.`;
}

/** An Error whose message says what happened and how to fix it. */
function userError(message: string, remedy?: string, cause?: unknown): Error {
  return new Error(remedy ? `${sentence(message)} Fix: ${sentence(remedy)}` : sentence(message), cause === undefined ? undefined : { cause });
}

/** An agent error during a step, with the argument that fixes a connection problem named. */
function stepError(step: string, id: string, e: unknown, endpoint: string): Error {
  if (!isAgentError(e)) return userError(`${step} of migration '${id}' failed: ${(e as Error)?.message ?? String(e)}`, undefined, e);
  const ae = e as AgentError;
  switch (ae.code) {
    case 'AGENT_UNREACHABLE':
      return userError(
        `${step} of migration '${id}': ${ae.message}`,
        `check that the agent runs and that \`agent.endpoint\` ('${endpoint}') is its address, reachable from here; match its TLS with \`agent.caCert\` or \`agent.insecure\`.`,
        e,
      );
    case 'UNAUTHENTICATED':
      return userError(`${step} of migration '${id}': ${ae.message}`, 'set `agent.token` to the token the agent was started with.', e);
    default:
      return userError(`${step} of migration '${id}' failed (${ae.code}): ${ae.message}`, ae.remedy || undefined, e);
  }
}

/**
 * A failure after the migration exists on the agent: Pulumi records the
 * resource (with these outputs) and reports the error, so the next `up` or
 * `destroy` still knows the migration and its replication slot.
 */
function initFailure(id: string, properties: MigrationOutputs, message: string): Error {
  return Object.assign(new Error(message), { id, properties, reasons: [message] });
}

function describeProgress(m: MigrationMessage): string {
  return `phase '${m.phase}', ${m.tablesCopied} of ${m.tablesTotal} table(s) copied, ${m.rowsCopied} row(s)`;
}

function failedMessage(m: MigrationMessage): string {
  return `${m.errorCode ? `${m.errorCode}: ` : ''}${m.errorMessage || 'no detail given'}${m.errorRemedy ? ` Fix: ${m.errorRemedy}` : ''}`;
}

/** The migration's status, or undefined when the agent cannot tell (Check then judges by the old outputs). */
async function liveStatus(agent: AgentArgs, id: string): Promise<MigrationMessage | undefined> {
  const client = clientFor(agent);
  try {
    return await client.getMigration(id);
  } catch {
    return undefined;
  } finally {
    client.close();
  }
}

/** Wait until the migration is in sync (syncing or later); throws on failure, deletion or `deadline`. */
async function waitForSync(client: AgentClient, id: string, deadline: number): Promise<MigrationMessage> {
  let last: MigrationMessage | undefined;
  const done = (m: MigrationMessage) => (IN_SYNC_PHASES as readonly string[]).includes(m.phase) || m.phase === 'failed' || m.phase === 'deleted' || m.paused;
  while (Date.now() < deadline) {
    try {
      await client.watchMigration(
        id,
        WATCH_INTERVAL_MS,
        (m) => {
          last = m;
          return done(m);
        },
        undefined,
        { timeoutMs: Math.max(1000, deadline - Date.now()) },
      );
    } catch (e) {
      const code = isAgentError(e) ? e.code : '';
      if (code === 'AGENT_TIMEOUT' && Date.now() >= deadline - 1000) break;
      if (code !== 'AGENT_UNREACHABLE' && code !== 'AGENT_TIMEOUT') throw e;
      await new Promise((r) => setTimeout(r, 2000));
    }
    if (last && done(last)) break;
    // The stream ended without an answer (agent restart): look, then watch again.
    last = await client.getMigration(id);
    if (done(last)) break;
  }
  if (!last) last = await client.getMigration(id);
  return last;
}

function cutoverBackError(id: string, when: string | undefined, hint = ''): Error {
  return userError(
    `\`cutover\` cannot go back to \`false\`: migration '${id}' completed its cutover${when ? ` at ${when}` : ''}; the target is the active database and writes to the source are fenced.${hint}`,
    'keep `cutover: true`. To clean up, remove the resource (Delete drops the slot and publication; the target keeps its data). To move back, set `cutback: true` while a `rollbackWindow` is open, or declare a new Migration from the target to the source.',
  );
}

// ---------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------

/**
 * Validate the arguments; when every argument the preflight needs is known
 * and a new migration would start (creation, or a replacing change), run the
 * agent's read-only Preflight and report its failed checks. No side effects.
 */
export async function check(olds: Props, news: Props): Promise<CheckResult> {
  const failures: CheckFailure[] = validateInputs(news);
  if (failures.length > 0) return { inputs: news, failures };

  const agentKnown = !containsUnknown(news.agent);
  const id = news.migrationId as string;

  // `cutover` true → false after the cutover completed cannot be honoured; say so at preview.
  if (olds?.cutover === true && news.cutover !== true && !containsUnknown(news.cutover) && agentKnown) {
    const client = clientFor(news.agent as AgentArgs);
    try {
      const m = await client.getMigration(id);
      if (m.phase === 'completed' || (m.activeEndpoint === 'target' && m.phase !== 'cut-back')) {
        failures.push({ property: 'cutover', reason: cutoverBackError(id, m.cutover?.completedAt || undefined, cutbackHint(olds, m)).message });
      }
    } catch {
      /* update() enforces it too; an unreachable agent is not this check's finding */
    } finally {
      client.close();
    }
    if (failures.length > 0) return { inputs: news, failures };
  }
  // `cutback` (the way back): when it may be asked for; the agent's status when it answers, the old outputs otherwise.
  if (news.cutback === true || olds?.cutback === true || olds?.phase === 'cut-back') {
    const live = agentKnown ? await liveStatus(news.agent as AgentArgs, id) : undefined;
    failures.push(...cutbackFailures(olds ?? {}, news, live));
    if (failures.length > 0) return { inputs: news, failures };
  }

  const creating = isEmpty(olds);
  const replacing = !creating && REPLACE_ON_CHANGE.some((f) => !same(replaceKey(f, olds), replaceKey(f, news)));
  // A rollback window added to a running migration: the preflight's reverse_* checks (what the way back needs).
  const windowAdded = !creating && !replacing && typeof news.rollbackWindow === 'string' && news.rollbackWindow !== UNKNOWN && !olds.rollbackWindow;
  if (windowAdded && (olds.phase === 'completed' || olds.phase === 'cut-back')) return { inputs: news, failures: [windowTooLate(id)] };
  if (!creating && !replacing && !windowAdded) return { inputs: news, failures };
  const needed = PREFLIGHT_ARGS;
  if (!agentKnown || needed.some((k) => containsUnknown(news[k]))) return { inputs: news, failures };

  const inputs = news as unknown as MigrationInputs;
  const client = clientFor(inputs.agent);
  try {
    if (creating) {
      // An existing migration with this id is adopted by Create (StartMigration is idempotent): nothing to preflight.
      const existing = await client.getMigration(id).catch((e: unknown) => {
        if (isAgentError(e) && e.code === 'MIGRATION_NOT_FOUND') return undefined;
        throw e;
      });
      if (existing && existing.phase !== 'deleted') return { inputs: news, failures };
    }
    const report = await client.preflight(toSpec(inputs), { timeoutMs: PREFLIGHT_TIMEOUT_MS });
    let found = failuresFromPreflight(report);
    // A running migration's own slot and publication are not a clash: only the way back's checks apply.
    if (windowAdded) found = found.filter((f) => f.property === 'rollbackWindow');
    if (replacing && olds.migrationId === news.migrationId && same(replaceKey('source', olds), replaceKey('source', news))) {
      // Delete runs first (deleteBeforeReplace) and drops the old slot and publication of this id.
      found = found.filter((f) => f.property !== 'slotName' && f.property !== 'publicationName');
    }
    failures.push(...found);
  } catch (e) {
    if (!isAgentError(e)) throw e;
    failures.push(...failuresFromAgentError(e, inputs.agent.endpoint));
  } finally {
    client.close();
  }
  return { inputs: news, failures };
}

// ---------------------------------------------------------------------------
// diff
// ---------------------------------------------------------------------------

/**
 * Compare the old outputs with the new arguments. A different migration
 * (id, source, target, tables, schema mode, slot or publication name) is a
 * replacement, deleting first since the slot is named per id; anything else
 * that changed is an update. Unknown values count as changed.
 */
export async function diff(_id: string, olds: Props, news: Props): Promise<DiffResult> {
  // Unknown parts count as changed, except secrets (a rotated password is not a new migration).
  const replaces = REPLACE_ON_CHANGE.filter((f) => {
    const next = replaceKey(f, news);
    return containsUnknown(next) || !same(replaceKey(f, olds), next);
  });
  const n = news as unknown as MigrationInputs;
  let changes = replaces.length > 0;

  // Rotated database secrets: compare digests (the old outputs hold no password in clear).
  const secretFields = [n.source?.password, n.source?.connectionString, n.target?.password, n.target?.connectionString];
  if (!changes) {
    if (secretFields.some(containsUnknown) || containsUnknown(news.migrationId) || typeof olds.secretsDigest !== 'string') changes = true;
    else if (secretsDigest(n) !== olds.secretsDigest) changes = true;
  }

  // In-place arguments (the agent connection, knobs, the cutover, the way back).
  if (!changes) {
    const agentNew = containsUnknown(news.agent)
      ? UNKNOWN
      : compact({ endpoint: n.agent?.endpoint, caCert: n.agent?.caCert, clientCert: n.agent?.clientCert, insecure: n.agent?.insecure });
    const oldAgent = olds.agent as Props | undefined;
    const pairs: Array<[unknown, unknown]> = [
      [
        oldAgent ? compact({ endpoint: oldAgent.endpoint, caCert: oldAgent.caCert, clientCert: oldAgent.clientCert, insecure: oldAgent.insecure }) : undefined,
        agentNew,
      ],
      // The agent's secrets are secret outputs: compared as they are.
      [olds.agentToken, containsUnknown(news.agent) ? UNKNOWN : n.agent?.token || undefined],
      [olds.agentClientKey, containsUnknown(news.agent) ? UNKNOWN : n.agent?.clientKey || undefined],
      [olds.overwriteTarget ?? DEFAULTS.overwriteTarget, n.overwriteTarget ?? DEFAULTS.overwriteTarget],
      [olds.copy, n.copy],
      [olds.apply, n.apply],
      [olds.verification, n.verification],
      [olds.schemaChanges, n.schemaChanges],
      [rolesIdentity(olds.roles as MigrationInputs['roles']), rolesIdentity(n.roles)],
      [olds.waitForSync ?? DEFAULTS.waitForSync, n.waitForSync ?? DEFAULTS.waitForSync],
      [olds.createTimeoutMinutes ?? DEFAULTS.createTimeoutMinutes, n.createTimeoutMinutes ?? DEFAULTS.createTimeoutMinutes],
      [olds.cutover ?? DEFAULTS.cutover, n.cutover ?? DEFAULTS.cutover],
      [olds.cutoverOptions, n.cutoverOptions],
      [olds.rollbackWindow, n.rollbackWindow],
      [olds.cutback ?? DEFAULTS.cutback, n.cutback ?? DEFAULTS.cutback],
    ];
    changes = pairs.some(([a, b]) => containsUnknown(b) || !same(a, b));
  }
  return { changes, replaces: [...replaces], deleteBeforeReplace: replaces.length > 0 };
}

// ---------------------------------------------------------------------------
// create
// ---------------------------------------------------------------------------

/**
 * Start the migration (idempotent by id: an existing migration with the same
 * spec is adopted). With `waitForSync`, return once it is in sync; with
 * `cutover: true`, also cut over. Failures after the start leave the resource
 * recorded, so its slot is never forgotten.
 */
export async function create(news: Props): Promise<CreateResult> {
  const a = news as unknown as MigrationInputs;
  const id = a.migrationId;
  const echo = echoArgs(a);
  const secrets = secretPartsFromInputs(a);
  const pending = { ...echo, cutover: false, cutback: false };
  const client = clientFor(a.agent);
  try {
    let m: MigrationMessage;
    try {
      m = await client.startMigration(toSpec(a));
    } catch (e) {
      // The call may have reached the agent before the connection failed: if it started, keep it.
      if (isAgentError(e) && (e.code === 'AGENT_TIMEOUT' || e.code === 'AGENT_UNREACHABLE')) {
        const started = await client.getMigration(id).catch(() => undefined);
        if (started) throw initFailure(id, buildOutputs(pending, secrets, started), stepError('Start', id, e, a.agent.endpoint).message);
      }
      if (isAgentError(e) && e.code === 'MIGRATION_EXISTS_DIFFERENT_SPEC') {
        throw userError(
          `Migration '${id}' already exists on the agent at '${a.agent.endpoint}' with a different spec (source, target, tables or options).`,
          `set \`migrationId\` to a new id, or delete the existing migration first (\`pgferry delete ${id}\`).`,
          e,
        );
      }
      throw stepError('Start', id, e, a.agent.endpoint);
    }
    const deadline = Date.now() + (a.createTimeoutMinutes ?? DEFAULTS.createTimeoutMinutes) * 60_000;
    if ((a.waitForSync || a.cutover) && !(IN_SYNC_PHASES as readonly string[]).includes(m.phase)) {
      try {
        m = await waitForSync(client, id, deadline);
      } catch (e) {
        throw initFailure(id, buildOutputs(pending, secrets, m), stepError('Waiting for sync', id, e, a.agent.endpoint).message);
      }
      if (m.phase === 'failed') {
        throw initFailure(id, buildOutputs(pending, secrets, m), `Migration '${id}' failed before it was in sync: ${failedMessage(m)}`);
      }
      if (m.paused && !(IN_SYNC_PHASES as readonly string[]).includes(m.phase)) {
        throw initFailure(
          id,
          buildOutputs(pending, secrets, m),
          `Migration '${id}' is paused on the agent (since ${m.pausedAt}) in ${describeProgress(m)}, so it cannot get in sync. Fix: resume it (\`pgferry resume ${id}\`), then run \`pulumi up\` again.`,
        );
      }
      if (!(IN_SYNC_PHASES as readonly string[]).includes(m.phase)) {
        throw initFailure(
          id,
          buildOutputs(pending, secrets, m),
          `Migration '${id}' was not in sync within \`createTimeoutMinutes\` (${a.createTimeoutMinutes ?? DEFAULTS.createTimeoutMinutes} min): ${describeProgress(m)}. It keeps running on the agent. Fix: run \`pulumi refresh\` to follow it, or raise \`createTimeoutMinutes\`; the next \`pulumi up\` continues.`,
        );
      }
    }
    if (a.cutover && m.phase !== 'completed') {
      try {
        m = await runCutover(client, a);
      } catch (e) {
        const latest = await client.getMigration(id).catch(() => m);
        throw initFailure(id, buildOutputs(pending, secrets, latest), (e as Error).message);
      }
    }
    return { id, outs: buildOutputs(echo, secrets, m) };
  } finally {
    client.close();
  }
}

/** Cut over; returns the completed migration or throws the agent's reason and remedy. */
async function runCutover(client: AgentClient, a: MigrationInputs): Promise<MigrationMessage> {
  const id = a.migrationId;
  let m: MigrationMessage;
  try {
    m = await client.cutover(toCutoverRequest(a));
  } catch (e) {
    const err = stepError('Cutover', id, e, a.agent.endpoint);
    err.message += ' The source stays writable (a failed cutover lifts the fence); set `cutoverOptions` if needed and run `pulumi up` again to retry.';
    throw err;
  }
  if (m.phase !== 'completed') {
    const reason = m.cutover?.error || (m.errorMessage ? failedMessage(m) : `the cutover ended in state '${m.cutover?.state ?? m.phase}'`);
    throw userError(
      `Cutover of migration '${id}' did not complete: ${reason}. The source stays writable.`,
      `${m.errorRemedy ? `${m.errorRemedy} Then ` : ''}run \`pulumi up\` again to retry (\`cutoverOptions.maxLagSeconds\`, \`cutoverOptions.timeoutMs\` and \`cutoverOptions.validation\` tune it).`,
    );
  }
  return m;
}

// ---------------------------------------------------------------------------
// read
// ---------------------------------------------------------------------------

/** Live status from the agent; a migration the agent no longer has is reported gone (no id). */
export async function read(id: string, props: Props): Promise<ReadResult> {
  const { echo, secrets, agent } = fromState(props ?? {});
  if (!agent) {
    throw userError(
      `Cannot read migration '${id}': the state holds no \`agent.endpoint\`.`,
      'declare the resource with its `agent` (and `migrationId`) so Create adopts the existing migration, or use `Migration.get(name, id, { agent, source, target })`.',
    );
  }
  const client = clientFor(agent);
  try {
    let m: MigrationMessage;
    try {
      m = await client.getMigration(id);
    } catch (e) {
      if (isAgentError(e) && (e.code === 'MIGRATION_NOT_FOUND' || e.grpcStatus === 'NOT_FOUND')) return {};
      throw stepError('Read', id, e, agent.endpoint);
    }
    if (m.phase === 'deleted') return {};
    return { id, props: buildOutputs({ ...echo, migrationId: id }, secrets, m, (props.notes as string[] | undefined) ?? []) };
  } finally {
    client.close();
  }
}

// ---------------------------------------------------------------------------
// update
// ---------------------------------------------------------------------------

/**
 * In-place changes: `cutover` false → true cuts over and returns when it
 * completed (or throws the agent's reason; the source stays writable);
 * rotated passwords and the `apply`, `verification` and `schemaChanges` knobs are handed to
 * the agent (StartMigration with the same spec stores them; a syncing
 * migration restarts its stream to use them, an earlier phase uses them when
 * it next resumes); `copy`, `overwriteTarget` and `roles` apply to the next
 * start; the agent connection changes nothing on the agent. `cutover` true →
 * false after completion fails. `cutback: true` after a completed cutover cuts
 * back (cutback.ts); `rollbackWindow` is handed to the agent also after the
 * cutover (removed: the reverse sync is dropped).
 */
export async function update(id: string, olds: Props, news: Props): Promise<UpdateResult> {
  const a = news as unknown as MigrationInputs;
  const wantCutover = a.cutover === true;
  const wantCutback = a.cutback === true;
  if (!wantCutover && (olds.phase === 'completed' || (olds.activeEndpoint === 'target' && olds.phase !== 'cut-back'))) {
    throw cutoverBackError(id, olds.cutoverCompletedAt as string | undefined, cutbackHint(olds, undefined));
  }
  const early = cutbackFailures(olds, news, undefined)[0];
  if (early) throw new Error(early.reason);
  const notes: string[] = [];
  const client = clientFor(a.agent);
  try {
    let m: MigrationMessage;
    try {
      m = await client.getMigration(id);
    } catch (e) {
      if (isAgentError(e) && e.code === 'MIGRATION_NOT_FOUND') {
        throw userError(
          `Migration '${id}' no longer exists on the agent at '${a.agent.endpoint}'.`,
          'run `pulumi refresh` to drop it from the state, then `pulumi up` to start it again (or point `agent.endpoint` at the agent that holds it).',
          e,
        );
      }
      throw stepError('Update', id, e, a.agent.endpoint);
    }
    if (!wantCutover && (m.phase === 'completed' || (m.activeEndpoint === 'target' && m.phase !== 'cut-back'))) {
      throw cutoverBackError(id, m.cutover?.completedAt || undefined, cutbackHint(olds, m));
    }
    const refused = cutbackFailures(olds, news, m)[0];
    if (refused) throw new Error(refused.reason);
    if (!wantCutover && m.phase === 'cut-back' && olds.cutover === true) {
      notes.push(`\`cutover\` is \`false\`: migration '${id}' was cut back, the application is on the source; nothing changes on the agent.`);
    }

    const secretsChanged = typeof olds.secretsDigest !== 'string' || secretsDigest(a) !== olds.secretsDigest;
    const knobsChanged = (['apply', 'verification', 'schemaChanges', 'rollbackWindow'] as const).filter((k) => !same(olds[k], a[k]));
    // After the cutover only the rollback window is still taken up (removed: the reverse sync is dropped; another length: a new end).
    const handOver = m.phase === 'completed' ? knobsChanged.includes('rollbackWindow') : m.phase !== 'cut-back';
    if ((secretsChanged || knobsChanged.length > 0) && handOver) {
      // Same spec as started (copy, overwriteTarget and roles as they were), newest credentials, apply, verification and schemaChanges knobs.
      const spec = toSpec({
        ...a,
        copy: olds.copy as MigrationInputs['copy'],
        overwriteTarget: olds.overwriteTarget as boolean | undefined,
        roles: olds.roles as MigrationInputs['roles'],
      });
      try {
        m = await client.startMigration(spec);
      } catch (e) {
        throw stepError('Handing the new credentials and knobs to the agent', id, e, a.agent.endpoint);
      }
      const restarted = m.phase === 'syncing' && !m.paused;
      const use = (it: string) =>
        restarted
          ? `the sync restarted its stream to use ${it}`
          : `migration '${id}' (phase '${m.phase}'${m.paused ? ', paused' : ''}) uses ${it} when it next resumes`;
      if (secretsChanged) notes.push(`Rotated credentials were handed to the agent, which stores them; ${use('them')}.`);
      for (const k of knobsChanged)
        notes.push(k === 'rollbackWindow' ? windowNote(a.rollbackWindow, m) : `\`${k}\` changed: the agent stored it; ${use('it')}.`);
    }
    if (!same(olds.copy, a.copy) || (olds.overwriteTarget ?? false) !== (a.overwriteTarget ?? false)) {
      notes.push(
        `\`copy\` / \`overwriteTarget\` changed: they apply the next time a migration starts; the running migration '${id}' keeps the settings it started with.`,
      );
    }
    if (!same(rolesIdentity(olds.roles as MigrationInputs['roles']), rolesIdentity(a.roles))) {
      notes.push(
        `\`roles\` changed: it applies the next time a migration starts; the running migration '${id}' keeps the mapping it started with (its owners and grants are set once, after the indexes are built); adjust owners and grants on the target by hand if they must differ.`,
      );
    }

    if (wantCutover && m.phase !== 'completed' && m.phase !== 'cut-back') {
      if (m.phase === 'failed') {
        throw userError(
          `Cannot cut over migration '${id}': it failed: ${failedMessage(m)}`,
          'fix the cause; the agent retries a failed migration when started again (rotate nothing and run `pulumi up`, or replace the resource).',
        );
      }
      m = await runCutover(client, a);
    } else if (wantCutback && m.phase === 'completed') {
      m = await runCutback(client, a, (e) => stepError('Cutback', id, e, a.agent.endpoint));
    } else if (!wantCutover && m.phase === 'cutting-over') {
      try {
        m = await client.cancelCutover(id);
        notes.push('A cutover in progress was cancelled because `cutover` is `false`.');
      } catch (e) {
        throw stepError('Cancelling the cutover', id, e, a.agent.endpoint);
      }
    }
    return { outs: buildOutputs(echoArgs(a), secretPartsFromInputs(a), m, notes) };
  } finally {
    client.close();
  }
}

// ---------------------------------------------------------------------------
// delete
// ---------------------------------------------------------------------------

/** Drop what the migration created on the source (slot, publication); the target keeps its data. */
export async function remove(id: string, props: Props): Promise<void> {
  const { agent } = fromState(props ?? {});
  const slot = (props.replicationSlot as string | undefined) ?? `pgferry_${id}`;
  const publication = (props.publication as string | undefined) ?? `pgferry_${id}`;
  const byHand = `or drop them by hand on the source (SELECT pg_drop_replication_slot('${slot}'); DROP PUBLICATION "${publication}";) and then \`pulumi state delete\` the resource.`;
  if (!agent) {
    throw userError(`Cannot delete migration '${id}': the state holds no \`agent.endpoint\`.`, byHand);
  }
  const client = clientFor(agent);
  try {
    await client.deleteMigration(id);
  } catch (e) {
    if (isAgentError(e) && (e.code === 'MIGRATION_NOT_FOUND' || e.grpcStatus === 'NOT_FOUND')) return;
    const err = stepError('Delete', id, e, agent.endpoint);
    err.message += ` Until it is deleted, replication slot '${slot}' keeps WAL on the source. Run \`pulumi destroy\` again once the cause is fixed, ${byHand}`;
    throw err;
  } finally {
    client.close();
  }
}
