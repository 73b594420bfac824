import t from 'tap';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { generateKeyPair, loadPrivateKey, loadTrustStore, signBytes, verifySignature } from '../../src/release/signing.js';

/** Keys can be revoked (a list in keys.d, or by a signed channel) and can expire. */

async function setup(t: { testdir: () => string }) {
  const dir = t.testdir();
  const keysDir = path.join(dir, 'keys.d');
  mkdirSync(path.join(keysDir, 'local'), { recursive: true });
  const vendor = await generateKeyPair(path.join(dir, 'vendor'));
  const operator = await generateKeyPair(path.join(dir, 'operator'));
  copyFileSync(vendor.publicKey, path.join(keysDir, 'vendor.pub'));
  copyFileSync(operator.publicKey, path.join(keysDir, 'local/operator.pub'));
  const data = Buffer.from('{"x":1}\n');
  const sigBy = async (k: { privateKey: string }) => signBytes(data, await loadPrivateKey(k.privateKey));
  return { dir, keysDir, vendor, operator, data, sigBy };
}

t.test("keys.d and the operator's keys.d/local are both trusted", async (t) => {
  const s = await setup(t);
  const store = await loadTrustStore(s.keysDir);
  t.equal(verifySignature('x', s.data, await s.sigBy(s.vendor), store).keyid, s.vendor.keyid);
  t.equal(verifySignature('x', s.data, await s.sigBy(s.operator), store).keyid, s.operator.keyid);
});

t.test('a key revoked by the revoked list the image ships is refused', async (t) => {
  const s = await setup(t);
  writeFileSync(path.join(s.keysDir, 'revoked'), `# leaked 2026-11\n${s.vendor.keyid}\n`);
  const store = await loadTrustStore(s.keysDir);
  const sig = await s.sigBy(s.vendor);
  t.throws(() => verifySignature('https://m/x', s.data, sig, store), { code: 'SIGNATURE', message: new RegExp(`signed by key ${s.vendor.keyid}, which is revoked \\(by .*keys\\.d/revoked\\)`) });
  t.equal(verifySignature('x', s.data, await s.sigBy(s.operator), store).keyid, s.operator.keyid, 'other keys still work');
  writeFileSync(path.join(s.keysDir, 'revoked'), 'not-a-key-id\n');
  await t.rejects(loadTrustStore(s.keysDir), { code: 'SIGNATURE', message: /revoked:1: 'not-a-key-id' is not a key id/ }, 'an unreadable list is an error, not ignored');
});

t.test('a key revoked by a channel the machine saw is refused', async (t) => {
  const s = await setup(t);
  const store = await loadTrustStore(s.keysDir, [[s.vendor.keyid, 'channel stable']]);
  const sig = await s.sigBy(s.vendor);
  t.throws(() => verifySignature('x', s.data, sig, store), { code: 'SIGNATURE', message: /revoked \(by channel stable\)/ });
});

t.test('a key past its expiry line is refused; keygen --expires writes the line', async (t) => {
  const s = await setup(t);
  const old = await generateKeyPair(path.join(s.dir, 'old'), new Date('2020-01-01T00:00:00Z'));
  const fresh = await generateKeyPair(path.join(s.dir, 'fresh'), new Date(Date.now() + 86_400_000));
  const fs = await import('node:fs');
  t.match(fs.readFileSync(old.publicKey, 'utf8'), /^upgradectl-expires: 2020-01-01T00:00:00.000Z\n-----BEGIN PUBLIC KEY-----/);
  fs.copyFileSync(old.publicKey, path.join(s.keysDir, 'old.pub'));
  fs.copyFileSync(fresh.publicKey, path.join(s.keysDir, 'fresh.pub'));
  const store = await loadTrustStore(s.keysDir);
  const sig = await s.sigBy(old);
  t.throws(() => verifySignature('x', s.data, sig, store), { code: 'SIGNATURE', message: /old\.pub\), which expired on 2020-01-01/ });
  t.equal(verifySignature('x', s.data, await s.sigBy(fresh), store).keyid, fresh.keyid, 'a key before its expiry works');
  fs.writeFileSync(path.join(s.keysDir, 'bad.pub'), `upgradectl-expires: someday\n${fs.readFileSync(s.vendor.publicKey, 'utf8')}`);
  await t.rejects(loadTrustStore(s.keysDir), { code: 'SIGNATURE', message: /invalid expiry 'someday'/ });
});
