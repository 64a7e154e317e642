/**
 * plugin — serving as a go-plugin plugin, the way Terraform and OpenTofu run
 * providers (https://github.com/hashicorp/go-plugin/blob/main/docs/internals.md):
 *
 * 1. refuse to run unless Terraform's magic cookie is in the environment
 *    (someone ran the executable by hand);
 * 2. automatic mutual TLS: a fresh self-signed certificate for this process,
 *    clients accepted only with the certificate Terraform passed in
 *    `PLUGIN_CLIENT_CERT`;
 * 3. serve gRPC on a free loopback port: the provider, go-plugin's
 *    controller (Shutdown), stdio stream and broker, and the health service;
 * 4. print the handshake line on stdout,
 *    `1|6|tcp|127.0.0.1:<port>|grpc|<certificate, DER, base64 without padding>`.
 *
 * stdout carries nothing else; logs go to stderr, which Terraform records.
 * Written here because npm has no implementation of go-plugin's server side
 * (nor of tfplugin6): the steps are few, the libraries under them
 * (@grpc/grpc-js, selfsigned) are the well-kept ones.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { HealthImplementation } from 'grpc-health-check';
import { join } from 'node:path';
import { generate } from 'selfsigned';

/** Terraform's handshake cookie (the same value for every provider; it only says "run by Terraform"). */
export const MAGIC_COOKIE_KEY = 'TF_PLUGIN_MAGIC_COOKIE';
export const MAGIC_COOKIE_VALUE = 'd602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2';
const CORE_PROTOCOL = 1;
const APP_PROTOCOL = 6;
/** The most Terraform sends or receives in one message, as its own providers allow. */
const MAX_MESSAGE_BYTES = 256 << 20;

/** The folder of the .proto files (dist/terraform/plugin.js → ../../terraform/proto). */
export function terraformProtoRoot(): string {
  return join(__dirname, '..', '..', 'terraform', 'proto');
}

type Package = Record<string, grpc.GrpcObject | grpc.ServiceClientConstructor | grpc.ProtobufTypeDefinition>;
function load(file: string): Package {
  const def = protoLoader.loadSync(file, { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [terraformProtoRoot()] });
  return grpc.loadPackageDefinition(def) as unknown as Package;
}

function service(pkg: Package, path: string): grpc.ServiceDefinition {
  const [ns, name] = path.split('.') as [string, string];
  return ((pkg[ns] as grpc.GrpcObject)[name] as grpc.ServiceClientConstructor).service;
}

/** A self-signed certificate for this process: what go-plugin's own servers make (CA, localhost, server and client use). */
async function serverCertificate(): Promise<{ cert: string; key: string; der: Buffer }> {
  const pems = await generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'ec',
    algorithm: 'sha256',
    notAfterDate: new Date(Date.now() + 30 * 86_400_000),
    extensions: [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, keyCertSign: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
      {
        name: 'subjectAltName',
        altNames: [
          { type: 2, value: 'localhost' },
          { type: 7, ip: '127.0.0.1' },
        ],
      },
    ],
  });
  const der = Buffer.from(pems.cert.replace(/-----(BEGIN|END) CERTIFICATE-----|\s+/g, ''), 'base64');
  return { cert: pems.cert, key: pems.private, der };
}

export interface ServeOptions {
  /** Adds the provider's own service to the server. */
  register(server: grpc.Server, protoPackage: Package): void;
  /** Called when Terraform asks the plugin to shut down. */
  onShutdown?(): void;
}

/** Serve the plugin and print the handshake line; resolves once serving. */
export async function servePlugin(opts: ServeOptions): Promise<grpc.Server> {
  if (process.env[MAGIC_COOKIE_KEY] !== MAGIC_COOKIE_VALUE) {
    process.stderr.write(
      'This is the pgferry provider for Terraform and OpenTofu: a plugin they start themselves, not a command to run by hand.\n' +
        'Fix: declare `pgferry_migration` resources in a configuration and run `terraform plan` (see docs/resources/migration.md).\n',
    );
    process.exit(1);
  }
  const server = new grpc.Server({ 'grpc.max_receive_message_length': MAX_MESSAGE_BYTES, 'grpc.max_send_message_length': MAX_MESSAGE_BYTES });
  const tf = load('tfplugin6.proto');
  opts.register(server, tf);

  const goPlugin = load('go-plugin.proto');
  const shutdown = () => {
    opts.onShutdown?.();
    server.forceShutdown();
    setImmediate(() => process.exit(0));
  };
  server.addService(service(goPlugin, 'plugin.GRPCController'), {
    Shutdown: (_call: unknown, cb: grpc.sendUnaryData<unknown>) => {
      cb(null, {});
      setTimeout(shutdown, 10);
    },
  });
  // Our stdout and stderr are not forwarded over the stream: Terraform reads stderr directly.
  server.addService(service(goPlugin, 'plugin.GRPCStdio'), { StreamStdio: () => undefined });
  // No extra connections are brokered: the stream stays open and idle until Terraform closes it.
  server.addService(service(goPlugin, 'plugin.GRPCBroker'), {
    StartStream: (call: grpc.ServerDuplexStream<unknown, unknown>) => {
      call.on('data', () => undefined);
      call.on('end', () => call.end());
    },
  });
  new HealthImplementation({ '': 'SERVING', plugin: 'SERVING' }).addToServer(server);

  const clientCert = process.env.PLUGIN_CLIENT_CERT;
  const tls = clientCert ? await serverCertificate() : undefined;
  const creds = tls
    ? grpc.ServerCredentials.createSsl(Buffer.from(clientCert!), [{ private_key: Buffer.from(tls.key), cert_chain: Buffer.from(tls.cert) }], true)
    : grpc.ServerCredentials.createInsecure();
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', creds, (e, p) => (e ? reject(e) : resolve(p))));
  const line = [CORE_PROTOCOL, APP_PROTOCOL, 'tcp', `127.0.0.1:${port}`, 'grpc', ...(tls ? [tls.der.toString('base64').replace(/=+$/, '')] : [])];
  process.stdout.write(`${line.join('|')}\n`);
  // Terraform handles interrupts itself and then asks us to stop (StopProvider, Shutdown).
  process.on('SIGINT', () => undefined);
  return server;
}
