/**
 * resource — `pgferry_migration` (and the data source): Terraform's plan,
 * apply, read and import, each mapped onto the Pulumi provider's own steps
 * (provider/lifecycle.ts: check → diff → create → read → update → delete),
 * so the validation, the preflight, the agent calls and the outputs are the
 * same code for both front-ends.
 *
 * What differs is Terraform's: the state is not encrypted, so passwords and
 * tokens are write-only (read from the configuration at plan and apply,
 * never stored) and the agent's token for refresh and destroy comes from the
 * provider block; a preflight failure or bad argument is a diagnostic on the
 * attribute that fixes it; a change that needs a new migration is a
 * replacement, with the reason as a warning.
 *
 * Input: decoded Terraform objects and the provider block's agent settings.
 * Output: Terraform objects (or null) and diagnostics.
 */
import { MIGRATION_ID_PATTERN, REPLACE_ON_CHANGE, UNKNOWN, type ConnectionOutput } from '../provider/args';
import { check, diff, create, read, update, remove } from '../provider/lifecycle';
import { compact, resolveConnection } from '../provider/outputs';
import { fromProps, pathOf, terraformText, toProps, type PathStep, type Props } from './convert';
import { ID_ATTR, argumentAttrs, dataSourceAttrs, outputAttrs, resourceAttrs, type Attr } from './schema';

export interface Diagnostic {
  severity: 'ERROR' | 'WARNING';
  summary: string;
  detail: string;
  attribute?: { steps: PathStep[] };
}

/** The provider block's agent settings (the Pulumi names), the defaults of every resource's `agent`. */
export type AgentDefaults = Props;

const ARGS = argumentAttrs();
const OUTS = outputAttrs();
const CONNECTIONS = OUTS.filter((a) => a.nested).map((a) => a.key);

const isRecord = (v: unknown): v is Props => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A failure as a diagnostic; one on an argument points at it and names it as Terraform spells it. */
export function diagnostic(summary: string, message: string, property?: string, severity: Diagnostic['severity'] = 'ERROR'): Diagnostic {
  const at = property ? pathOf(property) : undefined;
  let detail = terraformText(message);
  if (property?.startsWith('agent')) {
    detail +=
      ' (A field left out of `agent` comes from the provider "pgferry" block: `endpoint`, `token`, `ca_cert`, `client_cert`, `client_key`, `insecure`.)';
  }
  return { severity, summary: summary.replace('%s', at?.name || property || ''), detail, attribute: at?.steps.length ? { steps: at.steps } : undefined };
}

/** The resource's agent: its own fields over the provider block's. */
function agentOf(own: unknown, defaults: AgentDefaults): unknown {
  if (own === UNKNOWN) return UNKNOWN;
  return compact({ ...defaults, ...(isRecord(own) ? compact(own) : {}) });
}

/** The configuration as the Pulumi provider's arguments. */
export function inputsOf(config: Props, defaults: AgentDefaults): Props {
  const p = toProps(config, ARGS);
  return { ...p, agent: agentOf(p.agent, defaults) };
}

/**
 * The stored state as the Pulumi provider's old arguments and outputs. The
 * agent's secrets are never stored: its token and key are the ones in use
 * now (so they are not a change), and an imported migration, whose spec the
 * state does not hold, takes the declared one (the agent refuses it at apply
 * if it is not the running migration's).
 */
function oldsOf(state: Props, defaults: AgentDefaults, news?: Props): { olds: Props; adopted: boolean } {
  const olds: Props = { ...toProps(state, ARGS), ...toProps(state, OUTS) };
  const agent = agentOf(olds.agent, defaults) as Props;
  // The secrets in use: the configuration's at plan and apply (so they are never a change), the provider block's otherwise.
  const now = isRecord(news?.agent) ? (news.agent as Props) : agent;
  olds.agent = compact({ ...agent, token: now.token, clientKey: now.clientKey });
  olds.agentToken = now.token;
  olds.agentClientKey = now.clientKey;
  olds.migrationId ??= state.id;
  if (news) for (const side of ['source', 'target'] as const) keepConnectionString(olds, news, side);
  // An imported migration's state holds no digest of the secrets (the read after an import cannot know them).
  const adopted = !olds.secretsDigest;
  if (adopted) delete olds.secretsDigest;
  if (adopted && news) for (const k of REPLACE_ON_CHANGE) olds[k] ??= news[k];
  return { olds, adopted };
}

/**
 * A write-only `connection_string` is not in the state: when the declared
 * one still describes the endpoint the state has (host, port, database, user,
 * sslmode), it is the same endpoint (a rotated password is seen by the
 * digest), not a new migration.
 */
function keepConnectionString(olds: Props, news: Props, side: 'source' | 'target'): void {
  const given = isRecord(news[side]) ? (news[side] as Props).connectionString : undefined;
  const had = olds[`${side}Connection`] as Props | undefined;
  if (typeof given !== 'string' || given === UNKNOWN || !had?.host || (isRecord(olds[side]) && (olds[side] as Props).connectionString)) return;
  const now = resolveConnection({ connectionString: given }) as unknown as Props;
  if ((['host', 'port', 'database', 'user', 'sslMode'] as const).every((k) => now[k] === had[k])) {
    olds[side] = { ...(isRecord(olds[side]) ? (olds[side] as Props) : {}), connectionString: given };
  }
}

/** A connection output without its password (the state is not encrypted). */
function withoutPassword(c: unknown): unknown {
  if (!isRecord(c) || !c.host) return c;
  const { password: _password, connectionString: _cs, ...rest } = c as unknown as ConnectionOutput;
  return resolveConnection({ ...rest, sslMode: rest.sslMode });
}

/** Write-only arguments are null in every plan and state. */
function withoutWriteOnly(value: Props, attrs: readonly Attr[] = ARGS): Props {
  const out: Props = { ...value };
  for (const a of attrs) {
    if (a.writeOnly) out[a.name] = null;
    else if (a.nested && isRecord(out[a.name])) out[a.name] = withoutWriteOnly(out[a.name] as Props, a.nested);
  }
  return out;
}

/** The new state: the arguments as planned, the outputs as the provider returned them. */
function stateOf(args: Props, outs: Props, id: string): Props {
  const o: Props = { ...outs };
  for (const k of CONNECTIONS) o[k] = withoutPassword(o[k]);
  const computed = fromProps(o, OUTS);
  const own = Object.fromEntries(ARGS.map((a) => [a.name, args[a.name] ?? null]));
  return { ...withoutWriteOnly(own), ...computed, id };
}

function unknownOutputs(state: Props, keepId: boolean): Props {
  const out: Props = { ...state };
  for (const a of OUTS) out[a.name] = UNKNOWN;
  if (!keepId) out.id = UNKNOWN;
  return out;
}

/**
 * Terraform shows the line of an attribute, not of a block: a failure on a
 * whole block (`tables`, `source`) points at the block's first argument
 * given, so the plan shows where to fix it.
 */
function pointInside(at: Diagnostic['attribute'], config: Props): Diagnostic['attribute'] {
  const [first, ...rest] = at?.steps ?? [];
  if (!first || rest.length > 0 || !('attribute_name' in first)) return at;
  const block = ARGS.find((a) => a.name === first.attribute_name && a.block);
  const given = block?.nested?.find((n) => isRecord(config[block.name]) && (config[block.name] as Props)[n.name] !== null);
  return given ? { steps: [first, { attribute_name: given.name }] } : at;
}

const errorText = (e: unknown): string => (e instanceof Error ? e.message : String(e));

// ---------------------------------------------------------------------------
// plan
// ---------------------------------------------------------------------------

export interface Plan {
  planned: Props | null;
  requiresReplace: Array<{ steps: PathStep[] }>;
  diagnostics: Diagnostic[];
}

/**
 * PlanResourceChange: the Pulumi provider's check (arguments, and the
 * read-only preflight when a new migration would start) and diff; each
 * failure a diagnostic on its attribute.
 */
export async function planMigration(prior: Props | null, proposed: Props | null, config: Props | null, defaults: AgentDefaults): Promise<Plan> {
  if (!proposed || !config) return { planned: proposed, requiresReplace: [], diagnostics: [] };
  const news = inputsOf(config, defaults);
  const diagnostics: Diagnostic[] = [];
  const { olds, adopted } = prior ? oldsOf(prior, defaults, news) : { olds: {}, adopted: false };
  if (prior && adopted) {
    diagnostics.push(
      diagnostic(
        'Adopting an imported migration',
        `Migration '${String(olds.migrationId)}' was imported: this apply hands the declared \`source\`, \`target\` and options (and their passwords) to the agent, which refuses them if they are not the running migration's.`,
        undefined,
        'WARNING',
      ),
    );
  }
  const checked = await check(olds, news);
  for (const f of checked.failures ?? []) {
    // A preflight check, an argument's own problem (its message starts with its name), or the agent's answer (unreachable, token refused).
    const summary = f.reason.startsWith('Preflight check')
      ? 'The preflight fails on `%s`'
      : f.reason.startsWith('`')
        ? 'Invalid `%s`'
        : 'Asking the agent fails on `%s`';
    const d = diagnostic(summary, f.reason, f.property);
    diagnostics.push({ ...d, attribute: pointInside(d.attribute, config) });
  }
  const planned = withoutWriteOnly(proposed);
  if (diagnostics.some((d) => d.severity === 'ERROR')) return { planned, requiresReplace: [], diagnostics };
  if (!prior) {
    const id = news.migrationId;
    return { planned: { ...unknownOutputs(planned, false), id: typeof id === 'string' ? id : UNKNOWN }, requiresReplace: [], diagnostics };
  }
  const d = await diff(String(prior.id ?? olds.migrationId), olds, news);
  if ((d.replaces ?? []).length > 0) {
    for (const k of d.replaces ?? []) {
      diagnostics.push(
        diagnostic(
          'Replacing the migration: `%s` changed',
          `\`${k}\` names a different migration (a change to \`migrationId\`, \`source\`, \`target\`, \`tables\`, \`schemaMode\`, \`slotName\` or \`publicationName\` does): the old migration is deleted first (its replication slot and publication dropped on the source; the target keeps its data), then a new one starts and loads the target again.`,
          k,
          'WARNING',
        ),
      );
    }
    return { planned: unknownOutputs(planned, false), requiresReplace: (d.replaces ?? []).map((k) => ({ steps: pathOf(k).steps })), diagnostics };
  }
  return { planned: d.changes ? unknownOutputs(planned, true) : planned, requiresReplace: [], diagnostics };
}

// ---------------------------------------------------------------------------
// apply, read, import
// ---------------------------------------------------------------------------

/** ApplyResourceChange: create, update (the cutover among it) or delete, as the Pulumi provider does. */
export async function applyMigration(
  prior: Props | null,
  planned: Props | null,
  config: Props | null,
  defaults: AgentDefaults,
): Promise<{ state: Props | null; diagnostics: Diagnostic[] }> {
  if (!planned) {
    const { olds } = oldsOf(prior ?? {}, defaults);
    const id = String(prior?.id ?? olds.migrationId);
    try {
      await remove(id, olds);
      return { state: null, diagnostics: [] };
    } catch (e) {
      return { state: prior, diagnostics: [diagnostic('Deleting the migration failed', errorText(e))] };
    }
  }
  const news = inputsOf(config ?? planned, defaults);
  if (!prior) {
    try {
      const r = await create(news);
      return { state: stateOf(planned, r.outs as Props, r.id), diagnostics: [] };
    } catch (e) {
      // Started, then failed (e.g. not in sync in time): keep it in the state, so its slot is never forgotten.
      const started = e as { id?: string; properties?: Props };
      const state = started.id && started.properties ? stateOf(planned, started.properties, started.id) : null;
      return { state, diagnostics: [diagnostic('Creating the migration failed', errorText(e))] };
    }
  }
  const { olds } = oldsOf(prior, defaults, news);
  const id = String(prior.id ?? olds.migrationId);
  try {
    const r = await update(id, olds, news);
    return { state: stateOf(planned, r.outs as Props, id), diagnostics: [] };
  } catch (e) {
    return { state: prior, diagnostics: [diagnostic('Updating the migration failed', errorText(e))] };
  }
}

/** ReadResource (refresh, and after an import): the live status; null when the agent no longer has it. */
export async function readMigration(state: Props, defaults: AgentDefaults): Promise<{ state: Props | null; diagnostics: Diagnostic[] }> {
  const { olds } = oldsOf(state, defaults);
  const id = String(state.id ?? olds.migrationId);
  try {
    const r = await read(id, olds);
    if (!r.id) return { state: null, diagnostics: [] };
    return { state: stateOf(state, r.props as Props, r.id), diagnostics: [] };
  } catch (e) {
    return { state, diagnostics: [diagnostic('Reading the migration failed', errorText(e))] };
  }
}

/** ImportResourceState: the id only; the read that follows fills in the rest from the agent. */
export function importMigration(id: string): { state: Props | null; diagnostics: Diagnostic[] } {
  if (!MIGRATION_ID_PATTERN.test(id)) {
    const detail = `'${id}' is not a migration id: ids start with a lowercase letter and hold only a-z, 0-9 and _ (at most 40 characters). Give the id the agent knows (\`pgferry status\` lists them), e.g. \`terraform import pgferry_migration.orders orders\`.`;
    return { state: null, diagnostics: [{ severity: 'ERROR', summary: 'Invalid migration id', detail }] };
  }
  const empty = Object.fromEntries(resourceAttrs().map((a) => [a.name, null]));
  return { state: { ...empty, id, migration_id: id }, diagnostics: [] };
}

/** ReadDataSource: a running migration's live status, by id. */
export async function readDataSource(config: Props, defaults: AgentDefaults): Promise<{ state: Props | null; diagnostics: Diagnostic[] }> {
  const attrs = dataSourceAttrs();
  const props = toProps(config, attrs);
  const id = String(props.migrationId);
  const agent = agentOf(props.agent, defaults) as Props;
  const looked = { migrationId: id, agent, agentToken: agent.token, agentClientKey: agent.clientKey };
  try {
    const r = await read(id, looked);
    if (!r.id) {
      const detail = `The agent at '${String(agent.endpoint)}' has no migration '${id}'. Fix: give the id \`pgferry status\` lists, or point the provider block's \`endpoint\` at the agent that runs it.`;
      return {
        state: null,
        diagnostics: [diagnostic('Migration not found', detail, 'migrationId')],
      };
    }
    const live = fromProps(r.props as Props, outputAttrs(true));
    return { state: { ...fromProps({}, attrs), ...live, id, migration_id: id, agent: config.agent ?? null }, diagnostics: [] };
  } catch (e) {
    return { state: null, diagnostics: [diagnostic('Reading the migration failed', errorText(e))] };
  }
}

export { ID_ATTR };
