/**
 * tls — the agent's TLS material, checked before the agent listens.
 *
 * Input: `--tls-cert`, `--tls-key` and optionally `--tls-client-ca` (PEM
 * files) on the agent side; `--ca-cert`, `--client-cert`, `--client-key` on
 * the CLI side. Output: gRPC server credentials (mutual TLS when a client CA
 * is given: a client certificate signed by it is required and verified), or
 * the PEM texts a client needs.
 *
 * Every problem an operator can cause — a missing file, a key that does not
 * belong to the certificate, an expired or soon-expiring certificate, an
 * encrypted key, a world-readable key — is found here, at start-up, with the
 * flag and the fix, instead of as an opaque handshake failure later.
 *
 * The certificate is read once: renewing it means restarting the agent
 * (migrations resume where they stopped). `pgferry_tls_certificate_expiry_timestamp_seconds`
 * lets an alert fire well before it expires.
 */
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { PgferryError } from '../engine/errors';

/** A certificate expiring sooner than this is warned about at every start. */
export const EXPIRY_WARNING_DAYS = 30;

export interface ServerTlsFiles {
  /** `--tls-cert`: the agent's certificate (chain), PEM. */
  certFile: string;
  /** `--tls-key`: its private key, PEM, not encrypted. */
  keyFile: string;
  /** `--tls-client-ca`: CA bundle that signs client certificates; turns on mutual TLS. Default: none. */
  clientCaFile?: string;
}

export interface ServerTls {
  credentials: grpc.ServerCredentials;
  mutual: boolean;
  subject: string;
  /** When the agent's certificate expires. */
  notAfter: Date;
  /** Things to log at start-up (never fatal). */
  warnings: string[];
}

function readPem(file: string, flag: string, what: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new PgferryError(
      'INVALID_SPEC',
      `${flag} '${file}' cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'}).`,
      `Point ${flag} at a readable PEM file holding ${what}.`,
      { cause: e },
    );
  }
  if (!text.includes('-----BEGIN ')) {
    throw new PgferryError(
      'INVALID_SPEC',
      `${flag} '${file}' is not a PEM file (no '-----BEGIN' line).`,
      `Give ${what} in PEM form (convert DER with \`openssl x509 -inform der -in FILE -out FILE.pem\`).`,
    );
  }
  return text;
}

function parseCert(pem: string, file: string, flag: string): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (e) {
    throw new PgferryError(
      'INVALID_SPEC',
      `${flag} '${file}' does not hold a valid X.509 certificate: ${(e as Error).message}.`,
      `Check the file with \`openssl x509 -in ${file} -noout -text\`.`,
      { cause: e },
    );
  }
}

function parseKey(pem: string, file: string, flag: string): KeyObject {
  try {
    return createPrivateKey(pem);
  } catch (e) {
    const encrypted = /ENCRYPTED/.test(pem) || /passphrase/i.test((e as Error).message);
    throw new PgferryError(
      'INVALID_SPEC',
      encrypted
        ? `${flag} '${file}' is an encrypted private key; the agent cannot prompt for a passphrase.`
        : `${flag} '${file}' does not hold a valid private key: ${(e as Error).message}.`,
      encrypted
        ? `Decrypt it into a file only the agent's user can read: \`openssl pkey -in ${file} -out key.pem && chmod 600 key.pem\`.`
        : 'Give the PEM private key that belongs to the certificate.',
      { cause: e },
    );
  }
}

/** The certificates of a PEM bundle, each parsed (throws naming the flag when none parses). */
function parseBundle(pem: string, file: string, flag: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) {
    throw new PgferryError('INVALID_SPEC', `${flag} '${file}' holds no certificate.`, `Give the CA certificate(s) in PEM form in ${flag}.`);
  }
  return blocks.map((b) => parseCert(b, file, flag));
}

function checkValidity(cert: X509Certificate, file: string, flag: string, now: Date, warnings: string[]): Date {
  const notAfter = new Date(cert.validTo);
  const notBefore = new Date(cert.validFrom);
  if (notAfter.getTime() <= now.getTime()) {
    throw new PgferryError(
      'INVALID_SPEC',
      `The certificate in ${flag} '${file}' expired on ${notAfter.toISOString()}.`,
      `Renew it and point ${flag} at the new file.`,
    );
  }
  if (notBefore.getTime() > now.getTime()) {
    warnings.push(`The certificate in ${flag} '${file}' is not valid before ${notBefore.toISOString()}; clients will refuse it until then (check the clock).`);
  }
  const days = (notAfter.getTime() - now.getTime()) / 86_400_000;
  if (days < EXPIRY_WARNING_DAYS) {
    warnings.push(`The certificate in ${flag} '${file}' expires in ${days.toFixed(1)} days (${notAfter.toISOString()}); renew it and restart the agent.`);
  }
  return notAfter;
}

/**
 * Read and check the agent's TLS files and build the gRPC server credentials.
 * Throws INVALID_SPEC naming the flag for every problem found.
 */
export function loadServerTls(files: ServerTlsFiles, now = new Date()): ServerTls {
  const warnings: string[] = [];
  const certPem = readPem(files.certFile, '--tls-cert', "the agent's certificate");
  const keyPem = readPem(files.keyFile, '--tls-key', "the certificate's private key");
  const cert = parseCert(certPem, files.certFile, '--tls-cert');
  const key = parseKey(keyPem, files.keyFile, '--tls-key');
  if (!cert.checkPrivateKey(key)) {
    throw new PgferryError(
      'INVALID_SPEC',
      `The private key in --tls-key '${files.keyFile}' does not belong to the certificate in --tls-cert '${files.certFile}'.`,
      'Give the key the certificate was issued for (compare `openssl x509 -noout -pubkey -in CERT` with `openssl pkey -pubout -in KEY`).',
    );
  }
  try {
    const mode = statSync(files.keyFile).mode;
    if (mode & 0o077)
      warnings.push(`--tls-key '${files.keyFile}' is readable by other users (mode ${(mode & 0o777).toString(8)}); run \`chmod 600 ${files.keyFile}\`.`);
  } catch {
    /* read above; a race here is harmless */
  }
  const notAfter = checkValidity(cert, files.certFile, '--tls-cert', now, warnings);
  let clientCa: Buffer | null = null;
  if (files.clientCaFile) {
    const caPem = readPem(files.clientCaFile, '--tls-client-ca', 'the CA certificate(s) that sign client certificates');
    const cas = parseBundle(caPem, files.clientCaFile, '--tls-client-ca');
    for (const ca of cas) checkValidity(ca, files.clientCaFile, '--tls-client-ca', now, warnings);
    if (!cas.some((c) => c.ca))
      warnings.push(`No certificate in --tls-client-ca '${files.clientCaFile}' is marked as a CA; client certificates may fail to verify.`);
    clientCa = Buffer.from(caPem);
  }
  const credentials = grpc.ServerCredentials.createSsl(clientCa, [{ private_key: Buffer.from(keyPem), cert_chain: Buffer.from(certPem) }], clientCa !== null);
  return { credentials, mutual: clientCa !== null, subject: cert.subject.replace(/\n/g, ', '), notAfter, warnings };
}

export interface ClientTlsFiles {
  /** `--ca-cert`: CA that signed the agent's certificate. */
  caFile?: string;
  /** `--client-cert`: this client's certificate (mutual TLS). */
  certFile?: string;
  /** `--client-key`: its private key. */
  keyFile?: string;
}

export interface ClientTls {
  caCert?: string;
  clientCert?: string;
  clientKey?: string;
}

/** Read and check the CLI's TLS files (PEM texts for the agent client). */
export function loadClientTls(files: ClientTlsFiles): ClientTls {
  const out: ClientTls = {};
  if (files.caFile) {
    out.caCert = readPem(files.caFile, '--ca-cert', "the CA certificate that signed the agent's certificate");
    parseBundle(out.caCert, files.caFile, '--ca-cert');
  }
  if (!!files.certFile !== !!files.keyFile) {
    throw new PgferryError(
      'INVALID_SPEC',
      'Only one of --client-cert and --client-key was given.',
      'Give both (the client certificate and its private key), or neither.',
    );
  }
  if (files.certFile && files.keyFile) {
    out.clientCert = readPem(files.certFile, '--client-cert', 'the client certificate');
    out.clientKey = readPem(files.keyFile, '--client-key', "the client certificate's private key");
    const cert = parseCert(out.clientCert, files.certFile, '--client-cert');
    const key = parseKey(out.clientKey, files.keyFile, '--client-key');
    if (!cert.checkPrivateKey(key)) {
      throw new PgferryError(
        'INVALID_SPEC',
        `--client-key '${files.keyFile}' does not belong to --client-cert '${files.certFile}'.`,
        'Give the key the client certificate was issued for.',
      );
    }
  }
  return out;
}
