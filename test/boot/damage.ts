import { promises as fs } from 'node:fs';
import { UpgradeError } from '../../src/core/errors.js';
import { ExecError, run } from '../../src/core/exec.js';

/**
 * Ways an image file goes bad on a real machine, reproduced on a built image with debugfs (no mount,
 * no loop device). Each leaves the damage where a specific layer of the boot chain must catch it.
 */
export type Damage =
  /** Primary superblock zeroed: GRUB cannot read the filesystem at all, so the entry fails to load. */
  | 'superblock'
  /**
   * Marked not cleanly unmounted, with two files claiming the same blocks: GRUB reads kernel and
   * initrd fine (their blocks are intact), but `e2fsck -p` stops with "UNEXPECTED INCONSISTENCY"
   * (exit 4). Only the initramfs can catch this one.
   */
  | 'uncorrectable'
  /** Not cleanly unmounted with a wrong link count: `e2fsck -p` fixes it (exit 1) and the boot goes on. */
  | 'fixable';

export async function damageImage(file: string, damage: Damage): Promise<void> {
  switch (damage) {
    case 'superblock': {
      const fh = await fs.open(file, 'r+');
      try {
        // ext4's primary superblock: 1024 bytes at offset 1024.
        await fh.write(Buffer.alloc(1024), 0, 1024, 1024);
      } finally {
        await fh.close();
      }
      return;
    }
    case 'uncorrectable': {
      const { stdout } = await run('debugfs', ['-R', 'blocks /vmlinuz', file]);
      const kernelBlock = stdout.trim().split(/\s+/)[0];
      if (!kernelBlock || !/^\d+$/.test(kernelBlock)) throw new UpgradeError('INTERNAL', `no blocks for /vmlinuz in ${file}`);
      // i_block[5] of a one-extent inode is the extent's start block (low 32 bits): point the small
      // version file at the kernel's first block.
      await debugfsWrite(file, ['ssv state 0', `sif /etc/upgradectl-test-version block[5] ${kernelBlock}`]);
      // The recipe must keep producing what the scenario relies on; say so here if e2fsprogs changes.
      const status = await e2fsckStatus(file);
      if (status !== 4) throw new UpgradeError('INTERNAL', `damaging ${file} gave e2fsck -n exit ${status}, not 4`);
      return;
    }
    case 'fixable':
      await debugfsWrite(file, ['ssv state 0', 'sif /sbin/init links_count 5']);
      return;
  }
}

async function debugfsWrite(file: string, commands: string[]): Promise<void> {
  await run('debugfs', ['-w', '-f', '-', file], { input: `${commands.join('\n')}\n` });
}

async function e2fsckStatus(file: string): Promise<number | null> {
  try {
    await run('e2fsck', ['-n', file]);
    return 0;
  } catch (err) {
    if (err instanceof ExecError) return err.exitCode;
    throw err;
  }
}
