import { promises as fs } from 'node:fs';
import { errnoOf } from './errors.js';
import type { Layout } from './layout.js';
import { isVersion } from './version.js';

export interface ImageFile {
  version: string;
  file: string;
  /** Apparent size of the image file. */
  bytes: number;
  /** Bytes allocated on the host filesystem (images are sparse). */
  allocated: number;
}

/**
 * The images under HOST/images, the one listing every layer uses (boot entries, space, status): files
 * named `<version>.img` with a valid version. Downloads in `.staging` and hidden files are never listed,
 * nor is anything that is not a regular file.
 */
export async function listImages(layout: Layout): Promise<ImageFile[]> {
  let names: string[];
  try {
    names = await fs.readdir(layout.imagesDir);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return [];
    throw err;
  }
  const out: ImageFile[] = [];
  for (const name of names.sort()) {
    if (!name.endsWith('.img')) continue;
    const version = name.slice(0, -'.img'.length);
    if (!isVersion(version)) continue;
    const file = layout.imageFile(version);
    const st = await fs.lstat(file).catch(() => undefined);
    // Gone since readdir (a concurrent removal), or a link or directory that is no image of ours.
    if (!st?.isFile()) continue;
    out.push({ version, file, bytes: st.size, allocated: st.blocks * 512 });
  }
  return out;
}
