import { UpgradeError } from '../core/errors.js';

/**
 * The release format (docs/release-format.md is the normative text). A release is
 *   <prefix>/releases/<version>/manifest.json (+ .sig)   what this file describes
 *   <prefix>/releases/<version>/image.lz4                the payload
 *   <prefix>/channels/<channel>.json (+ .sig)            a pointer to the newest release
 */
export const MANIFEST_FORMAT = 'upgradectl-release/1';
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
}

export interface BootData {
  /** Paths inside the image. */
  kernel: string;
  initrd: string;
  /** Extra kernel arguments this release needs. */
  cmdline: string;
}

export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  version: string;
  created: string;
  expires?: string;
  image: {
    size: number;
    sha256: string;
    /** Bytes that are not zero blocks: what the sparse file takes on disk, for the space check. */
    allocated: number;
  };
  payload: Payload;
  boot: BootData;
  /** This release must rewrite the root device (RAM flasher) instead of adding an image file. */
  reflash: boolean;
}

export interface Channel {
  format: typeof CHANNEL_FORMAT;
  channel: string;
  version: string;
  /** Path of the manifest relative to the source prefix. */
  manifest: string;
  published: string;
  expires?: string;
  /** Staged rollout: a machine takes this release when its bucket (0–99) is below percent. */
  rollout: { percent: number };
}

const VERSION_RE = /^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$/;

/** Versions name files and GRUB entry ids: a conservative alphabet, no path or quoting tricks. */
export function assertVersion(version: string, what = 'version'): string {
  if (!VERSION_RE.test(version)) {
    throw new UpgradeError('USAGE', `${what} '${version}' is not a valid version`, {
      hint: 'use letters, digits and . _ + ~ - (at most 64, starting with a letter or digit), e.g. 2026.11.1',
    });
  }
  return version;
}

/**
 * Natural order: digit runs compare as numbers, the rest as text, so 1.10 > 1.9 and 2026.11.2 > 2026.9.30.
 * A version with a `~` part sorts before the same version without it (1.0~rc1 < 1.0), as in Debian.
 */
export function compareVersions(a: string, b: string): number {
  const [aMain, aPre] = splitTilde(a);
  const [bMain, bPre] = splitTilde(b);
  const c = compareNatural(aMain, bMain);
  if (c !== 0) return c;
  if (aPre === bPre) return 0;
  if (aPre === undefined) return 1;
  if (bPre === undefined) return -1;
  return compareNatural(aPre, bPre);
}

function splitTilde(v: string): [string, string | undefined] {
  const i = v.indexOf('~');
  return i < 0 ? [v, undefined] : [v.slice(0, i), v.slice(i + 1)];
}

function compareNatural(a: string, b: string): number {
  const pa = a.match(/\d+|\D+/g) ?? [];
  const pb = b.match(/\d+|\D+/g) ?? [];
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i];
    const y = pb[i];
    if (x === undefined) return -1;
    if (y === undefined) return 1;
    const nx = /^\d/.test(x);
    const ny = /^\d/.test(y);
    if (nx && ny) {
      const d = BigInt(x) - BigInt(y);
      if (d !== 0n) return d < 0n ? -1 : 1;
    } else if (x !== y) {
      if (nx !== ny) return nx ? 1 : -1;
      return x < y ? -1 : 1;
    }
  }
  return 0;
}
