import { chmodSync, chownSync, mkdirSync, readFileSync, readdirSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { buildImage } from '../../src/release/image-build.js';
import { run } from '../../src/core/exec.js';
import { setLogLevel } from '../../src/core/log.js';
import { skipUnless } from '../helpers/requirements.js';

/**
 * `image build` must give the same bytes for the same tree, whoever built it and whatever read it
 * since: release engineers compare hashes, and delta downloads will depend on it.
 */

const skip = skipUnless({ commands: ['mke2fs', 'debugfs', 'e2fsck'] });
setLogLevel('error');

function makeTree(dir: string): string {
  const tree = path.join(dir, 'tree');
  for (const d of ['host', 'boot', 'etc/systemd/system', 'usr/lib/systemd/system']) mkdirSync(path.join(tree, d), { recursive: true });
  writeFileSync(path.join(tree, 'boot/vmlinuz-6.1'), 'kernel\n');
  symlinkSync('boot/vmlinuz-6.1', path.join(tree, 'vmlinuz'));
  writeFileSync(path.join(tree, 'initrd.img'), 'initrd\n');
  // systemd's escaped names: every Debian image has some, and debugfs cannot quote a backslash.
  writeFileSync(path.join(tree, 'usr/lib/systemd/system/system-systemd\\x2dcryptsetup.slice'), '[Unit]\n');
  writeFileSync(path.join(tree, 'etc/systemd/system/a"quote'), 'x\n');
  const old = new Date('2024-01-02T03:04:05Z');
  for (const rel of ['usr/lib/systemd/system/system-systemd\\x2dcryptsetup.slice', 'etc/systemd/system/a"quote', 'initrd.img']) {
    utimesSync(path.join(tree, rel), old, old);
  }
  return tree;
}

t.test('the same tree gives the same image, even after it was read and copied with cp -a', { skip }, async (t) => {
  const dir = t.testdir();
  const tree = makeTree(dir);
  const first = await buildImage({ rootfs: tree, out: path.join(dir, 'a.img'), label: 'same' });

  // Reading changes atimes; cp -a gives new ctimes (and inode numbers, and directory order on disk).
  readFileSync(path.join(tree, 'usr/lib/systemd/system/system-systemd\\x2dcryptsetup.slice'));
  const copy = path.join(dir, 'copy');
  await run('cp', ['-a', tree, copy]);
  const second = await buildImage({ rootfs: copy, out: path.join(dir, 'b.img'), label: 'same' });
  t.equal(second.sha256, first.sha256, 'byte-identical images');

  const { stdout } = await run('debugfs', ['-R', 'stat "/usr/lib/systemd/system"', first.out]);
  t.match(stdout, /Inode: \d+/, 'debugfs reads the image');
  const escaped = await run('debugfs', ['-R', 'ls -p "/usr/lib/systemd/system"', first.out]);
  const ino = /^\/(\d+)\/\d+\/\d+\/\d+\/system-systemd\\x2dcryptsetup\.slice\//m.exec(escaped.stdout)?.[1];
  t.ok(ino, 'the escaped name is in the image');
  const st = await run('debugfs', ['-R', `stat <${ino}>`, first.out]);
  const atime = /atime: 0x([0-9a-f]+)/.exec(st.stdout)?.[1];
  const mtime = /mtime: 0x([0-9a-f]+)/.exec(st.stdout)?.[1];
  t.equal(atime, mtime, 'its atime was normalised to its mtime although its name cannot be quoted');
});

t.test('image build never replaces the booted image, asks before replacing a file, and stays out of its tree', { skip }, async (t) => {
  const { upgradectl } = await import('../helpers/cli.js');
  const dir = t.testdir();
  const tree = makeTree(dir);
  const out = path.join(dir, 'out.img');
  const first = await upgradectl(['--json', 'image', 'build', tree, out, '--size', '16M']);
  t.equal(first.code, 0, first.stderr);

  const again = await upgradectl(['--json', 'image', 'build', tree, out, '--size', '16M']);
  t.equal(again.json?.error?.code, 'USAGE');
  t.match(again.json?.error?.message, /out\.img already exists/);
  t.match(again.json?.error?.hint, /--force/);
  const forced = await upgradectl(['--json', 'image', 'build', tree, out, '--size', '16M', '--force']);
  t.equal(forced.code, 0, forced.stderr);

  const inside = await upgradectl(['--json', 'image', 'build', tree, path.join(tree, 'usr/self.img'), '--size', '16M']);
  t.match(inside.json?.error?.message, /self\.img is inside the tree being imaged/);

  // A machine booted from images/1.0.img: not even --force replaces it, whatever path names it.
  const root = path.join(dir, 'machine');
  mkdirSync(path.join(root, 'images'), { recursive: true });
  mkdirSync(path.join(root, 'proc'), { recursive: true });
  writeFileSync(path.join(root, 'proc/cmdline'), 'root=UUID=x upgradectl.loop=/images/1.0.img ro panic=10\n');
  const booted = path.join(root, 'images/1.0.img');
  writeFileSync(booted, 'the running system\n');
  symlinkSync(booted, path.join(dir, 'alias.img'));
  for (const target of [booted, path.join(dir, 'alias.img')]) {
    const r = await upgradectl(['--root', root, '--json', 'image', 'build', tree, target, '--size', '16M', '--force']);
    t.equal(r.json?.error?.code, 'USAGE', target);
    t.match(r.json?.error?.message, /is the image this machine is running/);
  }
  t.equal(readFileSync(booted, 'utf8'), 'the running system\n', 'the booted image is untouched');
});

t.test('a tarball of the tree gives the same image as the tree, every time, whatever its compression', { skip: skipUnless({ root: true, commands: ['mke2fs', 'debugfs', 'e2fsck', 'tar', 'zstd', 'gzip', 'setfattr'] }) }, async (t) => {
  const dir = t.testdir();
  const tree = makeTree(dir);
  // What a tarball's tree gets (rootfs-tarball.ts): root-owned 0755, the newest mtime of the tree.
  await run('setfattr', ['-n', 'user.upgradectl', '-v', 'kept', path.join(tree, 'initrd.img')]);
  chmodSync(path.join(tree, 'boot/vmlinuz-6.1'), 0o4711);
  chownSync(path.join(tree, 'initrd.img'), 1234, 5678);
  const newest = Math.max(...(await run('find', [tree, '-mindepth', '1', '-printf', '%T@\n'])).stdout.trim().split('\n').map((s) => Math.floor(Number(s))));
  utimesSync(tree, newest, newest);
  chmodSync(tree, 0o755);
  const fromTree = await buildImage({ rootfs: tree, out: path.join(dir, 'tree.img'), label: 'same' });

  const tar = (name: string, ...flags: string[]) => run('tar', ['--create', `--file=${path.join(dir, name)}`, ...flags, '--numeric-owner', '--xattrs', '--acls', `--directory=${tree}`, '.']).then(() => path.join(dir, name));
  const plain = await tar('rootfs.tar');
  const images = [
    await buildImage({ rootfs: plain, out: path.join(dir, 'tar-1.img'), label: 'same' }),
    await buildImage({ rootfs: plain, out: path.join(dir, 'tar-2.img'), label: 'same' }),
    await buildImage({ rootfs: await tar('rootfs.tgz', '--gzip'), out: path.join(dir, 'tgz.img'), label: 'same' }),
    await buildImage({ rootfs: await tar('rootfs.tar.zst', '--zstd'), out: path.join(dir, 'zst.img'), label: 'same' }),
  ];
  for (const image of images) t.equal(image.sha256, fromTree.sha256, `${path.basename(image.out)}: the same bytes as the tree's image`);

  // A tarball without a "./" entry: its root is set the same way.
  const noRoot = path.join(dir, 'no-root.tar');
  await run('tar', ['--create', `--file=${noRoot}`, '--numeric-owner', '--xattrs', '--acls', `--directory=${tree}`, ...readdirSync(tree)]);
  t.equal((await buildImage({ rootfs: noRoot, out: path.join(dir, 'no-root.img'), label: 'same' })).sha256, fromTree.sha256, 'no "./" entry: the same bytes');

  const stat = (await run('debugfs', ['-R', 'stat /initrd.img', images[0]!.out])).stdout;
  t.match(stat, /User:\s+1234\s+Group:\s+5678/, 'numeric owners kept');
  t.match((await run('debugfs', ['-R', 'ea_get /initrd.img user.upgradectl', images[0]!.out])).stdout, /kept/, 'xattrs kept');
  t.match((await run('debugfs', ['-R', 'stat /boot/vmlinuz-6.1', images[0]!.out])).stdout, /Mode:\s+04711/, 'setuid mode kept');
  t.same(readdirSync(dir).filter((n) => n.startsWith('.upgradectl-rootfs-')), [], 'the extracted trees are gone');
  await t.rejects(buildImage({ rootfs: path.join(dir, 'missing.tar'), out: path.join(dir, 'x.img') }), { code: 'USAGE', message: /does not exist/ });
});
