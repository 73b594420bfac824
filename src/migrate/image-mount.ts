import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { UpgradeError, messageOf } from '../core/errors.js';
import { ExecError, run } from '../core/exec.js';
import { log } from '../core/log.js';
import { PRIVATE_DIR_MODE } from '../core/private-files.js';

/**
 * Attach an image file (a whole ext4 filesystem, no partition table) to a real loop device and
 * mount it at a private temporary directory for the duration of one function. Whatever happens in
 * that function, the filesystem is unmounted and the loop device detached before this returns.
 * Used by migration at commit, by the RAM flasher and by the boot tests.
 */

export interface MountedImage {
  file: string;
  /** /dev/loopN */
  device: string;
  mountPoint: string;
  readOnly: boolean;
}

export interface MountOptions {
  readOnly?: boolean;
  /** Extra mount options; default nodev,nosuid (nothing in the image is run or opened as a device). */
  mountOptions?: string[];
}

const UMOUNT_TRIES = 10;

export async function withMountedImage<T>(file: string, opts: MountOptions, fn: (m: MountedImage) => Promise<T>): Promise<T> {
  const readOnly = opts.readOnly ?? false;
  const image = path.resolve(file);
  await refuseIfAttached(image);
  // Mounted, a directory shows the image's own root directory mode (0755 as a rule), so a private mount
  // point alone would not keep other users out of the image's /etc/shadow and SSH keys: the mount point
  // sits inside a directory that is 0700 (set explicitly, not by the umask) and stays so while mounted.
  const privateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'upgradectl-mnt-'));
  await fs.chmod(privateDir, PRIVATE_DIR_MODE);
  const mountPoint = path.join(privateDir, 'root');
  await fs.mkdir(mountPoint, { mode: PRIVATE_DIR_MODE });
  let device: string | undefined;
  let mounted = false;
  let result: T;
  try {
    device = await attach(image, readOnly);
    // A read-only mount of a filesystem whose journal needs replay would write to it anyway (or
    // fail on a read-only loop device): noload skips the replay, the view is good enough to plan.
    const options = [readOnly ? 'ro' : 'rw', ...(readOnly ? ['noload'] : []), ...(opts.mountOptions ?? ['nodev', 'nosuid'])];
    try {
      await run('mount', ['-t', 'ext4', '-o', options.join(','), device, mountPoint], { timeoutMs: 60_000 });
    } catch (err) {
      throw new UpgradeError('IMAGE', `cannot mount ${image} (${device}) at ${mountPoint}: ${messageOf(err)}`, {
        cause: err,
        hint: `check the image with: e2fsck -fn ${image}`,
      });
    }
    mounted = true;
    result = await fn({ file: image, device, mountPoint, readOnly });
  } catch (err) {
    // The caller's error is the one that matters; cleanup problems are logged, never masking it.
    await cleanup(image, device, mounted ? mountPoint : undefined, mountPoint).catch((e: unknown) =>
      log.warn(`cleanup after a failure with ${image}: ${messageOf(e)}`),
    );
    throw err;
  }
  await cleanup(image, device, mountPoint, mountPoint);
  if (!readOnly) await fsyncFile(image);
  return result;
}

/** Mounting an image that is already attached (the booted one, or another commit's) would corrupt it. */
async function refuseIfAttached(image: string): Promise<void> {
  const { stdout } = await run('losetup', ['--associated', image]);
  if (stdout.trim()) {
    throw new UpgradeError('IMAGE', `${image} is already attached to a loop device: ${stdout.trim().split('\n')[0]}`, {
      hint: 'it is in use (booted, mounted or being migrated); detach it with losetup -d DEVICE once nothing uses it',
    });
  }
}

async function attach(image: string, readOnly: boolean): Promise<string> {
  try {
    const { stdout } = await run('losetup', ['--find', '--show', ...(readOnly ? ['--read-only'] : []), image], { timeoutMs: 30_000 });
    const device = stdout.trim();
    if (!device.startsWith('/dev/')) throw new Error(`losetup printed ${JSON.stringify(device)} instead of a device`);
    return device;
  } catch (err) {
    throw new UpgradeError('IMAGE', `cannot attach ${image} to a loop device: ${messageOf(err)}`, {
      cause: err,
      hint: 'check that the loop module is loaded (modprobe loop) and that free loop devices exist (losetup -f)',
    });
  }
}

async function cleanup(image: string, device: string | undefined, mounted: string | undefined, mountPoint: string): Promise<void> {
  const problems: string[] = [];
  let stillMounted = false;
  if (mounted) {
    try {
      await unmount(mounted);
    } catch (err) {
      stillMounted = true;
      problems.push(messageOf(err));
    }
  }
  if (device) {
    // On a device that is still mounted the kernel only sets autoclear: it detaches at the last unmount.
    await run('losetup', ['--detach', device]).catch((err: unknown) => problems.push(`cannot detach ${device}: ${messageOf(err)}`));
  }
  if (!stillMounted) {
    await fs.rmdir(mountPoint).catch((err: unknown) => log.warn(`could not remove ${mountPoint}: ${messageOf(err)}`));
    await fs.rmdir(path.dirname(mountPoint)).catch((err: unknown) => log.warn(`could not remove ${path.dirname(mountPoint)}: ${messageOf(err)}`));
  }
  if (problems.length) {
    throw new UpgradeError('IMAGE', `cleaning up ${image}: ${problems.join('; ')}`, {
      hint: stillMounted
        ? `find what holds it with: fuser -vm ${mountPoint}; then umount ${mountPoint} and losetup -j ${image}`
        : `detach it by hand: losetup -j ${image}, then losetup -d DEVICE`,
    });
  }
}

/** A shell or scanner that has just looked inside makes umount fail with EBUSY for a moment: retry briefly. */
async function unmount(mountPoint: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await run('umount', [mountPoint], { timeoutMs: 60_000 });
      return;
    } catch (err) {
      const busy = err instanceof ExecError && /busy/i.test(err.stderr);
      if (!busy || attempt >= UMOUNT_TRIES) throw new UpgradeError('IMAGE', `cannot unmount ${mountPoint}: ${messageOf(err)}`, { cause: err });
      log.debug(`${mountPoint} is busy, retrying umount (${attempt}/${UMOUNT_TRIES})`);
      await new Promise((r) => setTimeout(r, 100 * attempt));
    }
  }
}

/** The loop device wrote through the host's page cache: make the image file itself durable. */
async function fsyncFile(file: string): Promise<void> {
  const fh = await fs.open(file, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
