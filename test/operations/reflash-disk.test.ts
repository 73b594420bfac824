import t from 'tap';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Layout } from '../../src/core/layout.js';
import { run } from '../../src/core/exec.js';
import { validateManifest } from '../../src/release/manifest-check.js';
import { blockDevicesUnder } from '../helpers/block-devices.js';
import { upgradectl } from '../helpers/cli.js';
import { installFlasherFiles, makeMachine, makePublisher, manifestOf } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';

/**
 * A whole-disk release (published with --reflash-disk, manifest `reflash: "disk"`) through the real CLI:
 * publish takes only a partitioned disk image, commit --reflash finds the disk holding the host partition
 * (udev's by-uuid link, then sysfs, under the machine's root), names it, writes it into the job, and
 * refuses an image larger than that disk or a host filesystem that is not on a partition.
 */

const skip = skipUnless({ root: true, commands: ['mke2fs', 'debugfs', 'lz4', 'sfdisk', 'grub-editenv', 'grub-script-check'] });
const HOST_UUID = '0c6d2a3e-6f3b-4a5e-9a41-2b7c1d9e8f10';
const CONFIG = `[boot]\nhost_uuid = ${HOST_UUID}\n[flasher]\nurl = http://127.0.0.1:9/releases-over-http\n`;
const DISK_IMAGE_MIB = 8;

/** A real partitioned disk image: an MBR with one Linux partition at 1 MiB holding ext4. */
async function diskImage(dir: string): Promise<string> {
  const file = path.join(dir, 'disk.img');
  writeFileSync(file, Buffer.alloc(0));
  await run('truncate', ['-s', `${DISK_IMAGE_MIB}M`, file]);
  await run('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', file], { input: 'label: dos\nstart=2048, type=83\n' });
  await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-U', HOST_UUID, '-E', 'offset=1048576', file, `${DISK_IMAGE_MIB - 1}M`]);
  return file;
}

t.test('publish --reflash-disk takes a partitioned disk only, and says so in the signed manifest', { skip }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  await t.rejects(pub.publish('1.0', ['--reflash-disk']), /not a whole-disk image: no partition table \(boot signature 0x55AA at byte 510\)/, 'an ext4 image is not a disk');
  const disk = await diskImage(dir);
  await t.rejects(pub.publish('1.1', ['--reflash', '--reflash-disk'], disk), /--reflash \(a host partition\) and --reflash-disk \(a whole disk\) exclude each other/);
  await pub.publish('2.0', ['--reflash-disk'], disk);
  const m = manifestOf(pub.releases, '2.0');
  t.equal(m.reflash, 'disk');
  t.equal(validateManifest(m, 'm').reflash, 'disk', 'a machine reads it');
  t.throws(() => validateManifest({ ...m, reflash: 'partition' }, 'm'), { code: 'MANIFEST', message: /reflash.*true, false or "disk"/ }, 'nothing else');
  await pub.publish('2.1', ['--reflash']);
  t.equal(manifestOf(pub.releases, '2.1').reflash, true, 'a partition release keeps reflash: true');
});

t.test('commit --reflash of a whole-disk release names the disk it overwrites, and refuses one that does not fit or is not there', { skip }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  await pub.publish('2.0', ['--reflash-disk', '--channel', 'stable'], await diskImage(dir));
  const machine = async (name: string, devices?: Parameters<typeof blockDevicesUnder>[1]) => {
    const layout = new Layout(makeMachine(dir, name, `file://${pub.releases}`, pub.pub, CONFIG));
    installFlasherFiles(layout);
    if (devices) await blockDevicesUnder(layout.root, devices);
    return layout;
  };
  const commit = (layout: Layout) => upgradectl(['--root', layout.root, 'commit', '--reflash', '2.0', '--no-reboot']);
  const noJob = (layout: Layout) => !existsSync(path.join(layout.flasherDir, 'job')) && !(existsSync(layout.grubEnv) && /next_entry=upgradectl-flasher/.test(readFileSync(layout.grubEnv, 'utf8')));

  const fits = await machine('fits', { uuid: HOST_UUID, disk: 'vda', partition: 'vda1', diskBytes: 64 << 20 });
  const c = await commit(fits);
  t.equal(c.code, 0, c.stderr);
  t.match(c.stdout, /writes 8 MiB over the WHOLE DISK \/dev\/vda \(64 MiB: its partition table and every partition on it, including the host partition vda1\)/, 'says which disk it overwrites');
  t.match(readFileSync(path.join(fits.flasherDir, 'job'), 'utf8'), `\ntarget_uuid ${HOST_UUID}\ntarget_disk vda\n`, 'the job names the disk');

  const routed = await machine('routed', { uuid: HOST_UUID, disk: 'vda', partition: 'vda1', diskBytes: 64 << 20 });
  const cr = await upgradectl(['--root', routed.root, 'commit', '--no-reboot']);
  t.equal(cr.code, 0, cr.stderr);
  t.match(cr.stdout, /^release 2\.0 rewrites the whole disk: flash job for 2\.0 written/, 'commit with nothing prepared routes to the flasher and says it is the disk');

  const small = await machine('small', { uuid: HOST_UUID, disk: 'sda', partition: 'sda2', diskBytes: 4 << 20 });
  const r1 = await commit(small);
  t.not(r1.code, 0);
  t.match(r1.stderr, /release 2\.0 is a whole-disk image of 8388608 bytes, larger than \/dev\/sda \(4194304 bytes\), the disk holding the host partition sda2/);
  t.ok(noJob(small), 'no job, GRUB not armed');

  const whole = await machine('whole', { uuid: HOST_UUID, disk: 'vdb', partition: 'vdb', diskBytes: 64 << 20, isPartition: false });
  const r2 = await commit(whole);
  t.not(r2.code, 0);
  t.match(r2.stderr, /the host filesystem is on vdb, which is not a partition of a disk/);
  t.ok(noJob(whole), 'no job for a host filesystem on a whole disk');

  const unknown = await machine('unknown');
  const r3 = await commit(unknown);
  t.not(r3.code, 0);
  t.match(r3.stderr, new RegExp(`no block device carries the host filesystem UUID ${HOST_UUID}`));
  t.ok(noJob(unknown));
});
