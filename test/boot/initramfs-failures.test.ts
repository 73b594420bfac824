import t from 'tap';
import { run } from '../../src/core/exec.js';
import { skipUnless } from '../helpers/requirements.js';
import { BOOT_REQUIREMENTS } from './requirements.js';
import { HOST_UUID, buildMachine, powerOn, secs, type Machine } from './machine.js';

/**
 * Every refusal of scripts/local-bottom/upgradectl, one boot each, with command lines GRUB would never
 * write: the kernel and our initramfs are started by QEMU directly (no BIOS, no GRUB), the host
 * partition is the same kind of disk the GRUB scenarios use. Each boot must end in initramfs-tools'
 * panic with the one line that names the image and the step, and panic=1 must reset the machine
 * (-no-reboot turns that reset into QEMU's exit).
 */

const skip = skipUnless(BOOT_REQUIREMENTS);

let machine: Machine | undefined;
t.before(async () => {
  if (skip) return;
  machine = await buildMachine(t.testdir(), {
    name: 'initramfs-failures',
    images: [
      { version: '1', action: 'poweroff' },
      { version: 'nohost', action: 'poweroff' },
    ],
    state: { phase: 'idle', current: '1' },
    // An image whose /host was removed after the build (`upgradectl image build` refuses to make one).
    tamper: async (host) => {
      await run('debugfs', ['-w', '-R', 'rmdir /host', host.imageFile('nohost')]);
    },
  });
});

const base = `root=UUID=${HOST_UUID} panic=1 console=ttyS0,115200`;

const refusals: Array<{ name: string; args: string; message: RegExp }> = [
  {
    name: 'missing image file',
    args: 'ro upgradectl.loop=/images/9.img',
    message: /upgradectl: \/images\/9\.img: image file failed: no such file on the host partition \(in \/images: 1\.img nohost\.img\s*\)/,
  },
  {
    name: 'relative path',
    args: 'ro upgradectl.loop=images/1.img',
    message: /upgradectl: images\/1\.img: boot argument failed: the path must be absolute/,
  },
  {
    name: 'path with ..',
    args: 'ro upgradectl.loop=/images/../images/1.img',
    message: /upgradectl: \/images\/\.\.\/images\/1\.img: boot argument failed: the path must be absolute and plain/,
  },
  {
    name: "Ubuntu's loop= as well",
    args: 'ro loop=/images/1.img upgradectl.loop=/images/1.img',
    message: /upgradectl: \/images\/1\.img: boot argument failed: loop=\/images\/1\.img is also on the kernel command line/,
  },
  {
    name: 'image without /host',
    args: 'ro upgradectl.loop=/images/nohost.img',
    message: /upgradectl: \/images\/nohost\.img: mount \/host failed: the image has no \/host directory/,
  },
];

for (const c of refusals) {
  t.test(`initramfs refuses: ${c.name}`, { skip }, async (t) => {
    const started = performance.now();
    const m = machine!;
    const vm = powerOn(t, m, {
      allowReboot: false,
      maxBoots: 1,
      directKernel: { kernel: m.kernel.vmlinuz, initrd: m.kernel.initrd, append: `${base} ${c.args}` },
    });
    const exit = await vm.waitForExit(120_000);
    t.equal(exit.killedBecause, undefined, 'the machine reset by itself (panic=1)');
    t.match(vm.serial, c.message, 'the panic names the image and the step');
    t.match(vm.serial, /Rebooting automatically due to panic= boot argument/, "initramfs-tools' panic honoured panic=");
    t.notMatch(vm.serial, /UPGRADECTL-MARKER booted/, 'no image was booted');
    t.comment(`${c.name}: ${secs(performance.now() - started)} s`);
  });
}

t.test('initramfs with rw and fsck.mode=skip: image mounted read-write, e2fsck skipped', { skip }, async (t) => {
  const m = machine!;
  const vm = powerOn(t, m, {
    allowReboot: false,
    maxBoots: 1,
    directKernel: { kernel: m.kernel.vmlinuz, initrd: m.kernel.initrd, append: `${base} rw fsck.mode=skip upgradectl.loop=/images/1.img` },
  });
  await vm.waitForLine(/UPGRADECTL-MARKER booted /, 120_000, 'the boot marker');
  await vm.waitForExit(60_000);
  t.match(vm.boots()[0]?.markers.find((m) => m.kind === 'booted')?.fields, {
    version: '1',
    root: '/dev/loop0,rw',
    host: '/dev/vda1,rw',
    loopro: '0',
    e2fsck: 'skipped',
  });
});
