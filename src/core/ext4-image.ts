import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { messageOf } from './errors.js';
import { run } from './exec.js';

/**
 * Files inside an ext4 image file, read with debugfs: no loop device, no mount, nothing written, so
 * doctor can look into every image, including the one that is booted.
 */

export type InImage = { path: string } | { missing: string };

/** `p` resolved through symlinks (within the image) to a regular file, or why it is none. */
export async function resolveInImage(image: string, p: string): Promise<InImage> {
  let target = p.startsWith('/') ? p : `/${p}`;
  for (let hops = 0; hops < 8; hops++) {
    let text: string;
    try {
      const r = await run('debugfs', ['-R', `stat ${target}`, image]);
      text = r.stdout + r.stderr;
    } catch (err) {
      return { missing: messageOf(err) };
    }
    if (/File not found/.test(text)) return { missing: 'not found' };
    if (/Filesystem not open|Bad magic/.test(text)) return { missing: 'the image is not an ext4 filesystem' };
    const link = /Fast link dest: "([^"]*)"/.exec(text);
    if (!link) return /Type: regular/.test(text) ? { path: target } : { missing: 'not a regular file' };
    target = path.posix.resolve(path.posix.dirname(target), link[1]!);
  }
  return { missing: 'too many symlinks' };
}

/** The bytes of the regular file `p` (already resolved) in the image, through a private temporary file. */
export async function readFromImage(image: string, p: string): Promise<Buffer> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'upgradectl-dump-'));
  try {
    const out = path.join(work, 'file');
    await run('debugfs', ['-R', `dump ${p} ${out}`, image]);
    return await fs.readFile(out);
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}
