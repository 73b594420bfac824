import t from 'tap';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { skipUnless } from '../helpers/requirements.js';
import { readableBy } from '../helpers/as-user.js';
import { diagnose } from '../../src/upgradectl/commands/doctor.js';
import { grubConfigCommand } from '../../src/upgradectl/commands/grub-config.js';
import { makeMachine, envList } from '../operations/fixtures/machine.js';
import { fallbackEntryId } from '../helpers/assert.js';
import { Layout } from '../../src/core/layout.js';
import { upgradectl } from '../helpers/cli.js';
import { isMounted, killedWhileMounted, removeMountsOf } from '../migrate/fixtures/killed-mount.js';

const skip = skipUnless({ commands: ['grub-editenv', 'grub-script-check', 'mke2fs', 'debugfs', 'findmnt', 'lsblk', 'losetup', 'getfattr', 'setfattr'] });

t.test('doctor: each finding with its fix', { skip }, async (t) => {
  const dir = t.testdir();
  const layout = makeMachine(dir, { images: ['1.0', '2.0'], current: '1.0' });
  // 2.0 lacks its initrd; its kernel is a symlink that resolves.
  const tree = path.join(dir, 'tree2');
  mkdirSync(path.join(tree, 'boot'), { recursive: true });
  writeFileSync(path.join(tree, 'boot/vmlinuz-6.1'), 'k');
  execFileSync('ln', ['-s', 'boot/vmlinuz-6.1', path.join(tree, 'vmlinuz')]);
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, layout.imageFile('2.0'), '4M']);
  const f = await diagnose(layout);
  const by = (check: string) => f.filter((x) => x.check === check);

  t.match(by('host uuid'), [{ level: 'ok', message: /0c6d2a3e/ }], 'configured UUID');
  t.match(by('save_env'), [{ level: 'ok', message: /GRUB can save_env/ }], 'ext4 on a plain disk');
  t.match(by('grub installed'), [{ level: 'error', fix: /grub-install --boot-directory=/ }]);
  t.match(by('grubenv'), [{ level: 'ok', message: 'default 1.0' }]);
  const images = by('images');
  t.match(images.find((x) => /1\.0/.test(x.message)), { level: 'ok' });
  t.match(images.find((x) => /2\.0\.img lacks/.test(x.message)), { level: 'error', message: /\/initrd\.img \(not found\)/, fix: /image build/ });
  t.notMatch(images.find((x) => /2\.0\.img lacks/.test(x.message))?.message ?? '', /vmlinuz/, 'the kernel symlink resolves');
  t.match(by('space'), [{ level: 'ok', message: /GiB free/ }]);
  t.match(by('migration tools'), [{ level: 'ok', message: 'found losetup, mount, umount, e2fsck, getfattr, setfattr' }], 'the tools commit migrates with');

  // A broken default is an error with the repair command.
  mkdirSync(path.join(layout.grubDir, 'i386-pc'), { recursive: true });
  editDefault(layout.grubEnv, 'upgradectl-9.9');
  const g = await diagnose(layout);
  t.match(g.find((x) => x.check === 'grubenv'), { level: 'error', message: /9\.9\.img is missing/, fix: /grub-config --write/ });
  t.match(g.find((x) => x.check === 'grub installed'), { level: 'ok' });
});

t.test('grub-config prints a checked config; --write installs it and repairs grubenv', { skip }, async (t) => {
  const layout = makeMachine(t.testdir(), { images: ['1.0', '2.0'], current: '1.0', previous: '2.0' });
  const printed = await grubConfigCommand.run({ layout, json: false, options: {}, positionals: [] });
  t.match(printed.text, /--id upgradectl-1\.0 \{/);
  t.equal(fallbackEntryId(printed.text), 'upgradectl-2.0');
  const fragment = await grubConfigCommand.run({ layout, json: false, options: { fragment: true }, positionals: [] });
  t.match(fragment.text, /boot_once/);
  t.notMatch(fragment.text, /load_env/, 'the fragment leaves the environment to 00_header');

  rmSync(layout.grubEnv);
  await grubConfigCommand.run({ layout, json: false, options: { write: true }, positionals: [] });
  t.same(envList(layout), { saved_entry: 'upgradectl-1.0' }, 'rebuilt from state');
  t.equal(statSync(layout.grubEnv).size, 1024);
});

function editDefault(file: string, id: string): void {
  execFileSync('grub-editenv', [file, 'set', `saved_entry=${id}`]);
}

t.test('doctor shows GRUB\'s count of starts of the default that the booted OS has not cleared', { skip }, async (t) => {
  const layout = makeMachine(t.testdir(), { images: ['1.0'], current: '1.0' });
  execFileSync('grub-editenv', [layout.grubEnv, 'set', 'upgradectl_default_tries=1']);
  const f = await diagnose(layout);
  t.match(f.find((x) => x.check === 'grubenv'), { level: 'ok', message: /^default 1\.0, 1 start\(s\) of it not yet cleared by the booted OS \(upgradectl_default_tries\)$/ });
});

t.test('doctor reports a config typo as a failed check, with its line and the nearest key', async (t) => {
  const dir = t.testdir({ etc: { upgradectl: { 'upgradectl.conf': '[source]\nurl = file:///srv/r\nchanel = beta\n' } } });
  const f = await diagnose(new Layout(dir));
  t.match(f.find((x) => x.check === 'config'), {
    level: 'error',
    message: `${path.join(dir, 'etc/upgradectl/upgradectl.conf')}:3: unknown key "chanel" in [source]`,
    fix: /^did you mean `channel`\?/,
  });
});

t.test('doctor finds the mount a killed migration left, and cleans it up', { skip: skipUnless({ root: true, commands: ['losetup', 'mke2fs', 'findmnt'] }) }, async (t) => {
  // Registered before t.testdir(): teardowns run in order, and the image must still exist to be found.
  const image = path.join(t.testdirName, 'next.img');
  t.teardown(() => removeMountsOf(image));
  const layout = makeMachine(t.testdir(), { images: ['1.0'], current: '1.0' });
  execFileSync('mke2fs', ['-q', '-t', 'ext4', '-F', image, '16M']);
  const held = await killedWhileMounted(image);

  const r = await upgradectl(['--root', layout.root, '--json', 'doctor']);
  const found = (r.json?.findings as Array<{ check: string }> | undefined)?.filter((f) => f.check === 'stale mounts');
  t.match(found, [{
    level: 'warn',
    message: new RegExp(`cleaned up a mount of .*next\\.img left by an interrupted migration \\(process \\d+\\): unmounted ${held.mountPoint}, detached ${held.device}$`),
  }], r.stderr);
  t.notOk(await isMounted(held.mountPoint), 'unmounted');
  t.equal(execFileSync('losetup', ['-j', image], { encoding: 'utf8' }), '', 'detached');

  const again = await upgradectl(['--root', layout.root, '--json', 'doctor']);
  t.match(again.json?.findings?.find((f: { check: string }) => f.check === 'stale mounts'), { level: 'ok', message: 'no mounts left by interrupted migrations' });
});

t.test('doctor: an image readable by other users is repaired to 0600 and reported', { skip: skipUnless({ root: true, commands: ['mke2fs', 'runuser', 'grub-editenv'] }) }, async (t) => {
  const layout = makeMachine(t.testdir(), { images: ['1.0'], current: '1.0' });
  chmodSync(layout.imagesDir, 0o755);
  chmodSync(layout.imageFile('1.0'), 0o644);
  t.ok(readableBy(layout.imageFile('1.0')), 'control: nobody can read the image before');
  const f = (await diagnose(layout)).filter((x) => x.check === 'private files');
  t.match(f, [{ level: 'warn', message: /repaired modes under .*images .*: images 0755->0700, .*images\/1\.0\.img 0644->0600/ }]);
  t.equal(statSync(layout.imageFile('1.0')).mode & 0o777, 0o600);
  t.notOk(readableBy(layout.imageFile('1.0')), 'nobody cannot read it after doctor');
  t.match((await diagnose(layout)).filter((x) => x.check === 'private files'), [{ level: 'ok' }], 'nothing left to repair');
});

t.test("doctor: machine files a reflash carried and nothing restored are an error; a dead reflash's copy a warning; restore clears both", { skip: skipUnless({ root: true, commands: ['grub-editenv', 'grub-script-check', 'mke2fs', 'tar'] }) }, async (t) => {
  const layout = makeMachine(t.testdir(), { images: ['1.0'], current: '1.0' });
  const kept = (await diagnose(layout)).filter((f) => f.check === 'kept files');
  t.match(kept, [{ level: 'ok', message: 'no machine files waiting from a reflash' }]);
  mkdirSync(layout.flasherDir, { recursive: true });
  const archive = path.join(layout.flasherDir, 'machine-files.tar');
  writeFileSync(archive, 'packed by a commit --reflash\n', { mode: 0o600 });
  t.match((await diagnose(layout)).find((f) => f.check === 'kept files'), { level: 'warn', message: /whose flash did not happen/, fix: 'upgradectl flasher restore removes it' });
  writeFileSync(path.join(layout.flasherDir, 'machine-files.sha256'), `${'0'.repeat(64)}\n`, { mode: 0o600 });
  t.match((await diagnose(layout)).find((f) => f.check === 'kept files'), { level: 'error', message: /were not restored/, fix: /upgradectl flasher restore/ });
  // Through the CLI: this archive does not match its hash, so restore refuses and says so; without the hash file it is removed.
  const refused = await upgradectl(['--root', layout.root, 'flasher', 'restore']);
  t.not(refused.code, 0);
  t.match(refused.stderr, /SHA-256 is not the one the flasher recorded/);
  rmSync(path.join(layout.flasherDir, 'machine-files.sha256'));
  const removed = await upgradectl(['--root', layout.root, 'flasher', 'restore']);
  t.equal(removed.code, 0, removed.stderr);
  t.match(removed.stdout, /nothing to restore/);
  t.throws(() => statSync(archive), 'the stale copy is gone');
  t.match((await diagnose(layout)).find((f) => f.check === 'kept files'), { level: 'ok' });
});
