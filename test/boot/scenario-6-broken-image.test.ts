import { promises as fs } from 'node:fs';
import t from 'tap';
import { skipUnless } from '../helpers/requirements.js';
import { BOOT_REQUIREMENTS } from './requirements.js';
import { damageImage } from './damage.js';
import { buildMachine, powerOn, secs } from './machine.js';

/**
 * Scenario 6: an image file that is missing or corrupt. Who catches it depends on how it is broken:
 *   - GRUB cannot load the entry (file gone, filesystem unreadable): GRUB's `fallback` boots the
 *     previous image in the same power-on;
 *   - GRUB loads kernel and initrd but the filesystem is damaged: our initramfs' e2fsck refuses it and
 *     panics; for a trial image the reset lands on the default, because GRUB consumed the one-shot.
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
 * Known gap, run so that it is measured and turns green when fixed: GRUB's fallback only covers entries
 * that fail to load, and an initramfs panic resets into the same default, so today this is a boot loop.
 * A fix needs the initramfs to redirect the next boot before it panics (e.g. write next_entry=<previous>
 * into grubenv in place) or GRUB-side counting of default boots. The assertions are tap todos: their
 * failure is reported, not counted.
 */
const GAP = 'boot loop: nothing redirects the reset after an initramfs panic of the default image (docs/initramfs.md)';

t.test('scenario 6d: the DEFAULT image GRUB can load but e2fsck rejects: the previous image boots', { skip }, async (t) => {
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
  const vm = powerOn(t, machine, { allowReboot: true, maxBoots: 3 });
  // Two kernel starts decide it: the second is either the previous image (fixed) or v2 again (loop).
  await vm.waitUntil(() => vm.boots().filter((b) => b.cmdline).length >= 2, 150_000, 'a second kernel boot');
  await vm.kill('decided after two boots');
  const boots = vm.boots();
  t.match(boots[0]?.text, /upgradectl: \/images\/2\.img: e2fsck failed/, 'the initramfs refused the damaged default');
  t.equal(boots[1]?.image, '/images/1.img', 'the next boot is the previous image', { todo: GAP });
  t.comment(`scenario 6d: boots seen: ${boots.map((b) => b.image).join(', ')}; wall time ${secs(performance.now() - started)} s`);
});
