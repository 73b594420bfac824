import t from 'tap';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { upgradectl } from '../helpers/cli.js';
import { makeMachine, makePublisher } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';

/**
 * A channel file is signed bytes, not a signed name or a signed moment: without more, a hostile mirror
 * can serve `beta` as `stable`, or an old `stable` after a newer one was seen, and hold a fleet back.
 */

const skip = skipUnless({ commands: ['mke2fs', 'debugfs'] });
const chan = (releases: string, name: string) => path.join(releases, 'channels', `${name}.json`);

/** Keep a copy of a channel file and its signature, as an attacker (or a stale mirror) would. */
function snapshot(releases: string, name: string, to: string): () => void {
  mkdirSync(to, { recursive: true });
  for (const f of ['', '.sig']) copyFileSync(chan(releases, name) + f, path.join(to, `${name}.json${f}`));
  return () => {
    for (const f of ['', '.sig']) copyFileSync(path.join(to, `${name}.json${f}`), chan(releases, name) + f);
  };
}

t.test('channel substitution, replay and the version floor', { skip }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  const image = await pub.publish('1.0', ['--channel', 'stable']);
  await pub.publish('2.0', ['--channel', 'stable'], image);
  await pub.publish('3.0~beta', ['--channel', 'beta'], image);
  const url = `file://${pub.releases}`;

  await t.test('a signed beta copied over stable is refused', async (t) => {
    const root = makeMachine(dir, 'subst', url, pub.pub);
    const restore = snapshot(pub.releases, 'stable', path.join(dir, 'saved-subst'));
    for (const f of ['', '.sig']) copyFileSync(chan(pub.releases, 'beta') + f, chan(pub.releases, 'stable') + f);
    try {
      for (const cmd of [['check'], ['prepare']]) {
        const r = await upgradectl(['--root', root, '--json', ...cmd]);
        t.not(r.code, 0, `${cmd[0]} fails`);
        t.equal(r.json?.error?.code, 'SIGNATURE');
        t.match(r.json?.error?.message, /channels\/stable\.json is the signed pointer of channel 'beta', not of 'stable'/);
        t.ok(r.json?.error?.hint);
      }
    } finally {
      restore();
    }
  });

  await t.test('an older stable replayed after a newer one was seen is refused', async (t) => {
    const root = makeMachine(dir, 'replay', url, pub.pub);
    const old = JSON.parse(readFileSync(chan(pub.releases, 'stable'), 'utf8'));
    const replay = snapshot(pub.releases, 'stable', path.join(dir, 'saved-replay'));
    await pub.publish('4.0', ['--channel', 'stable'], image);
    const fresh = JSON.parse(readFileSync(chan(pub.releases, 'stable'), 'utf8'));
    t.ok(Date.parse(fresh.published) > Date.parse(old.published), 'publish moves published forward');
    const seen = await upgradectl(['--root', root, '--json', 'check']);
    t.match(seen.json, { available: true, version: '4.0' });

    replay();
    for (const cmd of [['check'], ['prepare']]) {
      const r = await upgradectl(['--root', root, '--json', ...cmd]);
      t.not(r.code, 0, `${cmd[0]} refuses the replayed channel (it would have said 2.0 is available)`);
      t.equal(r.json?.error?.code, 'REPLAY');
      t.ok(r.json?.error?.message.includes(old.published), 'names the replayed published time');
      t.ok(r.json?.error?.message.includes(fresh.published), 'names the newest published time seen');
      t.ok(r.json?.error?.hint);
    }
    const state = JSON.parse(readFileSync(path.join(root, 'images/.upgradectl/state.json'), 'utf8'));
    t.same(Object.values(state.channels), [{ published: fresh.published, version: '4.0', seenAt: state.channels[`${url}#stable`]?.seenAt }], 'the memory keeps the newest');

    // Another machine that never saw 4.0 cannot tell, and that is the documented limit.
    const other = makeMachine(dir, 'replay-other', url, pub.pub);
    const r = await upgradectl(['--root', other, '--json', 'check']);
    t.match(r.json, { available: true, version: '2.0' });
  });

  await t.test("the operator's floor ([source] min_version) holds even for prepare VERSION", async (t) => {
    const root = makeMachine(dir, 'floor', url, pub.pub, 'min_version = 2.0\n');
    const r = await upgradectl(['--root', root, '--json', 'prepare', '1.0']);
    t.equal(r.json?.error?.code, 'DOWNGRADE');
    t.match(r.json?.error?.message, /release 1\.0 is below the minimum version 2\.0 \(set by \[source\] min_version/);
    t.match(r.json?.error?.hint, /--allow-downgrade/);
    const ok = await upgradectl(['--root', root, '--json', 'prepare', '1.0', '--allow-downgrade']);
    t.equal(ok.code, 0, ok.stderr);
    t.equal(ok.json?.action, 'prepared');
  });

  await t.test('a signed channel raises the floor, and the machine remembers it', async (t) => {
    const root = makeMachine(dir, 'chanfloor', url, pub.pub);
    await pub.publish('5.0', ['--channel', 'stable', '--min-version', '4.0'], image);
    const seen = await upgradectl(['--root', root, '--json', 'check']);
    t.match(seen.json, { available: true, version: '5.0' });
    const r = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
    t.equal(r.json?.error?.code, 'DOWNGRADE');
    t.match(r.json?.error?.message, /below the minimum version 4\.0 \(set by channel stable/);
    // The next channel without --min-version keeps the floor (publish carries it forward).
    await pub.publish('6.0', ['--channel', 'stable'], image);
    t.equal(JSON.parse(readFileSync(chan(pub.releases, 'stable'), 'utf8')).minVersion, '4.0');
  });
});

t.test('a signed channel revokes a key; the machine refuses it from then on', { skip }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  const url = `file://${pub.releases}`;
  const image = await pub.publish('1.0', ['--channel', 'stable']);
  const leaked = await makePublisher(path.join(dir, 'leaked'), url);
  await leaked.publish('1.1', [], image);
  const root = makeMachine(dir, 'm', url, pub.pub);
  copyFileSync(leaked.pub, path.join(root, 'etc/upgradectl/keys.d/leaked.pub'));
  const leakedId = JSON.parse(readFileSync(path.join(pub.releases, 'releases/1.1/manifest.json.sig'), 'utf8')).keyid;

  const before = await upgradectl(['--root', root, '--json', 'check']);
  t.match(before.json, { available: true, version: '1.0' }, 'both keys trusted at first');

  await pub.publish('2.0', ['--channel', 'stable', '--revoke', leakedId], image);
  const seen = await upgradectl(['--root', root, '--json', 'check']);
  t.match(seen.json, { available: true, version: '2.0' });
  const state = JSON.parse(readFileSync(path.join(root, 'images/.upgradectl/state.json'), 'utf8'));
  t.ok(state.revokedKeys?.[leakedId], 'the revocation is remembered');

  // Even after the channel stops carrying it (a stale or hostile mirror drops it), the memory holds.
  writeFileSync(path.join(root, 'images/.upgradectl/state.json'), JSON.stringify({ ...state, channels: {} }));
  const r = await upgradectl(['--root', root, '--json', 'prepare', '1.1']);
  t.equal(r.json?.error?.code, 'SIGNATURE');
  t.match(r.json?.error?.message, new RegExp(`signed by key ${leakedId}, which is revoked`));

  // A channel may not revoke its own signer.
  const self = await upgradectl(['publish', image, '--version', '3.0', '--to', url, '--key', pub.key, '--channel', 'stable', '--revoke', JSON.parse(readFileSync(path.join(pub.releases, 'releases/1.0/manifest.json.sig'), 'utf8')).keyid]);
  t.not(self.code, 0);
  t.match(self.stderr, /is the key this release is signed with/);
});
