import t from 'tap';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { skipUnless } from '../helpers/requirements.js';
import { defaultCountOf } from '../helpers/assert.js';
import { writeBootFiles } from '../../src/operations/boot.js';
import { loadConfig } from '../../src/operations/config.js';
import { reconcile } from '../../src/operations/reconcile/index.js';
import { commit } from '../../src/operations/commit.js';
import { confirm } from '../../src/operations/confirm.js';
import type { Layout } from '../../src/core/layout.js';
import type { State } from '../../src/operations/state.js';
import { addHook, boot, editenv, envList, grubBoot, makeMachine, readState, writeState, type MachineOptions } from './fixtures/machine.js';

/**
 * Boot counting of the default, OS side: reconcile (run on every boot by `confirm --if-trial`) clears
 * the count GRUB keeps of the default's starts, and when GRUB has given up on the default and booted
 * the previous image, records that, marks the default bad and makes the running image the default.
 * GRUB is played by the fixture's grubBoot, which follows the installed grub.cfg.
 */

const skip = skipUnless({ root: true, commands: ['grub-editenv', 'grub-script-check', 'mke2fs', 'e2fsck', 'losetup', 'debugfs'] });

/** Running 2.0 (previous 1.0) with boot files written for that, as a confirm leaves it. */
async function running(dir: string, opts: MachineOptions = {}): Promise<Layout> {
  const layout = makeMachine(dir, { images: ['1.0', '2.0'], current: '2.0', previous: '1.0', ...opts });
  process.env.UPGRADECTL_REBOOT_COMMAND = `touch ${path.join(layout.root, 'reboot-requested')}`;
  const state: State = { ...readState(layout) };
  await writeBootFiles(layout, await loadConfig(layout), state);
  return layout;
}

t.test('a normal boot of the default: the count is cleared in place, nothing else changes', { skip }, async (t) => {
  const layout = await running(t.testdir());
  const before = readState(layout);
  t.same(grubBoot(layout), ['2.0']);
  t.match(envList(layout), { upgradectl_default_tries: '1' }, 'GRUB counted the start');
  const ino = statSync(layout.grubEnv).ino;
  const s = await reconcile(layout);
  t.same(envList(layout), { saved_entry: 'upgradectl-2.0' }, 'cleared');
  t.equal(statSync(layout.grubEnv).ino, ino, 'grubenv rewritten in place (never truncated: the journal trap)');
  t.match(s, { phase: 'idle', current: '2.0', previous: '1.0', bad: {} });
  t.same(readState(layout).history, before.history, 'an everyday boot leaves no history entry');
  const stateText = readFileSync(layout.stateFile, 'utf8');
  const envBlock = readFileSync(layout.grubEnv);
  await reconcile(layout);
  t.equal(readFileSync(layout.stateFile, 'utf8'), stateText, 'a second reconciliation in the same boot has nothing to do');
  t.ok(readFileSync(layout.grubEnv).equals(envBlock), 'and writes nothing');
});

t.test('a power cut during one normal boot is not a rollback', { skip }, async (t) => {
  const layout = await running(t.testdir());
  // The first start dies half-way (power cut); the second comes up.
  t.same(grubBoot(layout, ['2.0']), ['2.0', '2.0']);
  t.match(envList(layout), { upgradectl_default_tries: '2' });
  const s = await reconcile(layout);
  t.match(s, { phase: 'idle', current: '2.0', previous: '1.0', bad: {} });
  t.same(envList(layout), { saved_entry: 'upgradectl-2.0' });
  t.same(grubBoot(layout), ['2.0'], 'and the next boot is the default again');
});

t.test('the default never comes up: GRUB boots the previous image, which becomes the default; the default is marked bad', { skip }, async (t) => {
  const layout = await running(t.testdir());
  t.same(grubBoot(layout, ['2.0', '2.0']), ['2.0', '2.0', '1.0'], 'two starts of the default, then the previous image');
  const s = await reconcile(layout);
  t.match(s, { phase: 'rolled-back', current: '1.0', previous: undefined, next: undefined });
  t.match(s.bad['2.0']?.reason, /the default image 2\.0 was started 2 times without coming up .*GRUB booted 1\.0 instead, which is now the default/);
  t.match(s.history.at(-1), { event: 'default-failed', from: 'idle', to: 'rolled-back', version: '2.0', ok: false, reason: /started 2 times/ });
  t.same(envList(layout), { saved_entry: 'upgradectl-1.0' }, 'GRUB\'s default is the running image, and its count starts afresh');
  const cfg = readFileSync(layout.grubCfg, 'utf8');
  t.match(cfg, /^menuentry 'upgradectl image 1\.0[^\n]*--id upgradectl-1\.0 \{/m, 'grub.cfg rewritten: the new default is the first entry');
  t.equal(defaultCountOf(cfg), undefined, 'no previous image is left to count against');

  t.equal((await reconcile(layout)).history.length, s.history.length, 'recorded once');
  t.same(grubBoot(layout), ['1.0'], 'the next boot is the new default');
  t.equal((await reconcile(layout)).history.filter((h) => h.event === 'default-failed').length, 1);
});

t.test('the count is exhausted while an upgrade is prepared: recorded, the upgrade stays prepared', { skip }, async (t) => {
  const layout = await running(t.testdir(), { images: ['1.0', '2.0', '3.0'], next: '3.0' });
  t.equal(readState(layout).phase, 'prepared');
  t.same(grubBoot(layout, ['2.0', '2.0']), ['2.0', '2.0', '1.0']);
  t.match(await reconcile(layout), { phase: 'prepared', current: '1.0', next: '3.0', bad: { '2.0': {} } });
  // The prepared upgrade goes on from the image that runs: a failed trial returns to it.
  await commit(layout, await loadConfig(layout), { reboot: false });
  t.match(envList(layout), { saved_entry: 'upgradectl-1.0', next_entry: 'upgradectl-3.0' });
});

t.test('cut off after recording the failed default, before the boot files: the next reconciliation finishes the switch', { skip }, async (t) => {
  const layout = await running(t.testdir());
  t.same(grubBoot(layout, ['2.0', '2.0']), ['2.0', '2.0', '1.0']);
  // As reconcile leaves it when the power goes between saving the state and rewriting grubenv.
  const reason = 'the default image 2.0 was started 2 times without coming up';
  writeState(layout, { ...readState(layout), phase: 'rolled-back', current: '1.0', previous: undefined, bad: { '2.0': { reason, at: '2026-11-21T00:00:00Z' } } });
  t.match(envList(layout), { saved_entry: 'upgradectl-2.0', upgradectl_default_tries: '2' });
  t.same(grubBoot(layout), ['1.0'], 'GRUB keeps booting the previous image meanwhile');
  const s = await reconcile(layout);
  t.same(envList(layout), { saved_entry: 'upgradectl-1.0' });
  t.equal(s.history.length, 0, 'no second record');
  t.match(s, { phase: 'rolled-back', current: '1.0' });
});

t.test('a failed trial, then a default that does not come up: both recorded, in order', { skip }, async (t) => {
  const layout = await running(t.testdir(), { images: ['0.9', '1.0', '2.0'], current: '1.0', previous: '0.9', next: '2.0' });
  await commit(layout, await loadConfig(layout), { reboot: false });
  t.same(grubBoot(layout, ['2.0', '1.0', '1.0']), ['2.0', '1.0', '1.0', '0.9'], 'the trial, the default twice, then the previous image');
  const s = await reconcile(layout);
  t.same(s.history.map((h) => h.event), ['commit', 'boot-old', 'default-failed']);
  t.match(s, { phase: 'rolled-back', current: '0.9', next: undefined });
  t.same(Object.keys(s.bad).sort(), ['1.0', '2.0']);
  t.same(envList(layout), { saved_entry: 'upgradectl-0.9' });
});

t.test('the trial image runs: its boot neither counts nor clears the default\'s count', { skip }, async (t) => {
  const layout = await running(t.testdir(), { images: ['0.9', '1.0', '2.0'], current: '1.0', previous: '0.9', next: '2.0' });
  await commit(layout, await loadConfig(layout), { reboot: false });
  // A count left by a start of the default that GRUB's fallback caught (see the next test).
  editenv(layout, 'set', 'upgradectl_default_tries=1');
  t.same(grubBoot(layout), ['2.0']);
  t.equal((await reconcile(layout)).phase, 'trying');
  t.match(envList(layout), { upgradectl_default_tries: '1' }, 'left for the end of the trial');
  addHook(layout, 'health', '10-ok', 'exit 0');
  await confirm(layout, await loadConfig(layout), { reboot: false });
  t.same(envList(layout), { saved_entry: 'upgradectl-2.0' }, 'a new default starts with no count');
});

t.test('another image runs before the count is used up (GRUB fell back, or a pick in the menu): the count stays', { skip }, async (t) => {
  const layout = await running(t.testdir());
  // GRUB counted a start of 2.0, which failed to load; its `fallback` booted 1.0 in the same power-on.
  editenv(layout, 'set', 'upgradectl_default_tries=1');
  boot(layout, '1.0');
  const s = await reconcile(layout);
  t.match(s, { phase: 'idle', current: '2.0', bad: {} });
  t.match(envList(layout), { saved_entry: 'upgradectl-2.0', upgradectl_default_tries: '1' }, 'only the default\'s own boot clears it');
});
