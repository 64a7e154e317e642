/**
 * provider — the `tfplugin6.Provider` gRPC service Terraform calls: schemas,
 * the provider block (the agent shared by every migration), and each RPC
 * decoded, handed to resource.ts, and encoded back. Every handler answers
 * exactly once; a failure becomes an error diagnostic, never a crash.
 *
 * Input: Terraform's requests (values as msgpack). Output: its responses.
 */
import * as grpc from '@grpc/grpc-js';
import { UNKNOWN } from '../provider/args';
import { toProps, type Props } from './convert';
import { applyMigration, diagnostic, importMigration, planMigration, readDataSource, readMigration, type AgentDefaults, type Diagnostic } from './resource';
import { DATA_SOURCE_TYPE, RESOURCE_TYPE, dataSourceAttrs, objectType, providerAttrs, resourceAttrs, type Attr } from './schema';
import { decodeValue, encodeValue, hasUnknown, typeJson, type CtyType } from './values';

type DynamicValue = { msgpack?: Buffer; json?: Buffer } | null;
type Req = Record<string, unknown> & { type_name?: string };
type Handler = (req: Req) => Promise<Record<string, unknown>>;

function attrProto(a: Attr): Record<string, unknown> {
  return {
    name: a.name,
    type: a.nested ? Buffer.alloc(0) : typeJson(a.type ?? 'dynamic'),
    nested_type: a.nested ? { attributes: a.nested.map(attrProto), nesting: 'SINGLE' } : null,
    description: a.description,
    description_kind: 'MARKDOWN',
    required: !!a.required,
    optional: !a.required && !!a.optional,
    computed: !!a.computed,
    sensitive: !!a.sensitive,
    write_only: !!a.writeOnly,
  };
}

/** A block of attributes; a nested argument is a single nested block (at most one, at least one when required). */
function blockProto(attrs: readonly Attr[], description = ''): Record<string, unknown> {
  return {
    version: 0,
    attributes: attrs.filter((a) => !a.block).map(attrProto),
    block_types: attrs
      .filter((a) => a.block)
      .map((a) => ({
        type_name: a.name,
        block: blockProto(a.nested ?? [], a.description),
        nesting: 'SINGLE',
        min_items: a.required ? 1 : 0,
        max_items: a.required ? 1 : 0,
      })),
    description,
    description_kind: 'MARKDOWN',
  };
}

const schemaProto = (attrs: readonly Attr[], description: string) => ({ version: 0, block: blockProto(attrs, description) });

const diagProto = (d: Diagnostic) => ({ severity: d.severity, summary: d.summary, detail: d.detail, attribute: d.attribute ?? null });

/** True when the configuration sets a write-only attribute (somewhere below `attrs`). */
function setsWriteOnly(value: unknown, attrs: readonly Attr[]): boolean {
  if (!value || typeof value !== 'object') return false;
  return attrs.some((a) => {
    const v = (value as Props)[a.name];
    if (v === null || v === undefined) return false;
    return a.writeOnly || (a.nested ? setsWriteOnly(v, a.nested) : false);
  });
}

/** The provider's state between RPCs: the provider block's agent settings. */
export class PgferryProvider {
  private defaults: AgentDefaults = {};
  private readonly resource = resourceAttrs();
  private readonly resourceType: CtyType = objectType(this.resource);
  private readonly dataSource = dataSourceAttrs();
  private readonly dataSourceType: CtyType = objectType(this.dataSource);
  private readonly providerBlock = providerAttrs();
  private readonly providerType: CtyType = objectType(this.providerBlock);

  constructor(private readonly onStop: () => void = () => undefined) {}

  private decode = (v: unknown, type: CtyType) => decodeValue(v as DynamicValue, type) as Props | null;

  /** The handlers, by RPC name. */
  handlers(): Record<string, Handler> {
    const R = this.resourceType;
    return {
      GetMetadata: async () => ({
        server_capabilities: { plan_destroy: false, get_provider_schema_optional: false },
        diagnostics: [],
        resources: [{ type_name: RESOURCE_TYPE }],
        data_sources: [{ type_name: DATA_SOURCE_TYPE }],
      }),
      GetProviderSchema: async () => ({
        provider: schemaProto(this.providerBlock, 'The pgferry agent every `pgferry_migration` talks to, unless it sets its own `agent`.'),
        resource_schemas: { [RESOURCE_TYPE]: schemaProto(this.resource, 'An online PostgreSQL migration run by a pgferry agent.') },
        data_source_schemas: { [DATA_SOURCE_TYPE]: schemaProto(this.dataSource, 'A running migration on a pgferry agent, by id.') },
        diagnostics: [],
        server_capabilities: { plan_destroy: false, get_provider_schema_optional: false },
        functions: {},
      }),
      GetFunctions: async () => ({ functions: {}, diagnostics: [] }),
      ValidateProviderConfig: async () => ({ diagnostics: [] }),
      ValidateDataResourceConfig: async () => ({ diagnostics: [] }),
      ValidateResourceConfig: async (req) => {
        const caps = req.client_capabilities as { write_only_attributes_allowed?: boolean } | null;
        const config = this.decode(req.config, R);
        if (caps?.write_only_attributes_allowed || !setsWriteOnly(config, this.resource)) return { diagnostics: [] };
        const d = diagnostic(
          'Write-only arguments need Terraform 1.11 or later',
          'Passwords, connection strings and the agent token of a pgferry_migration are write-only: never stored in the plan or the state. This Terraform does not support write-only arguments. Fix: use Terraform 1.11 or later.',
        );
        return { diagnostics: [diagProto(d)] };
      },
      UpgradeResourceState: async (req) => {
        const raw = req.raw_state as { json?: Buffer } | null;
        return { upgraded_state: encodeValue(decodeValue({ json: raw?.json }, R), R), diagnostics: [] };
      },
      ConfigureProvider: async (req) => {
        const config = this.decode(req.config, this.providerType) ?? {};
        this.defaults = toProps(config, this.providerBlock);
        if (hasUnknown(config)) for (const k of Object.keys(this.defaults)) if (this.defaults[k] === UNKNOWN) this.defaults[k] = UNKNOWN;
        return { diagnostics: [] };
      },
      PlanResourceChange: async (req) => {
        const p = await planMigration(this.decode(req.prior_state, R), this.decode(req.proposed_new_state, R), this.decode(req.config, R), this.defaults);
        return {
          planned_state: encodeValue(p.planned, R),
          requires_replace: p.requiresReplace,
          planned_private: req.prior_private ?? Buffer.alloc(0),
          diagnostics: p.diagnostics.map(diagProto),
        };
      },
      ApplyResourceChange: async (req) => {
        const r = await applyMigration(this.decode(req.prior_state, R), this.decode(req.planned_state, R), this.decode(req.config, R), this.defaults);
        return { new_state: encodeValue(r.state, R), private: Buffer.alloc(0), diagnostics: r.diagnostics.map(diagProto) };
      },
      ReadResource: async (req) => {
        const current = this.decode(req.current_state, R);
        if (!current) return { new_state: encodeValue(null, R), diagnostics: [], private: req.private ?? Buffer.alloc(0) };
        const r = await readMigration(current, this.defaults);
        return { new_state: encodeValue(r.state, R), diagnostics: r.diagnostics.map(diagProto), private: req.private ?? Buffer.alloc(0) };
      },
      ImportResourceState: async (req) => {
        const r = importMigration(String(req.id ?? ''));
        const imported = r.state ? [{ type_name: RESOURCE_TYPE, state: encodeValue(r.state, R), private: Buffer.alloc(0) }] : [];
        return { imported_resources: imported, diagnostics: r.diagnostics.map(diagProto) };
      },
      ReadDataSource: async (req) => {
        const D = this.dataSourceType;
        const r = await readDataSource(this.decode(req.config, D) ?? {}, this.defaults);
        return { state: encodeValue(r.state, D), diagnostics: r.diagnostics.map(diagProto) };
      },
      StopProvider: async () => {
        this.onStop();
        return { Error: '' };
      },
    };
  }

  /** The handlers as a grpc-js service implementation: each answers once, a throw becomes an error diagnostic. */
  implementation(): grpc.UntypedServiceImplementation {
    const impl: grpc.UntypedServiceImplementation = {};
    for (const [name, handler] of Object.entries(this.handlers())) {
      impl[name] = (call: grpc.ServerUnaryCall<Req, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        handler(call.request).then(
          (res) => callback(null, res),
          (e: unknown) => {
            const d = diagnostic(`pgferry: ${name} failed`, e instanceof Error ? e.message : String(e));
            // Every response of ours that can carry diagnostics names them `diagnostics`.
            callback(null, { diagnostics: [diagProto(d)] });
          },
        );
      };
    }
    return impl;
  }
}
