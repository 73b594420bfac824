import { randomBytes } from 'node:crypto';
import { promises as fs, constants as C, type BigIntStats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { UpgradeError, errnoOf, isUpgradeError } from '../../core/errors.js';
import { fsyncDir, removeQuietly, writeFileDurable } from '../../core/durable.js';
import { checkRange, keySegments, metadataCap, metadataTooLarge } from './keys.js';
import { collect } from './body.js';
import type { ObjectInfo, Source, SourceSpec, Target } from './source.js';

const CHUNK = 1024 * 1024;

/**
 * A release tree in a local directory (file:///dir): a mounted share, a USB stick, or the output of
 * `publish --to file://…`. Reads pin the version by opening the file once and comparing the etag of
 * that open file, so a publisher renaming a new file over the key cannot mix two versions.
 */
export class FileStore implements Source, Target {
  readonly url: string;
  private readonly spec: SourceSpec;
  private readonly dir: string;

  constructor(url: URL) {
    try {
      this.dir = fileURLToPath(url);
    } catch (err) {
      throw new UpgradeError('USAGE', `cannot use ${url.href} as a directory: ${(err as Error).message}`, {
        hint: 'write a local directory as file:///path/to/dir (three slashes, no host)',
        cause: err,
      });
    }
    this.url = pathToFileURL(this.dir).href;
    this.spec = { url: this.url, opts: {} };
  }

  /** The same prefix opened again: every key is reachable from it. */
  async workerSpec(): Promise<SourceSpec> {
    return this.spec;
  }

  async get(key: string): Promise<Buffer> {
    const file = this.pathOf(key);
    const fh = await fs.open(file, C.O_RDONLY).catch((err: unknown) => {
      throw fileError(err, file);
    });
    try {
      const tooLarge = () => metadataTooLarge(file, key);
      if ((await fh.stat()).size > metadataCap(key).bytes) throw tooLarge();
      // Capped while reading too: the file may grow after the stat.
      return await collect(fh.createReadStream({ autoClose: false }), metadataCap(key).bytes, tooLarge);
    } catch (err) {
      throw isUpgradeError(err) ? err : fileError(err, file);
    } finally {
      await fh.close();
    }
  }

  async head(key: string): Promise<ObjectInfo> {
    const file = this.pathOf(key);
    const st = await fs.stat(file, { bigint: true }).catch((err: unknown) => {
      throw fileError(err, file);
    });
    if (!st.isFile()) throw notFound(file);
    return { size: Number(st.size), etag: etagOf(st) };
  }

  async range(key: string, start: number, end: number, etag?: string, into?: Buffer): Promise<Buffer> {
    const file = this.pathOf(key);
    checkRange(file, start, end);
    const fh = await openPinned(file, etag, end);
    try {
      const out = into && into.length >= end - start ? into.subarray(0, end - start) : Buffer.alloc(end - start);
      let filled = 0;
      while (filled < out.length) {
        const { bytesRead } = await fh.read(out, filled, out.length - filled, start + filled);
        if (bytesRead === 0) throw shorter(file, start + filled, end);
        filled += bytesRead;
      }
      return out;
    } finally {
      await fh.close();
    }
  }

  async *stream(key: string, start: number, etag?: string): AsyncIterable<Buffer> {
    const file = this.pathOf(key);
    checkRange(file, start);
    const fh = await openPinned(file, etag, start);
    try {
      for (let position = start; ; ) {
        // A fresh buffer per chunk: the consumer may keep it while we read the next one.
        const chunk = Buffer.allocUnsafe(CHUNK);
        const { bytesRead } = await fh.read(chunk, 0, CHUNK, position);
        if (bytesRead === 0) return;
        position += bytesRead;
        yield chunk.subarray(0, bytesRead);
      }
    } finally {
      await fh.close();
    }
  }

  async putBytes(key: string, body: Uint8Array): Promise<void> {
    const file = this.pathOf(key);
    await mkdirDurable(path.dirname(file));
    await writeFileDurable(file, body).catch((err: unknown) => {
      throw fileError(err, file);
    });
  }

  /** Copy (never move: the caller keeps its file) to a temporary beside the key, fsync, rename, fsync the directory. */
  async putFile(key: string, file: string): Promise<void> {
    const dest = this.pathOf(key);
    const st = await fs.stat(file).catch((err: unknown) => {
      throw fileError(err, file);
    });
    if (!st.isFile()) throw notFound(file);
    const dir = path.dirname(dest);
    await mkdirDurable(dir);
    const tmp = path.join(dir, `.${path.basename(dest)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
    try {
      // FICLONE shares extents on btrfs/xfs and silently falls back to a copy elsewhere.
      await fs.copyFile(file, tmp, C.COPYFILE_EXCL | C.COPYFILE_FICLONE);
      const fh = await fs.open(tmp, C.O_RDWR);
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fs.rename(tmp, dest);
    } catch (err) {
      await removeQuietly(tmp);
      throw fileError(err, dest);
    }
    await fsyncDir(dir);
  }

  async close(): Promise<void> {
    // Nothing is held between calls.
  }

  private pathOf(key: string): string {
    return path.join(this.dir, ...keySegments(key));
  }
}

/** Size, inode and nanosecond mtime: changes whenever a publisher rewrites or renames over the file. */
function etagOf(st: BigIntStats): string {
  return `${st.ino.toString(16)}-${st.size.toString(16)}-${st.mtimeNs.toString(16)}`;
}

/** Open `file` and make sure the open file is version `etag` and holds at least `minSize` bytes. */
async function openPinned(file: string, etag: string | undefined, minSize: number): Promise<FileHandle> {
  const fh = await fs.open(file, C.O_RDONLY).catch((err: unknown) => {
    throw fileError(err, file);
  });
  try {
    const st = await fh.stat({ bigint: true });
    if (!st.isFile()) throw notFound(file);
    const actual = etagOf(st);
    if (etag !== undefined && actual !== etag) {
      throw new UpgradeError('CHANGED', `${file} changed: version ${actual}, expected ${etag}`, {
        hint: 'the release was re-published while it was being read; run the command again to start over',
      });
    }
    if (st.size < BigInt(minSize)) throw shorter(file, Number(st.size), minSize);
    return fh;
  } catch (err) {
    await fh.close();
    throw err;
  }
}

/** Create `dir` and any missing parents, fsyncing each parent so the new entries survive a power cut. */
async function mkdirDurable(dir: string): Promise<void> {
  const first = await fs.mkdir(dir, { recursive: true }).catch((err: unknown) => {
    throw fileError(err, dir);
  });
  if (first === undefined) return;
  const created: string[] = [];
  for (let d = dir; ; d = path.dirname(d)) {
    created.push(d);
    if (d === first || d === path.dirname(d)) break;
  }
  for (const d of created.reverse()) await fsyncDir(path.dirname(d));
}

function notFound(file: string): UpgradeError {
  return new UpgradeError('NOT_FOUND', `${file} does not exist or is not a regular file`, {
    hint: 'check [source] url and that the release was published into that directory',
  });
}

function shorter(file: string, size: number, wanted: number): UpgradeError {
  return new UpgradeError('CHANGED', `${file} has only ${size} bytes, ${wanted} were expected`, {
    hint: 'the file is truncated or was replaced by another version; re-publish the release or run the command again',
  });
}

function fileError(err: unknown, file: string): unknown {
  switch (errnoOf(err)) {
    case 'ENOENT':
    case 'ENOTDIR':
    case 'EISDIR':
      return notFound(file);
    case 'EACCES':
    case 'EPERM':
      return new UpgradeError('CONFIG', `permission denied on ${file}`, {
        hint: 'run upgradectl as root, or give it read (and for publish, write) access to the directory',
        cause: err,
      });
    case 'ENOSPC':
      return new UpgradeError('NO_SPACE', `no space left to write ${file}`, {
        hint: 'free space on that filesystem (df -h) and run the command again',
        cause: err,
      });
    default:
      return err;
  }
}
