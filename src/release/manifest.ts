
/**
 * The release format (docs/release-format.md is the normative text). A release is
 *   <prefix>/releases/<version>/manifest.json (+ .sig)   what this file describes
 *   <prefix>/releases/<version>/image.lz4                the payload
 *   <prefix>/channels/<channel>.json (+ .sig)            a pointer to the newest release
 */
export const MANIFEST_FORMAT = 'upgradectl-release/2';
/** Formats a machine prepares: /1 (no hash list root, no index) is still accepted, and /2 is what publish writes. */
export const MANIFEST_FORMATS = ['upgradectl-release/1', MANIFEST_FORMAT] as const;
export const CHANNEL_FORMAT = 'upgradectl-channel/1';

/** One LZ4 frame of the payload: a fixed-size slice of the image (the last may be shorter). */
export interface Frame {
  /** Byte offset of the frame in the payload object. */
  offset: number;
  /** Length of the frame in the payload (header, blocks, end mark). */
  length: number;
  /** Length of the image bytes it decodes to; the frame's image offset is its index × frameSize. */
  rawLength: number;
  /** SHA-256 of the image bytes it decodes to: verified per frame, and the key for delta reuse. */
  sha256: string;
  /**
   * /2, optional (publish writes it): SHA-256 of the frame's bytes as stored in the payload. A machine
   * that downloads the frame checks these instead of `sha256`, before decoding: the decoder sees only
   * signed bytes, and half as many bytes are hashed (docs/release-format.md).
   */
  payloadSha256?: string;
}

export interface Payload {
  path: string;
  size: number;
  sha256: string;
  /**
   * `lz4-frames`: concatenated independent LZ4 frames, one per `frameSize` bytes of image, indexed.
   * `lz4`: any standard LZ4 frame stream (e.g. `lz4 image.img`), decoded sequentially; no index.
   */
  compression: 'lz4-frames' | 'lz4';
  frameSize?: number;
  frames?: Frame[];
  /**
   * /2, lz4-frames only: each frame is made of independent LZ4 blocks of `chunkSize` image bytes (the
   * last of a frame may be shorter), so that one block can be fetched and decoded alone.
   */
  chunkSize?: number;
  /** /2, lz4-frames only: the block index (release-index.ts) a machine uses to reuse local data. */
  index?: IndexRef;
  /**
   * /2, optional, releases published before zstdBlocks: the same `chunkSize` blocks each as a zstd
   * frame (zstd-chunks.ts), their lengths in `index`. Still read; no longer published.
   */
  zstdChunks?: ObjectRef;
  /**
   * /2, optional: every `chunkSize` bytes of the image as its own zstd frame (zstd-chunks.ts), in
   * image order, what a delta fetches; finer than the LZ4 blocks, so a changed 4 KiB block costs
   * fewer neighbours. The frames' lengths are in a file of their own (`index`, release-index.ts),
   * so `payload.index` keeps the layout machines that predate this field read.
   */
  zstdBlocks?: ZstdBlocksRef;
}

export interface ZstdBlocksRef extends ObjectRef {
  /** Image bytes per zstd frame: a multiple of 4096 dividing `frameSize`. */
  chunkSize: number;
  /** `UPGZIDX\n` and a 4-byte length (LE) per zstd frame, frame by frame (release-index.ts). */
  index: ObjectRef;
}

/** A side file of a release, bound to the signed manifest by its size and SHA-256. */
export interface ObjectRef {
  path: string;
  size: number;
  sha256: string;
}

export interface IndexRef extends ObjectRef {
  /** Bytes of image each block hash covers (4096: the ext4 block, the grain at which files move). */
  blockSize: number;
}

export interface BootData {
  /** Paths inside the image. */
  kernel: string;
  initrd: string;
  /** Extra kernel arguments this release needs. */
  cmdline: string;
}

export interface Manifest {
  format: (typeof MANIFEST_FORMATS)[number];
  version: string;
  created: string;
  expires?: string;
  image: {
    size: number;
    sha256: string;
    /** Bytes that are not zero blocks: what the sparse file takes on disk, for the space check. */
    allocated: number;
    /**
     * /2: SHA-256 over the concatenated 32-byte SHA-256s of the frames, in order. The frames tile the
     * image, so a machine that verified every frame against its hash as it wrote it checks the whole
     * image with this, without hashing it a second time.
     */
    framesSha256?: string;
  };
  payload: Payload;
  boot: BootData;
  /**
   * This release must be written by the RAM flasher instead of added as an image file: `true`, its
   * payload is a whole host partition; `'disk'`, a whole disk (partition table, GRUB's boot code and
   * core.img, partitions). A string, not a second boolean, so that a machine that predates whole-disk
   * releases refuses one ('true or false') instead of writing a disk image onto a partition.
   */
  reflash: boolean | 'disk';
}

export interface Channel {
  format: typeof CHANNEL_FORMAT;
  channel: string;
  version: string;
  /** Path of the manifest relative to the source prefix. */
  manifest: string;
  /**
   * When the publisher wrote this pointer; strictly increasing per channel (publish makes sure), so a
   * machine that saw a newer one refuses an older one replayed to it (src/operations/offer.ts).
   */
  published: string;
  expires?: string;
  /**
   * Staged rollout: a machine takes this release when its bucket (0–99) is below percent. `paused`:
   * no machine starts taking it (those that have it keep it) until the publisher resumes the rollout.
   */
  rollout: { percent: number; paused?: boolean };
  /** Optional floor: machines that saw it refuse releases older than this (raised only, never lowered). */
  minVersion?: string;
  /** Optional key ids (16 hex) that machines must never trust again, remembered once seen. */
  revokedKeys?: string[];
}
