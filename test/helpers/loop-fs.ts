import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { run } from '../../src/core/exec.js';

export interface LoopFs {
  /** Where the filesystem is mounted. */
  mnt: string;
  device: string;
  /** Thaw (in case), unmount, detach. */
  cleanup(): Promise<void>;
}

/**
 * A real small ext4 filesystem: a file under `dir`, made with mkfs, attached to a loop device and
 * mounted at `dir/mnt` (its own mount point, so upgradectl freezes it as it would the host partition).
 */
export async function mountLoopFs(dir: string, sizeMiB = 128): Promise<LoopFs> {
  const file = path.join(dir, 'fs.img');
  const mnt = path.join(dir, 'mnt');
  mkdirSync(mnt, { recursive: true });
  await run('truncate', ['-s', `${sizeMiB}M`, file]);
  await run('mkfs.ext4', ['-q', '-F', file]);
  const device = (await run('losetup', ['--find', '--show', file])).stdout.trim();
  try {
    await run('mount', [device, mnt]);
  } catch (err) {
    await run('losetup', ['-d', device]);
    throw err;
  }
  return {
    mnt,
    device,
    async cleanup() {
      await run('fsfreeze', ['--unfreeze', mnt]).catch(() => undefined);
      for (let i = 0; ; i++) {
        try {
          await run('umount', [mnt]);
          break;
        } catch (err) {
          if (i >= 20) throw err;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      await run('losetup', ['-d', device]);
    },
  };
}

/** A process that keeps writing 32 MiB files into `dir` (dirty pages a freeze must flush) until stopped. */
export function startWriter(dir: string): { child: ChildProcess; stop(): Promise<void> } {
  const child = spawn('sh', ['-c', `while :; do dd if=/dev/zero of="$1/load" bs=1M count=32 status=none; done`, 'sh', dir], { stdio: 'ignore', detached: true });
  return {
    child,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.on('close', () => resolve());
        process.kill(-child.pid!, 'SIGKILL');
      }),
  };
}
