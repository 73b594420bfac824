import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { Layout } from '../../src/core/layout.js';
import { run } from '../../src/core/exec.js';
import { migrateIntoImage } from '../../src/migrate/index.js';
import { mountPointFor } from '../../src/migrate/mount-claim.js';
import { skipUnless } from '../helpers/requirements.js';
import { imageCat } from './fixtures/machine.js';
import { isMounted, killedWhileMounted, removeMountsOf } from './fixtures/killed-mount.js';

const skip = skipUnless({ root: true, commands: ['losetup', 'mke2fs', 'debugfs', 'e2fsck', 'findmnt', 'getfattr', 'setfattr'] });

async function setup(t: Test) {
  // Registered before t.testdir(): teardowns run in order, and the image must still exist to be found.
  const image = path.join(t.testdirName, 'next.img');
  t.teardown(() => removeMountsOf(image));
  const dir = t.testdir({
    machine: { etc: { hostname: 'machine-42\n', upgradectl: { 'migrate.conf': '[options]\ndefaults = no\n[paths]\n/etc/hostname = copy\n' } } },
    tree: { etc: { hostname: 'image\n' }, host: {} },
  });
  await run('mke2fs', ['-q', '-t', 'ext4', '-d', path.join(dir, 'tree'), '-F', image, '16M']);
  return { image, layout: new Layout(path.join(dir, 'machine')) };
}

const attached = async (image: string) => (await run('losetup', ['-j', image])).stdout.trim();

t.test('a migration killed while the image is mounted: the next migration cleans up and succeeds', { skip }, async (t) => {
  const { image, layout } = await setup(t);
  const held = await killedWhileMounted(image);
  t.equal(held.mountPoint, mountPointFor(image), 'the fixed mount point of this image');
  t.ok(await isMounted(held.mountPoint), 'the killed process left the image mounted');
  t.match(await attached(image), held.device, 'and attached');

  const report = await migrateIntoImage({ layout, imageFile: image });
  t.equal(report.fsck, 'clean');
  t.equal(await imageCat(image, '/etc/hostname'), 'machine-42\n', 'migrated');
  t.notOk(await isMounted(held.mountPoint), 'no mount left');
  t.equal(await attached(image), '', 'no loop device of the image left');
  t.notOk(existsSync(held.mountPoint), 'mount point removed');
  t.notOk(existsSync(`${held.mountPoint}.claim.json`), 'claim removed');
});

t.test('only our own leftovers are touched: a loop device someone else attached stays', { skip }, async (t) => {
  const { image, layout } = await setup(t);
  const foreign = (await run('losetup', ['--find', '--show', '--read-only', image])).stdout.trim();
  const err = await migrateIntoImage({ layout, imageFile: image }).catch((e: unknown) => e as Error);
  t.match(err, { code: 'MIGRATE', message: /already attached to a loop device/ });
  t.match(await attached(image), foreign, 'the foreign loop device is still attached');
  t.notOk(existsSync(mountPointFor(image)), 'and our mount point is not left behind');
});

t.test('the mount points live under a root-only directory', { skip }, async (t) => {
  const { image } = await setup(t);
  await killedWhileMounted(image);
  t.equal((await fs.stat(path.dirname(mountPointFor(image)))).mode & 0o777, 0o700);
  t.equal((await fs.stat(`${mountPointFor(image)}.claim.json`)).mode & 0o777, 0o600);
});
