import { promises as fs } from 'node:fs';
import path from 'node:path';
import { UpgradeError, messageOf } from '../core/errors.js';
import { ExecError, run } from '../core/exec.js';
import { log } from '../core/log.js';
import { testSwitch } from '../core/test-switches.js';

/** The filesystem that holds a directory, as findmnt reports it. */
export interface HostMount {
  /** Mount point of the filesystem holding the directory. */
  target: string;
  source: string;
  fstype: string;
  uuid: string | undefined;
}

export async function findMount(dir: string): Promise<HostMount> {
  let out: string;
  try {
    ({ stdout: out } = await run('findmnt', ['-J', '-n', '-o', 'TARGET,SOURCE,FSTYPE,UUID', '--target', dir]));
  } catch (err) {
    throw new UpgradeError('UNSUPPORTED', `cannot find the filesystem holding ${dir}: ${messageOf(err)}`, {
      cause: err,
      hint: 'install util-linux (findmnt), or set [boot] host_uuid in upgradectl.conf',
    });
  }
  const doc = JSON.parse(out) as { filesystems?: Array<{ target: string; source: string; fstype: string; uuid: string | null }> };
  const fsys = doc.filesystems?.[0];
  if (!fsys) throw new UpgradeError('UNSUPPORTED', `findmnt reported no filesystem for ${dir}`);
  return { target: fsys.target, source: fsys.source, fstype: fsys.fstype, uuid: fsys.uuid ?? undefined };
}

/**
 * The host partition's filesystem UUID, which every GRUB entry searches for. `[boot] host_uuid` wins:
 * the boot tests build disks from a directory tree that is mounted nowhere.
 */
export async function detectHostUuid(hostDir: string, configured: string | undefined): Promise<string> {
  if (configured) return configured;
  const mount = await findMount(hostDir);
  if (mount.uuid) return mount.uuid;
  if (mount.source.startsWith('/dev/')) {
    try {
      const { stdout } = await run('blkid', ['-s', 'UUID', '-o', 'value', mount.source]);
      if (stdout.trim()) return stdout.trim();
    } catch (err) {
      log.debug(`blkid ${mount.source}: ${messageOf(err)}`);
    }
  }
  throw new UpgradeError('GRUB', `cannot tell the filesystem UUID of ${mount.source} (mounted at ${mount.target}, holding ${hostDir})`, {
    hint: 'set host_uuid = <uuid of the host partition> in the [boot] section of /etc/upgradectl/upgradectl.conf (blkid shows it)',
  });
}

/** Why GRUB cannot write grubenv (save_env) on this filesystem, or undefined when it can. */
export interface SaveEnvVerdict {
  ok: boolean;
  /** md RAID, LVM, LUKS or btrfs layers found between the filesystem and the disk. */
  layers: string[];
  mount: HostMount;
}

/**
 * GRUB's save_env writes the env file's blocks directly on disk; it refuses on md RAID, LVM and LUKS
 * (no writable mapping to disk sectors) and on btrfs (checksums and COW). Walk the block-device stack
 * with lsblk to find those layers.
 */
export async function saveEnvCapability(hostDir: string): Promise<SaveEnvVerdict> {
  const mount = await findMount(hostDir);
  const layers: string[] = [];
  if (mount.fstype === 'btrfs') layers.push('btrfs');
  if (mount.fstype === 'zfs') layers.push('zfs');
  if (mount.source.startsWith('/dev/')) {
    try {
      const { stdout } = await run('lsblk', ['-s', '-n', '-l', '-o', 'NAME,TYPE', mount.source.replace(/\[.*\]$/, '')]);
      for (const line of stdout.split('\n')) {
        const [name, type] = line.trim().split(/\s+/);
        if (!name || !type) continue;
        if (type === 'lvm') layers.push(`LVM (${name})`);
        else if (type === 'crypt') layers.push(`LUKS/dm-crypt (${name})`);
        else if (/^raid|^md/.test(type)) layers.push(`md RAID (${name}, ${type})`);
      }
    } catch (err) {
      log.debug(`lsblk ${mount.source}: ${messageOf(err)}`);
    }
  }
  return { ok: layers.length === 0, layers, mount };
}

/** Whether `dir` is the mount point of its own filesystem (and not `/`). */
export async function isOwnMountPoint(dir: string): Promise<boolean> {
  const real = await fs.realpath(dir);
  if (real === '/') return false;
  const [self, parent] = await Promise.all([fs.stat(real), fs.stat(path.dirname(real))]);
  return self.dev !== parent.dev;
}

export interface CheckpointResult {
  method: 'freeze' | 'syncfs';
  note?: string;
}

export interface CheckpointOptions {
  /** How long `fsfreeze --freeze` may take before it is killed (a freeze waits for writers to drain). */
  freezeTimeoutMs?: number;
}

/**
 * Make what upgradectl wrote visible to GRUB, which reads the disk without replaying the ext4 journal
 * (FACTS.md: a rename or truncate that is only in the journal is invisible after a hard reset).
 *
 * `syncfs` (sync -f) commits the journal but leaves metadata to be checkpointed later. FIFREEZE forces
 * a full journal checkpoint, so after freeze+thaw every block sits at its home location. A read-only
 * remount would do the same, but inside a running image the host partition backs the root loop device
 * and cannot go read-only; freezing it for a moment only stalls writers (the thaw needs nothing but
 * reads, and reads do not block on a frozen filesystem).
 *
 * Never freeze `/` or a directory that is not its own mount point (first install, chroot, tests in a
 * temporary tree): there we sync the filesystem and say so.
 */
export async function checkpointHost(hostDir: string, opts: CheckpointOptions = {}): Promise<CheckpointResult> {
  await run('sync', ['-f', hostDir]);
  if (testSwitch(hostDir, 'UPGRADECTL_NO_FREEZE') === '1') return { method: 'syncfs', note: 'freezing disabled by UPGRADECTL_NO_FREEZE' };
  if (!(await isOwnMountPoint(hostDir))) {
    const note = `${hostDir} is not its own mount point: synced its filesystem (syncfs) without a freeze checkpoint`;
    log.debug(note);
    return { method: 'syncfs', note };
  }
  const timeoutMs = opts.freezeTimeoutMs ?? 60_000;
  try {
    await run('fsfreeze', ['--freeze', hostDir], { timeoutMs });
  } catch (err) {
    // A freeze that failed or timed out may still have taken effect: FIFREEZE waits for writers without
    // taking signals, so a killed fsfreeze dies only once the filesystem is frozen. Thaw regardless, or
    // the filesystem that backs `/` stays frozen and the machine stops.
    const thawed = await thaw(hostDir);
    const note = `could not freeze ${hostDir} for a journal checkpoint (${messageOf(err)})${thawed ? '; it had frozen and was thawed' : ''}; synced it instead`;
    log.warn(note);
    return { method: 'syncfs', note };
  }
  await thaw(hostDir);
  return { method: 'freeze' };
}

/**
 * `fsfreeze --unfreeze`, retried: true when it thawed the filesystem, false when it was not frozen
 * (EINVAL). A filesystem that stays frozen is an error with the command to run.
 */
async function thaw(hostDir: string): Promise<boolean> {
  let lastErr: unknown;
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      await run('fsfreeze', ['--unfreeze', hostDir], { timeoutMs: 30_000 });
      return true;
    } catch (err) {
      if (err instanceof ExecError && /invalid argument/i.test(err.stderr)) return false;
      lastErr = err;
    }
  }
  throw new UpgradeError('GRUB', `${hostDir} stays frozen: ${messageOf(lastErr)}`, {
    cause: lastErr,
    hint: `run fsfreeze --unfreeze ${hostDir} now`,
  });
}
