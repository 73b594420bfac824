import { createHash } from 'node:crypto';
import { readSync, writeSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parentPort } from 'node:worker_threads';
import { MAX_BLOCK, decodeChunk, decodeFrame, encodeChunkedFrame, encodeFrame } from './lz4.js';
import { BLOCK_HASH_BYTES, blockHash } from './block-hash.js';
import { decodeZstdChunk, encodeZstdChunks } from './zstd-chunks.js';
import { allocatedBytes, HOLE_GRAIN, isZeroBlock } from './holes.js';

/**
 * CPU work of publish and prepare, off the main thread (which keeps the network busy). lz4-napi's
 * sync calls only: its async API holds ~1.5 GB of native memory (FACTS.md).
 */
export type FrameTask =
  /** With chunkSize: also each block alone with zstd (the delta side file), when `zstdLevel` is set. */
  | { op: 'compress'; raw: Uint8Array; chunkSize?: number; zstdLevel?: number }
  /** `keepRaw`: hand the decoded bytes back (the in-order image hash of /1 manifests needs them). */
  | { op: 'decode-write'; frame: Uint8Array; rawLength: number; sha256: string; fd: number; position: number; keepRaw: boolean }
  | AssembleTask
  /** Truncated SHA-256 of every 4 KiB block of a local image's range (delta seeds). */
  | { op: 'block-hashes'; fd: number; start: number; end: number }
  | { op: 'hash-range'; fd: number; start: number; end: number }
  | { op: 'write-blocks'; data: Uint8Array; fd: number; position: number }
  | { op: 'hash-feed'; fd: number; start: number; end: number }
  | { op: 'hash-data'; data: Uint8Array }
  | { op: 'hash-zero'; length: number }
  | { op: 'hash-digest' };

export type FrameResult =
  | {
      op: 'compress';
      frame: Uint8Array;
      sha256: string;
      /** Bytes outside all-zero 4 KiB blocks. */ allocated: number;
      /** With chunkSize: on-wire length of each block, and the truncated hash of each 4 KiB of image. */
      chunks?: number[];
      blockHashes?: Uint8Array;
      /** With zstdLevel: the blocks as independent zstd frames, concatenated, and each one's length. */
      zstd?: Uint8Array;
      zstdLengths?: number[];
    }
  | { op: 'decode-write'; ok: true; written: number; sha256: string; /** With keepRaw: the decoded bytes. */ raw?: Uint8Array }
  | { op: 'decode-write'; ok: false; got: string; reason: string }
  | { op: 'hash-range'; sha256: string }
  | { op: 'assemble'; ok: true; sha256: string; written: number }
  /** `badBlocks`: 4 KiB blocks of the frame whose local copy did not match the index; else the frame's hash did not. */
  | { op: 'assemble'; ok: false; badBlocks: number[] }
  | { op: 'block-hashes'; hashes: Uint8Array }
  | { op: 'write-blocks'; written: number }
  | { op: 'hash-feed' }
  | { op: 'hash-data' }
  | { op: 'hash-zero' }
  | { op: 'hash-digest'; sha256: string };

/**
 * A frame put together from local copies and fetched blocks (delta prepare). Local runs are copied
 * first, fetched blocks decoded over them; every copied 4 KiB block is checked against the index, then
 * the frame against its SHA-256, before anything is written.
 */
export interface AssembleTask {
  op: 'assemble';
  fd: number;
  position: number;
  rawLength: number;
  sha256: string;
  chunkSize: number;
  /** Copy `length` bytes at `from` in the local image open as `fd` to offset `at` of the frame. */
  local: Array<{ fd: number; from: number; at: number; length: number }>;
  /** The index's truncated hash of each 4 KiB block of the frame. */
  expect: Uint8Array;
  /** Fetched blocks by their number within the frame: LZ4 blocks (size field + data) or zstd frames. */
  chunks: Array<{ index: number; bytes: Uint8Array }>;
  codec: 'lz4' | 'zstd';
}

const CHUNK = 4 << 20;
const ZERO_CHUNK = Buffer.alloc(1 << 20);

/**
 * Write `data` at `position`, skipping 4 KiB blocks that are all zero: the file was created at its
 * full size, so skipped blocks stay holes and read back as zeros.
 */
function writeNonZero(fd: number, data: Buffer, position: number): number {
  let written = 0;
  let runStart = -1;
  const flush = (end: number) => {
    if (runStart < 0) return;
    let off = runStart;
    while (off < end) off += writeSync(fd, data, off, end - off, position + off);
    written += end - runStart;
    runStart = -1;
  };
  for (let o = 0; o < data.length; o += HOLE_GRAIN) {
    const end = Math.min(o + HOLE_GRAIN, data.length);
    // The file's first block is written even when it is zeros: GRUB cannot open a loopback file that
    // starts with a hole (core/first-block.ts). An ext4 image's superblock shares the first 4 KiB, so
    // this holds anyway; it is kept true by construction rather than by the image's layout.
    if (isZeroBlock(data, o, end) && position + o !== 0) flush(o);
    else if (runStart < 0) runStart = o;
  }
  flush(data.length);
  return written;
}

function blockHashesOf(raw: Buffer): Uint8Array {
  const blocks = Math.ceil(raw.length / HOLE_GRAIN);
  const out = new Uint8Array(blocks * BLOCK_HASH_BYTES);
  for (let b = 0; b < blocks; b++) out.set(blockHash(raw.subarray(b * HOLE_GRAIN, (b + 1) * HOLE_GRAIN)), b * BLOCK_HASH_BYTES);
  return out;
}

function assemble(task: AssembleTask): FrameResult {
  const frame = Buffer.alloc(task.rawLength);
  // Local runs first, fetched blocks decoded over them: a block fetched after its local copy failed wins.
  for (const run of task.local) {
    let done = 0;
    while (done < run.length) {
      const n = readSync(run.fd, frame, run.at + done, run.length - done, run.from + done);
      if (n === 0) break;
      done += n;
    }
  }
  const fetched = new Set<number>();
  for (const c of task.chunks) {
    const at = c.index * task.chunkSize;
    const length = Math.min(task.chunkSize, task.rawLength - at);
    let raw: Buffer;
    try {
      const bytes = Buffer.from(c.bytes.buffer, c.bytes.byteOffset, c.bytes.byteLength);
      raw = task.codec === 'zstd' ? decodeZstdChunk(bytes, length) : decodeChunk(bytes, length);
    } catch {
      // Corrupt fetched data fails the frame's hash below; the caller then fetches the frame whole.
      continue;
    }
    raw.copy(frame, at);
    for (let b = at / HOLE_GRAIN; b < (at + length) / HOLE_GRAIN; b++) fetched.add(b);
  }
  const badBlocks: number[] = [];
  for (const run of task.local) {
    for (let b = run.at / HOLE_GRAIN; b < (run.at + run.length) / HOLE_GRAIN; b++) {
      if (fetched.has(b)) continue;
      const want = task.expect.subarray(b * BLOCK_HASH_BYTES, (b + 1) * BLOCK_HASH_BYTES);
      if (!Buffer.from(want).equals(blockHash(frame.subarray(b * HOLE_GRAIN, (b + 1) * HOLE_GRAIN)))) badBlocks.push(b);
    }
  }
  if (badBlocks.length) return { op: 'assemble', ok: false, badBlocks };
  const sha256 = createHash('sha256').update(frame).digest('hex');
  if (sha256 !== task.sha256) return { op: 'assemble', ok: false, badBlocks: [] };
  return { op: 'assemble', ok: true, sha256, written: writeNonZero(task.fd, frame, task.position) };
}

function hashFile(hash: ReturnType<typeof createHash>, fd: number, start: number, end: number): void {
  const buf = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(end - start, 1)));
  let pos = start;
  while (pos < end) {
    const n = readSync(fd, buf, 0, Math.min(buf.length, end - pos), pos);
    if (n === 0) throw new Error(`unexpected end of file at ${pos}`);
    hash.update(buf.subarray(0, n));
    pos += n;
  }
}

let running: ReturnType<typeof createHash> | undefined;
let scratch: Buffer | undefined;

/**
 * Each frame leaves 4 MiB buffers behind whose memory V8 counts as external: a worker allocates so
 * little on its own heap that nothing would collect them until every thread had built up ~64 MB of
 * garbage. A minor collection after each frame (about a millisecond) keeps prepare's memory flat.
 */
setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as (opts?: { type: 'minor' | 'major' }) => void;

export function handle(task: FrameTask): { result: FrameResult; transfer: ArrayBuffer[] } {
  switch (task.op) {
    case 'compress': {
      const raw = Buffer.from(task.raw.buffer, task.raw.byteOffset, task.raw.byteLength);
      const sha256 = createHash('sha256').update(raw).digest('hex');
      if (!task.chunkSize) {
        const frame = encodeFrame(raw);
        return { result: { op: 'compress', frame, sha256, allocated: allocatedBytes(raw) }, transfer: [frame.buffer as ArrayBuffer] };
      }
      const { frame, chunks } = encodeChunkedFrame(raw, task.chunkSize);
      const blockHashes = blockHashesOf(raw);
      const result: FrameResult = { op: 'compress', frame, sha256, allocated: allocatedBytes(raw), chunks, blockHashes };
      const transfer = [frame.buffer as ArrayBuffer, blockHashes.buffer as ArrayBuffer];
      if (task.zstdLevel) {
        const parts = encodeZstdChunks(raw, task.chunkSize, task.zstdLevel);
        result.zstd = Buffer.concat(parts);
        result.zstdLengths = parts.map((p) => p.length);
        transfer.push(result.zstd.buffer as ArrayBuffer);
      }
      return { result, transfer };
    }
    case 'decode-write': {
      const frame = Buffer.from(task.frame.buffer, task.frame.byteOffset, task.frame.byteLength);
      let raw: Buffer;
      try {
        // Reuse one buffer per worker unless the bytes go back to the caller.
        raw = decodeFrame(frame, task.rawLength, task.keepRaw ? undefined : (scratch ??= Buffer.allocUnsafeSlow(MAX_BLOCK)));
      } catch (err) {
        return { result: { op: 'decode-write', ok: false, got: '', reason: (err as Error).message }, transfer: [] };
      }
      const got = createHash('sha256').update(raw).digest('hex');
      if (got !== task.sha256) return { result: { op: 'decode-write', ok: false, got, reason: 'SHA-256 mismatch' }, transfer: [] };
      const written = writeNonZero(task.fd, raw, task.position);
      if (!task.keepRaw) return { result: { op: 'decode-write', ok: true, written, sha256: got }, transfer: [] };
      return { result: { op: 'decode-write', ok: true, written, sha256: got, raw }, transfer: [raw.buffer as ArrayBuffer] };
    }
    case 'assemble':
      return { result: assemble(task), transfer: [] };
    case 'block-hashes': {
      // Through the worker's one reusable buffer: a 1 GiB image must not cost a 1 GiB of garbage.
      const buf = (scratch ??= Buffer.allocUnsafeSlow(MAX_BLOCK));
      const hashes = new Uint8Array(Math.ceil((task.end - task.start) / HOLE_GRAIN) * BLOCK_HASH_BYTES);
      for (let pos = task.start; pos < task.end; ) {
        const n = readSync(task.fd, buf, 0, Math.min(buf.length, task.end - pos), pos);
        if (n === 0) break;
        hashes.set(blockHashesOf(buf.subarray(0, n)), ((pos - task.start) / HOLE_GRAIN) * BLOCK_HASH_BYTES);
        pos += n;
      }
      return { result: { op: 'block-hashes', hashes }, transfer: [hashes.buffer as ArrayBuffer] };
    }
    case 'hash-range': {
      const hash = createHash('sha256');
      hashFile(hash, task.fd, task.start, task.end);
      return { result: { op: 'hash-range', sha256: hash.digest('hex') }, transfer: [] };
    }
    case 'write-blocks': {
      const data = Buffer.from(task.data.buffer, task.data.byteOffset, task.data.byteLength);
      return { result: { op: 'write-blocks', written: writeNonZero(task.fd, data, task.position) }, transfer: [] };
    }
    case 'hash-feed': {
      running ??= createHash('sha256');
      hashFile(running, task.fd, task.start, task.end);
      return { result: { op: 'hash-feed' }, transfer: [] };
    }
    case 'hash-data': {
      running ??= createHash('sha256');
      running.update(task.data);
      return { result: { op: 'hash-data' }, transfer: [] };
    }
    case 'hash-zero': {
      running ??= createHash('sha256');
      for (let left = task.length; left > 0; left -= ZERO_CHUNK.length) running.update(left >= ZERO_CHUNK.length ? ZERO_CHUNK : ZERO_CHUNK.subarray(0, left));
      return { result: { op: 'hash-zero' }, transfer: [] };
    }
    case 'hash-digest': {
      const sha256 = (running ?? createHash('sha256')).digest('hex');
      running = undefined;
      return { result: { op: 'hash-digest', sha256 }, transfer: [] };
    }
  }
}

parentPort?.on('message', (msg: { id: number; task: FrameTask }) => {
  try {
    const { result, transfer } = handle(msg.task);
    parentPort!.postMessage({ id: msg.id, result }, transfer);
    if (msg.task.op !== 'hash-zero' && msg.task.op !== 'hash-digest') collect({ type: 'minor' });
  } catch (err) {
    parentPort!.postMessage({ id: msg.id, error: { message: (err as Error).message, code: (err as NodeJS.ErrnoException).code } });
  }
});
