import { createHash } from 'node:crypto';

/**
 * `image.framesSha256` of a /2 manifest: SHA-256 over the frames' SHA-256s (32 bytes each, in order).
 * Publish computes it from the frames it wrote, prepare from the frames it verified on their way to
 * disk; equal roots mean every byte of the image was checked once, with no second pass over it.
 */
export function framesRoot(frameHashes: readonly string[]): string {
  const h = createHash('sha256');
  for (const f of frameHashes) h.update(Buffer.from(f, 'hex'));
  return h.digest('hex');
}
