import t from 'tap';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Layout } from '../../src/core/layout.js';
import { commit } from '../../src/operations/commit.js';
import { confirm } from '../../src/operations/confirm.js';
import { loadConfig } from '../../src/operations/config.js';
import { reconcile } from '../../src/operations/reconcile/index.js';
import { deadlineCause, endTrialDeadline } from '../../src/operations/trial-deadline.js';
import { skipUnless } from '../helpers/requirements.js';
import { addHook, grubBoot, makeMachine } from './fixtures/machine.js';

/**
 * confirm's side of the trial deadline: the magic close on the watchdog the initramfs armed. A regular
 * file stands in for the device; what matters is what is written to which file, and when.
 */

const TRIAL_ARGS = 'upgradectl.trial=1 upgradectl.trial_deadline=900 softlockup_panic=1';

/** A booted root as the initramfs leaves it: the command line, its report, and device files. */
function bootedRoot(dir: string, opts: { trialArgs?: string; armed?: string }): Layout {
  mkdirSync(path.join(dir, 'proc'), { recursive: true });
  mkdirSync(path.join(dir, 'run/upgradectl'), { recursive: true });
  mkdirSync(path.join(dir, 'dev'), { recursive: true });
  writeFileSync(path.join(dir, 'proc/cmdline'), `BOOT_IMAGE=(ucl1)/vmlinuz root=UUID=x upgradectl.loop=/images/2.img ro panic=10 ${opts.trialArgs ?? ''} quiet\n`);
  writeFileSync(
    path.join(dir, 'run/upgradectl/initramfs.env'),
    `UPGRADECTL_IMAGE=/images/2.img\nUPGRADECTL_TRIAL_DEADLINE=${opts.armed ? 900 : ''}\nUPGRADECTL_TRIAL_WATCHDOG=${opts.armed ?? ''}\n`,
  );
  // softdog as watchdog1, and a hardware watchdog at /dev/watchdog that must never be opened.
  writeFileSync(path.join(dir, 'dev/watchdog1'), '');
  writeFileSync(path.join(dir, 'dev/watchdog'), '');
  return new Layout(dir);
}

const written = (layout: Layout, dev: string) => readFileSync(path.join(layout.root, dev), 'utf8');

t.test('the magic close goes to the device the initramfs armed, on a trial boot only', async (t) => {
  const trial = bootedRoot(path.join(t.testdir(), 'trial'), { trialArgs: TRIAL_ARGS, armed: '/dev/watchdog1' });
  t.match(await endTrialDeadline(trial), { ended: true, device: '/dev/watchdog1' });
  t.equal(written(trial, 'dev/watchdog1'), 'V', "'V' written: the kernel stops the countdown at the close");
  t.equal(written(trial, 'dev/watchdog'), '', 'the other watchdog is never opened');

  const normal = bootedRoot(path.join(t.testdir(), 'default'), { armed: '/dev/watchdog1' });
  t.match(await endTrialDeadline(normal), { ended: false, why: /not a trial boot/ });
  t.equal(written(normal, 'dev/watchdog1'), '', 'a default boot: nothing written');

  const unarmed = bootedRoot(path.join(t.testdir(), 'unarmed'), { trialArgs: TRIAL_ARGS });
  t.match(await endTrialDeadline(unarmed), { ended: false, why: /armed no deadline/ });
  t.equal(written(unarmed, 'dev/watchdog') + written(unarmed, 'dev/watchdog1'), '', 'the initramfs armed nothing (old image, no softdog): nothing opened');

  const odd = bootedRoot(path.join(t.testdir(), 'odd'), { trialArgs: TRIAL_ARGS, armed: '/etc/shadow' });
  t.match(await endTrialDeadline(odd), { ended: false });
  t.notOk(existsSync(path.join(odd.root, 'etc/shadow')), 'a report naming something other than a watchdog is ignored');

  const gone = bootedRoot(path.join(t.testdir(), 'gone'), { trialArgs: TRIAL_ARGS, armed: '/dev/watchdog3' });
  t.match(await endTrialDeadline(gone), { ended: false, device: '/dev/watchdog3', why: /is gone/ });
  t.notOk(existsSync(path.join(gone.root, 'dev/watchdog3')), 'a missing device is reported, never created');
});

t.test('a failed trial names the deadline among its causes only when there is one', async (t) => {
  t.equal(deadlineCause(0, false), '');
  t.equal(deadlineCause(900, false), ' (a panic, an image GRUB could not load, or a hang that the 15 min trial deadline ended)');
  t.match(deadlineCause(3600, true), /^ \(the 1 h trial deadline resets a trial that is not confirmed in time/);
  t.match(deadlineCause(20, true), /the 20 s trial deadline/);
});

// Commit migrates into the image through a real loop mount: root and e2fsprogs.
const skip = skipUnless({ root: true, commands: ['grub-editenv', 'grub-script-check', 'mke2fs', 'e2fsck', 'losetup', 'debugfs'] });

t.test('confirm ends the deadline of the trial it confirms; a failed confirm leaves it running', { skip }, async (t) => {
  for (const healthy of [true, false]) {
    const layout = makeMachine(path.join(t.testdir(), String(healthy)), { images: ['1.0', '2.0'], current: '1.0', next: '2.0' });
    process.env.UPGRADECTL_REBOOT_COMMAND = `touch ${path.join(layout.root, 'reboot-requested')}`;
    if (!healthy) addHook(layout, 'health', '10-fail', 'exit 1');
    await commit(layout, await loadConfig(layout), { reboot: false });
    t.same(grubBoot(layout), ['2.0']);
    t.match(readFileSync(layout.cmdlineFile, 'utf8'), ` panic=5 ${TRIAL_ARGS} `, 'GRUB booted the trial with the trial arguments');
    // What the initramfs leaves when it armed softdog as watchdog0.
    mkdirSync(path.join(layout.root, 'run/upgradectl'), { recursive: true });
    mkdirSync(path.join(layout.root, 'dev'), { recursive: true });
    writeFileSync(layout.initramfsEnv, 'UPGRADECTL_TRIAL_DEADLINE=900\nUPGRADECTL_TRIAL_WATCHDOG=/dev/watchdog0\n');
    writeFileSync(path.join(layout.root, 'dev/watchdog0'), '');
    t.equal((await reconcile(layout)).phase, 'trying');
    const r = await confirm(layout, await loadConfig(layout), { reboot: true });
    if (healthy) {
      t.equal(r.event, 'confirm-ok');
      t.match(r.detail.trialDeadline, { ended: true, device: '/dev/watchdog0' });
      t.equal(written(layout, 'dev/watchdog0'), 'V', 'confirmed: the countdown is stopped');
      t.same(grubBoot(layout), ['2.0'], 'and the next boot is a normal boot of the new default');
      t.notMatch(readFileSync(layout.cmdlineFile, 'utf8'), /upgradectl\.trial/, 'without trial arguments');
    } else {
      t.equal(r.event, 'confirm-failed');
      t.equal(written(layout, 'dev/watchdog0'), '', 'failed: the deadline still resets the machine if the reboot does not happen');
    }
  }
});
