import { createHash, createPublicKey, verify, type KeyObject } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { UpgradeError, isUpgradeError } from '../core/errors.js';
import { log } from '../core/log.js';
import { FramePool } from './frame-pool.js';
import { allocatedBytes } from './holes.js';
import { framesRoot } from './frames-root.js';
import { encodeIndex, encodeZstdIndex } from './release-index.js';
import { Lz4StreamDecoder } from './lz4.js';
import { assertVersion, compareVersions } from '../core/version.js';
import { CHANNEL_FORMAT, MANIFEST_FORMAT, type BootData, type Channel, type Frame, type Manifest, type ZstdBlocksRef } from './manifest.js';
import { releaseKeys, channelKey } from './layout.js';
import { keyIdOf, normalKeyId, signBytes } from './signing.js';
import { checkPublishArgs } from './publish-check.js';
import { openSource, openTarget } from './sources/index.js';
import { objectUrl, type SourceOptions, type Target } from './sources/source.js';
import type { Progress } from './progress.js';

export interface PublishOptions {
  image: string;
  version: string;
  to: string;
  key: KeyObject;
  channel?: string;
  /** Percentage of machines the channel offers this release to. */
  rollout: number;
  /** Channel only: the rollout is paused (no machine starts taking the release). */
  paused?: boolean;
  boot: BootData;
  /** A host partition (true) or a whole disk ('disk') for the RAM flasher (Manifest.reflash). */
  reflash: boolean | 'disk';
  /** Days until machines refuse this release (and the channel pointer). */
  expiresInDays: number;
  /** Channel only: the version floor machines must keep to (carried forward while the same key signs). */
  minVersion?: string;
  /** Channel only: key ids machines must stop trusting (added to those of the previous channel). */
  revokeKeys?: string[];
  frameSize: number;
  /** Image bytes per independent LZ4 block inside a frame: the unit a delta prepare fetches. */
  chunkSize?: number;
  sourceOptions?: SourceOptions;
  progress?: Progress;
}

export interface PublishResult {
  version: string;
  url: string;
  manifest: Manifest;
  channel?: Channel;
  seconds: number;
}

/**
 * Turn an image (file or block device) into a release: payload first, then its signed manifest,
 * then the signed channel pointer, so that a machine never sees a pointer to something incomplete.
 * An input that already is an LZ4 stream (`lz4 image.img`, s3-flash-bootloader's format) is
 * published as it is, decoded once to index the image it holds.
 */
export async function publishRelease(opts: PublishOptions): Promise<PublishResult> {
  const started = Date.now();
  // Every argument and the image itself first: nothing may fail after the payload is uploaded.
  const input = await checkPublishArgs({ ...opts, revokeKeys: opts.revokeKeys ?? [], signingKeyId: keyIdOf(opts.key) });
  const keys = releaseKeys(opts.version);
  const chunkSize = opts.chunkSize ?? Math.min(DEFAULT_CHUNK, opts.frameSize);
  await refuseExistingRelease(opts, keys.manifest);
  const previous = opts.channel ? await previousChannel(opts, opts.channel) : undefined;

  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'upgradectl-publish-'));
  const target = openTarget(opts.to, opts.sourceOptions);
  try {
    const payloadFile = path.join(work, 'image.lz4');
    const built = input.lz4
      ? await indexLz4Payload(opts.image, opts.progress)
      : await compressImage(opts.image, payloadFile, opts.frameSize, chunkSize, opts.progress);
    const payloadPath = input.lz4 ? opts.image : payloadFile;
    const index = built.index && { path: 'image.idx', size: built.index.length, sha256: createHash('sha256').update(built.index).digest('hex'), blockSize: 4096 };
    const zstdBlocks: ZstdBlocksRef | undefined = built.zstd && {
      path: 'image.zst',
      size: built.zstd.size,
      sha256: built.zstd.sha256,
      chunkSize: built.zstd.chunkSize,
      index: { path: 'image.zidx', size: built.zstd.index.length, sha256: createHash('sha256').update(built.zstd.index).digest('hex') },
    };

    const now = new Date();
    const manifest: Manifest = {
      format: MANIFEST_FORMAT,
      version: opts.version,
      created: now.toISOString(),
      expires: new Date(now.getTime() + opts.expiresInDays * 86_400_000).toISOString(),
      image: { size: built.imageSize, sha256: built.imageSha256, allocated: built.allocated, ...(input.lz4 ? {} : { framesSha256: framesRoot(built.frames.map((f) => f.sha256)) }) },
      payload: {
        path: 'image.lz4',
        size: built.payloadSize,
        sha256: built.payloadSha256,
        compression: input.lz4 ? 'lz4' : 'lz4-frames',
        ...(input.lz4 ? {} : { frameSize: opts.frameSize, frames: built.frames, chunkSize, index, ...(zstdBlocks ? { zstdBlocks } : {}) }),
      },
      boot: opts.boot,
      reflash: opts.reflash,
    };
    const manifestBytes = Buffer.from(`${JSON.stringify(manifest, null, 1)}\n`);

    log.info(`uploading ${opts.version} to ${target.url}`);
    await target.putFile(keys.payload, payloadPath);
    if (built.zstd && zstdBlocks) {
      await target.putFile(`${keys.dir}/${zstdBlocks.path}`, built.zstd.file);
      await target.putBytes(`${keys.dir}/${zstdBlocks.index.path}`, built.zstd.index);
    }
    if (built.index && index) await target.putBytes(`${keys.dir}/${index.path}`, built.index);
    // The signature goes up before the manifest: a reader who finds the manifest finds its signature.
    await target.putBytes(`${keys.manifest}.sig`, signBytes(manifestBytes, opts.key));
    await target.putBytes(keys.manifest, manifestBytes);

    let channel: Channel | undefined;
    if (opts.channel) channel = await publishChannel(target, opts, opts.channel, manifest, keys.manifest, previous);
    return { version: opts.version, url: target.url, manifest, channel, seconds: (Date.now() - started) / 1000 };
  } finally {
    await target.close();
    await fs.rm(work, { recursive: true, force: true });
  }
}

type ChannelOptions = Pick<PublishOptions, 'rollout' | 'paused' | 'minVersion' | 'revokeKeys' | 'key'>;

async function publishChannel(target: Target, opts: ChannelOptions, name: string, manifest: Manifest, manifestKey: string, previous: Channel | undefined, now = new Date(manifest.created)): Promise<Channel> {
  const channel: Channel = {
    format: CHANNEL_FORMAT,
    channel: name,
    version: manifest.version,
    manifest: manifestKey,
    published: nextPublished(previous, now),
    expires: manifest.expires,
    rollout: opts.paused ? { percent: opts.rollout, paused: true } : { percent: opts.rollout },
  };
  // A floor is only raised and a revocation never lifted, so a machine that missed a channel still learns them.
  const floors = [previous?.minVersion, opts.minVersion].filter((v): v is string => Boolean(v)).sort(compareVersions);
  if (floors.length) channel.minVersion = floors.at(-1);
  const revoked = [...new Set([...(previous?.revokedKeys ?? []), ...(opts.revokeKeys ?? []).map((id) => normalKeyId(id)!)])].sort();
  if (revoked.length) channel.revokedKeys = revoked;
  const bytes = Buffer.from(`${JSON.stringify(channel, null, 1)}\n`);
  const key = channelKey(name);
  await target.putBytes(`${key}.sig`, signBytes(bytes, opts.key));
  await target.putBytes(key, bytes);
  return channel;
}

/**
 * `published` must increase with every pointer of a channel: machines refuse an older one as a replay.
 * A publisher whose clock is behind the last pointer's time steps 1 ms past it instead of going back.
 */
function nextPublished(previous: Channel | undefined, now: Date): string {
  const last = previous ? Date.parse(previous.published) : NaN;
  return new Date(Number.isNaN(last) || now.getTime() > last ? now.getTime() : last + 1).toISOString();
}

/**
 * The channel's current pointer, if it is there and signed by this same key: only then are its time,
 * floor and revocations carried forward (an unsigned or foreign file there is an attacker's, or a
 * previous key's, and must not be signed over by this one).
 */
async function previousChannel(opts: Pick<PublishOptions, 'to' | 'key' | 'sourceOptions'>, name: string): Promise<Channel | undefined> {
  const source = openSource(opts.to, { ...opts.sourceOptions, retry: { retries: 1, ...opts.sourceOptions?.retry } });
  const key = channelKey(name);
  try {
    let bytes: Buffer;
    let sig: Buffer;
    try {
      [bytes, sig] = await Promise.all([source.get(key), source.get(`${key}.sig`)]);
    } catch (err) {
      if (isUpgradeError(err, 'NOT_FOUND')) return undefined;
      throw err;
    }
    if (!signedByKey(bytes, sig, opts.key)) {
      log.warn(`${objectUrl(source, key)} is not signed by this key: its floor and revoked keys are not carried forward`);
      return undefined;
    }
    const previous = JSON.parse(bytes.toString('utf8')) as Channel;
    return previous.format === CHANNEL_FORMAT && previous.channel === name ? previous : undefined;
  } finally {
    await source.close();
  }
}

function signedByKey(bytes: Buffer, sigFile: Buffer, key: KeyObject): boolean {
  try {
    const sig = JSON.parse(sigFile.toString('utf8')) as { sig?: unknown };
    return typeof sig.sig === 'string' && verify(null, bytes, createPublicKey(key), Buffer.from(sig.sig, 'base64'));
  } catch {
    return false;
  }
}

/** Releases are immutable: machines may hold half a download of the old bytes under this version. */
async function refuseExistingRelease(opts: PublishOptions, manifestKey: string): Promise<void> {
  const source = openSource(opts.to, { ...opts.sourceOptions, retry: { retries: 1, ...opts.sourceOptions?.retry } });
  try {
    await source.head(manifestKey);
  } catch (err) {
    if (isUpgradeError(err, 'NOT_FOUND')) return;
    throw err;
  } finally {
    await source.close();
  }
  throw new UpgradeError('USAGE', `release ${opts.version} already exists at ${opts.to}`, {
    hint: 'releases are immutable: publish under a new version number',
  });
}

interface Built {
  imageSize: number;
  imageSha256: string;
  allocated: number;
  payloadSize: number;
  payloadSha256: string;
  frames: Frame[];
  index?: Buffer;
  zstd?: { file: string; size: number; sha256: string; chunkSize: number; index: Buffer };
}

/**
 * zstd level of the delta side file, which is made once and fetched by every machine's delta. On real
 * files in 64 KiB blocks (docs/release-format.md): level 3 → 28.9 MiB per 64 MiB at 300 MB/s, 9 → 27.9
 * at 75 MB/s, 15 → 27.1 at 17 MB/s per core. 15 costs ~25 s per GiB of publishing on two cores and
 * saves 6 % of every delta.
 */
const ZSTD_LEVEL = 15;

/**
 * 64 KiB: the unit a delta prepare fetches. Measured on real files (docs/release-format.md): LZ4 in
 * independent 64 KiB blocks is 1.6 % larger than in 4 MiB ones, while a changed file then costs at
 * most 64 KiB of neighbours at each end instead of whole 4 MiB frames.
 */
export const DEFAULT_CHUNK = 64 << 10;

/**
 * Image bytes per zstd frame of the delta side file. Finer than the LZ4 blocks because a delta fetches
 * whole units around each changed 4 KiB block: on the benchmark's package-upgrade pair the blocks a
 * delta needs cost 37.2 MiB in 64 KiB units, 28.1 in 32 KiB, 21.6 in 16 KiB, 18.6 in 8 KiB, while the
 * whole side file grows 292 → 298 → 304 → 316 MiB (docs/release-format.md). The LZ4 payload keeps
 * 64 KiB blocks: it is the full download, where small blocks cost ratio.
 */
export const ZSTD_CHUNK = 16 << 10;

/** Compress `frameSize` slices on every core; frames are written in image order. */
async function compressImage(image: string, payloadFile: string, frameSize: number, chunkSize: number, progress?: Progress): Promise<Built> {
  const pool = new FramePool();
  const input = await fs.open(image, 'r');
  const output = await fs.open(payloadFile, 'w', 0o644);
  const zstdFile = `${payloadFile}.zst`;
  // Units that tile every frame: a frame size of 20 KiB (chunk 20 KiB) takes 4 KiB units, not 16.
  const zstdChunkSize = gcd(ZSTD_CHUNK, chunkSize);
  const zstdOut = await fs.open(zstdFile, 'w', 0o644);
  const zstdHash = createHash('sha256');
  let zstdSize = 0;
  const zstdLengths: number[][] = [];
  const imageHash = createHash('sha256');
  const payloadHash = createHash('sha256');
  const frames: Frame[] = [];
  let payloadSize = 0;
  let imageSize = 0;
  let allocated = 0;
  const chunkLengths: number[][] = [];
  const blockHashes: Buffer[] = [];
  const inFlight: Array<Promise<{ frame: Uint8Array; sha256: string; payloadSha256: string; allocated: number; rawLength: number; chunks?: number[]; blockHashes?: Uint8Array; zstd?: Uint8Array; zstdLengths?: number[] }>> = [];
  const window = pool.size * 2;

  const drainOne = async () => {
    const done = await inFlight.shift()!;
    const frame = Buffer.from(done.frame.buffer, done.frame.byteOffset, done.frame.byteLength);
    await output.write(frame, 0, frame.length, payloadSize);
    payloadHash.update(frame);
    frames.push({ offset: payloadSize, length: frame.length, rawLength: done.rawLength, sha256: done.sha256, payloadSha256: done.payloadSha256 });
    chunkLengths.push(done.chunks!);
    blockHashes.push(Buffer.from(done.blockHashes!));
    const zstd = Buffer.from(done.zstd!.buffer, done.zstd!.byteOffset, done.zstd!.byteLength);
    await zstdOut.write(zstd, 0, zstd.length, zstdSize);
    zstdHash.update(zstd);
    zstdSize += zstd.length;
    zstdLengths.push(done.zstdLengths!);
    payloadSize += frame.length;
    allocated += done.allocated;
    progress?.advance(done.rawLength);
  };

  try {
    for (;;) {
      // A fresh buffer per slice: it is handed over (transferred) to a worker.
      const raw = Buffer.allocUnsafeSlow(frameSize);
      let filled = 0;
      while (filled < frameSize) {
        const { bytesRead } = await input.read(raw, filled, frameSize - filled, imageSize + filled);
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
      if (filled === 0) break;
      const slice = raw.subarray(0, filled);
      imageHash.update(slice);
      imageSize += filled;
      inFlight.push(
        pool.run({ op: 'compress', raw: slice, chunkSize, zstdLevel: ZSTD_LEVEL, zstdChunkSize }, [raw.buffer as ArrayBuffer]).then((r) => ({ ...r, rawLength: filled })),
      );
      if (inFlight.length >= window) await drainOne();
      if (filled < frameSize) break;
    }
    while (inFlight.length) await drainOne();
    await output.sync();
    await zstdOut.sync();
  } finally {
    await Promise.allSettled(inFlight);
    await input.close();
    await output.close();
    await zstdOut.close();
    await pool.close();
  }
  if (imageSize === 0) throw new UpgradeError('USAGE', `image ${image} is empty`, { hint: 'build one with upgradectl image build' });
  // The zstd lengths go to their own file: image.idx keeps the layout of releases without zstdBlocks.
  const index = encodeIndex(chunkLengths, undefined, blockHashes);
  const zstd = { file: zstdFile, size: zstdSize, sha256: zstdHash.digest('hex'), chunkSize: zstdChunkSize, index: encodeZstdIndex(zstdLengths) };
  return { imageSize, imageSha256: imageHash.digest('hex'), allocated, payloadSize, payloadSha256: payloadHash.digest('hex'), frames, index, zstd };
}

/** A ready LZ4 stream: decode it once to learn the image's size, hash and allocation. */
async function indexLz4Payload(file: string, progress?: Progress): Promise<Built> {
  const imageHash = createHash('sha256');
  const payloadHash = createHash('sha256');
  const decoder = new Lz4StreamDecoder();
  let payloadSize = 0;
  let allocated = 0;
  const fh = await fs.open(file, 'r');
  try {
    for await (const chunk of fh.createReadStream({ highWaterMark: 4 << 20 }) as AsyncIterable<Buffer>) {
      payloadHash.update(chunk);
      payloadSize += chunk.length;
      for (const { data } of decoder.push(Buffer.from(chunk))) {
        imageHash.update(data);
        allocated += allocatedBytes(data);
        progress?.advance(data.length);
      }
    }
    decoder.finish();
  } catch (err) {
    if (err instanceof UpgradeError) throw err;
    throw new UpgradeError('CORRUPT', `${file} is not a valid LZ4 stream: ${(err as Error).message}`, { cause: err, hint: 'recompress the image with lz4, or publish the raw image' });
  } finally {
    await fh.close();
  }
  return { imageSize: decoder.at.rawOffset, imageSha256: imageHash.digest('hex'), allocated, payloadSize, payloadSha256: payloadHash.digest('hex'), frames: [] };
}

export interface PointChannelOptions {
  to: string;
  key: KeyObject;
  channel: string;
  version: string;
  rollout: number;
  paused: boolean;
  minVersion?: string;
  revokeKeys?: string[];
  sourceOptions?: SourceOptions;
}

/**
 * `upgradectl channel set`: point a channel at a release already published — widen or narrow its
 * rollout, pause or resume it, or go back to an earlier release — without publishing anything new.
 * The release must be there and signed by this same key: a channel never vouches for bytes its key
 * did not sign.
 */
export async function pointChannel(opts: PointChannelOptions): Promise<Channel> {
  assertVersion(opts.version);
  channelKey(opts.channel);
  const keys = releaseKeys(opts.version);
  const source = openSource(opts.to, { ...opts.sourceOptions, retry: { retries: 1, ...opts.sourceOptions?.retry } });
  let manifest: Manifest;
  try {
    let bytes: Buffer;
    let sig: Buffer;
    try {
      [bytes, sig] = await Promise.all([source.get(keys.manifest), source.get(`${keys.manifest}.sig`)]);
    } catch (err) {
      if (isUpgradeError(err, 'NOT_FOUND')) {
        throw new UpgradeError('NOT_FOUND', `release ${opts.version} is not published at ${opts.to}`, { cause: err, hint: 'publish it first (upgradectl publish IMAGE --version V --to URL --key KEY)' });
      }
      throw err;
    }
    if (!signedByKey(bytes, sig, opts.key)) {
      throw new UpgradeError('SIGNATURE', `${objectUrl(source, keys.manifest)} is not signed by this key`, { hint: 'point the channel with the key that signed the release' });
    }
    manifest = JSON.parse(bytes.toString('utf8')) as Manifest;
  } finally {
    await source.close();
  }
  const previous = await previousChannel(opts, opts.channel);
  const target = openTarget(opts.to, opts.sourceOptions);
  try {
    return await publishChannel(target, opts, opts.channel, manifest, keys.manifest, previous, new Date());
  } finally {
    await target.close();
  }
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}
