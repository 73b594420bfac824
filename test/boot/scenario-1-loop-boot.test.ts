import t from 'tap';
import { skipUnless } from '../helpers/requirements.js';
import { BOOT_REQUIREMENTS } from './requirements.js';
import { HOST_UUID, TEST_BOOT_CONFIG, buildMachine, envOnDisk, powerOn, secs } from './machine.js';

/**
 * Scenario 1: GRUB loop-boots /images/1.img with the Debian kernel and our initramfs; the image runs
 * from a loop device with the host partition mounted at /host.
 */

const skip = skipUnless(BOOT_REQUIREMENTS);

t.test('scenario 1: v1 boots from /images/1.img on a loop device with /host mounted', { skip }, async (t) => {
  const started = performance.now();
  const machine = await buildMachine(t.testdir(), {
    name: 'scenario-1',
    images: [{ version: '1', action: 'poweroff' }],
    state: { phase: 'idle', current: '1' },
  });
  t.comment(`disk built in ${machine.buildSeconds.toFixed(1)} s (initramfs: ${machine.kernel.buildSeconds ? `${machine.kernel.buildSeconds.toFixed(1)} s` : 'cached'})`);
  t.match(machine.grubCfg, /loopback \S+ \/images\/1\.img/, 'the generated grub.cfg loop-mounts the image');
  t.equal(machine.envBefore.saved_entry, 'upgradectl-1');

  const vm = powerOn(t, machine, { allowReboot: false, maxBoots: 1 });
  await vm.waitForLine(/UPGRADECTL-MARKER booted /, 120_000, 'the image\'s boot marker');
  const exit = await vm.waitForExit(60_000);
  t.equal(exit.killedBecause, undefined, 'the VM powered itself off');

  const boots = vm.boots();
  t.equal(boots.length, 1, 'one kernel boot');
  const boot = boots[0]!;
  t.equal(boot.image, '/images/1.img', 'GRUB passed upgradectl.loop=/images/1.img');
  t.match(boot.cmdline, new RegExp(`root=UUID=${HOST_UUID}`), 'root= names the host partition');
  t.match(boot.cmdline, /(^|\s)panic=1(\s|$)/, 'panic= is on the command line');
  const booted = boot.markers.find((m) => m.kind === 'booted');
  t.ok(booted, 'init reported what it sees');
  t.same(
    booted?.fields,
    { version: '1', root: '/dev/loop0,ro', host: '/dev/vda1,rw', loop: '/dev/loop0', loopro: '0', e2fsck: '0', image: '/images/1.img', deadline: 'none', watchdog: 'none' },
    '/ is the image on loop0 (read-only, as `ro` asks), /host is the host partition read-write, e2fsck found it clean',
  );
  t.notMatch(vm.serial, /upgradectl: \/images\/1\.img: .* failed/, 'no initramfs failure');

  const env = await envOnDisk(machine);
  t.equal(env.saved_entry, 'upgradectl-1', 'grubenv still names v1 the default after the boot');
  t.comment(`scenario 1: marker after ${secs(booted?.atMs ?? 0)} s, wall time ${secs(performance.now() - started)} s`);
});

t.test('scenario 1b: upgradectl.ro boots the image immutable and leaves the host read-only', { skip }, async (t) => {
  const started = performance.now();
  const machine = await buildMachine(t.testdir(), {
    name: 'scenario-1b-immutable',
    images: [{ version: '1', action: 'poweroff' }],
    state: { phase: 'idle', current: '1' },
    configText: `${TEST_BOOT_CONFIG}kernel_args = upgradectl.ro\n`,
  });
  const vm = powerOn(t, machine, { allowReboot: false, maxBoots: 1 });
  await vm.waitForLine(/UPGRADECTL-MARKER booted /, 120_000, 'the image\'s boot marker');
  await vm.waitForExit(60_000);
  const booted = vm.boots()[0]?.markers.find((m) => m.kind === 'booted');
  t.match(
    booted?.fields,
    { version: '1', root: '/dev/loop0,ro', host: '/dev/vda1,ro', loopro: '1', e2fsck: '0' },
    'the loop device itself is read-only (not just the mount), and the host stays read-only',
  );
  t.comment(`scenario 1b: wall time ${secs(performance.now() - started)} s`);
});
