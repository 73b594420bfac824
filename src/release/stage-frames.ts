import { createHash } from 'node:crypto';
import { UpgradeError } from '../core/errors.js';
import { log } from '../core/log.js';
import { type FramePool, type OrderedHasher, transferable } from './frame-pool.js';
import type { FrameResult } from './frame-worker.js';
import { framesRoot } from './frames-root.js';
import { HOLE_GRAIN } from './holes.js';
import { MANIFEST_FORMATS, type Frame, type Manifest } from './manifest.js';
import type { Progress } from './progress.js';
import { decodeIndex, decodeZstdIndex, type ReleaseIndex } from './release-index.js';
import { chunkRanges, planFrame, scanSeeds, type FramePlan, type Seeds } from './reuse.js';
import type { Source } from './sources/source.js';

/** What the indexed pipeline needs from stage.ts. */
export interface FramesContext {
  manifest: Manifest;
  source: Source;
  payloadKey: string;
  payloadUrl: string;
  etag: string | undefined;
  fd: number;
  /** The staging file opened with O_DIRECT for the workers' writes, when the filesystem allows it. */
  directFd?: number;
  pool: FramePool;
  /** /1 manifests only: the whole image hashed in order (a /2 manifest's frame-hash root replaces it). */
  hasher?: OrderedHasher;
  parallel: number;
  progress?: Progress;
  signal?: AbortSignal;
  /** Bytes of the staging file already allocated (0: nothing on disk worth checking). */
  stagedBytes: number;
  /** Local images to reuse blocks from (delta), and where their block hashes are cached. */
  seeds: string[];
  seedCache: string;
  /** Called with the verified frames so far, on a timer and at the end. */
  persist: (done: number[], bytesDone: number) => Promise<void>;
  /** Bytes one ranged request may carry (several frames in one GET); unset or 0: one frame each. */
  requestBytes?: number;
  /** Called once the first frames are on their way (see StageOptions.started). */
  started?: () => void;
}

export interface FramesResult {
  /** Payload bytes fetched in this run, index included. */
  fetched: number;
  requests: number;
  reusedFrames: number;
  holeFrames: number;
  /** Image bytes copied from local images and verified. */
  localBytes: number;
  /** /2: the frame-hash root of what was verified on its way to disk. */
  framesSha256?: string;
}

const CHECKPOINT_MS = 1000;
/** A delta that saves less than this share of the full payload is not worth its many small requests. */
const MIN_SAVING = 0.1;
/** Ranges of one delta frame in flight at once (a lane's; `parallel` lanes run side by side). */
const RANGES_PER_FRAME = 4;

/**
 * Indexed payload: frames found verified in the staging file are kept, holes are never fetched, the
 * rest is fetched by range (several in flight) — whole frames, or with a /2 index and local images
 * only the blocks missing locally (from the zstd side file when there is one) — and decoded,
 * verified and written on the worker pool.
 */
export async function fetchFrames(ctx: FramesContext): Promise<FramesResult> {
  const { manifest } = ctx;
  const frames = manifest.payload.frames!;
  const frameSize = manifest.payload.frameSize!;
  const v1 = manifest.format === MANIFEST_FORMATS[0];
  const digests: Array<string | undefined> = frames.map(() => undefined);
  const zeroSha = new Map<number, string>();
  // Frame 0 is never left a hole, zeros or not: GRUB cannot open an image file whose first block is
  // one (core/first-block.ts), and the frame writer writes the file's first block whatever it holds.
  const isHole = (f: Frame, i: number) => {
    if (i === 0) return false;
    let z = zeroSha.get(f.rawLength);
    if (!z) zeroSha.set(f.rawLength, (z = createHash('sha256').update(Buffer.alloc(f.rawLength)).digest('hex')));
    return f.sha256 === z;
  };
  const done = new Set<number>();
  let holes = 0;
  frames.forEach((f, i) => {
    if (!isHole(f, i)) return;
    // Holes are known from the manifest and never written: nothing on disk to check or fetch.
    done.add(i);
    digests[i] = f.sha256;
    holes++;
  });

  // What is on disk and verifies is kept, whether or not the last run lived to record it (kill -9).
  const claimed = ctx.stagedBytes > 0 ? frames.map((_, i) => i).filter((i) => !done.has(i)) : [];
  let reused = 0;
  await eachLimited(claimed, ctx.pool.size * 2, async (i) => {
    const f = frames[i]!;
    const r = await ctx.pool.run({ op: 'hash-range', fd: ctx.fd, start: i * frameSize, end: i * frameSize + f.rawLength });
    if (r.sha256 !== f.sha256) return;
    done.add(i);
    digests[i] = r.sha256;
    reused++;
  });
  ctx.progress?.advance(frames.reduce((n, f, i) => n + (done.has(i) ? f.rawLength : 0), 0));
  if (ctx.hasher) {
    // Every frame reaches the /1 image hash exactly once: kept ones from the file, holes as zeros,
    // fetched ones from memory when they are decoded.
    const hasher = ctx.hasher;
    frames.forEach((f, i) => {
      hasher.setRange(i, i * frameSize, i * frameSize + f.rawLength);
      if (done.has(i)) hasher.add(i, isHole(f, i) ? { zero: f.rawLength } : { file: { start: i * frameSize, end: i * frameSize + f.rawLength } });
    });
  }

  const todo = frames.map((_, i) => i).filter((i) => !done.has(i));
  const stats = { fetched: 0, requests: 0, localBytes: 0 };
  const delta = todo.length && !v1 ? await prepareDelta(ctx, stats) : undefined;
  const plans = new Map<number, FramePlan>();
  if (delta) {
    let planned = 0;
    let whole = 0;
    let local = 0;
    for (const i of todo) {
      const plan = planFrame(i, manifest, delta.index, delta.seeds, delta.chunkSize, delta.offsets(i));
      if (plan) plans.set(i, plan);
      planned += plan ? plan.cost : frames[i]!.length;
      whole += frames[i]!.length;
      local += plan?.localBytes ?? 0;
    }
    // A major upgrade (or an unrelated local image): when the delta saves little, the full payload's
    // plain path — one range per frame, LZ4, no local reads — is the faster way to the same image.
    if (planned > (1 - MIN_SAVING) * whole) {
      log.info(`delta: ${(local / 1048576).toFixed(1)} MiB found locally would save under ${MIN_SAVING * 100} % of ${(whole / 1048576).toFixed(1)} MiB; fetching the full payload`);
      plans.clear();
    } else {
      log.info(`delta: ${plans.size} of ${todo.length} frames from local images, ${(planned / 1048576).toFixed(1)} MiB to fetch instead of ${(whole / 1048576).toFixed(1)} MiB`);
    }
  }

  let failure: unknown;
  const persist = () => ctx.persist([...done].sort((a, b) => a - b), ctx.progress?.done ?? 0);
  let saving: Promise<void> | undefined;
  const save = async () => {
    // One save at a time. The list is a report (status): a resumed run checks the file itself.
    while (saving) await saving;
    saving = persist().finally(() => {
      saving = undefined;
    });
    await saving;
  };
  // On a timer, not per frame: a stalled frame must not hold back saving what the others finished.
  const timer = setInterval(() => {
    save().catch((err: unknown) => log.warn(`could not save download progress: ${(err as Error).message}`));
  }, CHECKPOINT_MS);

  const fetchRange = async (start: number, end: number, key = ctx.payloadKey) => {
    // The payload is pinned to the version the download began with; the side file to its size and hashes.
    const bytes = await ctx.source.range(key, start, end, key === ctx.payloadKey ? ctx.etag : undefined);
    stats.fetched += end - start;
    stats.requests++;
    return bytes;
  };
  const corrupt = (i: number, reason: string) => {
    const f = frames[i]!;
    return new UpgradeError('CORRUPT', `frame ${i} of ${ctx.payloadUrl} (bytes ${f.offset}–${f.offset + f.length}) is corrupt: ${reason}`, {
      hint: 'the payload does not match its signed manifest: do not use this release; re-publish it',
    });
  };
  // A frame that fails its check is fetched once more (a proxy or a flaky link may have mangled it on
  // the way); the same failure twice is the payload itself, and the release is refused.
  const refetching = (i: number, reason: string) => log.warn(`frame ${i} of ${ctx.payloadUrl} failed its check (${reason}); fetching it again`);
  /** Fetch a whole frame here; the promise it returns is the frame decoded, verified and written by a worker. */
  const fetchWhole = async (i: number, attempt = 0): Promise<{ written: Promise<string> }> => {
    const f = frames[i]!;
    const bytes = await fetchRange(f.offset, f.offset + f.length);
    const written = ctx.pool
      .run(
        { op: 'decode-write', frame: bytes, rawLength: f.rawLength, sha256: f.sha256, payloadSha256: f.payloadSha256, fd: ctx.fd, directFd: ctx.directFd, position: i * frameSize, keepRaw: Boolean(ctx.hasher) },
        // Hand the frame's memory to the worker when it owns its buffer outright (no copy).
        transferable(bytes),
      )
      .then(async (r): Promise<string> => {
        if (!r.ok) {
          if (attempt > 0) throw corrupt(i, r.reason);
          refetching(i, r.reason);
          return (await fetchWhole(i, attempt + 1)).written;
        }
        if (r.raw) ctx.hasher!.add(i, { data: r.raw });
        return r.sha256;
      });
    return { written };
  };
  // Whole frames are fetched by the workers themselves when the source can be opened there (S3: by a
  // pre-signed URL): the bytes then never cross this thread, which only hands out frame numbers. /1
  // manifests need each decoded frame back here for their in-order image hash, so they keep fetching here.
  const inWorkers = !ctx.hasher && ctx.source.workerSpec !== undefined;
  /**
   * Fetch consecutive frames on a worker, in one request where the source allows: each is decoded,
   * verified and written there and `finish`ed here as soon as it is on disk. A frame that fails its
   * check is fetched once more on its own, and refused the second time. False when the source cannot
   * be reached from a worker (an S3 bucket whose pre-signed URLs do not work): fetch them here.
   */
  const fetchInWorker = async (span: number[], attempt = 0): Promise<boolean> => {
    // Asked per request: an S3 URL is renewed before it expires (cached otherwise).
    const spec = await ctx.source.workerSpec!(ctx.payloadKey);
    if (!spec) return false;
    const bytes = span.reduce((n, i) => n + frames[i]!.length, 0);
    await ctx.source.admit?.(bytes);
    const failed: Array<{ i: number; reason: string }> = [];
    const task = span.map((i) => ({ start: frames[i]!.offset, end: frames[i]!.offset + frames[i]!.length, rawLength: frames[i]!.rawLength, sha256: frames[i]!.sha256, payloadSha256: frames[i]!.payloadSha256, position: i * frameSize }));
    try {
      await ctx.pool.run({ op: 'fetch-frames', source: spec, key: ctx.payloadKey, etag: ctx.etag, frames: task, fd: ctx.fd, directFd: ctx.directFd }, [], (o) => {
        if (o.ok) finish(span[o.index]!)(o.sha256);
        else failed.push({ i: span[o.index]!, reason: o.reason });
      }, ctx.signal);
    } catch (err) {
      // Stopped at a frame boundary: the frames on disk are finished, the lane ends, the caller says INTERRUPTED.
      if (ctx.signal?.aborted && (err as { code?: string }).code === 'INTERRUPTED') return true;
      throw err;
    } finally {
      stats.fetched += bytes;
      stats.requests++;
    }
    for (const { i, reason } of failed) {
      if (attempt > 0) throw corrupt(i, reason);
      refetching(i, reason);
      if (!(await fetchInWorker([i], attempt + 1))) finish(i)(await (await fetchWhole(i, attempt + 1)).written);
    }
    return true;
  };
  /**
   * Frame `first` and the frames after it that the same request should carry: consecutive in the
   * payload, up to the source's request size, and no more than an even share of what is left, so the
   * lanes finish together. Taken off the queue.
   */
  const requestBytes = ctx.requestBytes ?? 0;
  const spanFrom = (first: number): number[] => {
    const span = [first];
    if (ctx.source.admit || requestBytes <= 0) return span;
    const share = Math.ceil((queue.length + 1) / Math.max(1, ctx.parallel));
    let bytes = frames[first]!.length;
    for (let next = queue[0]; next !== undefined && span.length < share; next = queue[0]) {
      const prev = frames[span.at(-1)!]!;
      const f = frames[next]!;
      if (next !== span.at(-1)! + 1 || plans.has(next) || f.offset !== prev.offset + prev.length || bytes + f.length > requestBytes) break;
      span.push(queue.shift()!);
      bytes += f.length;
    }
    return span;
  };
  const wholeFrame = async (i: number) => (await fetchWhole(i)).written;
  /** Local blocks plus fetched ones; blocks whose local copy is bad are fetched on a second try, then the whole frame. */
  const assembled = async (i: number, plan: FramePlan, offsets: number[]): Promise<string> => {
    const f = frames[i]!;
    let chunks = plan.chunks;
    for (let attempt = 0; attempt < 2; attempt++) {
      const parts: Array<{ index: number; bytes: Uint8Array }> = [];
      const transfer: ArrayBuffer[] = [];
      // A frame's ranges at once: each request waits out the server's latency (S3: tens of ms), and a
      // frame of a delta typically needs several scattered units.
      const ranges = chunkRanges(offsets, chunks);
      const fetched: Buffer[] = [];
      await eachLimited([...ranges.keys()], RANGES_PER_FRAME, async (k) => {
        fetched[k] = await fetchRange(ranges[k]!.start, ranges[k]!.end, delta!.key);
      });
      for (const [k, r] of ranges.entries()) {
        const bytes = fetched[k]!;
        transfer.push(...transferable(bytes));
        for (const c of r.chunks) parts.push({ index: c, bytes: bytes.subarray(offsets[c]! - r.start, offsets[c + 1]! - r.start) });
      }
      const first = (i * frameSize) / HOLE_GRAIN;
      const expect = delta!.index.blockHashes.subarray(first * 8, (first + Math.ceil(f.rawLength / HOLE_GRAIN)) * 8);
      const r: Extract<FrameResult, { op: 'assemble' }> = await ctx.pool.run(
        { op: 'assemble', fd: ctx.fd, directFd: ctx.directFd, position: i * frameSize, rawLength: f.rawLength, sha256: f.sha256, chunkSize: delta!.chunkSize, local: plan.local, expect: new Uint8Array(expect), chunks: parts, codec: delta!.codec },
        transfer,
      );
      if (r.ok) {
        stats.localBytes += plan.local.reduce((n, l) => n + l.length, 0);
        return r.sha256;
      }
      if (!r.badBlocks.length) break;
      const perChunk = delta!.chunkSize / HOLE_GRAIN;
      log.warn(`frame ${i}: ${r.badBlocks.length} blocks of the local images do not match the release; fetching them`);
      chunks = [...new Set([...chunks, ...r.badBlocks.map((b) => Math.floor(b / perChunk))])].sort((a, b) => a - b);
    }
    log.warn(`frame ${i} could not be put together from local data; fetching it whole`);
    return wholeFrame(i);
  };

  // A lane fetches the next frame while the workers still decode the last ones: the network never
  // waits for the CPU, up to a bounded number of decoded-but-unwritten frames (memory stays flat).
  const queue = [...todo];
  const decoding = new Set<Promise<void>>();
  const maxDecoding = ctx.pool.size;
  const finish = (i: number) => (digest: string) => {
    digests[i] = digest;
    done.add(i);
    ctx.progress?.advance(frames[i]!.rawLength);
  };
  const lane = async () => {
    while (queue.length && !failure && !ctx.signal?.aborted) {
      if (ctx.hasher) await ctx.hasher.belowBacklog();
      while (decoding.size >= maxDecoding) await Promise.race(decoding);
      const i = queue.shift();
      if (i === undefined) break;
      const plan = plans.get(i);
      if (plan) {
        finish(i)(await assembled(i, plan, delta!.offsets(i)));
        continue;
      }
      const span = inWorkers ? spanFrom(i) : [i];
      if (inWorkers && (await fetchInWorker(span))) continue;
      for (const j of span) {
        while (decoding.size >= maxDecoding) await Promise.race(decoding);
        const { written } = await fetchWhole(j);
        const settled: Promise<void> = written.then(finish(j)).finally(() => decoding.delete(settled));
        decoding.add(settled);
      }
    }
  };
  const failed = (err: unknown) => {
    failure ??= err;
  };
  try {
    const lanes = Promise.all(Array.from({ length: Math.max(1, ctx.parallel) }, () => lane().catch(failed)));
    // After the lanes' first tasks are posted (their synchronous steps and microtasks run before this).
    if (ctx.started) setImmediate(ctx.started);
    await lanes;
    while (decoding.size) await Promise.all([...decoding].map((p) => p.catch(failed)));
  } finally {
    clearInterval(timer);
    await delta?.seeds.close();
    // Whatever happened, keep what was verified so the next run does not fetch it again.
    await save().catch((err: unknown) => log.warn(`could not save download progress: ${(err as Error).message}`));
  }
  if (failure) throw failure;
  if (ctx.signal?.aborted) {
    throw new UpgradeError('INTERRUPTED', `download of ${manifest.version} was interrupted`, { hint: 'run the same command again: it resumes where it stopped' });
  }
  const result: FramesResult = { ...stats, reusedFrames: reused, holeFrames: holes };
  if (!v1) result.framesSha256 = framesRoot(digests.map((d, i) => d ?? `missing frame ${i}`));
  return result;
}

/** The release index and the local images' blocks, when there are local images and the release has an index. */
interface Delta {
  index: ReleaseIndex;
  seeds: Seeds;
  /** Where missing blocks come from: the zstd side file when the release has one, else the payload. */
  key: string;
  codec: 'lz4' | 'zstd';
  /** Image bytes per fetched unit there, and where frame `i`'s units are. */
  chunkSize: number;
  offsets: (frame: number) => number[];
}

async function prepareDelta(ctx: FramesContext, stats: { fetched: number; requests: number }): Promise<Delta | undefined> {
  const ref = ctx.manifest.payload.index;
  if (!ref || !ctx.seeds.length) return undefined;
  const dir = ctx.payloadKey.slice(0, ctx.payloadKey.lastIndexOf('/'));
  const key = `${dir}/${ref.path}`;
  const blocks = ctx.manifest.payload.zstdBlocks;
  // Both indexes at once: each is one request, and the zstd one is small.
  const [bytes, zstdBytes] = await Promise.all([fetchSideFile(ctx, stats, key, ref, 'the release index', 'no delta; fetching whole frames'), blocks && fetchSideFile(ctx, stats, `${dir}/${blocks.index.path}`, blocks.index, 'the zstd index', 'the delta fetches LZ4 blocks from the payload instead')]);
  if (!bytes) return undefined;
  const index = decodeIndex(bytes, ctx.manifest, key);
  const zstdOffsets = blocks && zstdBytes ? decodeZstdIndex(zstdBytes, ctx.manifest, `${dir}/${blocks.index.path}`) : undefined;
  const seeds = await scanSeeds(ctx.pool, ctx.seeds, ctx.seedCache);
  log.info(`delta: ${seeds.map.size} distinct blocks in ${ctx.seeds.length} local image(s) (${(seeds.hashed / 1048576).toFixed(0)} MiB hashed, the rest cached)`);
  const chunkSize = ctx.manifest.payload.chunkSize!;
  // Missing blocks come from a zstd side file when the release has one (a third smaller than LZ4),
  // in its finer units when it is a zstdBlocks one; else from the payload's LZ4 blocks.
  if (blocks && zstdOffsets) return { index, seeds, key: `${dir}/${blocks.path}`, codec: 'zstd', chunkSize: blocks.chunkSize, offsets: (i) => zstdOffsets[i]! };
  const older = ctx.manifest.payload.zstdChunks;
  if (older && index.zstdOffsets) {
    const olderOffsets = index.zstdOffsets;
    return { index, seeds, key: `${dir}/${older.path}`, codec: 'zstd', chunkSize, offsets: (i) => olderOffsets[i]! };
  }
  return { index, seeds, key: ctx.payloadKey, codec: 'lz4', chunkSize, offsets: (i) => index.chunkOffsets[i]! };
}

/** A small side file of the release, whole, checked against the manifest; undefined (and why, logged) when it cannot be had. */
async function fetchSideFile(ctx: FramesContext, stats: { fetched: number; requests: number }, key: string, ref: { size: number; sha256: string }, what: string, otherwise: string): Promise<Buffer | undefined> {
  let bytes: Buffer;
  try {
    bytes = await ctx.source.range(key, 0, ref.size);
    stats.fetched += ref.size;
    stats.requests++;
  } catch (err) {
    log.warn(`could not fetch ${what}: ${(err as Error).message}; ${otherwise}`);
    return undefined;
  }
  if (createHash('sha256').update(bytes).digest('hex') !== ref.sha256) {
    log.warn(`${what} ${key} does not match its manifest; ${otherwise}`);
    return undefined;
  }
  return bytes;
}

async function eachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  await Promise.all(Array.from({ length: Math.max(1, limit) }, async () => {
    for (let item = queue.shift(); item !== undefined; item = queue.shift()) await fn(item);
  }));
}
