import t from 'tap';
import { skipUnless } from '../helpers/requirements.js';
import { BOOT_REQUIREMENTS } from './requirements.js';
import { buildMachine, powerOn, secs } from './machine.js';
import { signedBoot, signedBootMissing } from './secure-boot.js';

/**
 * Secure Boot, one boot: OVMF with Microsoft's keys and Secure Boot on, Debian's shim and signed GRUB
 * (grub-install --uefi-secure-boot's layout on the ESP), the generated grub.cfg on the host partition,
 * and an image that signed GRUB loop-mounts (its first block written: src/core/first-block.ts) with
 * Debian's signed kernel, which then runs under lockdown with our initramfs.
 */

const skip =
  skipUnless({ ...BOOT_REQUIREMENTS, commands: [...BOOT_REQUIREMENTS.commands!, 'mkfs.vfat', 'mcopy', 'mmd', 'dpkg-deb'], files: ['/usr/share/OVMF/OVMF_CODE_4M.secboot.fd', '/usr/share/OVMF/OVMF_VARS_4M.ms.fd'] }) ||
  (process.env.CI ? false : signedBootMissing());

t.test('Secure Boot: shim, signed GRUB and the signed kernel loop-boot an image', { skip }, async (t) => {
  const started = performance.now();
  const machine = await buildMachine(t.testdir(), {
    name: 'secure-boot',
    firmware: 'uefi',
    secureBoot: await signedBoot(),
    images: [{ version: '1', action: 'poweroff' }],
    state: { phase: 'idle', current: '1' },
  });
  const vm = powerOn(t, machine, { allowReboot: false, maxBoots: 1 });
  await vm.waitForLine(/UPGRADECTL-MARKER booted /, 240_000, 'the image\'s boot marker');
  const exit = await vm.waitForExit(60_000);
  t.equal(exit.killedBecause, undefined, 'the VM powered itself off');
  const [boot] = vm.boots();
  t.match(boot?.markers.find((m) => m.kind === 'booted')?.fields, { version: '1', root: '/dev/loop0,ro', host: '/dev/vda2,rw', e2fsck: '0' }, 'loop boot under Secure Boot');
  t.match(vm.serial, /Secure boot enabled/, 'the kernel saw Secure Boot on');
  t.match(vm.serial, /Kernel is locked down from EFI Secure Boot/, 'and locked itself down');
  t.notMatch(vm.serial, /invalid extent/, 'signed GRUB opened the image');
  t.comment(`Secure Boot: power-on to marker ${secs(boot!.markers.find((m) => m.kind === 'booted')!.atMs)} s, wall time ${secs(performance.now() - started)} s`);
});
