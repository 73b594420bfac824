import { promises as fs } from 'node:fs';
import path from 'node:path';
import { UpgradeError, errnoOf } from '../core/errors.js';
import { DISK_NAME_RE } from './job.js';

/**
 * The disk a whole-disk release overwrites: the one holding the host partition (docs/flasher.md,
 * "Whole-disk releases"). Found the way the flasher finds it again at its boot: the partition carrying
 * the host filesystem's UUID (udev's /dev/disk/by-uuid link, as findfs does in the flasher), then that
 * partition's parent in sysfs (/sys/class/block/<partition>/..). Both paths are read under `root`, '/'
 * on a machine.
 */
export interface TargetDisk {
  /** Kernel names: the host partition (`vda1`) and its disk (`vda`). */
  partition: string;
  disk: string;
  /** Bytes of the whole disk (sysfs `size` counts 512-byte sectors whatever the disk's sector size). */
  size: number;
}

export async function diskOfHostPartition(root: string, hostUuid: string): Promise<TargetDisk> {
  const link = path.join(root, 'dev/disk/by-uuid', hostUuid);
  // udev's link names the device node (../../vda1): its name is the partition's kernel name.
  const partition = path.basename(await resolve(link, `no block device carries the host filesystem UUID ${hostUuid} (${link} is missing)`, 'udev makes /dev/disk/by-uuid; check [boot] host_uuid against blkid', fs.readlink));
  const sysPart = await resolve(path.join(root, 'sys/class/block', partition), `${partition} (the host partition) is not in ${path.join(root, 'sys/class/block')}`, 'is /sys mounted?', fs.realpath);
  const notPartition = new UpgradeError('UNSUPPORTED', `the host filesystem is on ${partition}, which is not a partition of a disk (LVM, md RAID, a whole disk?): a whole-disk release cannot tell which disk to overwrite`, {
    hint: 'publish the release as a host partition (--reflash), or write the disk by other means',
  });
  try {
    await fs.access(path.join(sysPart, 'partition'));
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') throw notPartition;
    throw err;
  }
  const disk = path.basename(path.dirname(sysPart));
  if (!DISK_NAME_RE.test(disk)) throw new UpgradeError('UNSUPPORTED', `the host partition's disk is named '${disk}': not a name the flasher accepts (${DISK_NAME_RE.source})`);
  const sectors = (await fs.readFile(path.join(path.dirname(sysPart), 'size'), 'utf8')).trim();
  if (!/^\d+$/.test(sectors)) throw new UpgradeError('UNSUPPORTED', `cannot read the size of ${disk}: sysfs says '${sectors}'`);
  return { partition, disk, size: Number(sectors) * 512 };
}

async function resolve(link: string, missing: string, hint: string, how: (p: string) => Promise<string>): Promise<string> {
  try {
    return await how(link);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') throw new UpgradeError('NOT_FOUND', missing, { hint });
    throw err;
  }
}
