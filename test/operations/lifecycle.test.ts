import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { skipUnless } from '../helpers/requirements.js';
import { commit } from '../../src/operations/commit.js';
import { confirm } from '../../src/operations/confirm.js';
import { rollback } from '../../src/operations/rollback.js';
import { reconcile } from '../../src/operations/reconcile/index.js';
import { loadConfig } from '../../src/operations/config.js';
import { allowed } from '../../src/operations/lifecycle.js';
import type { Layout } from '../../src/core/layout.js';
import { addHook, boot, envList, grubBoot, makeMachine, readState, writeState, type MachineOptions } from './fixtures/machine.js';
import { fallbackEntryId } from '../helpers/assert.js';

// Commit migrates into the image through a real loop mount: root and e2fsprogs.
const skip = skipUnless({ root: true, commands: ['grub-editenv', 'grub-script-check', 'mke2fs', 'e2fsck', 'losetup', 'debugfs'] });

/** A machine as prepare leaves it: running 1.0 (previous 0.9), 2.0 prepared. */
function prepared(dir: string, extra: MachineOptions = {}): Layout {
  const layout = makeMachine(dir, { images: ['0.9', '1.0', '2.0'], current: '1.0', previous: '0.9', next: '2.0', ...extra });
  // Tests must never reboot this machine: the reboot command only leaves a mark.
  process.env.UPGRADECTL_REBOOT_COMMAND = `touch ${path.join(layout.root, 'reboot-requested')}`;
  return layout;
}

const rebootRequested = (layout: Layout) => existsSync(path.join(layout.root, 'reboot-requested'));
const cfg = (layout: Layout) => loadConfig(layout);

t.test('upgrade ok: commit, trial boot, health checks pass, confirm makes it the default', { skip }, async (t) => {
  const layout = prepared(t.testdir());
  addHook(layout, 'pre-commit', '10-drain', `echo "drain $UPGRADECTL_FROM -> $UPGRADECTL_TO ($UPGRADECTL_EVENT)" > ${layout.root}/pre-commit.out`);
  addHook(layout, 'health', '10-ok', 'echo healthy');
  addHook(layout, 'post-confirm', '10-warm', `echo "$UPGRADECTL_FROM $UPGRADECTL_TO" > ${layout.root}/post-confirm.out`);

  mkdirSync(path.join(layout.root, 'etc/ssh'), { recursive: true });
  writeFileSync(path.join(layout.root, 'etc/ssh/ssh_host_ed25519_key'), 'this machine\'s host key\n', { mode: 0o600 });
  const c = await commit(layout, await cfg(layout), { reboot: true });
  t.equal(c.state.phase, 'committed');
  t.ok(c.detail.migration, 'migration report kept');
  t.equal(
    execFileSync('debugfs', ['-R', 'cat /etc/ssh/ssh_host_ed25519_key', layout.imageFile('2.0')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }),
    "this machine's host key\n",
    'commit migrated the host key into the new image',
  );
  t.match(readState(layout).history.at(-1), { event: 'commit', detail: { migration: {} } });
  t.ok(rebootRequested(layout), 'reboot requested');
  t.equal(readFileSync(path.join(layout.root, 'pre-commit.out'), 'utf8'), 'drain 1.0 -> 2.0 (commit)\n');
  t.same(envList(layout), { saved_entry: 'upgradectl-1.0', next_entry: 'upgradectl-2.0', upgradectl_trial: 'upgradectl-2.0' });
  t.match(readFileSync(layout.grubCfg, 'utf8'), /--id upgradectl-2.0/);

  // Same boot (e.g. --no-reboot and a status call): no reboot happened, nothing to learn.
  t.equal((await reconcile(layout)).phase, 'committed');

  t.same(grubBoot(layout), ['2.0'], 'GRUB takes the one-shot');
  t.equal(envList(layout).next_entry, undefined, 'GRUB consumed the one-shot');
  t.equal((await reconcile(layout)).phase, 'trying');

  const r = await confirm(layout, await cfg(layout), { reboot: true });
  t.equal(r.event, 'confirm-ok');
  const s = readState(layout);
  t.match(s, { phase: 'idle', current: '2.0', previous: '1.0', next: undefined, bad: {} });
  t.same(envList(layout), { saved_entry: 'upgradectl-2.0' });
  t.equal(readFileSync(path.join(layout.root, 'post-confirm.out'), 'utf8'), '1.0 2.0\n');
  t.equal(fallbackEntryId(readFileSync(layout.grubCfg, 'utf8')), 'upgradectl-1.0', 'fallback is the previous image');
  t.same(s.history.map((h) => h.event), ['commit', 'boot-trial', 'confirm-ok']);
  t.same(grubBoot(layout), ['2.0'], 'the new default boots from now on');
});

t.test('trial panics: GRUB falls back to the old image, the version is marked bad', { skip }, async (t) => {
  const layout = prepared(t.testdir());
  await commit(layout, await cfg(layout), { reboot: false });
  t.same(grubBoot(layout, ['2.0']), ['2.0', '1.0'], 'panic=, then the default');
  const s = await reconcile(layout);
  t.match(s, { phase: 'rolled-back', current: '1.0', previous: '0.9', next: undefined });
  t.match(s.bad['2.0']?.reason, /trial boot of 2.0 did not come up: the machine booted 1.0/);
  t.same(envList(layout), { saved_entry: 'upgradectl-1.0' });
  // Marked bad: not committed again unless forced.
  writeState(layout, { ...s, phase: 'prepared', next: '2.0' });
  await t.rejects(commit(layout, await cfg(layout), { reboot: false }), { code: 'BAD_VERSION' });
});

t.test('trial ended by its deadline: the old image records why, naming the deadline', { skip }, async (t) => {
  // A hang before userspace (or before upgradectl runs): softdog resets the trial, GRUB boots the default.
  const early = prepared(path.join(t.testdir(), 'early'));
  await commit(early, await cfg(early), { reboot: false });
  t.same(grubBoot(early, ['2.0']), ['2.0', '1.0'], 'the trial hangs, the deadline resets it, the default boots');
  const s1 = await reconcile(early);
  t.match(s1, { phase: 'rolled-back', current: '1.0', next: undefined });
  t.equal(
    s1.bad['2.0']?.reason,
    'the trial boot of 2.0 did not come up: the machine booted 1.0 instead (a panic, an image GRUB could not load, or a hang that the 15 min trial deadline ended)',
  );
  t.match(s1.history.at(-1), { event: 'boot-old', ok: false, reason: s1.bad['2.0']?.reason });

  // The trial came up (reconcile ran: trying) but confirm never did (a stuck unit): same end, its own reason.
  const late = prepared(path.join(t.testdir(), 'late'), { extraConfig: '' });
  writeFileSync(late.configFile, readFileSync(late.configFile, 'utf8').replace('[boot]', '[boot]\ntrial_deadline = 20m'));
  await commit(late, await cfg(late), { reboot: false });
  grubBoot(late);
  t.equal((await reconcile(late)).phase, 'trying');
  t.same(grubBoot(late), ['1.0'], 'the deadline resets the unconfirmed trial');
  t.match((await reconcile(late)).bad['2.0']?.reason, /^the trial image 2\.0 came up but was not confirmed before the machine booted 1\.0 \(the 20 min trial deadline resets a trial that is not confirmed in time/);

  // Without a deadline the reason does not invent one.
  const off = prepared(path.join(t.testdir(), 'off'), { extraConfig: '' });
  writeFileSync(off.configFile, readFileSync(off.configFile, 'utf8').replace('[boot]', '[boot]\ntrial_deadline = 0'));
  await commit(off, await cfg(off), { reboot: false });
  grubBoot(off, ['2.0']);
  t.equal((await reconcile(off)).bad['2.0']?.reason, 'the trial boot of 2.0 did not come up: the machine booted 1.0 instead');
});

t.test('three trial attempts: the flag chain boots the trial three times, then the old image', { skip }, async (t) => {
  const layout = prepared(t.testdir(), { trialAttempts: 3 });
  await commit(layout, await cfg(layout), { reboot: false });
  t.match(envList(layout), { upgradectl_tries: '2' });
  t.same(grubBoot(layout, ['2.0', '2.0', '2.0']), ['2.0', '2.0', '2.0', '1.0']);
  t.equal((await reconcile(layout)).phase, 'rolled-back');
});

t.test('three trial attempts, second one comes up: trying, and confirm clears the chain', { skip }, async (t) => {
  const layout = prepared(t.testdir(), { trialAttempts: 3 });
  await commit(layout, await cfg(layout), { reboot: false });
  t.same(grubBoot(layout, ['2.0']), ['2.0', '2.0'], 'the first attempt panics, the second comes up');
  t.match(envList(layout), { upgradectl_tries: '1' });
  t.equal((await reconcile(layout)).phase, 'trying');
  // A second boot of the trial before confirm (watchdog reset): still trying.
  t.same(grubBoot(layout), ['2.0']);
  t.equal((await reconcile(layout)).phase, 'trying');
  await confirm(layout, await cfg(layout), { reboot: false });
  t.same(envList(layout), { saved_entry: 'upgradectl-2.0' }, 'no leftover attempts');
});

t.test('health check fails: recorded, marked bad, rolled back with a reboot', { skip }, async (t) => {
  const layout = prepared(t.testdir());
  addHook(layout, 'health', '10-ok', 'exit 0');
  addHook(layout, 'health', '20-web', 'echo "nginx is not listening on :443" >&2; exit 3');
  addHook(layout, 'pre-rollback', '10-note', `echo "$UPGRADECTL_FROM -> $UPGRADECTL_TO" > ${layout.root}/pre-rollback.out`);
  await commit(layout, await cfg(layout), { reboot: false });
  grubBoot(layout);
  const r = await confirm(layout, await cfg(layout), { reboot: true });
  t.equal(r.event, 'confirm-failed');
  t.ok(rebootRequested(layout));
  const s = readState(layout);
  t.match(s, { phase: 'rolled-back', current: '1.0', next: undefined });
  t.match(s.bad['2.0']?.reason, /health\.d\/20-web exit status 3: nginx is not listening on :443/);
  t.equal(readFileSync(path.join(layout.root, 'pre-rollback.out'), 'utf8'), '2.0 -> 1.0\n');
  t.same(envList(layout), { saved_entry: 'upgradectl-1.0' });
  t.same(grubBoot(layout), ['1.0']);
  t.equal((await reconcile(layout)).phase, 'rolled-back', 'the old image booted as expected');
});

t.test('health check that hangs fails at its deadline', { skip }, async (t) => {
  const layout = prepared(t.testdir(), { extraConfig: '' });
  writeFileSync(layout.configFile, readFileSync(layout.configFile, 'utf8').replace('[health]\ntimeout = 5', '[health]\ntimeout = 1'));
  addHook(layout, 'health', '10-hang', 'sleep 30');
  await commit(layout, await cfg(layout), { reboot: false });
  grubBoot(layout);
  const started = Date.now();
  const r = await confirm(layout, await cfg(layout), { reboot: false });
  t.ok(Date.now() - started < 10_000);
  t.equal(r.event, 'confirm-failed');
  t.match(readState(layout).bad['2.0']?.reason, /did not finish within 1 s/);
});

t.test('manual rollback from idle boots the previous image once, then confirm keeps it', { skip }, async (t) => {
  const layout = makeMachine(t.testdir(), { images: ['1.0', '2.0'], current: '2.0', previous: '1.0' });
  process.env.UPGRADECTL_REBOOT_COMMAND = `touch ${path.join(layout.root, 'reboot-requested')}`;
  const r = await rollback(layout, await cfg(layout), { reboot: true });
  t.equal(r.event, 'rollback');
  t.match(readState(layout), { phase: 'committed', current: '2.0', next: '1.0', trialKind: 'rollback' });
  t.ok(rebootRequested(layout));
  t.match(envList(layout), { saved_entry: 'upgradectl-2.0', next_entry: 'upgradectl-1.0' });
  t.same(grubBoot(layout), ['1.0']);
  t.equal((await reconcile(layout)).phase, 'trying');
  await confirm(layout, await cfg(layout), { reboot: false });
  t.match(readState(layout), { phase: 'idle', current: '1.0', previous: '2.0' });
  t.same(envList(layout), { saved_entry: 'upgradectl-1.0' });
});

t.test('rollback during a trial abandons it and reboots into the old image', { skip }, async (t) => {
  const layout = prepared(t.testdir());
  await commit(layout, await cfg(layout), { reboot: false });
  grubBoot(layout);
  await reconcile(layout);
  const r = await rollback(layout, await cfg(layout), { reboot: true });
  t.equal(r.event, 'rollback');
  t.ok(rebootRequested(layout));
  t.match(readState(layout), { phase: 'rolled-back', current: '1.0', next: undefined });
  t.match(readState(layout).bad['2.0']?.reason, /operator rolled back/);
  t.same(grubBoot(layout), ['1.0']);
});

t.test('cancel: rollback of a prepared or committed upgrade drops the one-shot and keeps the files', { skip }, async (t) => {
  const layout = prepared(t.testdir());
  let r = await rollback(layout, await cfg(layout), { reboot: true });
  t.equal(r.event, 'cancel');
  t.match(readState(layout), { phase: 'idle', current: '1.0', next: undefined });
  t.ok(existsSync(layout.imageFile('2.0')), 'image kept');
  t.notOk(rebootRequested(layout), 'a cancel does not reboot');

  writeState(layout, { ...readState(layout), phase: 'prepared', next: '2.0' });
  await commit(layout, await cfg(layout), { reboot: false });
  r = await rollback(layout, await cfg(layout), { reboot: true });
  t.equal(r.event, 'cancel');
  t.same(envList(layout), { saved_entry: 'upgradectl-1.0' });
  t.same(grubBoot(layout), ['1.0']);
  t.match(await reconcile(layout), { phase: 'idle', bad: {} }, 'a cancelled upgrade is not a failed trial');
});

t.test('a failing pre-commit hook stops the commit with its reason', { skip }, async (t) => {
  const layout = prepared(t.testdir());
  addHook(layout, 'pre-commit', '50-busy', 'echo "3 jobs still running" >&2; exit 1');
  await t.rejects(commit(layout, await cfg(layout), { reboot: true }), { code: 'HOOK', message: /pre-commit\.d\/50-busy: exit status 1: 3 jobs still running/ });
  t.match(readState(layout), { phase: 'prepared', next: '2.0', pending: undefined });
  t.same(envList(layout), { saved_entry: 'upgradectl-1.0' }, 'no one-shot');
  t.notOk(rebootRequested(layout));
});

t.test('wrong moves get errors that say what to do instead', { skip }, async (t) => {
  const idle = makeMachine(path.join(t.testdir(), 'idle'), { images: ['1.0'], current: '1.0' });
  await t.rejects(commit(idle, await cfg(idle), { reboot: false }), { code: 'STATE', message: /cannot commit while the machine is idle/, hint: /prepare/ });
  await t.rejects(confirm(idle, await cfg(idle), { reboot: false }), { code: 'STATE', hint: /not a trial boot/ });
  await t.rejects(rollback(idle, await cfg(idle), { reboot: false }), { code: 'STATE', message: /no previous image/ });

  const layout = prepared(path.join(t.testdir(), 'committed'));
  await commit(layout, await cfg(layout), { reboot: false });
  await t.rejects(confirm(layout, await cfg(layout), { reboot: false }), { code: 'STATE', hint: /reboot to start it/ });

  const gone = prepared(path.join(t.testdir(), 'gone'));
  rmSync(gone.imageFile('2.0'));
  await t.rejects(commit(gone, await cfg(gone), { reboot: false }), { code: 'NOT_FOUND', message: /2\.0\.img is missing/ });

  t.ok(allowed('committed', 'boot-trial') && !allowed('idle', 'confirm-ok'));
});

t.test('a corrupt grubenv is rebuilt at commit, never leaving the machine without a default', { skip }, async (t) => {
  const layout = prepared(t.testdir());
  writeFileSync(layout.grubEnv, 'not an environment block');
  await commit(layout, await cfg(layout), { reboot: false });
  t.match(envList(layout), { saved_entry: 'upgradectl-1.0', next_entry: 'upgradectl-2.0' });
  t.same(grubBoot(layout), ['2.0']);
});

t.test('first boot of an unrecorded image adopts it as current', { skip }, async (t) => {
  const layout = makeMachine(t.testdir(), { images: ['1.0'] });
  boot(layout, '1.0');
  t.match(await reconcile(layout), { phase: 'idle', current: '1.0' });
});

t.test('fallback mode (save_env = false): the image becomes the default directly', { skip }, async (t) => {
  const layout = prepared(t.testdir(), { extraConfig: '' });
  writeFileSync(layout.configFile, readFileSync(layout.configFile, 'utf8').replace('[boot]', '[boot]\nsave_env = false'));
  await commit(layout, await cfg(layout), { reboot: false });
  t.same(envList(layout), { saved_entry: 'upgradectl-2.0' });
  t.notMatch(readFileSync(layout.grubCfg, 'utf8'), /save_env/);
  grubBoot(layout);
  t.equal((await reconcile(layout)).phase, 'trying');
  addHook(layout, 'health', '10-fail', 'exit 1');
  await confirm(layout, await cfg(layout), { reboot: false });
  t.same(envList(layout), { saved_entry: 'upgradectl-1.0' }, 'a failed confirm restores the old default');
});
