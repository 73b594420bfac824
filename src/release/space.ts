import { promises as fs } from 'node:fs';
import path from 'node:path';
import { UpgradeError } from '../core/errors.js';
import { log } from '../core/log.js';
import type { Layout } from '../core/layout.js';
import { listImages } from '../core/images.js';
import { compareVersions } from '../core/version.js';

/**
 * Headroom beyond the image's own blocks: ext4 metadata of a large file, the state and boot files.
 * 2% of the filesystem, between 4 and 64 MiB, so that small test or appliance partitions still work.
 */
async function margin(dir: string): Promise<number> {
  const s = await fs.statfs(dir);
  return Math.min(64 << 20, Math.max(4 << 20, Math.floor(s.blocks * s.bsize * 0.02)));
}

export async function freeBytes(dir: string): Promise<number> {
  const s = await fs.statfs(dir);
  return s.bavail * s.bsize;
}

/**
 * Make room for `needed` bytes under HOST/images: if there is not enough, remove images that are
 * neither current, previous, prepared nor booted (oldest first), and staged downloads of other
 * versions; if still not enough, say how much is needed and where.
 */
export async function ensureSpace(layout: Layout, needed: number, keep: Set<string>, stagingOf: string): Promise<{ removed: string[] }> {
  const want = needed + (await margin(layout.imagesDir));
  let free = await freeBytes(layout.imagesDir);
  const removed: string[] = [];
  if (free >= want) return { removed };

  const candidates: Array<{ file: string; version: string }> = [];
  for (const name of await fs.readdir(layout.stagingDir).catch(() => [] as string[])) {
    const version = name.replace(/\.(img|progress\.json)$/, '');
    if (version !== stagingOf) candidates.push({ file: path.join(layout.stagingDir, name), version });
  }
  const onDisk = (await listImages(layout)).map((i) => i.version);
  const images = onDisk.filter((v) => !keep.has(v)).sort(compareVersions);
  for (const version of images) candidates.push({ file: layout.imageFile(version), version });

  for (const c of candidates) {
    if (free >= want) break;
    log.warn(`removing ${c.file} to make room for the new image`);
    await fs.rm(c.file, { force: true });
    await fs.rm(layout.manifestFile(c.version), { force: true }).catch(() => undefined);
    removed.push(c.file);
    free = await freeBytes(layout.imagesDir);
  }
  if (free < want) {
    // `keep` also names the version being prepared and state entries whose file is gone: list only
    // what takes space, so the operator knows what there is to remove.
    const kept = onDisk.filter((v) => keep.has(v)).join(', ') || 'none';
    throw new UpgradeError('NO_SPACE', `not enough space in ${layout.imagesDir}: the image needs ${mib(want)} (with margin), ${mib(free)} is free`, {
      hint: `free ${mib(want - free)} on the host partition (images kept: ${kept}); nothing was downloaded`,
    });
  }
  return { removed };
}

const mib = (n: number) => `${(n / 1048576).toFixed(0)} MiB`;
