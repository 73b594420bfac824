import t from 'tap';
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Layout } from '../../src/core/layout.js';
import { commit } from '../../src/operations/commit.js';
import { loadConfig } from '../../src/operations/config.js';
import { reconcile } from '../../src/operations/reconcile/index.js';
import { upgradectl } from '../helpers/cli.js';
import { makePublisher, makeMachine as makeReleaseMachine } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';
import { addHook, boot, editenv, envList, grubBoot, makeMachine, readState, writeState } from './fixtures/machine.js';

// Lifecycle holes found by review (issue: security and correctness), each closed and held here.
const skip = skipUnless({ root: true, commands: ['grub-editenv', 'grub-script-check', 'mke2fs', 'e2fsck', 'losetup', 'debugfs'] });

t.test('a new machine with no state: prepare adopts the image that runs, so commit just works', { skip: skipUnless({ commands: ['mke2fs', 'debugfs'] }) }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(path.join(dir, 'pub'));
  const v1 = await pub.publish('1');
  await pub.publish('4');
  const root = makeReleaseMachine(dir, 'm', `file://${pub.releases}`, pub.pub);
  copyFileSync(v1, path.join(root, 'images/1.img'));
  mkdirSync(path.join(root, 'proc'), { recursive: true });
  writeFileSync(path.join(root, 'proc/cmdline'), 'root=UUID=x upgradectl.loop=/images/1.img ro\n');
  const p = await upgradectl(['--root', root, '--json', 'prepare', '4']);
  t.equal(p.code, 0, p.stderr);
  const state = JSON.parse(readFileSync(path.join(root, 'images/.upgradectl/state.json'), 'utf8'));
  t.match(state, { phase: 'prepared', current: '1', next: '4' }, 'the running image was adopted before preparing');
  t.same(state.history.map((h: { event: string }) => h.event), ['adopt', 'prepare']);
});

t.test('a machine that prepared before anything was recorded adopts the running image and commits', { skip }, async (t) => {
  const layout = makeMachine(t.testdir(), { images: ['1.0', '4.0'], next: '4.0' });
  boot(layout, '1.0');
  process.env.UPGRADECTL_REBOOT_COMMAND = 'true';
  const c = await commit(layout, await loadConfig(layout), { reboot: false });
  t.match(c.state, { phase: 'committed', current: '1.0', next: '4.0' });
  t.same(grubBoot(layout), ['4.0']);
});

t.test('preparing over a prepared image never deletes the fallback or the running image', { skip: skipUnless({ commands: ['mke2fs', 'debugfs'] }) }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(path.join(dir, 'pub'));
  const images: Record<string, string> = {};
  for (const v of ['1', '2', '3']) images[v] = await pub.publish(v);
  const root = makeReleaseMachine(dir, 'm', `file://${pub.releases}`, pub.pub);
  const layout = new Layout(root);
  for (const v of ['1', '2']) copyFileSync(images[v]!, layout.imageFile(v));
  mkdirSync(path.join(root, 'proc'), { recursive: true });
  writeFileSync(path.join(root, 'proc/cmdline'), 'upgradectl.loop=/images/2.img\n');
  writeState(layout, { schema: 1, phase: 'idle', current: '2', previous: '1', bad: {}, history: [] });
  const back = await upgradectl(['--root', root, 'prepare', '1', '--allow-downgrade']);
  t.equal(back.code, 0, back.stderr);
  t.equal(readState(layout).next, '1');
  const fwd = await upgradectl(['--root', root, 'prepare', '3']);
  t.equal(fwd.code, 0, fwd.stderr);
  t.match(readState(layout), { phase: 'prepared', current: '2', previous: '1', next: '3' });
  t.ok(existsSync(layout.imageFile('1')), 'the previous image (the fallback) is kept');
  t.ok(existsSync(layout.imageFile('2')), 'the running image is kept');
});

t.test('a failure after the trial is armed keeps the record of the armed trial', { skip }, async (t) => {
  const layout = makeMachine(t.testdir(), { images: ['0.9', '1.0', '2.0'], current: '1.0', previous: '0.9', next: '2.0' });
  // The checkpoint after arming fails: a `sync` first on PATH that fails once grubenv arms 2.0.
  const bin = mkdtempSync(path.join(os.tmpdir(), 'upgradectl-sync-'));
  t.teardown(() => rmSync(bin, { recursive: true, force: true }));
  writeFileSync(path.join(bin, 'sync'), `#!/bin/sh\ngrep -q next_entry=upgradectl-2.0 ${layout.grubEnv} && { echo 'sync: I/O error' >&2; exit 1; }\nexec /bin/sync "$@"\n`);
  chmodSync(path.join(bin, 'sync'), 0o755);
  const savedPath = process.env.PATH;
  process.env.PATH = `${bin}:${savedPath}`;
  t.teardown(() => void (process.env.PATH = savedPath));
  await t.rejects(commit(layout, await loadConfig(layout), { reboot: false }), { code: 'GRUB', message: /armed and recorded/ });
  process.env.PATH = savedPath;
  t.match(readState(layout), { phase: 'committed', next: '2.0', pending: undefined });
  t.same(grubBoot(layout), ['2.0'], 'GRUB boots the armed trial');
  t.equal((await reconcile(layout)).phase, 'trying', 'and that trial is reconciled like any other');
});

t.test('commit refuses a host where GRUB cannot save_env (btrfs) before it writes anything', { skip: skipUnless({ root: true, commands: ['mkfs.btrfs', 'mount', 'grub-editenv', 'mke2fs'] }) }, async (t) => {
  const dir = t.testdir();
  const fsImage = path.join(dir, 'host.btrfs');
  execFileSync('truncate', ['-s', '160M', fsImage]);
  execFileSync('mkfs.btrfs', ['-q', fsImage]);
  const mnt = mkdtempSync(path.join(os.tmpdir(), 'upgradectl-btrfs-'));
  mkdirSync(mnt, { recursive: true });
  execFileSync('mount', ['-o', 'loop', fsImage, mnt]);
  t.teardown(() => {
    execFileSync('umount', ['-d', mnt]);
    rmSync(mnt, { recursive: true, force: true });
  });
  const layout = makeMachine(mnt, { images: ['1.0', '2.0'], current: '1.0', next: '2.0' });
  addHook(layout, 'pre-commit', '10-mark', `touch ${path.join(dir, 'hook-ran')}`);
  const envBefore = readFileSync(layout.grubEnv);
  const imageBefore = readFileSync(layout.imageFile('2.0'));
  await t.rejects(commit(layout, await loadConfig(layout), { reboot: false }), { code: 'UNSUPPORTED', message: /save_env.*btrfs/, hint: /save_env = false/ });
  t.notOk(existsSync(path.join(dir, 'hook-ran')), 'no pre-commit hook ran');
  t.ok(readFileSync(layout.grubEnv).equals(envBefore), 'grubenv untouched');
  t.ok(readFileSync(layout.imageFile('2.0')).equals(imageBefore), 'nothing migrated into the image');
  t.equal(readState(layout).phase, 'prepared');
  // The documented fallback mode commits on such a host.
  writeFileSync(layout.configFile, readFileSync(layout.configFile, 'utf8').replace('[boot]', '[boot]\nsave_env = false'));
  process.env.UPGRADECTL_REBOOT_COMMAND = 'true';
  const c = await commit(layout, await loadConfig(layout), { reboot: false });
  t.equal(c.state.phase, 'committed');
  t.same(envList(layout), { saved_entry: 'upgradectl-2.0' });
});

t.test('a broken config does not stop the running default from clearing its start count', { skip }, async (t) => {
  const layout = makeMachine(t.testdir(), { images: ['0.9', '1.0'], current: '1.0', previous: '0.9' });
  editenv(layout, 'set', 'upgradectl_default_tries=1');
  boot(layout, '1.0');
  writeFileSync(layout.configFile, readFileSync(layout.configFile, 'utf8').replace('trial_attempts = 1', 'trial_attempts = 9'));
  await t.rejects(reconcile(layout), { code: 'CONFIG' });
  t.equal(envList(layout).upgradectl_default_tries, undefined, 'the count of the default was cleared anyway');
});

t.test('grub-config --write refuses to write a menu with no image in it', async (t) => {
  const root = t.testdir({ images: { '.upgradectl': {} }, etc: { upgradectl: { 'upgradectl.conf': '[boot]\nhost_uuid = 0c6d2a3e-6f3b-4a5e-9a41-2b7c1d9e8f10\n' } } });
  const r = await upgradectl(['--root', root, '--json', 'grub-config', '--write']);
  t.not(r.code, 0);
  t.equal(r.json?.error?.code, 'NOT_FOUND');
  t.match(r.json?.error?.message, /no images under/);
  t.notOk(existsSync(path.join(root, 'boot/grub/grub.cfg')), 'no grub.cfg was written');
});
