import { randomBytes } from 'node:crypto';
import { promises as fs, constants as C } from 'node:fs';
import path from 'node:path';
import { log } from './log.js';

/** fsync a directory so that a rename or create inside it survives a power cut. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, C.O_RDONLY | C.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Replace `file` atomically: write a uniquely named temporary beside it, fsync, rename over, fsync
 * the directory. A crash at any point leaves either the old or the new content, never a mix.
 */
export async function writeFileDurable(file: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fh = await fs.open(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL, mode);
  try {
    await fh.writeFile(data);
    await fh.chmod(mode);
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await removeQuietly(tmp);
    throw err;
  }
  await fh.close();
  try {
    await fs.rename(tmp, file);
  } catch (err) {
    await removeQuietly(tmp);
    throw err;
  }
  await fsyncDir(dir);
}

/**
 * Overwrite the whole of an existing file of exactly `data.length` bytes in place (same inode, same
 * data blocks, no truncate) and fdatasync it. Returns false, writing nothing, when the file is missing
 * or has another size: the caller then replaces it whole. For files a reader sees without replaying
 * the filesystem journal (GRUB reading grubenv, FACTS.md): a data overwrite is visible to it once
 * synced, a rename is not until the journal is checkpointed.
 */
export async function overwriteInPlace(file: string, data: Uint8Array): Promise<boolean> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, C.O_RDWR);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  try {
    if ((await fh.stat()).size !== data.length) return false;
    const { bytesWritten } = await fh.write(data, 0, data.length, 0);
    if (bytesWritten !== data.length) throw new Error(`short write to ${file} (${bytesWritten} of ${data.length} bytes)`);
    await fh.datasync();
    return true;
  } finally {
    await fh.close();
  }
}

/** Rename and make the rename durable (both directories when they differ). */
export async function renameDurable(from: string, to: string): Promise<void> {
  await fs.rename(from, to);
  await fsyncDir(path.dirname(to));
  if (path.dirname(from) !== path.dirname(to)) await fsyncDir(path.dirname(from));
}

/** Best-effort removal for cleanup paths: a failure is logged, never thrown. */
export async function removeQuietly(target: string): Promise<void> {
  try {
    await fs.rm(target, { recursive: true, force: true });
  } catch (err) {
    log.warn(`could not remove ${target}: ${(err as Error).message}`);
  }
}

export async function readJsonIfExists<T>(file: string): Promise<T | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return JSON.parse(text) as T;
}
