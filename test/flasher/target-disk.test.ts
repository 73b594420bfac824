import t from 'tap';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { run } from '../../src/core/exec.js';
import { FLASHER_SCRIPTS } from '../../src/flasher/initrd.js';
import { diskOfHostPartition } from '../../src/flasher/target-disk.js';
import { skipUnless } from '../helpers/requirements.js';

/**
 * Both sides' way from the host partition to its disk, on the kernel's real sysfs: a partitioned disk
 * image on a loop device, its partition added with partx (this kernel has no partition scanning for
 * loop devices, FACTS.md). commit --reflash's side (src/flasher/target-disk.ts) reads a root whose /sys
 * is the real one and whose udev by-uuid link names the partition (there is no udev here); the
 * flasher's side (flasher/flasher.sh disk_of) reads /sys itself.
 */
const skip = skipUnless({ root: true, commands: ['busybox', 'losetup', 'partx', 'sfdisk', 'truncate'] });
const UUID = '0c6d2a3e-6f3b-4a5e-9a41-2b7c1d9e8f10';

t.test('the disk holding a partition, from sysfs: the same answer for commit --reflash and the flasher', { skip }, async (t) => {
  const dir = t.testdir();
  const img = path.join(dir, 'disk.img');
  await run('truncate', ['-s', '8M', img]);
  await run('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', img], { input: 'label: dos\nstart=2048, type=83\n' });
  const { stdout } = await run('losetup', ['-f', '--show', img]);
  const loop = stdout.trim();
  t.teardown(async () => {
    await run('partx', ['-d', loop]).catch(() => undefined);
    await run('losetup', ['-d', loop]);
  });
  await run('partx', ['-a', loop]);
  const disk = path.basename(loop);
  const partition = `${disk}p1`;

  const root = path.join(dir, 'root');
  await fs.mkdir(path.join(root, 'dev/disk/by-uuid'), { recursive: true });
  await fs.symlink('/sys', path.join(root, 'sys'));
  await fs.symlink(`../../${partition}`, path.join(root, 'dev/disk/by-uuid', UUID));
  t.same(await diskOfHostPartition(root, UUID), { partition, disk, size: 8 << 20 }, 'commit --reflash: the loop device, its size');
  await fs.rm(path.join(root, 'dev/disk/by-uuid', UUID));
  await fs.symlink(`../../${disk}`, path.join(root, 'dev/disk/by-uuid', UUID));
  await t.rejects(diskOfHostPartition(root, UUID), new RegExp(`the host filesystem is on ${disk}, which is not a partition of a disk`), 'a filesystem on the whole disk');

  const diskOf = (dev: string) => run('busybox', ['sh', '-c', `. ${path.join(FLASHER_SCRIPTS, 'flasher.sh')}; disk_of "$1"`, 'sh', dev]);
  t.equal((await diskOf(`/dev/${partition}`)).stdout.trim(), disk, 'the flasher: the same disk');
  await t.rejects(diskOf(loop), 'the flasher: a whole disk is no partition');
});
