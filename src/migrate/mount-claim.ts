import { createHash } from 'node:crypto';
import { existsSync, readFileSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { UpgradeError, messageOf } from '../core/errors.js';
import { run } from '../core/exec.js';
import { log } from '../core/log.js';

/**
 * Where an image is mounted for migration, and who holds that mount. Each image has one fixed mount
 * point under a root-only directory, with a claim file beside it naming the process (pid and start
 * time) and, once attached, its loop device. A process killed with SIGKILL runs no cleanup; the next
 * run, or `doctor`, finds its claim, sees the owner is gone, and unmounts and detaches exactly what
 * the claim and the mount table say is ours: never another mount or another loop device.
 *
 * /run is emptied at every boot, as are mounts and loop devices, so a claim never outlives them.
 */
export const MOUNT_BASE = '/run/upgradectl/mnt';

interface Claim {
  image: string;
  pid: number;
  /** Start time of `pid` (clock ticks since boot): a reused pid is not mistaken for the owner. */
  start: string;
  device?: string;
}

export interface CleanedMount {
  image: string;
  mountPoint: string;
  owner: number | undefined;
  unmounted: boolean;
  detached: string[];
}

/** A readable, collision-free name per image path: `<name>-<12 hex of the path's SHA-256>`. */
export function mountPointFor(image: string): string {
  const file = path.resolve(image);
  const name = path.basename(file, '.img').replace(/[^\w.-]/g, '_').slice(0, 64);
  return path.join(MOUNT_BASE, `${name}-${createHash('sha256').update(file).digest('hex').slice(0, 12)}`);
}

const claimFile = (mountPoint: string) => `${mountPoint}.claim.json`;

/**
 * Take the image's mount point for this process: clean up what a dead owner left, refuse a live one,
 * then create the directory and the claim before anything is attached.
 */
export async function claimMountPoint(image: string): Promise<string> {
  await fs.mkdir(MOUNT_BASE, { recursive: true, mode: 0o700 });
  // The image's migrated /etc/shadow is readable through the mount: nobody but root may walk in.
  await fs.chmod(MOUNT_BASE, 0o700);
  await cleanStaleMount(image);
  const mountPoint = mountPointFor(image);
  await fs.mkdir(mountPoint, { mode: 0o700 }).catch((err: unknown) => {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  });
  await writeClaim(mountPoint, { image: path.resolve(image), pid: process.pid, start: processStart(process.pid) ?? '' });
  return mountPoint;
}

/** Name the loop device in the claim as soon as it exists, so a kill after this leaves nothing unknown. */
export async function recordLoopDevice(mountPoint: string, device: string): Promise<void> {
  const claim = readClaim(mountPoint);
  if (claim) await writeClaim(mountPoint, { ...claim, device });
}

/** After a clean unmount and detach: the mount point and its claim go. */
export async function releaseMountPoint(mountPoint: string): Promise<void> {
  await fs.rmdir(mountPoint).catch((err: unknown) => log.warn(`could not remove ${mountPoint}: ${messageOf(err)}`));
  await fs.rm(claimFile(mountPoint), { force: true });
}

/**
 * Unmount and detach what a dead process left of its mount of `image`. Returns what was cleaned, or
 * undefined when there was nothing. A live owner is an error: its mount is in use.
 */
export async function cleanStaleMount(image: string): Promise<CleanedMount | undefined> {
  const file = path.resolve(image);
  const mountPoint = mountPointFor(file);
  const claim = readClaim(mountPoint);
  const mount = mountAt(mountPoint);
  if (!claim && !mount && !existsSync(mountPoint)) return undefined;
  if (claim && processStart(claim.pid) === claim.start) {
    throw new UpgradeError('IMAGE', `${file} is mounted at ${mountPoint} by running process ${claim.pid}`, {
      hint: `another upgradectl is using the image (see ps -p ${claim.pid}); run the command again once it has finished`,
    });
  }
  // The owner is gone. Everything under MOUNT_BASE for this image is ours, and loop devices only when
  // the claim or our own mount names them and they still back this very file.
  const cleaned: CleanedMount = { image: file, mountPoint, owner: claim?.pid, unmounted: false, detached: [] };
  if (mount) {
    await run('umount', [mountPoint], { timeoutMs: 60_000 }).catch((err: unknown) => {
      throw new UpgradeError('IMAGE', `cannot unmount ${mountPoint}, left by an interrupted run: ${messageOf(err)}`, {
        cause: err,
        hint: `find what holds it with: fuser -vm ${mountPoint}; then umount ${mountPoint}`,
      });
    });
    cleaned.unmounted = true;
  }
  const ours = [claim?.device, mount?.source].filter((d): d is string => d !== undefined);
  const backing = await loopDevicesOf(file);
  for (const device of new Set(ours.filter((d) => backing.includes(d)))) {
    await run('losetup', ['--detach', device]);
    cleaned.detached.push(device);
  }
  await releaseMountPoint(mountPoint);
  if (cleaned.unmounted || cleaned.detached.length) {
    log.warn(
      `cleaned up after an interrupted mount of ${file}${claim ? ` by process ${claim.pid}` : ''}: ` +
        [cleaned.unmounted ? `unmounted ${mountPoint}` : '', cleaned.detached.length ? `detached ${cleaned.detached.join(', ')}` : ''].filter(Boolean).join(', '),
    );
  }
  return cleaned;
}

/** For doctor: clean every stale claim under MOUNT_BASE; claims of live processes are listed as busy. */
export async function cleanStaleMounts(): Promise<{ cleaned: CleanedMount[]; busy: Array<{ image: string; pid: number }> }> {
  const out = { cleaned: [] as CleanedMount[], busy: [] as Array<{ image: string; pid: number }> };
  const names = await fs.readdir(MOUNT_BASE).catch(() => [] as string[]);
  for (const name of names.filter((n) => n.endsWith('.claim.json'))) {
    const claim = readClaim(path.join(MOUNT_BASE, name.slice(0, -'.claim.json'.length)));
    if (!claim) continue;
    if (processStart(claim.pid) === claim.start) out.busy.push({ image: claim.image, pid: claim.pid });
    else {
      const c = await cleanStaleMount(claim.image);
      if (c) out.cleaned.push(c);
    }
  }
  return out;
}

function readClaim(mountPoint: string): Claim | undefined {
  try {
    return JSON.parse(readFileSync(claimFile(mountPoint), 'utf8')) as Claim;
  } catch {
    // Absent, or torn by a kill while being written: then nothing was attached under it yet.
    return undefined;
  }
}

async function writeClaim(mountPoint: string, claim: Claim): Promise<void> {
  await fs.writeFile(claimFile(mountPoint), JSON.stringify(claim), { mode: 0o600 });
}

/** Field 22 of /proc/PID/stat (after the parenthesised command name, which may hold spaces). */
function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** The mount at exactly `mountPoint` in /proc/self/mountinfo (octal escapes decoded), if any. */
function mountAt(mountPoint: string): { source: string } | undefined {
  return mountTable().get(mountPoint);
}

/** Every mount point of /proc/self/mountinfo with its source, octal escapes (space, tab, newline, backslash) decoded. */
export function mountTable(): Map<string, { source: string }> {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const table = new Map<string, { source: string }>();
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ');
    const sep = fields.indexOf('-');
    const point = unescape(fields[4] ?? '');
    // The first line for a point wins, as mountAt's search always returned the first match.
    if (sep < 0 || table.has(point)) continue;
    table.set(point, { source: unescape(fields[sep + 2] ?? '') });
  }
  return table;
}

/** Loop devices backed by `file`, as `losetup -j` lists them. */
async function loopDevicesOf(file: string): Promise<string[]> {
  const { stdout } = await run('losetup', ['--associated', file]);
  return stdout.split('\n').filter(Boolean).map((l) => l.slice(0, l.indexOf(':')));
}
