import { promises as fs, constants as C } from 'node:fs';
import { readBootId } from './boot-id.js';
import { UpgradeError } from './errors.js';
import { fsyncDir } from './durable.js';
import { log } from './log.js';
import type { Layout } from './layout.js';
import path from 'node:path';

interface LockOwner {
  pid: number;
  operation: string;
  since: string;
  bootId: string;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export interface Lock {
  release(): Promise<void>;
}

/**
 * One prepare/commit/confirm/rollback at a time. The lock file names its holder, so a second caller
 * is told which operation holds it; a holder that died (or ran in an earlier boot) is taken over.
 */
export async function acquireLock(layout: Layout, operation: string): Promise<Lock> {
  await fs.mkdir(layout.stateDir, { recursive: true });
  const me: LockOwner = { pid: process.pid, operation, since: new Date().toISOString(), bootId: readBootId(layout) ?? 'unknown' };
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await fs.open(layout.lockFile, C.O_WRONLY | C.O_CREAT | C.O_EXCL, 0o644);
      try {
        await fh.writeFile(JSON.stringify(me));
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fsyncDir(path.dirname(layout.lockFile));
      return { release: () => releaseLock(layout, me) };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const holder = await readOwner(layout.lockFile);
    if (holder && holder.bootId === me.bootId && alive(holder.pid)) {
      throw new UpgradeError(
        'LOCKED',
        `another upgradectl operation is running: ${holder.operation} (pid ${holder.pid}, since ${holder.since})`,
        { hint: `wait for it to finish, or stop it (kill ${holder.pid}) and run the command again` },
      );
    }
    log.warn(
      holder
        ? `taking over a stale lock of ${holder.operation} (pid ${holder.pid}, since ${holder.since})`
        : `removing an unreadable lock file ${layout.lockFile}`,
    );
    await fs.rm(layout.lockFile, { force: true });
  }
  throw new UpgradeError('LOCKED', `could not take ${layout.lockFile}`, { hint: 'run the command again' });
}

async function readOwner(file: string): Promise<LockOwner | undefined> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as LockOwner;
  } catch {
    return undefined;
  }
}

async function releaseLock(layout: Layout, me: LockOwner): Promise<void> {
  const holder = await readOwner(layout.lockFile);
  if (holder && holder.pid === me.pid && holder.since === me.since) await fs.rm(layout.lockFile, { force: true });
}
