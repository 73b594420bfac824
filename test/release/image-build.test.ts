import { mkdirSync, readFileSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
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
