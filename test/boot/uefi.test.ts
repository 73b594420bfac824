import t from 'tap';
import { skipUnless } from '../helpers/requirements.js';
import { BOOT_REQUIREMENTS } from './requirements.js';
import { HOST_UUID, buildMachine, envOnDisk, powerOn, secs } from './machine.js';

/**
 * The boot chain on UEFI: OVMF, GRUB x86_64-efi at the ESP's removable path (EFI/BOOT/BOOTX64.EFI,
 * built with grub-mkimage, test/boot/disk.ts), the same ext4 host partition and the same generated
 * grub.cfg as on BIOS. One power-on proves the three things a machine needs from it:
 *   - loop boot: the trial image v2 runs from a loop device with /host mounted;
 *   - trial: GRUB consumed the one-shot with save_env (it writes through the EFI block I/O) before it
 *     booted v2;
 *   - panic fallback: v2's init dies, panic=1 resets the machine, and GRUB boots the default v1.
 * And the video fix: EFI GRUB loads a video driver, so linux no longer boots "in blind mode".
 */

const skip = skipUnless({ ...BOOT_REQUIREMENTS, commands: [...BOOT_REQUIREMENTS.commands!, 'mkfs.vfat', 'mcopy', 'mmd'], files: ['/usr/share/OVMF/OVMF_CODE_4M.fd', '/usr/lib/grub/x86_64-efi/linux.mod'] });

t.test('UEFI: loop boot of a trial, its panic, and the fallback to the default, in one power-on', { skip }, async (t) => {
  const started = performance.now();
  const machine = await buildMachine(t.testdir(), {
    name: 'uefi-trial-panic',
    firmware: 'uefi',
    images: [
      { version: '1', action: 'poweroff' },
      { version: '2', action: 'panic' },
    ],
    state: { phase: 'committed', current: '1', next: '2', trialKind: 'upgrade' },
    trial: '2',
  });
  t.comment(`UEFI disk built in ${machine.buildSeconds.toFixed(1)} s`);
  t.match(machine.envBefore, { next_entry: 'upgradectl-2', saved_entry: 'upgradectl-1' }, 'v2 armed as a trial');

  const vm = powerOn(t, machine, { allowReboot: true, maxBoots: 3 });
  await vm.waitForLine(/UPGRADECTL-MARKER booted version=1 /, 300_000, 'v1 booting after the trial panicked');
  const exit = await vm.waitForExit(60_000);
  t.equal(exit.killedBecause, undefined, 'v1 powered the machine off: no boot loop');

  const boots = vm.boots();
  t.same(boots.map((b) => b.image), ['/images/2.img', '/images/1.img'], 'the trial, then the default');
  const [trial, fallback] = boots as [(typeof boots)[0], (typeof boots)[0]];
  t.match(trial.cmdline, new RegExp(`root=UUID=${HOST_UUID} upgradectl\\.loop=/images/2\\.img`));
  t.match(
    trial.markers.find((m) => m.kind === 'booted')?.fields,
    { version: '2', root: '/dev/loop0,ro', host: '/dev/vda2,rw', e2fsck: '0' },
    'loop boot: / is the image on loop0, /host the GPT host partition',
  );
  t.match(trial.text, /Kernel panic/, 'the trial panicked');
  t.match(fallback.markers.find((m) => m.kind === 'booted')?.fields, { version: '1', root: '/dev/loop0,ro' }, 'the default came up after the reset');
  t.match(vm.serial, /EFI v\d|UEFI|BdsDxe/, 'booted by the UEFI firmware');
  t.notMatch(vm.serial, /no suitable video mode found|Booting in blind mode/, 'GRUB loaded a video driver on EFI');

  const env = await envOnDisk(machine);
  t.notOk(env.next_entry, 'the one-shot was consumed with save_env under EFI');
  t.equal(env.saved_entry, 'upgradectl-1', 'the default is still v1');

  const panicAt = trial.markers.find((m) => m.kind === 'booted')!.atMs;
  t.comment(
    `UEFI: power-on to trial marker ${secs(panicAt)} s, trial marker to v1 kernel ${secs(fallback.startedMs - panicAt)} s, ` +
      `whole run ${secs(vm.elapsedMs())} s, wall time ${secs(performance.now() - started)} s`,
  );
});

/**
 * Power cut on UEFI: the trial is running when the power goes. GRUB consumed the one-shot through the
 * EFI block I/O before it loaded the trial's kernel, so the next power-on boots the default without
 * trying the trial again, and the default is untouched.
 */
t.test('UEFI: power cut during a trial, then the next power-on boots the default', { skip }, async (t) => {
  const started = performance.now();
  const machine = await buildMachine(t.testdir(), {
    name: 'uefi-power-cut',
    firmware: 'uefi',
    images: [
      { version: '1', action: 'poweroff' },
      { version: '2', action: 'hang' },
    ],
    state: { phase: 'committed', current: '1', next: '2', trialKind: 'upgrade' },
    trial: '2',
  });
  t.match(machine.envBefore, { next_entry: 'upgradectl-2', saved_entry: 'upgradectl-1' }, 'v2 armed as a trial');

  const trial = powerOn(t, machine, { allowReboot: false, maxBoots: 1 });
  await trial.waitForLine(/UPGRADECTL-MARKER booted version=2 /, 300_000, 'the trial v2 running');
  await trial.kill('power cut during the trial');
  const cutAt = trial.elapsedMs();
  t.notOk((await envOnDisk(machine)).next_entry, 'the consumed one-shot reached the disk before the cut');

  const after = powerOn(t, machine, { allowReboot: false, maxBoots: 1 });
  await after.waitForLine(/UPGRADECTL-MARKER booted version=1 /, 300_000, 'v1 after the power cut');
  t.equal((await after.waitForExit(60_000)).killedBecause, undefined, 'v1 powered the machine off');
  t.same(after.boots().map((b) => b.image), ['/images/1.img'], 'only the default was booted: the trial was not retried');
  t.equal((await envOnDisk(machine)).saved_entry, 'upgradectl-1', 'the default is still v1');
  t.comment(`UEFI power cut: cut ${secs(cutAt)} s after power-on, next power-on to v1 ${secs(after.elapsedMs())} s, wall time ${secs(performance.now() - started)} s`);
});
