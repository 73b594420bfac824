import { promises as fs } from 'node:fs';
import t from 'tap';
import { skipUnless } from '../helpers/requirements.js';
import { BOOT_REQUIREMENTS } from './requirements.js';
import { damageImage } from './damage.js';
import { buildMachine, envOnDisk, powerOn, secs } from './machine.js';

/**
 * Scenario 6: an image file that is missing or corrupt. Who catches it depends on how it is broken:
 *   - GRUB cannot load the entry (file gone, filesystem unreadable): GRUB's `fallback` boots the
 *     previous image in the same power-on;
 *   - GRUB loads kernel and initrd but the filesystem is damaged: our initramfs' e2fsck refuses it and
 *     panics; for a trial image the reset lands on the default, because GRUB consumed the one-shot;
 *     for the default image GRUB's count of its starts runs out and the previous image boots (6d).
 * In every case the images were put in place and the boot files written by upgradectl; the damage is
 * done afterwards, behind its back, as a failing disk or an operator would.
 */

const skip = skipUnless(BOOT_REQUIREMENTS);

t.test('scenario 6a: the default image file is missing: GRUB falls back to the previous image', { skip }, async (t) => {
  const started = performance.now();
  const machine = await buildMachine(t.testdir(), {
    name: 'scenario-6a-missing',
    images: [
      { version: '1', action: 'poweroff' },
      { version: '2', action: 'poweroff' },
    ],
    state: { phase: 'idle', current: '2', previous: '1' },
    tamper: (host) => fs.rm(host.imageFile('2')),
  });
  t.match(machine.grubCfg, /set fallback=/, 'grub.cfg sets a fallback for the default');

  // No reboot may be needed: the fallback happens inside GRUB, in the same power-on.
  const vm = powerOn(t, machine, { allowReboot: false, maxBoots: 1 });
  await vm.waitForLine(/UPGRADECTL-MARKER booted /, 180_000, 'a boot marker');
  await vm.waitForExit(60_000);
  const boots = vm.boots();
  t.same(boots.map((b) => b.image), ['/images/1.img'], 'one kernel boot, of the previous image');
  t.match(boots[0]?.markers.find((m) => m.kind === 'booted')?.fields, { version: '1', e2fsck: '0' });
  t.match(vm.serial, /Booting `upgradectl image 2'/, 'GRUB tried the default first');
  t.match(vm.serial, /Falling back to `upgradectl image 1'/, 'and fell back by itself');
  t.comment(`scenario 6a: wall time ${secs(performance.now() - started)} s`);
});

t.test('scenario 6e: the only image is missing: GRUB says so, waits panic_timeout and reboots instead of waiting for a key', { skip }, async (t) => {
  const started = performance.now();
  const machine = await buildMachine(t.testdir(), {
    name: 'scenario-6e-nothing-to-boot',
    images: [{ version: '1', action: 'poweroff' }],
    state: { phase: 'idle', current: '1' },
    tamper: (host) => fs.rm(host.imageFile('1')),
  });
  // -no-reboot: GRUB's reboot ends QEMU, which is the proof that it did not stop at its menu.
  const vm = powerOn(t, machine, { allowReboot: false, maxBoots: 0 });
  await vm.waitForLine(/upgradectl: no image could be loaded from the host partition/, 180_000, 'the reboot entry\'s message');
  const line = await vm.waitForLine(/upgradectl: UUID=\S+; rebooting in 1 s/, 10_000, 'the UUID and the pause');
  const exit = await vm.waitForExit(60_000);
  t.equal(exit.killedBecause, undefined, 'GRUB rebooted by itself');
  t.same(vm.boots(), [], 'no kernel started');
  t.match(vm.serial, /Booting `upgradectl image 1'/, 'GRUB tried the image first');
  t.match(vm.serial, /Falling back to `upgradectl: no image could be booted, rebooting'/, 'then fell back to the reboot entry');
  t.notMatch(vm.serial, /Failed to boot both default and fallback entries/);
  t.comment(`scenario 6e: "${line.trim()}"; wall time ${secs(performance.now() - started)} s`);
});

t.test('scenario 6b: the default image has no readable filesystem: GRUB falls back; a dirty previous image is repaired', { skip }, async (t) => {
  const started = performance.now();
  const machine = await buildMachine(t.testdir(), {
    name: 'scenario-6b-superblock',
    images: [
      { version: '1', action: 'poweroff' },
      { version: '2', action: 'poweroff' },
    ],
    state: { phase: 'idle', current: '2', previous: '1' },
    tamper: async (host) => {
      await damageImage(host.imageFile('2'), 'superblock');
      // The previous image was last used long ago and not unmounted cleanly: e2fsck -p must fix it and
      // the boot go on (policy: exit 1 boots).
      await damageImage(host.imageFile('1'), 'fixable');
    },
  });
  const vm = powerOn(t, machine, { allowReboot: false, maxBoots: 1 });
  await vm.waitForLine(/UPGRADECTL-MARKER booted /, 180_000, 'a boot marker');
  await vm.waitForExit(60_000);
  const boots = vm.boots();
  t.same(boots.map((b) => b.image), ['/images/1.img'], 'one kernel boot, of the previous image');
  t.match(boots[0]?.markers.find((m) => m.kind === 'booted')?.fields, { version: '1', e2fsck: '1' }, 'e2fsck repaired v1 (exit 1) and it booted');
  t.match(vm.serial, /upgradectl: \/images\/1\.img: e2fsck corrected errors \(exit 1\)/, 'the repair is reported on the console');
  t.match(vm.serial, /Falling back to `upgradectl image 1'/, 'GRUB fell back by itself');
  t.comment(`scenario 6b: wall time ${secs(performance.now() - started)} s`);
});

t.test('scenario 6c: a trial image GRUB can load but e2fsck rejects: initramfs panic, the default boots', { skip }, async (t) => {
  const started = performance.now();
  const machine = await buildMachine(t.testdir(), {
    name: 'scenario-6c-e2fsck',
    images: [
      { version: '2', action: 'poweroff' },
      { version: '3', action: 'poweroff' },
    ],
    state: { phase: 'committed', current: '2', next: '3', trialKind: 'upgrade' },
    trial: '3',
    tamper: (host) => damageImage(host.imageFile('3'), 'uncorrectable'),
  });
  const vm = powerOn(t, machine, { allowReboot: true, maxBoots: 3 });
  await vm.waitForLine(/UPGRADECTL-MARKER booted version=2 /, 240_000, 'v2 booting after the failed trial');
  const exit = await vm.waitForExit(60_000);
  t.equal(exit.killedBecause, undefined, 'v2 powered the machine off: no boot loop');
  const boots = vm.boots();
  t.same(boots.map((b) => b.image), ['/images/3.img', '/images/2.img'], 'the trial once, then the default');
  t.match(
    boots[0]?.text,
    /upgradectl: \/images\/3\.img: e2fsck failed: e2fsck -p exited 4/,
    'the initramfs named the image and the step',
  );
  t.match(boots[0]?.text, /Rebooting automatically due to panic= boot argument/, 'initramfs-tools panic honoured panic=');
  t.notOk(boots[0]?.markers.some((m) => m.kind === 'booted'), 'v3 never reached its init');
  t.match(boots[1]?.markers.find((m) => m.kind === 'booted')?.fields, { version: '2', e2fsck: '0' });
  t.comment(`scenario 6c: wall time ${secs(performance.now() - started)} s`);
});

/**
 * The case GRUB's `fallback` cannot catch: the DEFAULT image loads, then dies (here in the initramfs).
 * GRUB counts starts of the default in grubenv (upgradectl_default_tries, written with save_env before
 * each start) and the booted OS clears the count; the busybox images never clear it, exactly like an
 * image that never comes up. With [boot] default_attempts = 2 (the default): v2, v2, then v1.
 */
t.test('scenario 6d: the DEFAULT image GRUB can load but e2fsck rejects: after default_attempts starts, the previous image boots', { skip }, async (t) => {
  const started = performance.now();
  const machine = await buildMachine(t.testdir(), {
    name: 'scenario-6d-default-e2fsck',
    images: [
      { version: '1', action: 'poweroff' },
      { version: '2', action: 'poweroff' },
    ],
    state: { phase: 'idle', current: '2', previous: '1' },
    tamper: (host) => damageImage(host.imageFile('2'), 'uncorrectable'),
  });
  t.equal(machine.config.boot.defaultAttempts, 2, 'the default default_attempts');
  t.match(machine.grubCfg, /save_env upgradectl_default_tries/, 'grub.cfg counts starts of the default');
  t.notOk(machine.envBefore.upgradectl_default_tries, 'nothing counted before the first power-on');

  // Three kernel starts at most: a fourth would be the boot loop this scenario is about.
  const vm = powerOn(t, machine, { allowReboot: true, maxBoots: 3 });
  await vm.waitForLine(/UPGRADECTL-MARKER booted version=1 /, 480_000, 'v1 booting after two failed starts of v2');
  const exit = await vm.waitForExit(60_000);
  t.equal(exit.killedBecause, undefined, 'v1 powered the machine off: no boot loop');
  const boots = vm.boots();
  t.same(boots.map((b) => b.image), ['/images/2.img', '/images/2.img', '/images/1.img'], 'the default twice, then the previous image');
  for (const [i, boot] of boots.slice(0, 2).entries()) {
    t.match(boot.text, /upgradectl: \/images\/2\.img: e2fsck failed: e2fsck -p exited 4/, `start ${i + 1} of v2: the initramfs refused the damaged default`);
    t.match(boot.text, /Rebooting automatically due to panic= boot argument/, `start ${i + 1} of v2: panic= reset the machine`);
    t.notOk(boot.markers.some((m) => m.kind === 'booted'), `start ${i + 1} of v2 never reached its init`);
  }
  t.match(boots[2]?.markers.find((m) => m.kind === 'booted')?.fields, { version: '1', e2fsck: '0' }, 'v1 came up');
  t.notMatch(vm.serial, /Falling back to/, 'not GRUB\'s load-failure fallback: the count chose v1');

  const env = await envOnDisk(machine);
  t.equal(env.upgradectl_default_tries, '2', 'GRUB\'s count on disk: two starts of the default, never cleared');
  t.equal(env.saved_entry, 'upgradectl-2', 'GRUB leaves the default alone: upgradectl in the running image switches it (reconcile)');
  const cycleMs = (boots[2]?.startedMs ?? 0) - (boots[0]?.startedMs ?? 0);

  // Until an OS clears the count, every power-on boots the previous image directly.
  const again = powerOn(t, { ...machine, logFile: machine.logFile.replace(/\.serial\.log$/, '-again.serial.log') }, { allowReboot: false, maxBoots: 1 });
  await again.waitForLine(/UPGRADECTL-MARKER booted /, 240_000, 'a boot marker at the next power-on');
  await again.waitForExit(60_000);
  t.same(again.boots().map((b) => b.image), ['/images/1.img'], 'the next power-on: v1 at once');
  t.same(await envOnDisk(machine), env, 'and GRUB wrote nothing more');
  t.comment(`scenario 6d: boots ${boots.map((b) => b.image).join(' -> ')}; first v2 kernel start -> v1 kernel start ${secs(cycleMs)} s; wall time ${secs(performance.now() - started)} s`);
});
