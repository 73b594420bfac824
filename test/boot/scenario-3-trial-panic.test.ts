import t from 'tap';
import { skipUnless } from '../helpers/requirements.js';
import { BOOT_REQUIREMENTS } from './requirements.js';
import { TEST_BOOT_CONFIG, buildMachine, envOnDisk, powerOn, secs } from './machine.js';

/**
 * Scenario 3 with more than one attempt, GRUB side: v2 is the default, v3 is armed by boot-control's
 * armTrial (what commit does) with trial_attempts = 2, and v3's init dies on every boot. GRUB must
 * spend exactly the attempts it was given, then start v2 without any help.
 *
 * Scenario 3 itself (one attempt, committed by upgradectl inside a running v2, v3 recorded as failed
 * and never offered again) runs in upgrade-flow.test.ts.
 */

const skip = skipUnless(BOOT_REQUIREMENTS);

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
