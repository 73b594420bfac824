import { spawn } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { withMountedImage } from '../../src/migrate/image-mount.js';
import { isUpgradeError } from '../../src/core/errors.js';
import { run } from '../../src/core/exec.js';
import { skipUnless } from '../helpers/requirements.js';
import { listableBy, readableBy } from '../helpers/as-user.js';
import { detachLeftovers, imageCat, loopsUnder, sha256File } from './fixtures/machine.js';

const skip = skipUnless({ root: true, commands: ['losetup', 'mke2fs', 'debugfs'] });

t.test('withMountedImage', { skip }, async (t) => {
  const dir = t.testdir({ tree: { etc: { hostname: 'image\n' } } });
  t.teardown(() => detachLeftovers(dir));
  const image = path.join(dir, 'a.img');
  await run('mke2fs', ['-q', '-t', 'ext4', '-d', path.join(dir, 'tree'), '-F', image, '16M']);

  t.test('read-write: a real loop device, writes land in the image, all detached after', async (t) => {
    let seen: { device: string; mountPoint: string } | undefined;
    const out = await withMountedImage(image, {}, async (m) => {
      seen = m;
      t.match(m.device, /^\/dev\/loop\d+$/);
      t.match((await run('losetup', ['-j', image])).stdout, m.device, 'attached to this image');
      const options = (await run('findmnt', ['-n', '-o', 'OPTIONS', m.mountPoint])).stdout.trim().split(',');
      t.ok(options[0] === 'rw' && options.includes('nodev') && options.includes('nosuid'), `mounted rw,nodev,nosuid: ${options.join(',')}`);
      await fs.writeFile(path.join(m.mountPoint, 'etc/written'), 'hello\n');
      return 42;
    });
    t.equal(out, 42);
    t.notOk(existsSync(seen?.mountPoint ?? '/nonexistent'), 'private mount point removed');
    t.same(await loopsUnder(dir), [], 'detached');
    t.equal(await imageCat(image, '/etc/written'), 'hello\n');
  });

  t.test('read-write: other users cannot walk into the mounted image (its root is 0755, the mount point sits in a 0700 directory)', async (t) => {
    await withMountedImage(image, {}, async (m) => {
      const hostname = path.join(m.mountPoint, 'etc/hostname');
      t.equal((await fs.stat(hostname)).mode & 0o777, 0o644, 'a world-readable file inside the image');
      t.equal((await fs.stat(m.mountPoint)).mode & 0o777, 0o755, 'mounted, the mount point shows the image root\'s mode');
      t.notOk(readableBy(hostname), 'nobody cannot read it through the mount');
      t.notOk(listableBy(m.mountPoint), 'nobody cannot list the mounted image');
      t.equal((await fs.stat(path.dirname(m.mountPoint))).mode & 0o777, 0o700, 'the directory holding the mount point is 0700');
    });
    t.same(await loopsUnder(dir), [], 'detached');
  });

  t.test('read-only: nothing can be written and the image is unchanged', async (t) => {
    const before = await sha256File(image);
    await withMountedImage(image, { readOnly: true }, async (m) => {
      await t.rejects(fs.writeFile(path.join(m.mountPoint, 'etc/nope'), 'x'), { code: 'EROFS' });
      t.equal(await fs.readFile(path.join(m.mountPoint, 'etc/hostname'), 'utf8'), 'image\n');
    });
    t.equal(await sha256File(image), before);
    t.same(await loopsUnder(dir), []);
  });

  t.test('the function throws: its error comes out, and the image is still detached', async (t) => {
    await t.rejects(
      withMountedImage(image, {}, async () => {
        throw new Error('boom inside');
      }),
      { message: 'boom inside' },
    );
    t.same(await loopsUnder(dir), []);
  });

  t.test('a busy mount point (EBUSY) is retried until the holder goes away', async (t) => {
    const started = Date.now();
    await withMountedImage(image, {}, async (m) => {
      // A process sitting in the mount point makes the first umount attempts fail with "target is busy".
      const holder = spawn('sleep', ['0.6'], { cwd: m.mountPoint, stdio: 'ignore' });
      await new Promise((r) => holder.once('spawn', r));
    });
    t.ok(Date.now() - started >= 500, 'umount waited for the holder');
    t.same(await loopsUnder(dir), [], 'unmounted and detached after the retries');
  });

  t.test('not an ext4 image: a clear error, nothing left attached', async (t) => {
    const junk = path.join(dir, 'junk.img');
    await fs.writeFile(junk, Buffer.alloc(4 * 1024 * 1024));
    const err = await withMountedImage(junk, {}, async () => 'unreachable').catch((e: unknown) => e);
    t.ok(isUpgradeError(err, 'IMAGE'));
    t.match((err as Error).message, /cannot mount .*junk\.img/);
    t.same(await loopsUnder(dir), []);
  });
});
