import { promises as fs } from 'node:fs';
import path from 'node:path';
import { log } from '../core/log.js';
import { PRIVATE_FILE_MODE, mkdirPrivate } from '../core/private-files.js';
import { BLOCK_HASH_BYTES, blockHash } from './block-hash.js';
import type { FramePool } from './frame-pool.js';
import { HOLE_GRAIN } from './holes.js';
import type { Manifest } from './manifest.js';
import type { ReleaseIndex } from './release-index.js';

/**
 * Delta prepare: find the blocks of the new image that the machine already holds in its local images
 * (current, previous, …) and plan per frame what to copy and which LZ4 blocks to fetch. Nothing here
 * decides what is kept: the worker checks every copied block against the index and every frame
 * against its SHA-256 (frame-worker.ts, `assemble`), and a frame that fails is fetched whole.
 */

/** Lookup key of a block: the first 6 bytes of its hash (as a JS number); collisions only cost a refetch. */
const keyAt = (hashes: Uint8Array, block: number) => Buffer.from(hashes.buffer, hashes.byteOffset + block * BLOCK_HASH_BYTES, 6).readUIntLE(0, 6);
const ZERO_HASH = blockHash(Buffer.alloc(HOLE_GRAIN));
const ZERO_KEY = keyAt(ZERO_HASH, 0);
/** Block hashes of a local image are computed in slices of this size, one worker task each. */
const SCAN_SLICE = 32 << 20;
/** A frame whose missing blocks cost more than this share of the whole frame is fetched whole. */
const WHOLE_FRAME_SHARE = 0.75;

export interface Seeds {
  fds: number[];
  /** key → seed number × 2^32 + block number, first occurrence wins. */
  map: Map<number, number>;
  /** Bytes of local images scanned (for the report), and how many were hashed now rather than cached. */
  scanned: number;
  hashed: number;
  close(): Promise<void>;
}

/**
 * Hash every 4 KiB block of each local image, on the worker pool. Cached under `cacheDir` per image
 * file, keyed by inode, size and mtime: an image that changed (the running one is written to) is
 * hashed again, and a stale cache entry could only make a frame fail its check and be fetched.
 */
export async function scanSeeds(pool: FramePool, files: string[], cacheDir: string): Promise<Seeds> {
  const handles: fs.FileHandle[] = [];
  const map = new Map<number, number>();
  let scanned = 0;
  let hashed = 0;
  try {
    for (const file of files) {
      const fh = await fs.open(file, 'r').catch(() => undefined);
      if (!fh) continue;
      handles.push(fh);
      const st = await fh.stat();
      const cache = path.join(cacheDir, `${path.basename(file)}.${st.ino}-${st.size}-${Math.floor(st.mtimeMs)}.blocks`);
      let hashes: Buffer | undefined = await fs.readFile(cache).catch(() => undefined);
      if (!hashes || hashes.length !== Math.ceil(st.size / HOLE_GRAIN) * BLOCK_HASH_BYTES) {
        hashes = await hashImage(pool, fh.fd, st.size);
        hashed += st.size;
        await saveCache(cacheDir, file, cache, hashes);
      }
      scanned += st.size;
      const seed = handles.length - 1;
      const blocks = hashes.length / BLOCK_HASH_BYTES;
      for (let b = 0; b < blocks; b++) {
        const key = keyAt(hashes, b);
        if (key !== ZERO_KEY && !map.has(key)) map.set(key, seed * 2 ** 32 + b);
      }
    }
  } catch (err) {
    await Promise.all(handles.map((h) => h.close()));
    throw err;
  }
  return { fds: handles.map((h) => h.fd), map, scanned, hashed, close: async () => void (await Promise.all(handles.map((h) => h.close()))) };
}

async function hashImage(pool: FramePool, fd: number, size: number): Promise<Buffer> {
  const slices: Array<Promise<Uint8Array>> = [];
  for (let start = 0; start < size; start += SCAN_SLICE) {
    slices.push(pool.run({ op: 'block-hashes', fd, start, end: Math.min(size, start + SCAN_SLICE) }).then((r) => r.hashes));
  }
  return Buffer.concat(await Promise.all(slices));
}

async function saveCache(cacheDir: string, file: string, cache: string, hashes: Buffer): Promise<void> {
  try {
    await mkdirPrivate(cacheDir);
    const base = `${path.basename(file)}.`;
    for (const old of await fs.readdir(cacheDir)) if (old.startsWith(base) && old.endsWith('.blocks')) await fs.rm(path.join(cacheDir, old), { force: true });
    await fs.writeFile(cache, hashes, { mode: PRIVATE_FILE_MODE });
  } catch (err) {
    log.warn(`could not cache the block hashes of ${file}: ${(err as Error).message}`);
  }
}

export interface FramePlan {
  /** Local copies into the frame (seed fd, offset there, offset in the frame, length). */
  local: Array<{ fd: number; from: number; at: number; length: number }>;
  /** Blocks of the frame to fetch, ascending. */
  chunks: number[];
  /** Bytes those blocks cost (in the zstd side file, or the payload). */
  cost: number;
  /** Image bytes copied from local images. */
  localBytes: number;
}

/**
 * What frame `i` needs: `undefined` when fetching it whole is as cheap (little or nothing local).
 * Missing blocks are fetched in units of `chunkSize` image bytes at `offsets` (the frame's units in
 * the zstd side file, or its LZ4 blocks in the payload).
 */
export function planFrame(i: number, manifest: Manifest, index: ReleaseIndex, seeds: Seeds, chunkSize: number, offsets: number[]): FramePlan | undefined {
  const frame = manifest.payload.frames![i]!;
  const first = (i * manifest.payload.frameSize!) / HOLE_GRAIN;
  const blocks = Math.ceil(frame.rawLength / HOLE_GRAIN);
  const perChunk = chunkSize / HOLE_GRAIN;
  const where: number[] = [];
  const needed = new Set<number>();
  for (let k = 0; k < blocks; k++) {
    const key = keyAt(index.blockHashes, first + k);
    const hit = key === ZERO_KEY ? -1 : seeds.map.get(key);
    if (hit === undefined) needed.add(Math.floor(k / perChunk));
    where.push(hit ?? -1);
  }
  const chunks = [...needed].sort((a, b) => a - b);
  const cost = chunks.reduce((n, c) => n + offsets[c + 1]! - offsets[c]!, 0);
  if (cost > frame.length * WHOLE_FRAME_SHARE) return undefined;
  const local: FramePlan['local'] = [];
  for (let k = 0; k < blocks; k++) {
    const hit = where[k]!;
    if (hit < 0 || needed.has(Math.floor(k / perChunk))) continue;
    const fd = seeds.fds[Math.floor(hit / 2 ** 32)]!;
    const from = (hit % 2 ** 32) * HOLE_GRAIN;
    const length = Math.min(HOLE_GRAIN, frame.rawLength - k * HOLE_GRAIN);
    const last = local.at(-1);
    if (last && last.fd === fd && last.from + last.length === from && last.at + last.length === k * HOLE_GRAIN) last.length += length;
    else local.push({ fd, from, at: k * HOLE_GRAIN, length });
  }
  return { local, chunks, cost, localBytes: local.reduce((n, l) => n + l.length, 0) };
}

/** Payload ranges for a set of blocks of frame `i`: adjacent blocks merged into one request. */
export function chunkRanges(offsets: number[], chunks: number[]): Array<{ start: number; end: number; chunks: number[] }> {
  const ranges: Array<{ start: number; end: number; chunks: number[] }> = [];
  for (const c of chunks) {
    const last = ranges.at(-1);
    if (last && last.end === offsets[c]) {
      last.end = offsets[c + 1]!;
      last.chunks.push(c);
    } else {
      ranges.push({ start: offsets[c]!, end: offsets[c + 1]!, chunks: [c] });
    }
  }
  return ranges;
}
