import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { UpgradeError } from '../../src/core/errors.js';
import { run } from '../../src/core/exec.js';

/**
 * A raw BIOS disk for QEMU, built from a directory tree WITHOUT loop devices (FACTS.md: the sandbox
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

/**
 * Built into core.img: what it takes to read grub.cfg from an ext4 partition by UUID, then everything
 * the generated grub.cfg calls, so a boot never depends on insmod finding a module on the disk.
 */
const CORE_MODULES = [
  'biosdisk', 'part_msdos', 'part_gpt', 'ext2', 'search', 'search_fs_uuid', 'normal', 'configfile',
  'loadenv', 'loopback', 'linux', 'echo', 'test', 'serial', 'terminal', 'sleep', 'halt', 'reboot',
];

export interface HostDisk {
  file: string;
  hostUuid: string;
  /** Byte offset of the host partition's filesystem in `file`. */
  offset: number;
}

/** Copy GRUB's i386-pc modules to HOSTTREE/boot/grub/i386-pc, where `insmod` looks for them. */
export async function installGrubModules(hostTree: string): Promise<void> {
  const dest = path.join(hostTree, 'boot/grub/i386-pc');
  await fs.mkdir(dest, { recursive: true });
  for (const name of await fs.readdir(GRUB_PC_DIR)) {
    if (/\.(mod|lst)$/.test(name)) await fs.copyFile(path.join(GRUB_PC_DIR, name), path.join(dest, name));
  }
}

export interface BuildDiskOptions {
  hostTree: string;
  hostUuid: string;
  out: string;
  /** Whole disk size; default: the tree's apparent size plus 64 MiB of free space. */
  sizeMiB?: number;
}

export async function buildHostDisk(opts: BuildDiskOptions): Promise<HostDisk> {
  const sizeMiB = opts.sizeMiB ?? (await apparentMiB(opts.hostTree)) + 64;
  await fs.rm(opts.out, { force: true });
  const handle = await fs.open(opts.out, 'w');
  await handle.truncate(sizeMiB * 1024 * 1024);
  await handle.close();

  await run('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', opts.out], {
    input: `label: dos\nstart=${PARTITION_OFFSET / SECTOR}, type=83, bootable\n`,
  });
  // The filesystem fills the partition: everything after the first MiB. Default block size and a
  // journal, as a real host partition has (the GRUB-journal trap needs one to be tested at all).
  await run('mke2fs', [
    '-q', '-F', '-t', 'ext4', '-L', 'host', '-U', opts.hostUuid, '-d', opts.hostTree,
    '-E', `offset=${PARTITION_OFFSET}`, opts.out, `${sizeMiB - 1}M`,
  ], { timeoutMs: 300_000 });

  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'upgradectl-grub-'));
  try {
    const early = path.join(work, 'early.cfg');
    await fs.writeFile(early, `search --no-floppy --fs-uuid --set=root ${opts.hostUuid}\nset prefix=($root)/boot/grub\n`);
    const core = path.join(work, 'core.img');
    await run('grub-mkimage', ['-O', 'i386-pc', '-o', core, '-c', early, '-p', '/boot/grub', ...CORE_MODULES]);
    const coreImg = await fs.readFile(core);
    // core.img must fit in the gap before the partition (sectors 1..2047).
    if (coreImg.length > PARTITION_OFFSET - SECTOR) {
      throw new UpgradeError('GRUB', `core.img is ${coreImg.length} bytes, more than the ${PARTITION_OFFSET - SECTOR} before the partition`);
    }
    const bootImg = await fs.readFile(path.join(GRUB_PC_DIR, 'boot.img'));
    const disk = await fs.open(opts.out, 'r+');
    try {
      // Only the code area of the MBR: bytes 440.. hold the disk signature and sfdisk's partition table.
      await disk.write(bootImg, 0, 440, 0);
      // boot.img loads the sector named by its kernel-sector field (1 by default); grub-mkimage has
      // already written core.img's own length into its first sector's blocklist.
      await disk.write(coreImg, 0, coreImg.length, SECTOR);
      await disk.sync();
    } finally {
      await disk.close();
    }
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
  return { file: opts.out, hostUuid: opts.hostUuid, offset: PARTITION_OFFSET };
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
