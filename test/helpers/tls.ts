import { promises as fs } from 'node:fs';
import path from 'node:path';
import { run } from '../../src/core/exec.js';

export interface TestCertificate {
  /** PEM; self-signed, so it is also the CA a client trusts (NODE_EXTRA_CA_CERTS, ca_file). */
  cert: string;
  key: string;
}

/**
 * A throwaway self-signed server certificate for `names` (IP addresses or DNS names), made with the
 * openssl CLI (Node can sign nothing by itself). Valid for two days: a test run, not a deployment.
 */
export async function makeTestCertificate(dir: string, names: string[]): Promise<TestCertificate> {
  await fs.mkdir(dir, { recursive: true });
  const keyFile = path.join(dir, 'server.key');
  const certFile = path.join(dir, 'server.crt');
  const san = names.map((n) => (/^[\d.]+$|:/.test(n) ? `IP:${n}` : `DNS:${n}`)).join(',');
  await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', '/CN=upgradectl test release server', '-addext', `subjectAltName=${san}`,
    '-keyout', keyFile, '-out', certFile,
  ]);
  return { cert: await fs.readFile(certFile, 'utf8'), key: await fs.readFile(keyFile, 'utf8') };
}
