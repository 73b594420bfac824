import t from 'tap';
import { skipUnless } from '../helpers/requirements.js';
import { BOOT_REQUIREMENTS } from './requirements.js';
import { TEST_BOOT_CONFIG, buildMachine, envOnDisk, powerOn, secs } from './machine.js';

/**
 * Scenario 3, GRUB side: v2 is the default, v3 is armed as a one-shot trial by boot-control's
 * armTrial (what commit does), and v3's init dies. The kernel panics, panic= resets the machine, and
 * GRUB, whose one-shot was consumed before v3 booted, starts v2 without any help.
 *
 * Not covered here (needs upgradectl running inside a Debian image): v2's daemon noticing the failed
 * trial, marking v3 bad and never offering it again.
 */

const skip = skipUnless(BOOT_REQUIREMENTS);

t.test('scenario 3: a trial image whose init panics falls back to the default by itself', { skip }, async (t) => {
  const started = performance.now();
  const machine = await buildMachine(t.testdir(), {
    name: 'scenario-3',
    images: [
      { version: '2', action: 'poweroff' },
      { version: '3', action: 'panic' },
    ],
    state: { phase: 'committed', current: '2', next: '3', trialKind: 'upgrade' },
    trial: '3',
  });
  t.match(machine.envBefore, { saved_entry: 'upgradectl-2', next_entry: 'upgradectl-3' }, 'armTrial set the one-shot');

  const vm = powerOn(t, machine, { allowReboot: true, maxBoots: 3 });
  await vm.waitForLine(/UPGRADECTL-MARKER booted version=2 /, 240_000, 'v2 booting after the failed trial');
  const exit = await vm.waitForExit(60_000);
  t.equal(exit.killedBecause, undefined, 'v2 powered the machine off: no boot loop');

  const boots = vm.boots();
  t.same(boots.map((b) => b.image), ['/images/3.img', '/images/2.img'], 'the trial once, then the default');
  t.ok(boots[0]?.markers.some((m) => m.kind === 'action' && m.fields.action === 'panic' && m.fields.version === '3'), 'v3 reached its init and failed there');
  t.match(boots[0]?.text, /Kernel panic - not syncing: Attempted to kill init/, 'the kernel panicked on v3');
  t.match(boots[0]?.text, /Rebooting in 1 seconds/, 'panic=1 rebooted the machine');
  t.match(boots[1]?.markers.find((m) => m.kind === 'booted')?.fields, { version: '2', root: '/dev/loop0,ro', host: '/dev/vda1,rw' });

  const env = await envOnDisk(machine);
  t.notOk(env.next_entry, 'GRUB consumed the one-shot (next_entry cleared on disk by save_env)');
  t.equal(env.saved_entry, 'upgradectl-2', 'the default is still v2');
  const fallbackMs = (boots[1]?.startedMs ?? 0) - (boots[0]?.startedMs ?? 0);
  t.comment(`scenario 3: trial kernel start -> default kernel start ${secs(fallbackMs)} s, wall time ${secs(performance.now() - started)} s`);
});

t.test('scenario 3b: with trial_attempts = 2 the trial boots twice, then the default', { skip }, async (t) => {
  const started = performance.now();
  const machine = await buildMachine(t.testdir(), {
    name: 'scenario-3b-two-attempts',
    images: [
      { version: '2', action: 'poweroff' },
      { version: '3', action: 'panic' },
    ],
    state: { phase: 'committed', current: '2', next: '3', trialKind: 'upgrade' },
    trial: '3',
    configText: TEST_BOOT_CONFIG.replace('trial_attempts = 1', 'trial_attempts = 2'),
  });
  t.match(machine.envBefore, { next_entry: 'upgradectl-3', upgradectl_trial: 'upgradectl-3', upgradectl_tries: '1' }, 'one extra attempt armed');

  const vm = powerOn(t, machine, { allowReboot: true, maxBoots: 4 });
  await vm.waitForLine(/UPGRADECTL-MARKER booted version=2 /, 300_000, 'v2 booting after two failed trials');
  const exit = await vm.waitForExit(60_000);
  t.equal(exit.killedBecause, undefined, 'v2 powered the machine off: no boot loop');
  t.same(vm.boots().map((b) => b.image), ['/images/3.img', '/images/3.img', '/images/2.img'], 'two trials, then the default');

  const env = await envOnDisk(machine);
  t.notOk(env.next_entry, 'next_entry consumed');
  t.notOk(env.upgradectl_tries, 'the extra attempt consumed');
  t.equal(env.saved_entry, 'upgradectl-2', 'the default is still v2');
  t.comment(`scenario 3b: wall time ${secs(performance.now() - started)} s`);
});
