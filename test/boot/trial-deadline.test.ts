import t from 'tap';
import { skipUnless } from '../helpers/requirements.js';
import { BOOT_REQUIREMENTS } from './requirements.js';
import { TEST_BOOT_CONFIG, buildMachine, envOnDisk, powerOn, secs } from './machine.js';

/**
 * The trial deadline (docs/grub.md and docs/initramfs.md, "Trial deadline"), with the real GRUB, kernel
 * and initramfs: v1 is the default, v2 is armed as a trial (boot-control's armTrial, as commit does) and
 * its init prints its markers and then sleeps forever: no panic, nothing that would reset the machine.
 * GRUB must give only the trial boot the trial arguments, the initramfs must arm softdog with the
 * deadline, and the kernel must reset the machine at the deadline, after which GRUB boots v1 with none
 * of it.
 *
 * What upgradectl on v1 then records is the reconcile rule `boot-old` (test/operations/lifecycle.test.ts,
 * and the Debian flow in upgrade-flow.test.ts): busybox images have no upgradectl.
 *
 * That a confirmed trial stays up past the deadline (confirm's magic close) would cost a second trial
 * boot plus the whole deadline; it is covered by test/operations/trial-deadline.test.ts on a temp root.
 */

const skip = skipUnless(BOOT_REQUIREMENTS);

/** Short enough for CI, long enough that the trial's own boot (~6 s from kernel start) ends well before it. */
const DEADLINE = 20;

/** The kernel's timestamp ([   12.345678]) of the first console line matching `re`, in seconds. */
function kernelTime(text: string, re: RegExp): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^\[\s*(\d+\.\d+)\]/.exec(line);
    if (m && re.test(line)) return Number(m[1]);
  }
  return undefined;
}

t.test('trial deadline: a trial that hangs without panicking is reset into the default by softdog', { skip }, async (t) => {
  const started = performance.now();
  const machine = await buildMachine(t.testdir(), {
    name: 'trial-deadline-hang',
    images: [
      { version: '1', action: 'poweroff' },
      { version: '2', action: 'hang' },
    ],
    state: { phase: 'committed', current: '1', next: '2', trialKind: 'upgrade' },
    trial: '2',
    configText: `${TEST_BOOT_CONFIG}trial_deadline = ${DEADLINE}s\n`,
  });
  t.equal(machine.config.boot.trialDeadline, DEADLINE);
  t.match(machine.envBefore, { next_entry: 'upgradectl-2', saved_entry: 'upgradectl-1' }, 'the trial is armed');
  t.match(machine.grubCfg, /set upgradectl_trial_boot="\$\{next_entry\}"/, 'the one-shot names the trial entry');

  const vm = powerOn(t, machine, { allowReboot: true, maxBoots: 3 });
  await vm.waitForLine(/UPGRADECTL-MARKER action=hang version=2/, 240_000, 'v2 booting as a trial and hanging');
  // From here nothing in the guest asks for a reset: only softdog can end this boot.
  await vm.waitForLine(/UPGRADECTL-MARKER booted version=1 /, (DEADLINE + 180) * 1000, 'v1 booting after the deadline');
  const exit = await vm.waitForExit(60_000);
  t.equal(exit.killedBecause, undefined, 'v1 powered the machine off: no boot loop');

  const boots = vm.boots();
  t.same(boots.map((b) => b.image), ['/images/2.img', '/images/1.img'], 'the trial, then the default');
  const [trial, fallback] = boots as [(typeof boots)[0], (typeof boots)[0]];

  // The trial boot: GRUB's arguments, the initramfs' arming, the hang, softdog's reset.
  t.match(trial.cmdline, ` panic=1 upgradectl.trial=1 upgradectl.trial_deadline=${DEADLINE} softlockup_panic=1 `, 'GRUB gave the trial the trial arguments');
  const trialMarker = trial.markers.find((m) => m.kind === 'cmdline');
  t.match(trialMarker?.rest, `upgradectl.trial=1 upgradectl.trial_deadline=${DEADLINE}`, 'and /proc/cmdline has them');
  t.match(trial.markers.find((m) => m.kind === 'booted')?.fields, { version: '2', deadline: String(DEADLINE), watchdog: 'active' }, 'softdog counting down in the booted OS');
  t.match(trial.text, new RegExp(`upgradectl: /images/2\\.img: trial deadline armed: ${DEADLINE} s on /dev/watchdog\\d`), 'the initramfs says it armed the deadline');
  t.match(trial.text, /watchdog did not stop!/, 'the close without the magic character left it running');
  t.match(trial.text, /softdog: Initiating system reboot/, 'softdog reset the machine');
  t.notMatch(trial.text, /Kernel panic|Rebooting automatically due to panic=/, 'no panic: the deadline did it');
  const armedAt = kernelTime(trial.text, /trial deadline armed/);
  const firedAt = kernelTime(trial.text, /softdog: Initiating system reboot/);
  t.ok(armedAt !== undefined && firedAt !== undefined, 'both lines carry kernel timestamps');
  const counted = firedAt! - armedAt!;
  t.ok(counted >= DEADLINE - 1 && counted <= DEADLINE + 5, `reset ${counted.toFixed(1)} s after arming (guest clock), deadline ${DEADLINE} s`);

  // The default boot after it: none of the trial's arguments, nothing armed.
  t.notMatch(fallback.cmdline, /upgradectl\.trial|softlockup_panic/, 'the default boot gets no trial arguments');
  t.match(fallback.markers.find((m) => m.kind === 'booted')?.fields, { version: '1', deadline: 'none', watchdog: 'none' }, 'no deadline on the default');
  t.notMatch(fallback.text, /trial deadline/, 'the initramfs did nothing about a deadline');

  const env = await envOnDisk(machine);
  t.notOk(env.next_entry, 'GRUB consumed the one-shot before the trial booted');
  t.equal(env.saved_entry, 'upgradectl-1', 'the default is still v1');

  const hungAt = trial.markers.find((m) => m.kind === 'action')!.atMs;
  const v1Up = fallback.markers.find((m) => m.kind === 'booted')!.atMs;
  t.comment(
    `trial deadline: hang -> v1 kernel start ${secs(fallback.startedMs - hungAt)} s, hang -> v1 marker ${secs(v1Up - hungAt)} s ` +
      `(armed -> reset ${counted.toFixed(1)} s guest time; deadline ${DEADLINE} s); build ${secs(machine.buildSeconds * 1000)} s; ` +
      `scenario wall time ${secs(performance.now() - started)} s`,
  );
});
