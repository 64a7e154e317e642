/**
 * Throwaway TLS material for tests (selfsigned): a CA, a server certificate
 * for 127.0.0.1/localhost signed by it, a client certificate signed by it,
 * and a second, unrelated CA with its own client certificate (the "wrong"
 * ones). Written as PEM files into a temporary directory.
 */
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generate } from 'selfsigned';

export interface TestCerts {
  dir: string;
  /** PEM file paths. */
  caCert: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  otherCaCert: string;
  otherClientCert: string;
  otherClientKey: string;
  remove(): void;
}

const CA_EXT = [
  { name: 'basicConstraints' as const, cA: true, critical: true },
  { name: 'keyUsage' as const, keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
];

async function makeCa(cn: string) {
  return generate([{ name: 'commonName', value: cn }], { algorithm: 'sha256', keyType: 'ec', extensions: CA_EXT });
}

async function makeLeaf(cn: string, ca: { private: string; cert: string }, usage: 'server' | 'client') {
  return generate([{ name: 'commonName', value: cn }], {
    algorithm: 'sha256',
    keyType: 'ec',
    ca: { key: ca.private, cert: ca.cert },
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', serverAuth: usage === 'server', clientAuth: usage === 'client' },
      ...(usage === 'server'
        ? [
            {
              name: 'subjectAltName' as const,
              altNames: [
                { type: 2 as const, value: 'localhost' },
                { type: 7 as const, ip: '127.0.0.1' },
              ],
            },
          ]
        : []),
    ],
  });
}

export async function makeTestCerts(): Promise<TestCerts> {
  const dir = mkdtempSync(join(tmpdir(), 'pgferry-certs-'));
  const ca = await makeCa('pgferry test CA');
  const server = await makeLeaf('localhost', ca, 'server');
  const client = await makeLeaf('pgferry-cli', ca, 'client');
  const other = await makeCa('some other CA');
  const otherClient = await makeLeaf('intruder', other, 'client');
  const w = (name: string, text: string) => {
    const p = join(dir, name);
    writeFileSync(p, text, { mode: 0o600 });
    return p;
  };
  return {
    dir,
    caCert: w('ca.pem', ca.cert),
    serverCert: w('server.pem', server.cert),
    serverKey: w('server.key', server.private),
    clientCert: w('client.pem', client.cert),
    clientKey: w('client.key', client.private),
    otherCaCert: w('other-ca.pem', other.cert),
    otherClientCert: w('other-client.pem', otherClient.cert),
    otherClientKey: w('other-client.key', otherClient.private),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
