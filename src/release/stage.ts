import { createHash } from 'node:crypto';
import { promises as fs, constants as C } from 'node:fs';
import path from 'node:path';
import { UpgradeError, errnoOf, isUpgradeError } from '../core/errors.js';
import { PRIVATE_FILE_MODE, mkdirPrivate } from '../core/private-files.js';
import { readJsonIfExists, removeQuietly, renameDurable, writeFileDurable } from '../core/durable.js';
import { log } from '../core/log.js';
import type { Layout } from '../core/layout.js';
import { FramePool, OrderedHasher, transferable } from './frame-pool.js';
import { Lz4StreamDecoder } from './lz4.js';
import { releaseKeys } from './layout.js';
import type { Frame, Manifest } from './manifest.js';
import type { Progress } from './progress.js';
import type { ResolvedRelease } from './resolve.js';
import { objectUrl, type Source } from './sources/source.js';

/**
 * `.staging/<v>.progress.json`: what of a download is already on disk and verified. It is only ever
 * written after the image file was fsynced, so it never claims more than the disk holds; a resumed
 * download re-hashes the frames it claims anyway, in case the file was touched in between.
 */
interface StagingProgress {
  manifestSha256: string;
  payloadEtag: string | undefined;
  imageSize: number;
  /** lz4-frames: indexes of verified frames. */
  done?: number[];
  /** lz4 (sequential): where decoding may resume. */
  stream?: { payloadOffset: number; rawOffset: number; frame?: unknown };
  bytesDone: number;
  updatedAt: string;
}

export interface StageOptions {
  layout: Layout;
  source: Source;
  release: ResolvedRelease;
  parallel: number;
  progress?: Progress;
  signal?: AbortSignal;
}

export interface StageResult {
  imageFile: string;
  /** Payload bytes fetched in this run (resumed and hole frames are not fetched). */
  fetched: number;
  reusedFrames: number;
  holeFrames: number;
  seconds: number;
}

const CHECKPOINT_MS = 2000;

/** What status shows of a download in progress or interrupted, from its progress file. */
export async function readStagingProgress(file: string): Promise<{ bytesDone: number; imageSize: number; updatedAt: string } | undefined> {
  const p = await readJsonIfExists<StagingProgress>(file).catch(() => undefined);
  return p && { bytesDone: p.bytesDone, imageSize: p.imageSize, updatedAt: p.updatedAt };
}

export function stagingPaths(layout: Layout, version: string): { image: string; progress: string } {
  return { image: path.join(layout.stagingDir, `${version}.img`), progress: path.join(layout.stagingDir, `${version}.progress.json`) };
}

/**
 * Download, decode, verify and write the image under .staging, then move it to HOST/images/<v>.img.
 * Nothing reaches the bootable name before every frame and the whole image were verified and synced.
 */
export async function stageImage(opts: StageOptions): Promise<StageResult> {
  const started = Date.now();
  const { layout, source, release } = opts;
  const { manifest } = release;
  const version = manifest.version;
  const payloadKey = `${releaseKeys(version).dir}/${manifest.payload.path}`;
  const payloadUrl = objectUrl(source, payloadKey);
  await mkdirPrivate(layout.stagingDir);
  const paths = stagingPaths(layout, version);

  const info = await source.head(payloadKey).catch((err: unknown) => {
    if (isUpgradeError(err, 'NOT_FOUND')) {
      throw new UpgradeError('NOT_FOUND', `payload of release ${version} is missing at ${payloadUrl}`, { cause: err, hint: 're-publish the release' });
    }
    throw err;
  });
  if (info.size !== manifest.payload.size) {
    throw new UpgradeError('CORRUPT', `payload ${payloadUrl} is ${info.size} bytes, the manifest says ${manifest.payload.size}`, {
      hint: 'the upload is truncated or was replaced: re-publish the release under a new version',
    });
  }

  let saved = await readJsonIfExists<StagingProgress>(paths.progress).catch(() => undefined);
  if (saved && (saved.manifestSha256 !== release.manifestSha256 || saved.payloadEtag !== info.etag || saved.imageSize !== manifest.image.size)) {
    log.warn(`the release behind ${payloadUrl} changed since the download began; starting it again`);
    saved = undefined;
  }
  if (!saved) {
    await fs.rm(paths.image, { force: true });
    await fs.rm(paths.progress, { force: true });
  }
  const state: StagingProgress = saved ?? {
    manifestSha256: release.manifestSha256,
    payloadEtag: info.etag,
    imageSize: manifest.image.size,
    bytesDone: 0,
    updatedAt: new Date().toISOString(),
  };

  // Root-only from its first byte: it becomes the image, which will hold the machine's secrets.
  const fh = await fs.open(paths.image, C.O_RDWR | C.O_CREAT, PRIVATE_FILE_MODE);
  await fh.chmod(PRIVATE_FILE_MODE).catch(async (err: unknown) => {
    await fh.close();
    throw err;
  });
  const pool = new FramePool();
  const hasher = new OrderedHasher(fh.fd);
  const checkpoint = async () => {
    await fh.datasync();
    state.updatedAt = new Date().toISOString();
    await writeFileDurable(paths.progress, JSON.stringify(state), PRIVATE_FILE_MODE);
  };
  let result: Omit<StageResult, 'imageFile' | 'seconds'>;
  try {
    // Full size up front: blocks never written stay holes, so zero regions cost no disk and no I/O.
    await fh.truncate(manifest.image.size);
    const ctx: PipelineContext = { ...opts, fd: fh.fd, pool, hasher, state, checkpoint, payloadKey, payloadUrl, etag: info.etag };
    result = manifest.payload.compression === 'lz4-frames' ? await fetchFrames(ctx) : await fetchStream(ctx);
    const digest = await hasher.digest();
    if (digest !== manifest.image.sha256) {
      await fs.rm(paths.progress, { force: true });
      throw new UpgradeError('CORRUPT', `image ${version} from ${payloadUrl} has SHA-256 ${digest}, the manifest says ${manifest.image.sha256}`, {
        hint: 'the payload does not match its signed manifest: do not use this release; re-publish it. The partial download was discarded.',
      });
    }
    await fh.sync();
  } catch (err) {
    throw asStagingError(err, paths.image, manifest);
  } finally {
    await hasher.close();
    await pool.close();
    await fh.close();
  }
  const imageFile = layout.imageFile(version);
  await renameDurable(paths.image, imageFile);
  await mkdirPrivate(layout.manifestsDir);
  await writeFileDurable(layout.manifestFile(version), release.manifestBytes, PRIVATE_FILE_MODE);
  await removeQuietly(paths.progress);
  return { imageFile, ...result, seconds: (Date.now() - started) / 1000 };
}

function asStagingError(err: unknown, file: string, manifest: Manifest): unknown {
  if (errnoOf(err) === 'ENOSPC') {
    return new UpgradeError('NO_SPACE', `no space left on the host partition while writing ${file} (the image needs ${mib(manifest.image.allocated)})`, {
      cause: err,
      hint: `free space in ${path.dirname(path.dirname(file))} and run prepare again: it resumes where it stopped`,
    });
  }
  return err;
}

const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

interface PipelineContext extends StageOptions {
  fd: number;
  pool: FramePool;
  hasher: OrderedHasher;
  state: StagingProgress;
  checkpoint: () => Promise<void>;
  payloadKey: string;
  payloadUrl: string;
  etag: string | undefined;
}

function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) {
    throw new UpgradeError('INTERRUPTED', `${what} was interrupted`, { hint: 'run the same command again: it resumes where it stopped' });
  }
}

/** Indexed payload: frames fetched by range, several in flight, decoded and verified on the worker pool. */
async function fetchFrames(ctx: PipelineContext): Promise<Omit<StageResult, 'imageFile' | 'seconds'>> {
  const { manifest } = ctx.release;
  const frames = manifest.payload.frames!;
  const frameSize = manifest.payload.frameSize!;
  const done = new Set(ctx.state.done ?? []);
  const zeroSha = new Map<number, string>();
  // Frame 0 is never left a hole, zeros or not: GRUB cannot open an image file whose first block is
  // one (core/first-block.ts), and the frame writer writes the file's first block whatever it holds.
  const isHole = (f: Frame, i: number) => {
    if (i === 0) return false;
    let z = zeroSha.get(f.rawLength);
    if (!z) zeroSha.set(f.rawLength, (z = createHash('sha256').update(Buffer.alloc(f.rawLength)).digest('hex')));
    return f.sha256 === z;
  };

  // Re-verify what an earlier run claims before trusting it.
  let reused = 0;
  for (const i of [...done]) {
    const f = frames[i];
    if (!f) {
      done.delete(i);
      continue;
    }
    if (isHole(f, i)) {
      // Holes are known from the manifest and never written: nothing on disk to check.
      reused++;
      continue;
    }
    const r = await ctx.pool.run({ op: 'hash-range', fd: ctx.fd, start: i * frameSize, end: i * frameSize + f.rawLength });
    if (r.sha256 === f.sha256) reused++;
    else done.delete(i);
  }
  let holes = 0;
  frames.forEach((f, i) => {
    if (!done.has(i) && isHole(f, i)) {
      done.add(i);
      holes++;
    }
  });
  ctx.progress?.advance(frames.reduce((n, f, i) => n + (done.has(i) ? f.rawLength : 0), 0));

  // Every frame reaches the image hash exactly once: resumed ones from the file, holes as zeros,
  // fetched ones from memory when they are decoded.
  frames.forEach((f, i) => {
    ctx.hasher.setRange(i, i * frameSize, i * frameSize + f.rawLength);
    if (!done.has(i)) return;
    ctx.hasher.add(i, isHole(f, i) ? { zero: f.rawLength } : { file: { start: i * frameSize, end: i * frameSize + f.rawLength } });
  });

  const queue = frames.map((_, i) => i).filter((i) => !done.has(i));
  let fetched = 0;
  let failure: unknown;
  let saving: Promise<void> | undefined;
  const persist = async () => {
    // One save at a time; the snapshot is taken before the fsync, so it never claims unsynced frames.
    while (saving) await saving;
    ctx.state.done = [...done].sort((a, b) => a - b);
    ctx.state.bytesDone = ctx.progress?.done ?? 0;
    saving = ctx.checkpoint().finally(() => {
      saving = undefined;
    });
    await saving;
  };
  // On a timer, not per frame: a stalled frame must not hold back saving what the others finished.
  const timer = setInterval(() => {
    persist().catch((err: unknown) => log.warn(`could not save download progress: ${(err as Error).message}`));
  }, CHECKPOINT_MS);

  const worker = async () => {
    while (queue.length && !failure && !ctx.signal?.aborted) {
      await ctx.hasher.belowBacklog();
      const i = queue.shift();
      if (i === undefined) break;
      const f = frames[i]!;
      const bytes = await ctx.source.range(ctx.payloadKey, f.offset, f.offset + f.length, ctx.etag);
      const r = await ctx.pool.run(
        { op: 'decode-write', frame: bytes, rawLength: f.rawLength, sha256: f.sha256, fd: ctx.fd, position: i * frameSize },
        // Hand the frame's memory to the worker when it owns its buffer outright (no copy).
        transferable(bytes),
      );
      if (!r.ok) {
        throw new UpgradeError('CORRUPT', `frame ${i} of ${ctx.payloadUrl} (bytes ${f.offset}–${f.offset + f.length}) is corrupt: ${r.reason}`, {
          hint: 'the payload does not match its signed manifest: do not use this release; re-publish it',
        });
      }
      fetched += f.length;
      done.add(i);
      ctx.progress?.advance(f.rawLength);
      ctx.hasher.add(i, { data: r.raw });
    }
  };
  const lanes = Array.from({ length: Math.max(1, ctx.parallel) }, () =>
    worker().catch((err: unknown) => {
      failure ??= err;
    }),
  );
  await Promise.all(lanes);
  clearInterval(timer);
  // Whatever happened, keep what was verified so the next run does not fetch it again.
  await persist().catch((err: unknown) => log.warn(`could not save download progress: ${(err as Error).message}`));
  if (failure) throw failure;
  throwIfAborted(ctx.signal, `download of ${manifest.version}`);
  return { fetched, reusedFrames: reused, holeFrames: holes };
}

/** A plain LZ4 stream (`lz4 image.img`): decoded in order, resumable at block boundaries. */
async function fetchStream(ctx: PipelineContext): Promise<Omit<StageResult, 'imageFile' | 'seconds'>> {
  const { manifest } = ctx.release;
  const resume = ctx.state.stream as { payloadOffset: number; rawOffset: number; frame?: never } | undefined;
  let window: Buffer | undefined;
  if (resume && resume.rawOffset > 0) {
    // A linked block's dictionary is the last 64 KiB of output, which is already in the file.
    const start = Math.max(0, resume.rawOffset - 65536);
    window = Buffer.alloc(resume.rawOffset - start);
    const fh = await fs.open(stagingPaths(ctx.layout, manifest.version).image, 'r');
    try {
      await fh.read(window, 0, window.length, start);
    } finally {
      await fh.close();
    }
    ctx.progress?.advance(resume.rawOffset);
  }
  const decoder = new Lz4StreamDecoder(resume ?? { payloadOffset: 0, rawOffset: 0 }, window);
  const firstOffset = decoder.at.payloadOffset;
  ctx.hasher.advanceTo(decoder.at.rawOffset);
  let lastCheckpoint = Date.now();
  let writes: Promise<unknown>[] = [];
  const persist = async () => {
    await Promise.all(writes);
    writes = [];
    ctx.state.stream = decoder.at as StagingProgress['stream'];
    ctx.state.bytesDone = decoder.at.rawOffset;
    ctx.hasher.advanceTo(decoder.at.rawOffset);
    await ctx.checkpoint();
  };
  try {
    for await (const chunk of ctx.source.stream(ctx.payloadKey, firstOffset, ctx.etag)) {
      throwIfAborted(ctx.signal, `download of ${manifest.version}`);
      for (const { data, rawOffset } of decoder.push(chunk)) {
        if (rawOffset + data.length > manifest.image.size) {
          throw new UpgradeError('CORRUPT', `payload ${ctx.payloadUrl} decodes to more than the ${manifest.image.size} bytes its manifest says`, { hint: 're-publish the release' });
        }
        writes.push(ctx.pool.run({ op: 'write-blocks', data, fd: ctx.fd, position: rawOffset }));
        ctx.progress?.advance(data.length);
        if (writes.length >= ctx.pool.size * 2) {
          await Promise.all(writes);
          writes = [];
        }
      }
      if (Date.now() - lastCheckpoint > CHECKPOINT_MS) {
        lastCheckpoint = Date.now();
        await persist();
      }
    }
    decoder.finish();
  } catch (err) {
    await persist().catch(() => undefined);
    if (err instanceof UpgradeError) throw err;
    if (err instanceof Error && err.name === 'Lz4FormatError') {
      throw new UpgradeError('CORRUPT', `payload ${ctx.payloadUrl} is corrupt: ${err.message}`, { cause: err, hint: 'do not use this release; re-publish it' });
    }
    throw err;
  }
  await persist();
  if (decoder.at.rawOffset !== manifest.image.size) {
    throw new UpgradeError('CORRUPT', `payload ${ctx.payloadUrl} decodes to ${decoder.at.rawOffset} bytes, the manifest says ${manifest.image.size}`, { hint: 're-publish the release' });
  }
  return { fetched: decoder.at.payloadOffset - firstOffset, reusedFrames: 0, holeFrames: 0 };
}
