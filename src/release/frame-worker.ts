import { createHash } from 'node:crypto';
import { readSync, write, writeSync, writevSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parentPort } from 'node:worker_threads';
import { UpgradeError } from '../core/errors.js';
import { MAX_BLOCK, decodeChunk, encodeChunkedFrame, encodeFrame, frameBlocks } from './lz4.js';
import { BLOCK_HASH_BYTES, blockHash } from './block-hash.js';
import { allocatedBytes, HOLE_GRAIN, isZeroBlock } from './holes.js';
import { openSpec, type Source, type SourceSpec } from './sources/index.js';

/**
 * CPU work of publish and prepare, off the main thread (which keeps the network busy). lz4-napi's
 * sync calls only: its async API holds ~1.5 GB of native memory (FACTS.md).
 *
 * Writes take `fd` (the staging file) and, when the caller could open one, `directFd`: the same file
 * opened with O_DIRECT, through which whole 4 KiB blocks go from a page-aligned buffer straight to the
 * disk instead of being copied into the page cache and written back later (measured on the 2-core
 * machine: that copy was a third of a prepare's CPU time, and the final fsync ~0.25 s per GiB).
 */
export type FrameTask =
  /** With chunkSize: also every `zstdChunkSize` (default chunkSize) bytes alone with zstd (the delta side file), when `zstdLevel` is set. */
  | { op: 'compress'; raw: Uint8Array; chunkSize?: number; zstdLevel?: number; zstdChunkSize?: number }
  /** `keepRaw`: hand the decoded bytes back (the in-order image hash of /1 manifests needs them). */
  | { op: 'decode-write'; frame: Uint8Array; rawLength: number; sha256: string; payloadSha256?: string; fd: number; directFd?: number; position: number; keepRaw: boolean }
  /**
   * Fetch consecutive frames of `key` from the source itself, in one request where the source can,
   * each decoded, verified and written like decode-write as soon as its bytes are in: the bytes never
   * pass through the main thread. Each frame's outcome is reported as it is settled (FrameOutcome).
   */
  | { op: 'fetch-frames'; source: SourceSpec; key: string; etag: string | undefined; frames: FetchedFrame[]; fd: number; directFd?: number }
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
      /** Of `frame`, the bytes as stored in the payload. */
      payloadSha256: string;
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
  | { op: 'fetch-frames'; frames: number }
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

/** A frame of a fetch-frames task: bytes [start, end) of the payload, decoded to `position` of the image. */
export interface FetchedFrame {
  start: number;
  end: number;
  rawLength: number;
  sha256: string;
  /** The manifest's SHA-256 of the frame's stored bytes, when it has one (checked instead of `sha256`). */
  payloadSha256?: string;
  position: number;
}

/** One frame of a fetch-frames task settled: on disk (ok) or refused by its check (the caller fetches it again). */
export type FrameOutcome = { index: number; ok: true; sha256: string } | { index: number; ok: false; reason: string };

/**
 * A frame put together from local copies and fetched blocks (delta prepare). Local runs are copied
 * first, fetched blocks decoded over them; every copied 4 KiB block is checked against the index, then
 * the frame against its SHA-256, before anything is written.
 */
export interface AssembleTask {
  op: 'assemble';
  fd: number;
  directFd?: number;
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

/** A run of non-zero 4 KiB blocks: its pieces (views of the caller's buffers), where it goes, its length. */
interface Run {
  pieces: Buffer[];
  at: number;
  length: number;
}

/**
 * The runs of non-zero 4 KiB blocks of `parts` (consecutive pieces of the image, e.g. a frame's
 * decoded blocks) placed at `position`. Only these are written: the file was created at its full
 * size, so skipped blocks stay holes and read back as zeros.
 */
function nonZeroRuns(parts: Buffer[], position: number): Run[] {
  // The grain walk needs every piece but the last to end on a 4 KiB boundary (our 64 KiB blocks do;
  // a foreign frame's odd-sized linked blocks are joined first).
  if (parts.slice(0, -1).some((p) => p.length % HOLE_GRAIN)) parts = [Buffer.concat(parts)];
  const runs: Run[] = [];
  /** The pieces of the run of non-zero blocks being gathered, and where in the file it starts. */
  let run: Buffer[] = [];
  let runAt = -1;
  const flush = () => {
    if (runAt < 0) return;
    runs.push({ pieces: run, at: runAt, length: run.reduce((n, p) => n + p.length, 0) });
    run = [];
    runAt = -1;
  };
  let at = position;
  for (const part of parts) {
    let seg = -1;
    for (let o = 0; o < part.length; o += HOLE_GRAIN) {
      const end = Math.min(o + HOLE_GRAIN, part.length);
      // The file's first block is written even when it is zeros: GRUB cannot open a loopback file that
      // starts with a hole (core/first-block.ts). An ext4 image's superblock shares the first 4 KiB, so
      // this holds anyway; it is kept true by construction rather than by the image's layout.
      if (isZeroBlock(part, o, end) && at + o !== 0) {
        if (seg >= 0) run.push(part.subarray(seg, o));
        seg = -1;
        flush();
      } else if (seg < 0) {
        seg = o;
        if (runAt < 0) runAt = at + o;
      }
    }
    if (seg >= 0) run.push(part.subarray(seg));
    at += part.length;
  }
  flush();
  return runs;
}

/** Write the non-zero blocks of `parts` at `position` (see nonZeroRuns), each run as one gathered write. */
function writeNonZero(fd: number, parts: Buffer[], position: number, directFd?: number): number {
  let written = 0;
  for (const run of nonZeroRuns(parts, position)) written += writeRun(fd, run.pieces, run.at, directFd);
  return written;
}

/** O_DIRECT wants the memory, the file offset and the length aligned to the device's logical block. */
const DIRECT_ALIGN = 4096;
/** WebAssembly memory starts on a page boundary (a Buffer's memory need not): a page-aligned buffer of MAX_BLOCK bytes. */
const alignedBlock = () => Buffer.from(new WebAssembly.Memory({ initial: MAX_BLOCK / 65536 }).buffer);
/** Set when the filesystem refused a direct write (EINVAL): this thread writes through the page cache from then on. */
let directRefused = false;
const directFits = (at: number, length: number) => at % DIRECT_ALIGN === 0 && length % DIRECT_ALIGN === 0 && length <= MAX_BLOCK;

/** One run of non-zero blocks: through O_DIRECT when it can (aligned, whole blocks), else buffered. */
function writeRun(fd: number, pieces: Buffer[], position: number, directFd: number | undefined): number {
  const length = pieces.reduce((n, p) => n + p.length, 0);
  if (directFd !== undefined && !directRefused && directFits(position, length)) {
    // A spare of the asynchronous writes' buffers (made when there is none): one set per thread.
    const buf = spareAligned.pop() ?? alignedBlock();
    let at = 0;
    for (const p of pieces) at += p.copy(buf, at);
    try {
      for (let done = 0; done < length; ) done += writeSync(directFd, buf, done, length - done, position + done);
      return length;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
      directRefused = true;
    } finally {
      giveAligned(buf);
    }
  }
  return writeAll(fd, pieces, position);
}

/**
 * Aligned buffers of the frames whose direct writes are out: a fetched frame's write runs on libuv's
 * thread pool while this thread decodes and hashes the next one (written synchronously, the disk's
 * ~4 ms per frame kept each worker idle half the time: docs/performance.md). A frame waits here when
 * all are out, which also bounds the memory (a worker has about `parallel` / workers frames at once).
 */
const ASYNC_BUFFERS = 3;
const spareAligned: Buffer[] = [];
let alignedMade = 0;
const alignedWaiters: Array<(buf: Buffer) => void> = [];

async function takeAligned(): Promise<Buffer> {
  const spare = spareAligned.pop();
  if (spare) return spare;
  if (alignedMade < ASYNC_BUFFERS) {
    alignedMade++;
    return alignedBlock();
  }
  return new Promise((resolve) => alignedWaiters.push(resolve));
}

function giveAligned(buf: Buffer): void {
  const waiter = alignedWaiters.shift();
  if (waiter) waiter(buf);
  else spareAligned.push(buf);
}

const writeAt = (fd: number, buf: Buffer, offset: number, length: number, position: number) =>
  new Promise<number>((resolve, reject) => write(fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n))));

/**
 * writeNonZero for a frame at `position` without blocking the thread on the disk: its direct runs are
 * copied into one aligned buffer at their offsets in the frame and written from there on the thread
 * pool; the promise resolves once every byte is out.
 */
async function writeFrameAsync(fd: number, parts: Buffer[], position: number, directFd: number | undefined): Promise<number> {
  const runs = nonZeroRuns(parts, position);
  if (directFd === undefined || directRefused || position % DIRECT_ALIGN !== 0) return runs.reduce((n, r) => n + writeRun(fd, r.pieces, r.at, directFd), 0);
  const buf = await takeAligned();
  try {
    const written = await Promise.all(
      runs.map(async (run) => {
        const offset = run.at - position;
        if (directRefused || !directFits(run.at, run.length) || offset + run.length > buf.length) return writeAll(fd, run.pieces, run.at);
        let to = offset;
        for (const p of run.pieces) to += p.copy(buf, to);
        try {
          for (let done = 0; done < run.length; ) done += await writeAt(directFd, buf, offset + done, run.length - done, run.at + done);
          return run.length;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
          directRefused = true;
          return writeAll(fd, run.pieces, run.at);
        }
      }),
    );
    return written.reduce((n, w) => n + w, 0);
  } finally {
    giveAligned(buf);
  }
}

/** writev until every byte is out (a write may be partial; at most IOV_MAX pieces go per call). */
function writeAll(fd: number, pieces: Buffer[], position: number): number {
  let total = 0;
  let rest = pieces;
  while (rest.length) {
    const batch = rest.slice(0, 1024);
    const want = batch.reduce((n, b) => n + b.length, 0);
    const n = writevSync(fd, batch, position + total);
    total += n;
    if (n === want) {
      rest = rest.slice(batch.length);
      continue;
    }
    // Partial: drop what went out and go on from there.
    let skip = n;
    while (skip >= rest[0]!.length) skip -= rest.shift()!.length;
    rest = [rest[0]!.subarray(skip), ...rest.slice(1)];
  }
  return total;
}

/** SHA-256 of a whole buffer, in hex. */
const sha256Of = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

type Verified = { ok: true; written: number; sha256: string; raw?: Buffer } | { ok: false; got: string; reason: string };

/**
 * Decode a frame and check it: against `payloadSha256` before decoding when the manifest has it
 * (the decoder then never sees bytes that are not the signed ones, and only the compressed bytes are
 * hashed: about half as many, the largest share of a full prepare's CPU), else block by block against
 * `sha256` while each decoded block is in the cache. Decoding is a function of its input, so a frame
 * whose stored bytes match decodes to the image bytes `sha256` names. The decoded blocks are views of
 * `frame` where stored uncompressed.
 */
function decodeVerify(frame: Buffer, rawLength: number, sha256: string, payloadSha256: string | undefined): { ok: true; parts: Buffer[]; sha256: string } | { ok: false; got: string; reason: string } {
  if (payloadSha256 !== undefined) {
    const got = sha256Of(frame);
    if (got !== payloadSha256) return { ok: false, got, reason: 'SHA-256 of its stored bytes mismatch' };
  }
  const hash = payloadSha256 === undefined ? createHash('sha256') : undefined;
  const parts: Buffer[] = [];
  try {
    for (const block of frameBlocks(frame, rawLength)) {
      hash?.update(block);
      parts.push(block);
    }
  } catch (err) {
    return { ok: false, got: '', reason: (err as Error).message };
  }
  if (!hash) return { ok: true, parts, sha256 };
  const got = hash.digest('hex');
  if (got !== sha256) return { ok: false, got, reason: 'SHA-256 mismatch' };
  return { ok: true, parts, sha256: got };
}

/** decodeVerify, then the write (holes for zero blocks): nothing unverified reaches the file. */
function decodeVerifyWrite(frame: Buffer, rawLength: number, sha256: string, payloadSha256: string | undefined, fd: number, position: number, keepRaw: boolean, directFd: number | undefined): Verified {
  const v = decodeVerify(frame, rawLength, sha256, payloadSha256);
  if (!v.ok) return v;
  const { parts } = v;
  const written = writeNonZero(fd, parts, position, directFd);
  if (!keepRaw) return { ok: true, written, sha256: v.sha256 };
  return { ok: true, written, sha256: v.sha256, raw: parts.length === 1 && parts[0]!.byteLength === parts[0]!.buffer.byteLength ? parts[0]! : Buffer.concat(parts, rawLength) };
}

/** One source per spec in this worker: its keep-alive connections serve every frame it fetches. */
const sources = new Map<string, Source>();
/** The URL each source was opened with (a pre-signed one changes). */
const openedWith = new Map<string, string>();

/**
 * Receive buffers of the frames this worker fetches, kept for the next frame: a fresh ~2 MB buffer
 * per frame would be fresh pages from the kernel each time (page faults and zeroing, ~0.2 s per GiB).
 */
const receiveBuffers: Buffer[] = [];
const RECEIVE_SIZE = MAX_BLOCK + (64 << 10);

/**
 * Frames of one request on their way to disk before it stops reading (the server then waits). One:
 * each pending write holds a decoded frame (4 MiB); two gave no more speed and ~25 MiB more memory.
 */
const WRITES_PER_REQUEST = 1;

async function fetchFrames(task: Extract<FrameTask, { op: 'fetch-frames' }>, report: (o: FrameOutcome) => void, stopped: () => boolean): Promise<FrameResult> {
  // A pre-signed S3 URL is renewed now and then: the new one replaces the old source, whose idle
  // keep-alive connections close on their own (frames still in flight on it finish there).
  const id = task.source.signedKey !== undefined ? `signed ${task.source.signedKey}` : JSON.stringify(task.source);
  let source = sources.get(id);
  if (!source || openedWith.get(id) !== task.source.url) {
    sources.set(id, (source = openSpec(task.source)));
    openedWith.set(id, task.source.url);
  }
  const { frames } = task;
  const longest = Math.max(...frames.map((f) => f.end - f.start));
  const buffer = longest <= RECEIVE_SIZE ? (receiveBuffers.pop() ?? Buffer.allocUnsafeSlow(RECEIVE_SIZE)) : Buffer.allocUnsafeSlow(longest);
  const writing = new Set<Promise<void>>();
  let writeFailed: { err: unknown } | undefined;
  /** Frame `index` is in: check it, start its write, and hold the request back while too many are still writing. */
  const take = (index: number, bytes: Buffer): void | Promise<void> => {
    if (writeFailed) throw writeFailed.err;
    // Stopped between two frames: what is written stays, the rest of the request is dropped.
    if (stopped()) throw new UpgradeError('INTERRUPTED', 'download was interrupted', { hint: 'run the same command again: it resumes where it stopped' });
    const f = frames[index]!;
    const v = decodeVerify(bytes, f.rawLength, f.sha256, f.payloadSha256);
    if (!v.ok) {
      report({ index, ok: false, reason: v.reason });
      return;
    }
    // Reported done only once it is on disk (the caller's progress file counts it as kept).
    const written: Promise<void> = writeFrameAsync(task.fd, v.parts, f.position, task.directFd).then(
      () => {
        report({ index, ok: true, sha256: v.sha256 });
      },
      (err: unknown) => {
        writeFailed ??= { err };
      },
    );
    writing.add(written);
    void written.finally(() => writing.delete(written));
    if (writing.size >= WRITES_PER_REQUEST) return Promise.race(writing);
  };
  try {
    const bounds = [frames[0]!.start, ...frames.map((f) => f.end)];
    if (source.rangePieces) await source.rangePieces(task.key, bounds, task.etag, buffer, take);
    else {
      for (const [index, f] of frames.entries()) await take(index, await source.range(task.key, f.start, f.end, task.etag, buffer));
    }
  } finally {
    // Nothing may still read the buffer, nor write, once the task has answered.
    await Promise.all(writing);
    if (buffer.length === RECEIVE_SIZE) receiveBuffers.push(buffer);
  }
  if (writeFailed) throw writeFailed.err;
  return { op: 'fetch-frames', frames: frames.length };
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
      raw = task.codec === 'zstd' ? zstd!.decodeZstdChunk(bytes, length) : decodeChunk(bytes, length);
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
  const sha256 = sha256Of(frame);
  if (sha256 !== task.sha256) return { op: 'assemble', ok: false, badBlocks: [] };
  return { op: 'assemble', ok: true, sha256, written: writeNonZero(task.fd, [frame], task.position, task.directFd) };
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
      const sha256 = sha256Of(raw);
      if (!task.chunkSize) {
        const frame = encodeFrame(raw);
        return { result: { op: 'compress', frame, sha256, payloadSha256: sha256Of(frame), allocated: allocatedBytes(raw) }, transfer: [frame.buffer as ArrayBuffer] };
      }
      const { frame, chunks } = encodeChunkedFrame(raw, task.chunkSize);
      const blockHashes = blockHashesOf(raw);
      const result: FrameResult = { op: 'compress', frame, sha256, payloadSha256: sha256Of(frame), allocated: allocatedBytes(raw), chunks, blockHashes };
      const transfer = [frame.buffer as ArrayBuffer, blockHashes.buffer as ArrayBuffer];
      if (task.zstdLevel) {
        const parts = zstd!.encodeZstdChunks(raw, task.zstdChunkSize ?? task.chunkSize, task.zstdLevel);
        result.zstd = Buffer.concat(parts);
        result.zstdLengths = parts.map((p) => p.length);
        transfer.push(result.zstd.buffer as ArrayBuffer);
      }
      return { result, transfer };
    }
    case 'decode-write': {
      const frame = Buffer.from(task.frame.buffer, task.frame.byteOffset, task.frame.byteLength);
      const r = decodeVerifyWrite(frame, task.rawLength, task.sha256, task.payloadSha256, task.fd, task.position, task.keepRaw, task.directFd);
      // The decoded bytes go back only for the in-order hash of /1 manifests.
      return { result: { op: 'decode-write', ...r }, transfer: r.ok && r.raw ? [r.raw.buffer as ArrayBuffer] : [] };
    }
    case 'fetch-frames':
      throw new Error('fetch-frames is asynchronous: run it through the message handler');
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
      return { result: { op: 'write-blocks', written: writeNonZero(task.fd, [data], task.position) }, transfer: [] };
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

/** What crosses back to the caller of a failed task: enough to rebuild an operator's error there. */
function serialize(err: unknown): { message: string; code?: string; hint?: string; upgrade?: boolean } {
  const e = err as Error & { code?: string; hint?: string };
  return { message: e?.message ?? String(err), code: e?.code, hint: e?.hint, upgrade: err instanceof UpgradeError };
}

/**
 * zstd-napi, loaded by the first task that needs it (publish's side file, a delta's zstd blocks): a
 * full download never does, and each worker starts ~25 ms sooner without it.
 */
let zstd: typeof import('./zstd-chunks.js') | undefined;
const needsZstd = (task: FrameTask) => (task.op === 'compress' && Boolean(task.chunkSize && task.zstdLevel)) || (task.op === 'assemble' && task.codec === 'zstd');

/** Tasks the caller has stopped (SIGTERM during a download): they end at their next frame. */
const cancelled = new Set<number>();

parentPort?.on('message', (msg: { id: number; task: FrameTask } | { cancel: number }) => {
  if ('cancel' in msg) {
    cancelled.add(msg.cancel);
    return;
  }
  if (!zstd && needsZstd(msg.task)) {
    // Tasks after this one may start before the module is in: each waits for it the same way.
    import('./zstd-chunks.js').then(
      (m) => {
        zstd = m;
        run(msg);
      },
      (err: unknown) => parentPort!.postMessage({ id: msg.id, error: serialize(err) }),
    );
    return;
  }
  run(msg);
});

function run(msg: { id: number; task: FrameTask }): void {
  if (msg.task.op === 'fetch-frames') {
    // Asynchronous: several requests at once, each frame decoded as soon as its bytes are in.
    fetchFrames(msg.task, (outcome) => parentPort!.postMessage({ id: msg.id, outcome }), () => cancelled.has(msg.id))
      .finally(() => cancelled.delete(msg.id))
      .then(
        (result) => {
          parentPort!.postMessage({ id: msg.id, result });
          collect({ type: 'minor' });
        },
        (err: unknown) => parentPort!.postMessage({ id: msg.id, error: serialize(err) }),
      );
    return;
  }
  try {
    const { result, transfer } = handle(msg.task);
    parentPort!.postMessage({ id: msg.id, result }, transfer);
    if (msg.task.op !== 'hash-zero' && msg.task.op !== 'hash-digest') collect({ type: 'minor' });
  } catch (err) {
    parentPort!.postMessage({ id: msg.id, error: serialize(err) });
  }
}
