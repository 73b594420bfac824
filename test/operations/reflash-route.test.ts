import t from 'tap';
import { existsSync, mkdirSync, readdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Layout } from '../../src/core/layout.js';
import { RAM_RESERVE } from '../../src/flasher/job.js';
import { upgradectl } from '../helpers/cli.js';
import { makeMachine, makePublisher } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';

/**
 * A release marked `reflash` (its payload is a whole host partition) through the real CLI: prepare never
 * stages it as an image, commit boots the RAM flasher for it (as commit --reflash) or says how to install
 * the flasher, and a manifest whose signature does not verify is refused before any job is written.
 */

const skip = skipUnless({ root: true, commands: ['mke2fs', 'grub-editenv', 'grub-script-check'] });
const HOST_UUID = '0c6d2a3e-6f3b-4a5e-9a41-2b7c1d9e8f10';
const CONFIG = `[boot]\nhost_uuid = ${HOST_UUID}\n[flasher]\nurl = http://127.0.0.1:9/releases-over-http\n`;

/** The flasher's files as `flasher install` leaves them (their content only matters to GRUB and the VM tests). */
function installFlasherFiles(layout: Layout): void {
  mkdirSync(layout.flasherDir, { recursive: true });
  writeFileSync(path.join(layout.flasherDir, 'vmlinuz'), 'kernel\n');
  writeFileSync(path.join(layout.flasherDir, 'initrd.img'), 'initrd\n');
}

t.test('a reflash release: prepare downloads nothing, commit routes to the flasher or says how to get it', { skip }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  await pub.publish('2.0', ['--reflash', '--channel', 'stable']);
  const layout = new Layout(makeMachine(dir, 'm', `file://${pub.releases}`, pub.pub, CONFIG));

  const p = await upgradectl(['--root', layout.root, '--json', 'prepare']);
  t.equal(p.code, 0, p.stderr);
  t.equal(p.json.action, 'needs-reflash');
  t.equal(p.json.flasherInstalled, false);
  t.match(p.json.hint, /flasher install/);
  t.same(readdirSync(layout.imagesDir).filter((f) => !f.startsWith('.')), [], 'no image made of a host partition');
  t.notOk(existsSync(layout.stagingDir) && readdirSync(layout.stagingDir).length, 'nothing staged');

  const refused = await upgradectl(['--root', layout.root, 'commit', '--no-reboot']);
  t.not(refused.code, 0, 'commit refuses without the flasher');
  t.match(refused.stderr, /release 2\.0 rewrites the whole host partition and needs the RAM flasher, which is not installed/);
  t.match(refused.stderr, /upgradectl flasher install/);
  t.notOk(existsSync(path.join(layout.flasherDir, 'job')));

  installFlasherFiles(layout);
  const p2 = await upgradectl(['--root', layout.root, '--json', 'prepare']);
  t.equal(p2.json.action, 'needs-reflash');
  t.match(p2.json.hint, /run upgradectl commit/, 'with the flasher: commit is the next step');
  const c = await upgradectl(['--root', layout.root, 'commit', '--no-reboot']);
  t.equal(c.code, 0, c.stderr);
  t.match(c.stdout, /release 2\.0 rewrites the whole host partition: flash job for 2\.0 written/);
  const job = readFileSync(path.join(layout.flasherDir, 'job'), 'utf8');
  t.match(job, /^upgradectl-flash-job 1\nnonce [0-9a-f]{32}\nversion 2\.0\nurl http:\/\/127\.0\.0\.1:9\/releases-over-http\/releases\/2\.0\/image\.lz4\n/);
  const env = readFileSync(layout.grubEnv, 'utf8');
  t.match(env, /\nnext_entry=upgradectl-flasher\n/, 'the flasher is the next boot');
});

t.test('commit --reflash refuses a manifest whose signature does not verify, before any job is written', { skip }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  await pub.publish('2.0', ['--reflash', '--channel', 'stable']);
  const layout = new Layout(makeMachine(dir, 'm', `file://${pub.releases}`, pub.pub, CONFIG));
  installFlasherFiles(layout);
  const manifest = path.join(pub.releases, 'releases/2.0/manifest.json');
  // One byte of the signed manifest changed: a bigger image than the signer published.
  writeFileSync(manifest, readFileSync(manifest, 'utf8').replace(/"size": (\d)/, '"size": 9$1'));
  const r = await upgradectl(['--root', layout.root, 'commit', '--reflash', '2.0', '--no-reboot']);
  t.not(r.code, 0);
  t.match(r.stderr, /signature/i);
  t.notOk(existsSync(path.join(layout.flasherDir, 'job')), 'no job');
  t.notOk(existsSync(layout.grubEnv) && /next_entry=upgradectl-flasher/.test(readFileSync(layout.grubEnv, 'utf8')), 'the flasher is not armed');
});

t.test("commit --reflash counts the flasher's own kernel and initrd, kept in RAM for the new partition, in the RAM it needs", { skip }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  await pub.publish('2.0', ['--reflash', '--channel', 'stable']);
  const layout = new Layout(makeMachine(dir, 'm', `file://${pub.releases}`, pub.pub, CONFIG));
  installFlasherFiles(layout);
  truncateSync(layout.flasherKernel, 8 << 20);
  const manifest = JSON.parse(readFileSync(path.join(pub.releases, 'releases/2.0/manifest.json'), 'utf8')) as { payload: { size: number } };
  // Room for the payload and the reserve (what the flasher needed before), not for its 8 MiB kernel too.
  const memTotalKb = Math.ceil((manifest.payload.size + RAM_RESERVE) / 1024) + 1024;
  mkdirSync(path.join(layout.root, 'proc'), { recursive: true });
  writeFileSync(path.join(layout.root, 'proc/meminfo'), `MemTotal:       ${memTotalKb} kB\n`);
  const r = await upgradectl(['--root', layout.root, 'commit', '--reflash', '2.0', '--no-reboot']);
  t.not(r.code, 0);
  t.match(r.stderr, /the flasher would need \d+ MiB of RAM \(payload \d+ MiB \+ 48 MiB \+ its own kernel and initrd 9 MiB\)/);
  t.notOk(existsSync(path.join(layout.flasherDir, 'job')), 'no job');
});
