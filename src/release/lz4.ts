import { compressSync, uncompressSync } from 'lz4-napi';
import { MAX_BLOCK } from './lz4-limits.js';

export { MAX_BLOCK };

/**
 * The LZ4 frame format (lz4_Frame_format.md), written and read here because lz4-napi only offers
 * whole-buffer calls: its frame API decodes at ~340 MB/s, its block API at ~1.4–1.9 GB/s (FACTS.md).
 * Frames we write decode with the stock `lz4 -d`; frames `lz4` writes decode here.
 */
export const FRAME_MAGIC = 0x184d2204;
const SKIPPABLE_MIN = 0x184d2a50;
const SKIPPABLE_MAX = 0x184d2a5f;
const LEGACY_MAGIC = 0x184c2102;
const UNCOMPRESSED_BIT = 0x80000000;
const DICT_WINDOW = 64 * 1024;

export class Lz4FormatError extends Error {
  override name = 'Lz4FormatError';
}

// xxHash32, needed for the frame header checksum (one byte of xxh32 over the descriptor).
const P1 = 2654435761;
const P2 = 2246822519;
const P3 = 3266489917;
const P4 = 668265263;
const P5 = 374761393;

export function xxh32(buf: Uint8Array, seed = 0): number {
  const rotl = (x: number, r: number) => (x << r) | (x >>> (32 - r));
  const read32 = (i: number) => (buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24)) >>> 0;
  const round = (acc: number, lane: number) => Math.imul(rotl((acc + Math.imul(lane, P2)) | 0, 13), P1);
  const len = buf.length;
  let i = 0;
  let h: number;
  if (len >= 16) {
    let v1 = (seed + P1 + P2) | 0;
    let v2 = (seed + P2) | 0;
    let v3 = seed | 0;
    let v4 = (seed - P1) | 0;
    for (; i + 16 <= len; i += 16) {
      v1 = round(v1, read32(i));
      v2 = round(v2, read32(i + 4));
      v3 = round(v3, read32(i + 8));
      v4 = round(v4, read32(i + 12));
    }
    h = (rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)) | 0;
  } else {
    h = (seed + P5) | 0;
  }
  h = (h + len) | 0;
  for (; i + 4 <= len; i += 4) h = Math.imul(rotl((h + Math.imul(read32(i), P3)) | 0, 17), P4);
  for (; i < len; i++) h = Math.imul(rotl((h + Math.imul(buf[i]!, P5)) | 0, 11), P1);
  h ^= h >>> 15;
  h = Math.imul(h, P2);
  h ^= h >>> 13;
  h = Math.imul(h, P3);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * One independent frame holding `raw` (≤ 4 MiB) as a single block, with its content size in the
 * header so `lz4 --list` shows it. Incompressible data is stored raw, as the format allows.
 */
export function encodeFrame(raw: Buffer): Buffer {
  if (raw.length > MAX_BLOCK) throw new RangeError(`frame of ${raw.length} bytes exceeds ${MAX_BLOCK}`);
  const header = Buffer.alloc(15);
  header.writeUInt32LE(FRAME_MAGIC, 0);
  header[4] = 0x40 | 0x20 | 0x08; // version 01, independent blocks, content size present
  header[5] = 0x70; // block maximum size 4 MiB
  header.writeBigUInt64LE(BigInt(raw.length), 6);
  header[14] = (xxh32(header.subarray(4, 14)) >>> 8) & 0xff;
  if (raw.length === 0) return Buffer.concat([header, Buffer.alloc(4)]);
  // compressSync prepends the uncompressed size; the frame wants the compressed size in that slot.
  const packed = compressSync(raw);
  const compressedLength = packed.length - 4;
  const out = Buffer.allocUnsafe(15 + 4 + Math.min(compressedLength, raw.length) + 4);
  header.copy(out, 0);
  let pos = 15;
  if (compressedLength < raw.length) {
    out.writeUInt32LE(compressedLength, pos);
    packed.copy(out, pos + 4, 4);
    pos += 4 + compressedLength;
  } else {
    out.writeUInt32LE((raw.length | UNCOMPRESSED_BIT) >>> 0, pos);
    raw.copy(out, pos + 4);
    pos += 4 + raw.length;
  }
  out.writeUInt32LE(0, pos); // end mark
  return out;
}

/**
 * One independent frame holding `raw` as blocks of `chunkSize` bytes (the last may be shorter), each
 * decodable on its own: a machine that holds most of a frame locally fetches only the blocks it lacks.
 * Returns the on-wire length of every block (size field + data), in order, for the release index.
 */
export function encodeChunkedFrame(raw: Buffer, chunkSize: number): { frame: Buffer; chunks: number[] } {
  const id = Number(Object.entries(BLOCK_MAX_BY_ID).find(([, max]) => max >= chunkSize)?.[0]);
  if (!id || chunkSize % 4096) throw new RangeError(`chunk size ${chunkSize} is not a multiple of 4096 up to ${MAX_BLOCK}`);
  const header = Buffer.alloc(15);
  header.writeUInt32LE(FRAME_MAGIC, 0);
  header[4] = 0x40 | 0x20 | 0x08; // version 01, independent blocks, content size present
  header[5] = id << 4;
  header.writeBigUInt64LE(BigInt(raw.length), 6);
  header[14] = (xxh32(header.subarray(4, 14)) >>> 8) & 0xff;
  const parts: Buffer[] = [header];
  const chunks: number[] = [];
  for (let o = 0; o < raw.length; o += chunkSize) {
    const slice = raw.subarray(o, Math.min(o + chunkSize, raw.length));
    const packed = compressSync(slice);
    const field = Buffer.allocUnsafe(4);
    if (packed.length - 4 < slice.length) {
      field.writeUInt32LE(packed.length - 4, 0);
      parts.push(field, packed.subarray(4));
    } else {
      field.writeUInt32LE((slice.length | UNCOMPRESSED_BIT) >>> 0, 0);
      parts.push(field, slice);
    }
    chunks.push(4 + Math.min(packed.length - 4, slice.length));
  }
  parts.push(Buffer.alloc(4)); // end mark
  return { frame: Buffer.concat(parts), chunks };
}

/** Length of the header of the frame at the start of `buf` (ours: 15 bytes; any valid header is read). */
export function frameHeaderLength(buf: Buffer): number {
  if (buf.length < 4 || buf.readUInt32LE(0) !== FRAME_MAGIC) throw new Lz4FormatError('not an LZ4 frame (bad magic)');
  const header = parseHeader(buf, 0);
  if (!header) throw new Lz4FormatError('truncated LZ4 frame header');
  return header.length;
}

/**
 * Decode one independent block (its 4-byte size field and data, as cut out of a frame by the release
 * index) that must yield `rawLength` bytes. `block` is consumed (decoded in place).
 */
export function decodeChunk(block: Buffer, rawLength: number): Buffer {
  if (block.length < 4) throw new Lz4FormatError('truncated LZ4 block');
  const field = block.readUInt32LE(0);
  if ((field & 0x7fffffff) !== block.length - 4) throw new Lz4FormatError('LZ4 block length does not match the release index');
  const out = decodeBlock(block, 0, field, rawLength, undefined);
  if (out.length !== rawLength) throw new Lz4FormatError(`LZ4 block decodes to ${out.length} bytes, expected ${rawLength}`);
  return out;
}

interface FrameDescriptor {
  independent: boolean;
  blockChecksum: boolean;
  contentChecksum: boolean;
  blockMax: number;
  contentSize?: number;
}

const BLOCK_MAX_BY_ID: Record<number, number> = { 4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20 };

/** Parse a frame header at `pos`; returns the descriptor and the header's length, or undefined if incomplete. */
function parseHeader(buf: Buffer, pos: number): { desc: FrameDescriptor; length: number } | undefined {
  if (buf.length < pos + 7) return undefined;
  const flg = buf[pos + 4]!;
  const bd = buf[pos + 5]!;
  if (flg >> 6 !== 1) throw new Lz4FormatError(`unsupported LZ4 frame version ${flg >> 6}`);
  if (flg & 0x02 || bd & 0x8f) throw new Lz4FormatError('reserved bits set in LZ4 frame descriptor');
  const blockMax = BLOCK_MAX_BY_ID[(bd >> 4) & 7];
  if (!blockMax) throw new Lz4FormatError(`invalid LZ4 block maximum size id ${(bd >> 4) & 7}`);
  const hasSize = Boolean(flg & 0x08);
  const hasDict = Boolean(flg & 0x01);
  const length = 4 + 2 + (hasSize ? 8 : 0) + (hasDict ? 4 : 0) + 1;
  if (buf.length < pos + length) return undefined;
  if (hasDict) throw new Lz4FormatError('LZ4 frames with a dictionary id are not supported');
  const hc = (xxh32(buf.subarray(pos + 4, pos + length - 1)) >>> 8) & 0xff;
  if (hc !== buf[pos + length - 1]) throw new Lz4FormatError('LZ4 frame header checksum mismatch');
  const desc: FrameDescriptor = {
    independent: Boolean(flg & 0x20),
    blockChecksum: Boolean(flg & 0x10),
    contentChecksum: Boolean(flg & 0x04),
    blockMax,
  };
  if (hasSize) desc.contentSize = Number(buf.readBigUInt64LE(pos + 6));
  return { desc, length };
}

/**
 * Decode one block whose size field is at `pos`. The compressed bytes are decoded in place: the
 * 4-byte size field is overwritten with the output bound lz4-napi expects there, which saves a copy
 * of every block. `buf` is consumed (modified) by this call.
 */
function decodeBlock(buf: Buffer, pos: number, field: number, bound: number, dict: Buffer | undefined): Buffer {
  const size = field & 0x7fffffff;
  const data = pos + 4;
  if (field & UNCOMPRESSED_BIT) return buf.subarray(data, data + size);
  buf.writeUInt32LE(bound, pos);
  try {
    return uncompressSync(buf.subarray(pos, data + size), dict);
  } catch (err) {
    throw new Lz4FormatError(`corrupt LZ4 block: ${(err as Error).message}`);
  }
}

/**
 * The blocks of a buffer holding exactly one frame (our indexed payload frames) that must yield
 * `rawLength` bytes, decoded one at a time, so that a caller can hash each block while it is still in
 * the CPU's cache and write the blocks with one gathered write instead of joining them first. The
 * frame buffer is consumed (decoded in place) and the blocks may be views of it. Corrupt input may
 * decode "successfully" to garbage: callers verify the SHA-256.
 */
export function* frameBlocks(frame: Buffer, rawLength: number): Generator<Buffer> {
  if (frame.length < 4 || frame.readUInt32LE(0) !== FRAME_MAGIC) throw new Lz4FormatError('not an LZ4 frame (bad magic)');
  const header = parseHeader(frame, 0);
  if (!header) throw new Lz4FormatError('truncated LZ4 frame header');
  const { desc } = header;
  let pos = header.length;
  // Linked blocks only: the output so far, whose last 64 KiB is the next block's dictionary.
  const parts: Buffer[] = [];
  let produced = 0;
  for (;;) {
    if (pos + 4 > frame.length) throw new Lz4FormatError('truncated LZ4 frame (no end mark)');
    const field = frame.readUInt32LE(pos);
    if (field === 0) {
      pos += 4 + (desc.contentChecksum ? 4 : 0);
      break;
    }
    const size = field & 0x7fffffff;
    if (size > desc.blockMax || pos + 4 + size + (desc.blockChecksum ? 4 : 0) > frame.length) {
      throw new Lz4FormatError('truncated or oversized LZ4 block');
    }
    const dict = !desc.independent && parts.length ? lastBytes(parts, DICT_WINDOW) : undefined;
    const out = decodeBlock(frame, pos, field, Math.min(desc.blockMax, Math.max(rawLength - produced, 1)), dict);
    if (!desc.independent) parts.push(out);
    produced += out.length;
    if (produced > rawLength) throw new Lz4FormatError(`LZ4 frame decodes to more than ${rawLength} bytes`);
    pos += 4 + size + (desc.blockChecksum ? 4 : 0);
    yield out;
  }
  if (pos !== frame.length) throw new Lz4FormatError('trailing bytes after the LZ4 frame');
  if (produced !== rawLength) throw new Lz4FormatError(`LZ4 frame decodes to ${produced} bytes, expected ${rawLength}`);
}

function lastBytes(parts: Buffer[], n: number): Buffer {
  const tail: Buffer[] = [];
  let have = 0;
  for (let i = parts.length - 1; i >= 0 && have < n; i--) {
    const p = parts[i]!;
    const take = Math.min(p.length, n - have);
    tail.unshift(p.subarray(p.length - take));
    have += take;
  }
  return tail.length === 1 ? tail[0]! : Buffer.concat(tail, have);
}

/** Where a sequential decode can resume: the payload offset of the next block or frame, and the frame it is in. */
export interface StreamPosition {
  payloadOffset: number;
  rawOffset: number;
  frame?: FrameDescriptor;
}

/**
 * Sequential decoder for any standard LZ4 stream: concatenated frames (`lz4 image.img`, or `cat` of
 * several), skippable frames, linked or independent blocks. Feed chunks with `push`; every decoded
 * block comes out of the generator with the position after it, so a download can resume there.
 * `push` takes ownership of each chunk: blocks are decoded in place, so the chunk's bytes change.
 */
export class Lz4StreamDecoder {
  private pending: Buffer = Buffer.alloc(0);
  private position: StreamPosition;
  private skip = 0;
  /** The last 64 KiB of output, the dictionary of a linked block. */
  private window: Buffer | undefined;

  constructor(start: StreamPosition = { payloadOffset: 0, rawOffset: 0 }, window?: Buffer) {
    this.position = { ...start };
    this.window = window;
  }

  get at(): StreamPosition {
    return { ...this.position };
  }

  *push(chunk: Buffer): Generator<{ data: Buffer; rawOffset: number }> {
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    let pos = 0;
    try {
      for (;;) {
        if (this.skip > 0) {
          const n = Math.min(this.skip, this.pending.length - pos);
          this.skip -= n;
          pos += n;
          this.position.payloadOffset += n;
          if (this.skip > 0) break;
        }
        const frame = this.position.frame;
        if (!frame) {
          if (this.pending.length - pos < 4) break;
          const magic = this.pending.readUInt32LE(pos);
          if (magic >= SKIPPABLE_MIN && magic <= SKIPPABLE_MAX) {
            if (this.pending.length - pos < 8) break;
            this.skip = this.pending.readUInt32LE(pos + 4);
            pos += 8;
            this.position.payloadOffset += 8;
            continue;
          }
          if (magic === LEGACY_MAGIC) throw new Lz4FormatError('legacy LZ4 format (lz4 -l) is not supported; compress without -l');
          if (magic !== FRAME_MAGIC) throw new Lz4FormatError(`not an LZ4 frame at payload offset ${this.position.payloadOffset}`);
          const header = parseHeader(this.pending, pos);
          if (!header) break;
          this.position.frame = header.desc;
          this.window = undefined;
          pos += header.length;
          this.position.payloadOffset += header.length;
          continue;
        }
        if (this.pending.length - pos < 4) break;
        const field = this.pending.readUInt32LE(pos);
        if (field === 0) {
          const trailer = 4 + (frame.contentChecksum ? 4 : 0);
          if (this.pending.length - pos < trailer) break;
          pos += trailer;
          this.position.payloadOffset += trailer;
          this.position.frame = undefined;
          continue;
        }
        const size = field & 0x7fffffff;
        if (size > frame.blockMax) throw new Lz4FormatError(`oversized LZ4 block at payload offset ${this.position.payloadOffset}`);
        const total = 4 + size + (frame.blockChecksum ? 4 : 0);
        if (this.pending.length - pos < total) break;
        const data = decodeBlock(this.pending, pos, field, frame.blockMax, frame.independent ? undefined : this.window);
        const rawOffset = this.position.rawOffset;
        pos += total;
        this.position.payloadOffset += total;
        this.position.rawOffset += data.length;
        if (!frame.independent) this.window = lastBytes(this.window ? [this.window, data] : [data], DICT_WINDOW);
        // Copy: `data` may be a view of `pending`, which the next push replaces.
        yield { data: data.buffer === this.pending.buffer ? Buffer.from(data) : data, rawOffset };
      }
    } finally {
      this.pending = this.pending.subarray(pos);
    }
  }

  /** The stream ended: anything left over means the payload was truncated. */
  finish(): void {
    if (this.pending.length > 0 || this.position.frame || this.skip > 0) {
      throw new Lz4FormatError(`truncated LZ4 payload: it ends inside a frame at offset ${this.position.payloadOffset}`);
    }
  }

  /** Linked-block dictionary to store with a resume point. */
  get dictionary(): Buffer | undefined {
    return this.window;
  }
}
