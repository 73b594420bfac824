import t from 'tap';
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Layout } from '../../src/core/layout.js';
import { parseConfig } from '../../src/operations/config.js';
import { refreshRescueJob } from '../../src/operations/rescue-job.js';
import { initialState } from '../../src/operations/state.js';
import { makePublisher } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';

/**
 * The rescue job follows the current image: written from the current image's verified manifest when
 * the flasher is installed, removed (never left naming another release) when it cannot be written.
 */

const skip = skipUnless({ root: true, commands: ['mke2fs'] });
const UUID = '0c6d2a3e-6f3b-4a5e-9a41-2b7c1d9e8f10';
const config = (extra = '[flasher]\nurl = http://10.0.2.100/r\n') => parseConfig(`[boot]\nhost_uuid = ${UUID}\n[source]\nurl = file:///unused\n${extra}`, 'test');

t.test('written for the current image, rewritten when it changes, removed when it cannot be', { skip }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  await pub.publish('1.0');
  await pub.publish('2.0');
  const layout = new Layout(path.join(dir, 'm'));
  mkdirSync(layout.manifestsDir, { recursive: true });
  for (const v of ['1.0', '2.0']) copyFileSync(path.join(pub.releases, `releases/${v}/manifest.json`), layout.manifestFile(v));
  const state = { ...initialState(), current: '1.0' };

  t.match(await refreshRescueJob(layout, config(), state), { kind: 'off', reason: /flasher is not installed/ });
  t.notOk(existsSync(layout.rescueJobFile));

  mkdirSync(layout.flasherDir, { recursive: true });
  writeFileSync(path.join(layout.flasherDir, 'vmlinuz'), 'k');
  writeFileSync(path.join(layout.flasherDir, 'initrd.img'), 'i');
  writeFileSync(path.join(layout.flasherDir, 'rescue-count'), '2\n');
  t.match(await refreshRescueJob(layout, config(), state), { kind: 'written', version: '1.0' });
  const job = readFileSync(layout.rescueJobFile, 'utf8');
  const manifest = JSON.parse(readFileSync(layout.manifestFile('1.0'), 'utf8'));
  t.match(job, new RegExp(`^upgradectl-rescue-job 1\\nversion 1\\.0\\nurl http://10\\.0\\.2\\.100/r/releases/1\\.0/image\\.lz4\\npayload_size ${manifest.payload.size}\\npayload_sha256 ${manifest.payload.sha256}\\nimage_size ${manifest.image.size}\\nimage_sha256 ${manifest.image.sha256}\\ntarget_uuid ${UUID}\\n`));
  t.notMatch(job, /nonce/, 'no nonce');
  t.equal(statSync(layout.rescueJobFile).mode & 0o777, 0o600, 'root-only');
  t.notOk(existsSync(path.join(layout.flasherDir, 'rescue-count')), 'upgradectl ran: the rescues are acknowledged');

  t.match(await refreshRescueJob(layout, config(), { ...state, current: '2.0' }), { kind: 'written', version: '2.0' });
  t.match(readFileSync(layout.rescueJobFile, 'utf8'), /^version 2\.0$/m, 'follows the current image');

  t.match(await refreshRescueJob(layout, config(''), { ...state, current: '2.0' }), { kind: 'off', reason: /busybox wget.*file:\/\/\/unused/ });
  t.notOk(existsSync(layout.rescueJobFile), 'no http(s) URL: removed, not left naming 2.0');

  await refreshRescueJob(layout, config(), { ...state, current: '2.0' });
  t.match(await refreshRescueJob(layout, config(), { ...state, current: '3.0' }), { kind: 'off', reason: /no verified manifest of the current image 3\.0/ });
  t.notOk(existsSync(layout.rescueJobFile), 'a current image without a manifest: removed');

  const reflash = JSON.parse(readFileSync(layout.manifestFile('2.0'), 'utf8'));
  writeFileSync(layout.manifestFile('2.0'), JSON.stringify({ ...reflash, reflash: true }));
  t.match(await refreshRescueJob(layout, config(), { ...state, current: '2.0' }), { kind: 'off', reason: /whole host partition/ });
});
