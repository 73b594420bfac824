import t from 'tap';
import path from 'node:path';
import { upgradectl } from '../helpers/cli.js';
import { makeMachine, makePublisher } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';
import { writeFileSync } from 'node:fs';

// A rollout is steered without publishing again: widen it, pause it, go back (issue: S3-only fleets).
t.test('channel set widens, pauses and resumes a rollout; machines follow the signed channel', { skip: skipUnless({ commands: ['mke2fs', 'debugfs'] }) }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(path.join(dir, 'pub'));
  await pub.publish('2', ['--channel', 'stable', '--rollout', '0']);
  const root = makeMachine(dir, 'm', `file://${pub.releases}`, pub.pub);
  writeFileSync(path.join(root, 'etc/machine-id'), '5f2b1c0e9d8a4b7c8e6f5a4b3c2d1e0f\n');
  const check = async () => (await upgradectl(['--root', root, '--json', 'check'])).json;
  t.match(await check(), { available: false, reason: /rolling out to 0% of machines; this one \(bucket \d+\) is not yet included/ });

  const set = (...args: string[]) => upgradectl(['--json', 'channel', 'set', 'stable', '--version', '2', '--to', `file://${pub.releases}`, '--key', pub.key, ...args]);
  const widened = await set('--rollout', '100');
  t.equal(widened.code, 0, widened.stderr);
  t.match(widened.json, { channel: 'stable', version: '2', rollout: { percent: 100 } });
  t.match(await check(), { available: true, version: '2' });

  const paused = await set('--rollout', '100', '--pause');
  t.equal(paused.code, 0, paused.stderr);
  t.match(await check(), { available: false, reason: 'the rollout of 2 is paused by the publisher' });
  t.ok(Date.parse(paused.json.published) > Date.parse(widened.json.published), 'each pointer is newer than the last (machines refuse replays)');

  t.equal((await set('--rollout', '100')).code, 0);
  t.match(await check(), { available: true, version: '2' }, 'resumed');

  const absent = await upgradectl(['--json', 'channel', 'set', 'stable', '--version', '9', '--to', `file://${pub.releases}`, '--key', pub.key]);
  t.match(absent.json?.error, { code: 'NOT_FOUND', message: /release 9 is not published/ });
  const other = await makePublisher(path.join(dir, 'other'));
  const foreign = await upgradectl(['--json', 'channel', 'set', 'stable', '--version', '2', '--to', `file://${pub.releases}`, '--key', other.key]);
  t.match(foreign.json?.error, { code: 'SIGNATURE', message: /not signed by this key/ });
});
