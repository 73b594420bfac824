import { promises as fs } from 'node:fs';
import path from 'node:path';

/**
 * Under a machine's root (a temporary directory), what udev and sysfs show on a machine whose host
 * filesystem is on partition `partition` of disk `disk` (`diskBytes` long): the /dev/disk/by-uuid link
 * and the sysfs device directories with the class symlink, laid out as the kernel lays them out. For
 * operations that run on this host against a machine's root (commit --reflash of a whole-disk release
 * finds the disk it overwrites there, as it does under / on a machine).
 */
export async function blockDevicesUnder(root: string, o: { uuid: string; disk: string; partition: string; diskBytes: number; isPartition?: boolean }): Promise<void> {
  const devices = `devices/pci0000:00/0000:00:04.0/virtio1/block/${o.disk}`;
  const diskDir = path.join(root, 'sys', devices);
  await fs.mkdir(path.join(diskDir, o.partition), { recursive: true });
  await fs.writeFile(path.join(diskDir, 'size'), `${o.diskBytes / 512}\n`);
  if (o.isPartition !== false) await fs.writeFile(path.join(diskDir, o.partition, 'partition'), '1\n');
  await fs.mkdir(path.join(root, 'sys/class/block'), { recursive: true });
  await fs.symlink(`../../${devices}/${o.partition}`, path.join(root, 'sys/class/block', o.partition));
  await fs.mkdir(path.join(root, 'dev/disk/by-uuid'), { recursive: true });
  await fs.symlink(`../../${o.partition}`, path.join(root, 'dev/disk/by-uuid', o.uuid));
}
