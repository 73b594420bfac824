import { promises as fs } from 'node:fs';
import path from 'node:path';
import { run } from '../../src/core/exec.js';
import { extractDebianRoot, SYSTEMD } from '../helpers/debian-root.js';
import { configure, installKernel } from './debian-image.js';
import { buildHostDisk, installGrubModules, type Firmware, type HostDisk } from './disk.js';
import type { BootKernel } from './kernel.js';

/**
 * A machine as the Debian installer leaves it, for the adopt test: Debian 12 (the boot tests' cached
 * debootstrap tree: minbase + systemd, udev, grub-common) on one ext4 root partition that holds /boot,
 * GRUB installed on the disk, and no upgradectl image anywhere. upgradectl is installed from its .deb
 * with dpkg, as an operator would.
 *
 * GRUB is laid out as grub-install lays it out (modules in /boot/grub/<platform>, grubenv created,
 * core.img or the EFI application finding the root by UUID with prefix /boot/grub), made by disk.ts
 * without a loop device: the sandbox kernel has no partitions on loop devices, which grub-install needs.
 * The first menu is the one update-grub writes for this tree; the test runs the real update-grub
 * (grub-mkconfig) inside the VM before anything else, so the menu upgradectl keeps is the distribution's own.
 */

export interface PlainInstallOptions {
  kernel: BootKernel;
  /** The upgradectl .deb (npm run package). */
  deb: string;
  hostUuid: string;
  /** /etc/upgradectl/upgradectl.conf, keys.d/release.pub and the test CA, as configure() writes them. */
  config: string;
  trustedKey: string;
  caCert: string;
}

/** What the installer's GRUB menu boots, and what update-grub reads (/etc/default/grub). */
const KERNEL_ARGS = 'console=ttyS0,115200 panic=1';

/** Build the installed root filesystem as a directory tree; both disks are made from it. */
export async function buildPlainInstallTree(tree: string, opts: PlainInstallOptions): Promise<void> {
  await fs.rm(tree, { recursive: true, force: true });
  await extractDebianRoot(tree, { flavour: SYSTEMD });
  await installKernel(tree, opts.kernel);
  // dpkg, as on a machine (Depends: grub-common, e2fsprogs, … are in the tree). Its postinst enables
  // nothing; configure() below enables the confirm-on-boot unit the package ships.
  await run('dpkg', [`--root=${tree}`, '--install', opts.deb], { timeoutMs: 300_000 });
  // The test driver, the network and the test CA (debian-image.ts); VERSION is "distro" on this system.
  await configure(tree, { version: 'distro', kernel: opts.kernel, config: opts.config, trustedKey: opts.trustedKey, caCert: opts.caCert });
  // A plain install has no /host; an installed system mounts its root by UUID and checks it.
  await fs.rm(path.join(tree, 'host'), { recursive: true, force: true });
  await fs.writeFile(path.join(tree, 'etc/fstab'), `UUID=${opts.hostUuid} / ext4 errors=remount-ro 0 1\n`);
  await fs.writeFile(path.join(tree, 'etc/hostname'), 'plain-debian\n');
  await fs.writeFile(
    path.join(tree, 'etc/default/grub'),
    ['GRUB_DEFAULT=0', 'GRUB_TIMEOUT=0', 'GRUB_DISTRIBUTOR=Debian', `GRUB_CMDLINE_LINUX="${KERNEL_ARGS}"`, 'GRUB_TERMINAL=serial', 'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"', ''].join('\n'),
  );
  await installGrubModules(tree, 'bios');
  await installGrubModules(tree, 'uefi');
  await run('grub-editenv', [path.join(tree, 'boot/grub/grubenv'), 'create']);
  await fs.writeFile(path.join(tree, 'boot/grub/grub.cfg'), installerMenu(opts));
}

/** The installer's menu (update-grub's output, shortened to the entry that boots): replaced at the first boot. */
function installerMenu(opts: PlainInstallOptions): string {
  const k = opts.kernel.release;
  return [
    '# the installer\'s menu: the test replaces it with update-grub at the first boot',
    'serial --unit=0 --speed=115200',
    'terminal_input serial',
    'terminal_output serial',
    'set timeout=0',
    "menuentry 'Debian GNU/Linux' {",
    `  search --no-floppy --fs-uuid --set=root ${opts.hostUuid}`,
    `  linux /boot/vmlinuz-${k} root=UUID=${opts.hostUuid} ro ${KERNEL_ARGS}`,
    `  initrd /boot/initrd.img-${k}`,
    '}',
    '',
  ].join('\n');
}

/** The disk of the installed machine, for one firmware: the same tree, GRUB for that platform. */
export function plainInstallDisk(tree: string, out: string, firmware: Firmware, hostUuid: string, sizeMiB: number): Promise<HostDisk> {
  return buildHostDisk({ hostTree: tree, hostUuid, out, sizeMiB, firmware });
}
