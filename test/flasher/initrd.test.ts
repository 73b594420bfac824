import t from 'tap';
import { promises as fs, statSync } from 'node:fs';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { run } from '../../src/core/exec.js';
import { buildFlasherInitrd } from '../../src/flasher/initrd.js';
import { newestKernel } from '../boot/kernel.js';
import { skipUnless } from '../helpers/requirements.js';

const skip = skipUnless({ root: true, commands: ['busybox', 'lz4', 'cpio'] });

t.test('the flasher initrd unpacks into a tree that runs: init, busybox, lz4 with its libraries, modules in order', { skip }, async (t) => {
  const { release } = await newestKernel();
  const built = await buildFlasherInitrd({ busybox: '/bin/busybox', lz4: '/usr/bin/lz4', modulesDir: `/lib/modules/${release}` });
  const dir = t.testdir();
  const archive = path.join(dir, 'initrd.cpio');
  await fs.writeFile(archive, gunzipSync(built.data));
  const tree = path.join(dir, 'tree');
  await fs.mkdir(tree);
  await run('sh', ['-c', `cd ${tree} && cpio -idm --quiet < ${archive}`]);
  t.equal(statSync(path.join(tree, 'init')).mode & 0o777, 0o755, '/init is executable');
  t.equal(statSync(path.join(tree, 'bin/busybox')).uid, 0, 'owned by root');
  // Inside the tree alone (chroot): proves lz4's loader and libc came along.
  const { stdout } = await run('chroot', [tree, '/bin/sh', '-c', 'echo flasher | lz4 -c | lz4 -dc && sha256sum /init >/dev/null && echo ok']);
  t.equal(stdout, 'flasher\nok\n');
  const order = (await fs.readFile(path.join(tree, 'lib/modules/load-order'), 'utf8')).trim().split('\n');
  const at = (name: string) => order.findIndex((m) => m.endsWith(`/${name}.ko`));
  for (const m of ['virtio_blk', 'virtio_net', 'virtio_pci', 'ext4', 'jbd2']) t.ok(at(m) >= 0, `${m} is in the initrd`);
  t.ok(at('virtio') < at('virtio_net') && at('jbd2') < at('ext4'), 'dependencies load first');
  t.ok(built.data.length < 16 * 1048576, `small: ${(built.data.length / 1048576).toFixed(1)} MiB`);
  t.comment(`initrd ${(built.data.length / 1048576).toFixed(1)} MiB, ${order.length} modules`);
});
