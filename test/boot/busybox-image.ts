import { promises as fs } from 'node:fs';
import path from 'node:path';
import { UpgradeError } from '../../src/core/errors.js';
import { run } from '../../src/core/exec.js';
import type { BootKernel } from './kernel.js';

/**
 * The fast test image: busybox-static as the whole userland and a shell /sbin/init that reports on the
 * serial console what the initramfs gave it, then does what the scenario asks. ~15 s from power-on to
 * the marker under TCG, against ~30 s for a systemd image, which is why GRUB and initramfs paths are
 * tested with this one. The tree becomes an .img through src/release/image-build.ts (machine.ts).
 *
 * Marker lines (parsed by parseMarker in qemu.ts):
 *   UPGRADECTL-MARKER booted version=<v> root=<dev>,<ro|rw> host=<dev>,<ro|rw>|none loop=<dev> loopro=<0|1>
 *     e2fsck=<status> image=<upgradectl.loop path> deadline=<s>|none watchdog=<active|inactive>|none
 *     (from /proc/mounts, the initramfs' report, and the armed watchdog's sysfs state)
 *   UPGRADECTL-MARKER cmdline <the kernel command line>
 *   UPGRADECTL-MARKER action=<poweroff|panic|hang> version=<v>
 */
export const MARKER = 'UPGRADECTL-MARKER';

/**
 * What init does after reporting:
 * - poweroff: sync and power the VM off (QEMU exits; the test reads the disk afterwards);
 * - panic: exit init, which the kernel turns into "Attempted to kill init!", and panic=N reboots. This
 *   is the failure a broken image produces, with no help from the image.
 * - hang: sleep forever without panicking, as a boot stuck in an emergency shell or on a unit does.
 *   Only the trial deadline (softdog armed by the initramfs) gets the machine out of it.
 */
export type InitAction = 'poweroff' | 'panic' | 'hang';

export interface BusyboxImageOptions {
  version: string;
  action: InitAction;
  kernel: BootKernel;
}

const BUSYBOX = '/bin/busybox';

/**
 * The image has no libc, so its busybox must be busybox-static's. Debian's plain `busybox` package
 * installs a dynamic one at the same path, and the image would then die at init with a bare
 * "Attempted to kill init!": say what to install instead.
 */
async function assertStatic(file: string): Promise<void> {
  const elf = await fs.readFile(file);
  const PT_INTERP = 3;
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    if (elf.readUInt32LE(phoff + i * phentsize) === PT_INTERP) {
      throw new UpgradeError('UNSUPPORTED', `${file} is dynamically linked; the busybox test image needs a static one`, {
        hint: 'apt-get install busybox-static',
      });
    }
  }
}

/** Build the root tree for a busybox image into `dir` (which must not exist). */
export async function buildBusyboxTree(dir: string, opts: BusyboxImageOptions): Promise<void> {
  for (const d of ['bin', 'sbin', 'proc', 'sys', 'dev', 'run', 'tmp', 'etc', 'host']) {
    await fs.mkdir(path.join(dir, d), { recursive: true });
  }
  await assertStatic(BUSYBOX);
  await fs.copyFile(BUSYBOX, path.join(dir, 'bin/busybox'));
  await fs.chmod(path.join(dir, 'bin/busybox'), 0o755);
  // The root is mounted read-only, so `busybox --install` at boot is impossible: link every applet now.
  const { stdout } = await run(BUSYBOX, ['--list']);
  for (const applet of stdout.split('\n').map((s) => s.trim()).filter(Boolean)) {
    if (applet === 'busybox') continue;
    await fs.symlink('busybox', path.join(dir, 'bin', applet));
  }
  await fs.copyFile(opts.kernel.vmlinuz, path.join(dir, 'vmlinuz'));
  await fs.copyFile(opts.kernel.initrd, path.join(dir, 'initrd.img'));
  await fs.writeFile(path.join(dir, 'etc/upgradectl-test-version'), `${opts.version}\n`);
  // Account databases, as any OS image has: commit merges the machine's accounts into them and refuses
  // an image without them, which would stop a scenario before the boot it is about.
  await fs.writeFile(path.join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await fs.writeFile(path.join(dir, 'etc/group'), 'root:x:0:\n');
  await fs.writeFile(path.join(dir, 'etc/shadow'), 'root:*:20000:0:99999:7:::\n', { mode: 0o640 });
  await fs.writeFile(path.join(dir, 'etc/gshadow'), 'root:*::\n', { mode: 0o640 });
  await fs.writeFile(path.join(dir, 'sbin/init'), initScript(opts.version, opts.action), { mode: 0o755 });
}

function initScript(version: string, action: InitAction): string {
  const finish =
    action === 'panic'
      ? // exit status 1 from PID 1: the kernel panics and panic=N reboots the machine.
        ['exit 1']
      : action === 'hang'
        ? ['while :; do sleep 3600; done']
        : // /host cannot be remounted read-only: it backs the loop device of / (as under systemd). sync
          // instead, so whatever the boot wrote reaches the disk before the power goes.
          ['sync', 'poweroff -f', 'sleep 30'];
  return [
    '#!/bin/sh',
    'export PATH=/bin',
    `version=${version}`,
    // field of /proc/mounts for a mount point: "<device>,<ro|rw>", or "none".
    'mnt() { awk -v m="$1" \'$2 == m { split($4, o, ","); r = $1 "," o[1] } END { print (r == "" ? "none" : r) }\' /proc/mounts; }',
    '. /run/upgradectl/initramfs.env 2>/dev/null',
    `echo "${MARKER} cmdline $(cat /proc/cmdline)"`,
    // loopro: the loop device's own read-only flag (a read-only mount of a writable device can be
    // remounted read-write; a read-only device cannot).
    'loop=${UPGRADECTL_LOOP_DEVICE:-none}',
    'loopro=$(cat "/sys/block/${loop#/dev/}/ro" 2>/dev/null || echo none)',
    // watchdog: the state of the device the initramfs armed for the trial deadline ("active" = counting).
    'wd=${UPGRADECTL_TRIAL_WATCHDOG:-none}',
    'wdstate=$(cat "/sys/class/watchdog/${wd#/dev/}/state" 2>/dev/null || echo none)',
    `echo "${MARKER} booted version=$version root=$(mnt /) host=$(mnt /host) loop=$loop loopro=$loopro e2fsck=\${UPGRADECTL_E2FSCK_STATUS:-none} image=\${UPGRADECTL_IMAGE:-none} deadline=\${UPGRADECTL_TRIAL_DEADLINE:-none} watchdog=$wdstate"`,
    `echo "${MARKER} action=${action} version=$version"`,
    ...finish,
    '',
  ].join('\n');
}
