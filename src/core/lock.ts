import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs, constants as C } from 'node:fs';
import path from 'node:path';
import { readBootId } from './boot-id.js';
import { UpgradeError, errnoOf, messageOf } from './errors.js';
import { fsyncDir, removeQuietly } from './durable.js';
import { log } from './log.js';
import type { Layout } from './layout.js';
import { PRIVATE_FILE_MODE, mkdirPrivate } from './private-files.js';

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
 *
 * The file appears with its content in one step: the owner is written to a private temporary file,
 * fsynced, and link()ed to the lock's name, which fails with EEXIST when a lock is there. (Creating
 * the file empty and writing the owner after let a second process read it empty, delete it as
 * "unreadable" and take the lock too.)
 */
export async function acquireLock(layout: Layout, operation: string): Promise<Lock> {
  await mkdirPrivate(layout.stateDir);
  const me: LockOwner = { pid: process.pid, operation, since: new Date().toISOString(), bootId: readBootId(layout) ?? 'unknown' };
  const mine = JSON.stringify(me);
  const tmp = path.join(layout.stateDir, `.lock.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  await writeSynced(tmp, mine);
  try {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await fs.link(tmp, layout.lockFile);
        await fsyncDir(layout.stateDir);
        return { release: () => releaseLock(layout, mine) };
      } catch (err) {
        if (errnoOf(err) !== 'EEXIST') throw err;
      }
      const seen = await readLockFile(layout.lockFile);
      if (seen === undefined) continue; // released between our link and our read
      const holder = parseOwner(seen.text);
      if (holder && holder.bootId === me.bootId && alive(holder.pid)) {
        throw new UpgradeError(
          'LOCKED',
          `another upgradectl operation is running: ${holder.operation} (pid ${holder.pid}, since ${holder.since})`,
          { hint: `wait for it to finish, or stop it (kill ${holder.pid}) and run the command again` },
        );
      }
      await removeStaleLock(layout, seen, holder);
    }
  } finally {
    await removeQuietly(tmp);
  }
  throw new UpgradeError('LOCKED', `could not take ${layout.lockFile}`, { hint: 'run the command again' });
}

/**
 * Remove the stale lock we read, and nothing else. Two contenders that both judged the same lock stale
 * must not both remove "it": the second would remove the lock the first has just taken. Renaming it
 * aside does not settle that (the second rename moves the first contender's fresh lock). So removals
 * are serialized by a flock on the state directory, which the kernel drops when its holder dies (it
 * can never go stale itself), and under it the lock is removed only if it is still the same file
 * (inode) with the same content. Its owner is dead, so only such a removal can change it.
 */
async function removeStaleLock(layout: Layout, seen: { text: string; ino: number }, holder: LockOwner | undefined): Promise<void> {
  await withDirFlock(layout.stateDir, async () => {
    const now = await readLockFile(layout.lockFile);
    if (!now || now.ino !== seen.ino || now.text !== seen.text) return; // someone else settled it: look again
    log.warn(
      holder
        ? `taking over a stale lock of ${holder.operation} (pid ${holder.pid}, since ${holder.since})`
        : `removing an unreadable lock file ${layout.lockFile}`,
    );
    await fs.rm(layout.lockFile, { force: true });
    await fsyncDir(layout.stateDir);
  });
}

async function writeSynced(file: string, text: string): Promise<void> {
  const fh = await fs.open(file, C.O_WRONLY | C.O_CREAT | C.O_EXCL, PRIVATE_FILE_MODE);
  try {
    await fh.writeFile(text);
    await fh.chmod(PRIVATE_FILE_MODE);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** The lock file's content and inode (read through one open file), or undefined when there is none. */
async function readLockFile(file: string): Promise<{ text: string; ino: number } | undefined> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, 'r');
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const [st, text] = await Promise.all([fh.stat(), fh.readFile('utf8')]);
    return { text, ino: st.ino };
  } finally {
    await fh.close();
  }
}

function parseOwner(text: string): LockOwner | undefined {
  try {
    const o = JSON.parse(text) as LockOwner;
    return typeof o?.pid === 'number' ? o : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Run `fn` holding an exclusive flock(2) on `dir`. Node has no flock, so the `flock` program (util-linux)
 * takes it on our open file description, inherited as its fd 3: the lock belongs to that description and
 * stays with our handle after the program exits, until we close it (or die). Not through core/exec's
 * run(), which cannot pass a file descriptor.
 */
async function withDirFlock<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  const fh = await fs.open(dir, C.O_RDONLY | C.O_DIRECTORY);
  try {
    await new Promise<void>((resolve, reject) => {
      log.debug(`exec: flock --wait 30 3 (3 = ${dir})`);
      const child = spawn('flock', ['--wait', '30', '3'], { stdio: ['ignore', 'ignore', 'pipe', fh.fd] });
      let stderr = '';
      child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('error', (err) => reject(new UpgradeError('LOCKED', `cannot lock ${dir}: flock: ${messageOf(err)}`, { cause: err, hint: 'install util-linux (flock)' })));
      child.on('close', (code) =>
        code === 0
          ? resolve()
          : reject(new UpgradeError('LOCKED', `cannot lock ${dir} to take over a stale lock (flock exit status ${String(code)}): ${stderr.trim()}`, { hint: 'run the command again' })),
      );
    });
    return await fn();
  } finally {
    await fh.close();
  }
}

/** Remove the lock only while it is still ours (a takeover by someone else is not undone). */
async function releaseLock(layout: Layout, mine: string): Promise<void> {
  const seen = await readLockFile(layout.lockFile);
  if (seen?.text === mine) await fs.rm(layout.lockFile, { force: true });
}
