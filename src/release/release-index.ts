import { UpgradeError } from '../core/errors.js';
import { BLOCK_HASH_BYTES } from './block-hash.js';
import { HOLE_GRAIN } from './holes.js';
import type { Manifest } from './manifest.js';

/**
 * `image.idx` of a /2 release (docs/release-format.md): where each independent LZ4 block of the
 * payload is, and a truncated hash of each 4 KiB block of the image. Binary, because a 1 GiB image
 * has 262,144 blocks; bound to the signed manifest by `payload.index.size` and `.sha256`.
 *
 *   8 bytes   magic "UPGIDX1\n"
 *   4 bytes × (number of LZ4 blocks)   on-wire length (size field + data) of each, frame by frame (LE)
 *   4 bytes × (number of LZ4 blocks)   only with payload.zstdChunks: length of each block's zstd frame
 *   8 bytes × ceil(image.size / 4096)  first 8 bytes of the SHA-256 of each 4 KiB image block
 */
const MAGIC = Buffer.from('UPGIDX1\n');

export interface ReleaseIndex {
  /** Per frame: payload offset of each LZ4 block's size field, plus the frame's end mark last. */
  chunkOffsets: number[][];
  /** With payload.zstdChunks, per frame: offset of each block's zstd frame in that file, plus the end. */
  zstdOffsets?: number[][];
  blockHashes: Buffer;
}

export function chunksOf(rawLength: number, chunkSize: number): number {
  return Math.ceil(rawLength / chunkSize);
}

/** Per-frame lengths as consecutive 4-byte little-endian numbers, frame after frame. */
function u32s(perFrame: number[][]): Buffer {
  const out = Buffer.alloc(4 * perFrame.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const frame of perFrame) for (const l of frame) o = out.writeUInt32LE(l, o);
  return out;
}

/** `n` 4-byte little-endian numbers of `buf` from `at`. */
function readU32s(buf: Buffer, at: number, n: number): number[] {
  return Array.from({ length: n }, (_, k) => buf.readUInt32LE(at + 4 * k));
}

/** Offsets of consecutive pieces of `lengths` from `start`, plus the end. */
function runningSum(start: number, lengths: number[]): number[] {
  const offsets = [start];
  for (const l of lengths) offsets.push(offsets.at(-1)! + l);
  return offsets;
}

/** Per frame, the offsets of pieces of `lengths` laid end to end in one file from byte 0 (a zstd side file), each frame's end last. */
function tiling(lengths: number[][]): number[][] {
  let end = 0;
  return lengths.map((frame) => {
    const offsets = runningSum(end, frame);
    end = offsets.at(-1)!;
    return offsets;
  });
}

export function encodeIndex(chunkLengths: number[][], zstdLengths: number[][] | undefined, blockHashes: Buffer[]): Buffer {
  return Buffer.concat([MAGIC, u32s(chunkLengths), ...(zstdLengths ? [u32s(zstdLengths)] : []), ...blockHashes]);
}

/** Parse and check an index against the manifest it belongs to (its size and SHA-256 were checked by the caller). */
export function decodeIndex(buf: Buffer, manifest: Manifest, where: string): ReleaseIndex {
  const bad = (why: string): never => {
    throw new UpgradeError('CORRUPT', `${where} does not fit its manifest: ${why}`, { hint: 're-publish the release' });
  };
  const frames = manifest.payload.frames ?? [];
  const chunkSize = manifest.payload.chunkSize ?? 0;
  const counts = frames.map((f) => chunksOf(f.rawLength, chunkSize));
  const nChunks = counts.reduce((a, b) => a + b, 0);
  const nBlocks = Math.ceil(manifest.image.size / HOLE_GRAIN);
  const zstd = manifest.payload.zstdChunks;
  const want = 8 + 4 * nChunks * (zstd ? 2 : 1) + BLOCK_HASH_BYTES * nBlocks;
  if (!buf.subarray(0, 8).equals(MAGIC)) bad('no index magic');
  if (buf.length !== want) bad(`${buf.length} bytes, expected ${want}`);
  let at = 8;
  const lengthsOf = (i: number) => {
    const lengths = readU32s(buf, at, counts[i]!);
    at += 4 * counts[i]!;
    return lengths;
  };
  const chunkOffsets = frames.map((f, i) => {
    const lengths = lengthsOf(i);
    // Our frames: a header (7–19 bytes), the blocks, a 4-byte end mark.
    const header = f.length - 4 - lengths.reduce((a, b) => a + b, 0);
    if (header < 7 || header > 19) bad(`frame ${i}'s blocks do not fit its length`);
    return runningSum(f.offset + header, lengths);
  });
  let zstdOffsets: number[][] | undefined;
  if (zstd) {
    zstdOffsets = tiling(counts.map((_, i) => lengthsOf(i)));
    const end = zstdOffsets.at(-1)?.at(-1) ?? 0;
    if (end !== zstd.size) bad(`its zstd blocks end at ${end}, the zstd file is ${zstd.size} bytes`);
  }
  return { chunkOffsets, zstdOffsets, blockHashes: buf.subarray(at) };
}

/**
 * `image.zidx` of a release with `payload.zstdBlocks`: the length of each zstd frame of the side
 * file, frame by frame (`chunksOf(rawLength, zstdBlocks.chunkSize)` each). A file of its own so that
 * `image.idx` keeps the layout older machines read (they fetch LZ4 blocks instead).
 *
 *   8 bytes   magic "UPGZIDX\n"
 *   4 bytes × (number of zstd frames)   length of each (LE)
 */
const ZSTD_MAGIC = Buffer.from('UPGZIDX\n');

export function encodeZstdIndex(lengths: number[][]): Buffer {
  return Buffer.concat([ZSTD_MAGIC, u32s(lengths)]);
}

/** Per frame: the offset of each zstd frame in the side file, plus the end (size and SHA-256 checked by the caller). */
export function decodeZstdIndex(buf: Buffer, manifest: Manifest, where: string): number[][] {
  const bad = (why: string): never => {
    throw new UpgradeError('CORRUPT', `${where} does not fit its manifest: ${why}`, { hint: 're-publish the release' });
  };
  const z = manifest.payload.zstdBlocks!;
  const counts = (manifest.payload.frames ?? []).map((f) => chunksOf(f.rawLength, z.chunkSize));
  const want = 8 + 4 * counts.reduce((a, b) => a + b, 0);
  if (!buf.subarray(0, 8).equals(ZSTD_MAGIC)) bad('no zstd index magic');
  if (buf.length !== want) bad(`${buf.length} bytes, expected ${want}`);
  let at = 8;
  const offsets = tiling(
    counts.map((n) => {
      const lengths = readU32s(buf, at, n);
      at += 4 * n;
      return lengths;
    }),
  );
  const end = offsets.at(-1)?.at(-1) ?? 0;
  if (end !== z.size) bad(`its zstd frames end at ${end}, the zstd file is ${z.size} bytes`);
  return offsets;
}
