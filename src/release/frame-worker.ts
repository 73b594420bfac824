import { createHash } from 'node:crypto';
import { readSync, writeSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parentPort } from 'node:worker_threads';
import { decodeFrame, encodeFrame } from './lz4.js';
import { allocatedBytes, HOLE_GRAIN, isZeroBlock } from './holes.js';

/**
 * CPU work of publish and prepare, off the main thread (which keeps the network busy). lz4-napi's
 * sync calls only: its async API holds ~1.5 GB of native memory (FACTS.md).
 */
export type FrameTask =
  | { op: 'compress'; raw: Uint8Array }
  | { op: 'decode-write'; frame: Uint8Array; rawLength: number; sha256: string; fd: number; position: number }
  | { op: 'hash-range'; fd: number; start: number; end: number }
  | { op: 'write-blocks'; data: Uint8Array; fd: number; position: number }
  | { op: 'hash-feed'; fd: number; start: number; end: number }
  | { op: 'hash-data'; data: Uint8Array }
  | { op: 'hash-zero'; length: number }
  | { op: 'hash-digest' };

export type FrameResult =
  | { op: 'compress'; frame: Uint8Array; sha256: string; /** Bytes outside all-zero 4 KiB blocks. */ allocated: number }
  | { op: 'decode-write'; ok: true; written: number; /** The decoded bytes, handed back for the in-order image hash. */ raw: Uint8Array }
  | { op: 'decode-write'; ok: false; got: string; reason: string }
  | { op: 'hash-range'; sha256: string }
  | { op: 'write-blocks'; written: number }
  | { op: 'hash-feed' }
  | { op: 'hash-data' }
  | { op: 'hash-zero' }
  | { op: 'hash-digest'; sha256: string };

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
      const frame = encodeFrame(raw);
      const sha256 = createHash('sha256').update(raw).digest('hex');
      return { result: { op: 'compress', frame, sha256, allocated: allocatedBytes(raw) }, transfer: [frame.buffer as ArrayBuffer] };
    }
    case 'decode-write': {
      const frame = Buffer.from(task.frame.buffer, task.frame.byteOffset, task.frame.byteLength);
      let raw: Buffer;
      try {
        raw = decodeFrame(frame, task.rawLength);
      } catch (err) {
        return { result: { op: 'decode-write', ok: false, got: '', reason: (err as Error).message }, transfer: [] };
      }
      const got = createHash('sha256').update(raw).digest('hex');
      if (got !== task.sha256) return { result: { op: 'decode-write', ok: false, got, reason: 'SHA-256 mismatch' }, transfer: [] };
      const written = writeNonZero(task.fd, raw, task.position);
      return { result: { op: 'decode-write', ok: true, written, raw }, transfer: [raw.buffer as ArrayBuffer] };
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
