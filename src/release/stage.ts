import { promises as fs, constants as C } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { UpgradeError, errnoOf, isUpgradeError } from '../core/errors.js';
import { PRIVATE_FILE_MODE, mkdirPrivate } from '../core/private-files.js';
import { readJsonIfExists, removeQuietly, renameDurable, writeFileDurable } from '../core/durable.js';
import { log } from '../core/log.js';
import type { Layout } from '../core/layout.js';
import { FramePool, OrderedHasher } from './frame-pool.js';
import { fetchFrames } from './stage-frames.js';
import { releaseKeys } from './layout.js';
import { MANIFEST_FORMATS, type Manifest } from './manifest.js';
import type { Progress } from './progress.js';
import type { ResolvedRelease } from './resolve.js';
import { objectUrl, type Source } from './sources/source.js';

/**
 * `.staging/<v>.progress.json`: which release the staging file belongs to, and how far it got. It is
 * written before the first byte of the image, so that an interrupted run's data is recognised as this
 * release's. For indexed payloads its list of frames is a report only: a resumed run keeps every
 * frame it finds in the file that matches its hash, recorded or not (a kill -9 loses only the frames
 * in flight). For plain LZ4 streams it is written after an fsync of the image, at a block boundary.
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
  /** [prepare] request_size: bytes per ranged request; unset or 0: the source's own choice. */
  requestBytes?: number;
  progress?: Progress;
  signal?: AbortSignal;
  /** Local images whose blocks a /2 release with an index may reuse (current, previous, …). */
  seeds?: string[];
  /** Frame workers started by the caller (and closed by it), so that they load while the release is checked. */
  pool: FramePool;
  /**
   * Called once, when the first frames have been asked for (or the download is about to begin, where
   * it does not go frame by frame): what the caller does then overlaps the download instead of
   * delaying it.
   */
  started?: () => void;
}

export interface StageResult {
  imageFile: string;
  /** Payload bytes fetched in this run (resumed and hole frames are not fetched), index included. */
  fetched: number;
  /** HTTP (or S3) range requests made for them. */
  requests: number;
  /** Frames kept from the staging file of an interrupted run, after checking them. */
  reusedFrames: number;
  holeFrames: number;
  /** Image bytes copied from local images (delta) and verified. */
  localBytes: number;
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
  const { layout, source, release, pool } = opts;
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

  if (!saved) await writeFileDurable(paths.progress, JSON.stringify(state), PRIVATE_FILE_MODE);
  // Root-only from its first byte: it becomes the image, which will hold the machine's secrets.
  const fh = await fs.open(paths.image, C.O_RDWR | C.O_CREAT, PRIVATE_FILE_MODE);
  await fh.chmod(PRIVATE_FILE_MODE).catch(async (err: unknown) => {
    await fh.close();
    throw err;
  });
  const indexed = manifest.payload.compression === 'lz4-frames';
  // /2 manifests carry the frame-hash root: every frame verified on its way to disk is the whole check.
  const hasher = indexed && manifest.format !== MANIFEST_FORMATS[0] ? undefined : new OrderedHasher(fh.fd);
  const checkpoint = async () => {
    await fh.datasync();
    state.updatedAt = new Date().toISOString();
    await writeFileDurable(paths.progress, JSON.stringify(state), PRIVATE_FILE_MODE);
  };
  let result: Omit<StageResult, 'imageFile' | 'seconds'>;
  let reuseFailed = false;
  let direct: FileHandle | undefined;
  try {
    // Full size up front: blocks never written stay holes, so zero regions cost no disk and no I/O.
    await fh.truncate(manifest.image.size);
    // The workers write whole blocks around the page cache: no copy into it, nothing left to write
    // back at the fsync. A filesystem without O_DIRECT (tmpfs) gets buffered writes instead.
    if (indexed) direct = await fs.open(paths.image, C.O_WRONLY | C.O_DIRECT).catch(() => undefined);
    let digest: string;
    let want: string;
    if (indexed) {
      const r = await fetchFrames({
        manifest,
        source,
        payloadKey,
        payloadUrl,
        etag: info.etag,
        fd: fh.fd,
        directFd: direct?.fd,
        pool,
        hasher,
        parallel: opts.parallel,
        requestBytes: opts.requestBytes || source.requestBytes,
        progress: opts.progress,
        signal: opts.signal,
        stagedBytes: (await fh.stat()).blocks * 512,
        started: opts.started,
        seeds: opts.seeds ?? [],
        seedCache: path.join(layout.stateDir, 'block-hashes'),
        // No fsync of the image here: a resumed run checks every frame it finds on disk against its
        // hash, so the progress file never has to be right, and a sync every second would stall the
        // writes under way (measured: 3.9 s → 3.1 s for 1 GiB). The one sync is at the end.
        persist: async (done, bytesDone) => {
          state.done = done;
          state.bytesDone = bytesDone;
          state.updatedAt = new Date().toISOString();
          await writeFileDurable(paths.progress, JSON.stringify(state), PRIVATE_FILE_MODE);
        },
      });
      result = r;
      [digest, want] = hasher ? [await hasher.digest(), manifest.image.sha256] : [r.framesSha256!, manifest.image.framesSha256!];
    } else {
      const ctx: PipelineContext = { ...opts, fd: fh.fd, pool, hasher: hasher!, state, checkpoint, payloadKey, payloadUrl, etag: info.etag };
      opts.started?.();
      result = await fetchStream(ctx);
      [digest, want] = [await hasher!.digest(), manifest.image.sha256];
    }
    if (digest !== want && result.localBytes > 0) {
      // Cannot happen when every frame was checked, but if it does, the local data is not trusted
      // again: start over from the network alone.
      reuseFailed = true;
    } else if (digest !== want) {
      await fs.rm(paths.progress, { force: true });
      throw new UpgradeError('CORRUPT', `image ${version} from ${payloadUrl} has SHA-256 ${digest}, the manifest says ${want}`, {
        hint: 'the payload does not match its signed manifest: do not use this release; re-publish it. The partial download was discarded.',
      });
    }
    await fh.sync();
  } catch (err) {
    throw asStagingError(err, paths.image, manifest);
  } finally {
    await hasher?.close();
    await direct?.close();
    await fh.close();
  }
  if (reuseFailed) {
    log.warn(`image ${version} put together from local images does not match its manifest; fetching it in full`);
    await fs.rm(paths.image, { force: true });
    await fs.rm(paths.progress, { force: true });
    return stageImage({ ...opts, seeds: [] });
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
  // Loaded here: only plain LZ4 streams decode on this thread (indexed payloads decode in the workers).
  const { Lz4StreamDecoder } = await import('./lz4.js');
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
  return { fetched: decoder.at.payloadOffset - firstOffset, requests: 1, reusedFrames: 0, holeFrames: 0, localBytes: 0 };
}
