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
