import { compress, decompress } from 'zstd-napi';

/**
 * The delta side file of a /2 release (`payload.zstdChunks`): every `chunkSize` block of the image as
 * its own zstd frame, concatenated in image order. A machine that holds most of the image fetches
 * only the blocks it lacks, and zstd makes those a third smaller than the same blocks in LZ4
 * (docs/release-format.md). The LZ4 payload stays the full download and what `lz4 -d` reads.
 */
export function encodeZstdChunks(raw: Buffer, chunkSize: number, level: number): Buffer[] {
  const out: Buffer[] = [];
  for (let o = 0; o < raw.length; o += chunkSize) out.push(compress(raw.subarray(o, Math.min(o + chunkSize, raw.length)), { compressionLevel: level }));
  return out;
}

/**
 * One block back. The bytes come from a range of the side file, checked only after decoding (by the
 * frame's SHA-256), so the frame header's content size is read first: a hostile server must not make
 * the decoder allocate what it claims.
 */
export function decodeZstdChunk(bytes: Buffer, rawLength: number): Buffer {
  const claimed = contentSize(bytes);
  if (claimed !== rawLength) throw new Error(`zstd block claims ${claimed ?? 'no'} content size, expected ${rawLength}`);
  const out = decompress(bytes);
  if (out.length !== rawLength) throw new Error(`zstd block decodes to ${out.length} bytes, expected ${rawLength}`);
  return out;
}

/** The Frame_Content_Size of a zstd frame header (RFC 8878 §3.1.1.1), or undefined when absent or malformed. */
function contentSize(b: Buffer): number | undefined {
  if (b.length < 6 || b.readUInt32LE(0) !== 0xfd2fb528) return undefined;
  const fhd = b[4]!;
  const single = (fhd >> 5) & 1;
  const fcsFlag = fhd >> 6;
  const didSize = [0, 1, 2, 4][fhd & 3]!;
  const fcsSize = [single ? 1 : 0, 2, 4, 8][fcsFlag]!;
  const at = 5 + (single ? 0 : 1) + didSize;
  if (fcsSize === 0 || b.length < at + fcsSize) return undefined;
  if (fcsSize === 1) return b[at];
  if (fcsSize === 2) return b.readUInt16LE(at) + 256;
  if (fcsSize === 4) return b.readUInt32LE(at);
  const big = b.readBigUInt64LE(at);
  return big > BigInt(Number.MAX_SAFE_INTEGER) ? undefined : Number(big);
}
