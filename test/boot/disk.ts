import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { UpgradeError } from '../../src/core/errors.js';
import { run } from '../../src/core/exec.js';

/**
 * A raw disk for QEMU, BIOS (below) or UEFI (installEfiGrub), built from a directory tree WITHOUT loop devices (FACTS.md: the sandbox
 * kernel has no partition support for loop devices, and a disk build should not need root anyway):
 *
 *   sector 0          GRUB's boot.img (first 440 bytes only: the partition table follows)
 *   sectors 1..2047   GRUB's core.img (i386-pc), with an early config that finds the host partition
 *                     by UUID and sets prefix=($root)/boot/grub
 *   1 MiB ..          partition 1, ext4, made by mke2fs -d from the host tree at that offset
 *
 * The host tree holds what upgradectl manages: /images/<v>.img, /boot/grub/grub.cfg, grubenv, and the
 * i386-pc GRUB modules that grub.cfg's insmod loads.
 */

export const PARTITION_OFFSET = 1024 * 1024;
const SECTOR = 512;
const GRUB_PC_DIR = '/usr/lib/grub/i386-pc';
const GRUB_EFI_DIR = '/usr/lib/grub/x86_64-efi';

/** Which firmware boots the disk: a BIOS disk (MBR, core.img in the gap) or a UEFI one (GPT, ESP). */
export type Firmware = 'bios' | 'uefi';

/**
 * UEFI layout: the ESP (FAT, 15 MiB) at 1 MiB holds only GRUB at the removable-media path, which
 * firmware boots without any boot entry in its variables; the host partition follows at 16 MiB.
 */
const ESP_OFFSET = 1024 * 1024;
const EFI_HOST_OFFSET = 16 * 1024 * 1024;
const ESP_TYPE = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B';
const LINUX_TYPE = '0FC63DAF-8483-4772-8E79-3D69D8477DE4';

/**
 * OVMF (package ovmf): the firmware code, and the variable store each machine gets a copy of. Secure
 * Boot: the code built with it, and a store with Microsoft's keys enrolled and Secure Boot on (what
 * shim, signed by Microsoft, needs).
 */
const OVMF = {
  plain: { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.fd' },
  secure: { code: '/usr/share/OVMF/OVMF_CODE_4M.secboot.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.ms.fd' },
};

/** Debian's signed boot chain: shim (signed by Microsoft) and the monolithic GRUB it verifies (signed by Debian). */
export interface SignedBoot {
  shim: string;
  grub: string;
}

/**
 * Built into core.img: what it takes to read grub.cfg from an ext4 partition by UUID, then everything
 * the generated grub.cfg calls, so a boot never depends on insmod finding a module on the disk.
 */
const CORE_MODULES = [
  'part_msdos', 'part_gpt', 'ext2', 'search', 'search_fs_uuid', 'normal', 'configfile',
  'loadenv', 'loopback', 'linux', 'echo', 'test', 'serial', 'terminal', 'sleep', 'halt', 'reboot',
];
/** BIOS reads disks through int13; EFI through the firmware's block I/O, and needs a video driver. */
const PLATFORM_MODULES: Record<Firmware, string[]> = { bios: ['biosdisk'], uefi: ['all_video', 'efi_gop'] };
const GRUB_DIR: Record<Firmware, string> = { bios: GRUB_PC_DIR, uefi: GRUB_EFI_DIR };

export interface HostDisk {
  file: string;
  hostUuid: string;
  /** Byte offset of the host partition's filesystem in `file`. */
  offset: number;
  firmware: Firmware;
  /** UEFI: the firmware code and this machine's copy of its variable store (QEMU writes it). */
  efi?: { code: string; vars: string; secureBoot: boolean };
}

/** Copy GRUB's modules to HOSTTREE/boot/grub/<platform>, where `insmod` looks for them. */
export async function installGrubModules(hostTree: string, firmware: Firmware = 'bios'): Promise<void> {
  const src = GRUB_DIR[firmware];
  const dest = path.join(hostTree, 'boot/grub', path.basename(src));
  await fs.mkdir(dest, { recursive: true });
  for (const name of await fs.readdir(src)) {
    if (/\.(mod|lst)$/.test(name)) await fs.copyFile(path.join(src, name), path.join(dest, name));
  }
}

export interface BuildDiskOptions {
  hostTree: string;
  hostUuid: string;
  out: string;
  /** Whole disk size; default: the tree's apparent size plus 64 MiB of free space. */
  sizeMiB?: number;
  /** Default bios. */
  firmware?: Firmware;
  /** BIOS only: where the host partition starts (default PARTITION_OFFSET, 1 MiB); GRUB's gap before it grows with it. */
  hostOffset?: number;
  /** UEFI only: boot through shim and Debian's signed GRUB with Secure Boot on, instead of grub-mkimage's GRUB. */
  secureBoot?: SignedBoot;
}

export async function buildHostDisk(opts: BuildDiskOptions): Promise<HostDisk> {
  const firmware = opts.firmware ?? 'bios';
  if (opts.hostOffset !== undefined && (firmware === 'uefi' || opts.hostOffset % PARTITION_OFFSET !== 0)) {
    throw new UpgradeError('USAGE', `hostOffset ${opts.hostOffset}: BIOS disks only, in whole MiB`);
  }
  const offset = firmware === 'uefi' ? EFI_HOST_OFFSET : opts.hostOffset ?? PARTITION_OFFSET;
  const sizeMiB = opts.sizeMiB ?? (await apparentMiB(opts.hostTree)) + 64 + (firmware === 'uefi' ? offset / 1048576 : 0);
  await fs.rm(opts.out, { force: true });
  const handle = await fs.open(opts.out, 'w');
  await handle.truncate(sizeMiB * 1024 * 1024);
  await handle.close();

  // The host partition and its filesystem have one size. GPT keeps its backup table in the disk's
  // last sectors: UEFI leaves the last MiB out (sfdisk would round the partition down to 1 MiB anyway,
  // and a filesystem larger than its partition fails e2fsck at boot).
  const hostBytes = sizeMiB * 1024 * 1024 - offset - (firmware === 'uefi' ? 1024 * 1024 : 0);
  await run('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', opts.out], {
    input: firmware === 'uefi'
      ? `label: gpt\nstart=${ESP_OFFSET / SECTOR}, size=${(EFI_HOST_OFFSET - ESP_OFFSET) / SECTOR}, type=${ESP_TYPE}\nstart=${EFI_HOST_OFFSET / SECTOR}, size=${hostBytes / SECTOR}, type=${LINUX_TYPE}\n`
      : `label: dos\nstart=${offset / SECTOR}, type=83, bootable\n`,
  });
  // Default block size and a journal, as a real host partition has (the GRUB-journal trap needs one to
  // be tested at all). Under Secure Boot 4 KiB blocks: mke2fs -d leaves zero blocks of the files it
  // copies as holes, so with the default 1 KiB blocks of a small filesystem every image would start
  // with one, which signed GRUB refuses ("invalid extent", src/core/first-block.ts).
  await run('mke2fs', [
    '-q', '-F', '-t', 'ext4', ...(opts.secureBoot ? ['-b', '4096'] : []), '-L', 'host', '-U', opts.hostUuid, '-d', opts.hostTree,
    '-E', `offset=${offset}`, opts.out, `${hostBytes / 1024}k`,
  ], { timeoutMs: 300_000 });

  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'upgradectl-grub-'));
  try {
    const grub = await grubImage(work, firmware, opts.hostUuid);
    if (firmware === 'uefi') return { ...(await installEfiGrub(work, opts, grub, offset)), firmware };
    // core.img must fit in the gap before the partition (sectors 1..2047 at the default offset).
    if (grub.length > offset - SECTOR) {
      throw new UpgradeError('GRUB', `core.img is ${grub.length} bytes, more than the ${offset - SECTOR} before the partition`);
    }
    const bootImg = await fs.readFile(path.join(GRUB_PC_DIR, 'boot.img'));
    // Only the code area of the MBR: bytes 440.. hold the disk signature and sfdisk's partition table.
    // boot.img loads the sector named by its kernel-sector field (1 by default); grub-mkimage has
    // already written core.img's own length into its first sector's blocklist.
    await writeAt(opts.out, [{ data: bootImg.subarray(0, 440), at: 0 }, { data: grub, at: SECTOR }]);
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
  return { file: opts.out, hostUuid: opts.hostUuid, offset, firmware };
}

/**
 * GRUB for the platform (core.img, or the EFI application) with an early config that finds the host
 * partition by UUID and reads grub.cfg from it, and every module the generated grub.cfg uses built in.
 */
async function grubImage(work: string, firmware: Firmware, hostUuid: string): Promise<Buffer> {
  const early = path.join(work, 'early.cfg');
  await fs.writeFile(early, `search --no-floppy --fs-uuid --set=root ${hostUuid}\nset prefix=($root)/boot/grub\n`);
  const out = path.join(work, `grub-${firmware}.img`);
  const format = firmware === 'uefi' ? 'x86_64-efi' : 'i386-pc';
  await run('grub-mkimage', ['-O', format, '-o', out, '-c', early, '-p', '/boot/grub', ...CORE_MODULES, ...PLATFORM_MODULES[firmware]]);
  return fs.readFile(out);
}

/** Write byte ranges into the disk file, then sync it. */
async function writeAt(file: string, writes: Array<{ data: Buffer; at: number }>): Promise<void> {
  const disk = await fs.open(file, 'r+');
  try {
    for (const w of writes) await disk.write(w.data, 0, w.data.length, w.at);
    await disk.sync();
  } finally {
    await disk.close();
  }
}

/**
 * GRUB x86_64-efi at the ESP's removable path EFI/BOOT/BOOTX64.EFI: the firmware boots it with an
 * empty variable store, and it reads grub.cfg from the ext4 host partition like the BIOS core.img.
 * The FAT filesystem is made in a file with mtools (no loop device, no mount) and copied into the
 * partition.
 */
async function installEfiGrub(work: string, opts: BuildDiskOptions, grub: Buffer, hostOffset: number): Promise<Omit<HostDisk, 'firmware'>> {
  const esp = path.join(work, 'esp.img');
  await run('mkfs.vfat', ['-C', esp, String((hostOffset - ESP_OFFSET) / 1024)]);
  const put = async (from: string, to: string) => run('mcopy', ['-i', esp, from, `::${to}`]);
  if (opts.secureBoot) {
    // What grub-install --uefi-secure-boot --removable lays out: shim at the removable path loads
    // grubx64.efi from its own directory; Debian's signed GRUB (prefix /EFI/debian) reads
    // EFI/debian/grub.cfg from the ESP, which sends it on to the host partition.
    await run('mmd', ['-i', esp, '::/EFI', '::/EFI/BOOT', '::/EFI/debian']);
    const early = path.join(work, 'grub.cfg');
    await fs.writeFile(early, `search --no-floppy --fs-uuid --set=root ${opts.hostUuid}\nset prefix=($root)/boot/grub\nconfigfile $prefix/grub.cfg\n`);
    await put(opts.secureBoot.shim, '/EFI/BOOT/BOOTX64.EFI');
    await put(opts.secureBoot.grub, '/EFI/BOOT/grubx64.efi');
    await put(early, '/EFI/debian/grub.cfg');
  } else {
    const grubEfi = path.join(work, 'BOOTX64.EFI');
    await fs.writeFile(grubEfi, grub);
    await run('mmd', ['-i', esp, '::/EFI', '::/EFI/BOOT']);
    await put(grubEfi, '/EFI/BOOT/BOOTX64.EFI');
  }
  await writeAt(opts.out, [{ data: await fs.readFile(esp), at: ESP_OFFSET }]);
  // Each machine its own variable store: OVMF writes boot entries and the boot order into it.
  const firmware = opts.secureBoot ? OVMF.secure : OVMF.plain;
  const vars = `${opts.out}.efivars.fd`;
  await fs.copyFile(firmware.vars, vars);
  return { file: opts.out, hostUuid: opts.hostUuid, offset: hostOffset, efi: { code: firmware.code, vars, secureBoot: Boolean(opts.secureBoot) } };
}

/**
 * A file from the host partition of a disk, or undefined when it does not exist, read with debugfs
 * (`file?offset=N`), so without loop devices or mounts. debugfs does NOT replay the ext4 journal: it
 * sees the disk exactly as GRUB does. That is the view the boot tests must assert on (what GRUB will
 * read at the next power-on), and it differs from what a mount would show after an unclean stop.
 */
export async function readHostFile(disk: HostDisk, file: string): Promise<Buffer | undefined> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'upgradectl-debugfs-'));
  try {
    const out = path.join(work, 'out');
    const { stderr } = await run('debugfs', ['-R', `dump ${file} ${out}`, `${disk.file}?offset=${disk.offset}`]);
    if (!existsSync(out)) {
      if (/not found/i.test(stderr)) return undefined;
      throw new UpgradeError('EXEC', `debugfs could not read ${file} from ${disk.file}: ${stderr.trim()}`);
    }
    return await fs.readFile(out);
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

async function apparentMiB(dir: string): Promise<number> {
  const { stdout } = await run('du', ['-s', '--apparent-size', '--block-size=1M', dir]);
  return Number.parseInt(stdout, 10);
}
