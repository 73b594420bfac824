/**
 * Zero blocks: what a sparse image leaves as holes. The grain is the filesystem block, so a hole never
 * splits a block the image's own filesystem would allocate.
 */
export const HOLE_GRAIN = 4096;
const ZERO = Buffer.alloc(HOLE_GRAIN);

/** Is `buf[start, end)` (at most one grain) all zero? */
export function isZeroBlock(buf: Buffer, start: number, end: number): boolean {
  return buf.compare(ZERO, 0, end - start, start, end) === 0;
}

/** Bytes of `buf` outside all-zero grains: what it takes on disk as part of a sparse file. */
export function allocatedBytes(buf: Buffer): number {
  let n = 0;
  for (let o = 0; o < buf.length; o += HOLE_GRAIN) {
    const end = Math.min(o + HOLE_GRAIN, buf.length);
    if (!isZeroBlock(buf, o, end)) n += end - o;
  }
  return n;
}
