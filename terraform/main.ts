/**
 * The `terraform-provider-pgferry` executable's entry (terraform/bin/ holds
 * the launcher Terraform finds): serve the provider as a go-plugin plugin.
 */
import type * as grpc from '@grpc/grpc-js';
import { servePlugin } from './plugin';
import { PgferryProvider } from './provider';

const provider = new PgferryProvider();

servePlugin({
  register(server, tf) {
    const ns = tf.tfplugin6 as grpc.GrpcObject;
    server.addService((ns.Provider as grpc.ServiceClientConstructor).service, provider.implementation());
  },
}).catch((e: unknown) => {
  process.stderr.write(`pgferry provider: could not start: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
