import t from 'tap';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { upgradectl } from '../helpers/cli.js';
import { startHttpServer } from '../helpers/http-server.js';
import { makeMachine, makePublisher, sha256File } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';
import { makeTestCertificate } from '../helpers/tls.js';

/**
 * [source] ca_file: a release mirror under a private CA. The machine trusts exactly the CAs in that
 * file for the source (its own reads and the frame workers' alike); without it, or with another CA,
 * the certificate is refused and the error says how to fix it.
 */
t.test('[source] ca_file: a mirror under a private CA', { skip: skipUnless({ commands: ['mke2fs', 'debugfs', 'openssl'] }) }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(path.join(dir, 'pub'));
  const image = await pub.publish('1.0');
  const cert = await makeTestCertificate(path.join(dir, 'tls'), ['127.0.0.1']);
  const other = await makeTestCertificate(path.join(dir, 'other'), ['127.0.0.1']);
  const server = await startHttpServer(pub.releases, { tls: cert });
  t.teardown(() => server.close());
  const url = server.url.replace(/\/$/, '');
  const machine = (name: string, caFile: string | undefined, pem?: string, extra = '') => {
    const root = makeMachine(dir, name, url, pub.pub, `${caFile ? `ca_file = ${caFile}\n` : ''}${extra}`);
    if (pem !== undefined) {
      mkdirSync(path.join(root, 'etc/upgradectl/credentials.d'), { recursive: true });
      writeFileSync(path.join(root, caFile!), pem);
    }
    return root;
  };
  const CA = '/etc/upgradectl/credentials.d/release-ca.pem';

  await t.test('without it, the certificate is not trusted, and the hint names ca_file', async (t) => {
    const r = await upgradectl(['--root', machine('none', undefined), '--json', 'prepare', '1.0']);
    t.not(r.code, 0);
    t.equal(r.json?.error?.code, 'NETWORK');
    t.match(r.json?.error?.message, /certificate is not trusted/);
    t.match(r.json?.error?.hint, /\[source\] ca_file/);
  });

  for (const [mode, extra] of [['a frame per request', ''], ['several frames per request', '[prepare]\nrequest_size = 3M\n']] as const) {
    await t.test(`with the CA, the release is prepared over TLS (${mode})`, async (t) => {
      const root = machine(`trusted-${extra ? 'spans' : 'frames'}`, CA, cert.cert, extra);
      const from = server.requests.length;
      const r = await upgradectl(['--root', root, '--json', 'prepare', '1.0']);
      t.equal(r.code, 0, r.stderr);
      t.equal(sha256File(path.join(root, 'images/1.0.img')), sha256File(image), 'byte-identical');
      t.ok(server.requests.slice(from).some((q) => q.path.endsWith('image.lz4') && q.status === 206), 'frames came as ranges over TLS');
    });
  }

  await t.test('another CA is not enough: only the CAs in the file count', async (t) => {
    const r = await upgradectl(['--root', machine('other', CA, other.cert), '--json', 'prepare', '1.0']);
    t.equal(r.json?.error?.code, 'NETWORK');
    t.match(r.json?.error?.message, /certificate is not trusted/);
  });

  await t.test('a missing file or one without a certificate is a CONFIG error naming it', async (t) => {
    const missing = await upgradectl(['--root', machine('missing', CA), '--json', 'prepare', '1.0']);
    t.equal(missing.json?.error?.code, 'CONFIG');
    t.match(missing.json?.error?.message, /cannot read \[source\] ca_file .*release-ca\.pem/);
    const garbage = await upgradectl(['--root', machine('garbage', CA, 'not a certificate\n'), '--json', 'prepare', '1.0']);
    t.equal(garbage.json?.error?.code, 'CONFIG');
    t.match(garbage.json?.error?.message, /ca_file .*release-ca\.pem holds no PEM certificate/);
    t.match(garbage.json?.error?.hint, /BEGIN CERTIFICATE/);
  });
});
