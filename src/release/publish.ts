import { createHash, type KeyObject } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { UpgradeError, isUpgradeError } from '../core/errors.js';
import { log } from '../core/log.js';
import { FramePool } from './frame-pool.js';
import { allocatedBytes } from './holes.js';
import { FRAME_MAGIC, Lz4StreamDecoder, MAX_BLOCK } from './lz4.js';
import { assertVersion } from '../core/version.js';
import { CHANNEL_FORMAT, MANIFEST_FORMAT, type BootData, type Channel, type Frame, type Manifest } from './manifest.js';
import { releaseKeys, channelKey } from './layout.js';
import { signBytes } from './signing.js';
import { openSource, openTarget } from './sources/index.js';
import type { SourceOptions, Target } from './sources/source.js';
import type { Progress } from './progress.js';

export interface PublishOptions {
  image: string;
  version: string;
  to: string;
  key: KeyObject;
  channel?: string;
  /** Percentage of machines the channel offers this release to. */
  rollout: number;
  boot: BootData;
  reflash: boolean;
  /** Days until machines refuse this release (and the channel pointer). */
  expiresInDays: number;
  frameSize: number;
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
  assertVersion(opts.version);
  if (opts.frameSize <= 0 || opts.frameSize > MAX_BLOCK || opts.frameSize % 4096 !== 0) {
    throw new UpgradeError('USAGE', `frame size ${opts.frameSize} is not valid`, { hint: `use a multiple of 4096 up to ${MAX_BLOCK}` });
  }
  const keys = releaseKeys(opts.version);
  await refuseExistingRelease(opts, keys.manifest);

  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'upgradectl-publish-'));
  const target = openTarget(opts.to, opts.sourceOptions);
  try {
    const input = await openInput(opts.image);
    const payloadFile = path.join(work, 'image.lz4');
    const built = input.lz4
      ? await indexLz4Payload(opts.image, opts.progress)
      : await compressImage(opts.image, payloadFile, opts.frameSize, opts.progress);
    const payloadPath = input.lz4 ? opts.image : payloadFile;

    const now = new Date();
    const manifest: Manifest = {
      format: MANIFEST_FORMAT,
      version: opts.version,
      created: now.toISOString(),
      expires: new Date(now.getTime() + opts.expiresInDays * 86_400_000).toISOString(),
      image: { size: built.imageSize, sha256: built.imageSha256, allocated: built.allocated },
      payload: {
        path: 'image.lz4',
        size: built.payloadSize,
        sha256: built.payloadSha256,
        compression: input.lz4 ? 'lz4' : 'lz4-frames',
        ...(input.lz4 ? {} : { frameSize: opts.frameSize, frames: built.frames }),
      },
      boot: opts.boot,
      reflash: opts.reflash,
    };
    const manifestBytes = Buffer.from(`${JSON.stringify(manifest, null, 1)}\n`);

    log.info(`uploading ${opts.version} to ${target.url}`);
    await target.putFile(keys.payload, payloadPath);
    // The signature goes up before the manifest: a reader who finds the manifest finds its signature.
    await target.putBytes(`${keys.manifest}.sig`, signBytes(manifestBytes, opts.key));
    await target.putBytes(keys.manifest, manifestBytes);

    let channel: Channel | undefined;
    if (opts.channel) channel = await publishChannel(target, opts, manifest, keys.manifest);
    return { version: opts.version, url: target.url, manifest, channel, seconds: (Date.now() - started) / 1000 };
  } finally {
    await target.close();
    await fs.rm(work, { recursive: true, force: true });
  }
}

async function publishChannel(target: Target, opts: PublishOptions, manifest: Manifest, manifestKey: string): Promise<Channel> {
  const channel: Channel = {
    format: CHANNEL_FORMAT,
    channel: opts.channel!,
    version: manifest.version,
    manifest: manifestKey,
    published: manifest.created,
    expires: manifest.expires,
    rollout: { percent: opts.rollout },
  };
  const bytes = Buffer.from(`${JSON.stringify(channel, null, 1)}\n`);
  const key = channelKey(opts.channel!);
  await target.putBytes(`${key}.sig`, signBytes(bytes, opts.key));
  await target.putBytes(key, bytes);
  return channel;
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

async function openInput(file: string): Promise<{ lz4: boolean }> {
  let fh;
  try {
    fh = await fs.open(file, 'r');
  } catch (err) {
    throw new UpgradeError('USAGE', `cannot open image ${file}: ${(err as Error).message}`, { cause: err, hint: 'pass an ext4 image file or a block device' });
  }
  try {
    const head = Buffer.alloc(4);
    const { bytesRead } = await fh.read(head, 0, 4, 0);
    if (bytesRead === 0) throw new UpgradeError('USAGE', `image ${file} is empty`, { hint: 'build one with upgradectl image build' });
    return { lz4: bytesRead === 4 && head.readUInt32LE(0) === FRAME_MAGIC };
  } finally {
    await fh.close();
  }
}

interface Built {
  imageSize: number;
  imageSha256: string;
  allocated: number;
  payloadSize: number;
  payloadSha256: string;
  frames: Frame[];
}

/** Compress `frameSize` slices on every core; frames are written in image order. */
async function compressImage(image: string, payloadFile: string, frameSize: number, progress?: Progress): Promise<Built> {
  const pool = new FramePool();
  const input = await fs.open(image, 'r');
  const output = await fs.open(payloadFile, 'w', 0o644);
  const imageHash = createHash('sha256');
  const payloadHash = createHash('sha256');
  const frames: Frame[] = [];
  let payloadSize = 0;
  let imageSize = 0;
  let allocated = 0;
  const inFlight: Array<Promise<{ frame: Uint8Array; sha256: string; allocated: number; rawLength: number }>> = [];
  const window = pool.size * 2;

  const drainOne = async () => {
    const done = await inFlight.shift()!;
    const frame = Buffer.from(done.frame.buffer, done.frame.byteOffset, done.frame.byteLength);
    await output.write(frame, 0, frame.length, payloadSize);
    payloadHash.update(frame);
    frames.push({ offset: payloadSize, length: frame.length, rawLength: done.rawLength, sha256: done.sha256 });
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
        pool.run({ op: 'compress', raw: slice }, [raw.buffer as ArrayBuffer]).then((r) => ({ ...r, rawLength: filled })),
      );
      if (inFlight.length >= window) await drainOne();
      if (filled < frameSize) break;
    }
    while (inFlight.length) await drainOne();
    await output.sync();
  } finally {
    await Promise.allSettled(inFlight);
    await input.close();
    await output.close();
    await pool.close();
  }
  if (imageSize === 0) throw new UpgradeError('USAGE', `image ${image} is empty`, { hint: 'build one with upgradectl image build' });
  return { imageSize, imageSha256: imageHash.digest('hex'), allocated, payloadSize, payloadSha256: payloadHash.digest('hex'), frames };
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
