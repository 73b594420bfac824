import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { skipUnless } from '../helpers/requirements.js';
import { mountLoopFs } from '../helpers/loop-fs.js';
import { sha256 } from '../helpers/assert.js';
import { ensureFirstBlockWritten, firstBlockFixCommand, firstBlockOf } from '../../src/core/first-block.js';
import { buildImage } from '../../src/release/image-build.js';
import { makeMachine, makePublisher } from '../helpers/release-fixture.js';
import { upgradectl } from '../helpers/cli.js';

const skip = skipUnless({ root: true, commands: ['filefrag', 'mkfs.ext4', 'losetup', 'mount', 'mke2fs', 'debugfs', 'e2fsck', 'fallocate'] });

/** A tree image build accepts: kernel, initrd, empty /host. */
function tree(dir: string): string {
  mkdirSync(path.join(dir, 'host'), { recursive: true });
  writeFileSync(path.join(dir, 'vmlinuz'), 'kernel\n');
  writeFileSync(path.join(dir, 'initrd.img'), 'initrd\n');
  return dir;
}

t.test('on a host filesystem with 1 KiB blocks: built images start written, sparse copies start with a hole, both repairs work', { skip }, async (t) => {
  // Outside t.testdir(), whose own cleanup would run into the mount before the teardown unmounts it.
  const dir = mkdtempSync(path.join(os.tmpdir(), 'upgradectl-first-block-'));
  // 256 MiB: mke2fs's "small" type, i.e. 1 KiB blocks, the host filesystems where the hole appears.
  const host = await mountLoopFs(dir, 256);
  t.teardown(async () => {
    await host.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });
  t.match(execFileSync('dumpe2fs', ['-h', host.device], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }), /Block size:\s+1024/);

  const built = path.join(host.mnt, 'built.img');
  await buildImage({ rootfs: tree(path.join(dir, 'tree')), out: built, time: 1 });
  t.same(await firstBlockOf(built), { kind: 'written' }, 'image build writes its first block (mke2fs writes block 0)');

  // What an operator's `cp --sparse=always` (or rsync -S, mke2fs -d) does on this filesystem.
  const copy = path.join(host.mnt, 'copy.img');
  execFileSync('cp', ['--sparse=always', built, copy]);
  t.same(await firstBlockOf(copy), { kind: 'hole' }, 'the zeros before the superblock became a hole');
  const before = sha256(readFileSync(copy));
  t.same(await ensureFirstBlockWritten(copy), { kind: 'hole' }, 'reports what it found');
  t.same(await firstBlockOf(copy), { kind: 'written' }, 'and rewrote it');
  t.equal(sha256(readFileSync(copy)), before, 'the content is unchanged');

  // An unwritten (fallocated) first block: GRUB would read stale disk blocks through it.
  const falloc = path.join(host.mnt, 'falloc.img');
  execFileSync('cp', ['--sparse=always', built, falloc]);
  execFileSync('fallocate', ['-o', '0', '-l', '4096', '--keep-size', falloc]);
  t.same(await firstBlockOf(falloc), { kind: 'unwritten' });
  await ensureFirstBlockWritten(falloc);
  t.same(await firstBlockOf(falloc), { kind: 'written' });

  // The operator's command from doctor's fix does the same.
  const byHand = path.join(host.mnt, 'by-hand.img');
  execFileSync('cp', ['--sparse=always', built, byHand]);
  execFileSync('sh', ['-c', firstBlockFixCommand(byHand)], { stdio: 'ignore' });
  t.same(await firstBlockOf(byHand), { kind: 'written' }, firstBlockFixCommand(byHand));
  t.equal(sha256(readFileSync(byHand)), sha256(readFileSync(built)));
  execFileSync('e2fsck', ['-fn', byHand], { stdio: 'ignore' });
});

t.test('a file with no extents at all is one hole', { skip }, async (t) => {
  const file = path.join(t.testdir(), 'empty.img');
  execFileSync('truncate', ['-s', '1M', file]);
  t.same(await firstBlockOf(file), { kind: 'hole' });
});

t.test('prepare on a host filesystem with 1 KiB blocks leaves the image starting with a written block', { skip: skipUnless({ root: true, commands: ['filefrag', 'mkfs.ext4', 'losetup', 'mount', 'mke2fs', 'debugfs', 'lz4'] }) }, async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'upgradectl-first-block-'));
  const host = await mountLoopFs(dir, 128);
  t.teardown(async () => {
    await host.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });
  const pub = await makePublisher(path.join(dir, 'pub'));
  await pub.publish('1.0', ['--channel', 'stable']);
  const root = makeMachine(host.mnt, 'm', `file://${pub.releases}`, pub.pub);
  const r = await upgradectl(['--root', root, '--json', 'prepare']);
  t.equal(r.code, 0, r.stderr);
  t.same(await firstBlockOf(path.join(root, 'images/1.0.img')), { kind: 'written' }, 'the zeros before the superblock were written, not skipped');
});
