import { randomBytes } from 'node:crypto';
import { isIPv4 } from 'node:net';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { writeFileDurable } from '../core/durable.js';
import { UpgradeError } from '../core/errors.js';
import { isVersion } from '../core/version.js';
import type { Manifest } from '../release/manifest.js';

/**
 * The flash job: what the RAM flasher may do at the next boot, written by `commit --reflash` in the
 * running, trusted system after it verified the release's signed manifest. The flasher has no ed25519:
 * it trusts this file because only root can have written it (root-owned, not group/world-writable,
 * checked by the flasher) and because it names the nonce GRUB passes on exactly the boot after it was
 * written (docs/flasher.md). Every byte it downloads is checked against the hashes copied here from the
 * verified manifest.
 *
 * A line format, not JSON: the flasher reads it with busybox `read`, and every value is checked
 * against a strict pattern on both sides, so nothing in it is ever evaluated.
 */

export const JOB_MAGIC = 'upgradectl-flash-job 1';
/**
 * The rescue job (docs/flasher.md, "Rescue"): the same lines without a nonce, for the flasher in rescue
 * mode, which puts the image of `version` back into /images instead of writing the partition.
 */
export const RESCUE_JOB_MAGIC = 'upgradectl-rescue-job 1';

export interface FlashJob {
  /** 32 hex digits, fresh per job; GRUB passes it as upgradectl.flasher=<nonce> (render.ts). Absent in a rescue job. */
  nonce?: string;
  version: string;
  /** http(s) URL of the payload (LZ4 frames). */
  url: string;
  payloadSize: number;
  payloadSha256: string;
  imageSize: number;
  imageSha256: string;
  /** Filesystem UUID of the host partition the flasher was booted from: the partition it overwrites. */
  targetUuid: string;
  /**
   * A whole-disk release (manifest `reflash: 'disk'`): the kernel name of the disk holding that host
   * partition (`vda`, `sda`, `nvme0n1`), which the flasher overwrites instead, after finding the same disk
   * from the partition it booted from. Absent: the partition is the target.
   */
  targetDisk?: string;
  /** RAM the flasher must have beyond the payload before it downloads (decoder, dd, page cache). */
  ramReserve: number;
  frames: Array<{ offset: number; length: number; rawLength: number; sha256: string }>;
  /** How the flasher brings its network up; DHCP when absent. */
  network?: FlasherNetwork;
  /**
   * What to keep: the machine's own files (identity, network, SSH host keys, accounts: the migration
   * whitelist), packed by commit --reflash into KEPT_FILES_NAME beside the job. The flasher checks them
   * against this size and hash, holds them in RAM while it writes and puts them on the new partition,
   * where the new system's upgradectl restores them before its network and SSH start. Absent: the new
   * system is the release as published.
   */
  keep?: { size: number; sha256: string };
}

/** The machine's files kept across a reflash, in the flasher directory (root-only, 0600). */
export const KEPT_FILES_NAME = 'machine-files.tar';
/** Written only by the flasher, beside the archive on the partition it flashed: its SHA-256 (flasher.sh, place_kept_files). */
export const KEPT_FILES_HASH = 'machine-files.sha256';

/**
 * The flasher's network: DHCP, or the machine's own static IPv4 set-up, copied from the running system
 * (or [flasher] address) so that a machine on a network without DHCP can still reach its releases.
 * `mac` picks the card (the flasher has no udev names: ens3 here may be eth0 there); undefined: the
 * first card.
 */
export type FlasherNetwork =
  | { mode: 'dhcp' }
  | { mode: 'static'; mac: string | undefined; address: string; prefix: number; gateway: string | undefined; dns: string[] };

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

export const isMac = (text: string): boolean => MAC_RE.test(text);

/** `192.0.2.10/24` → its address and prefix length; undefined when it is not IPv4 CIDR. */
export function parseCidr4(text: string): { address: string; prefix: number } | undefined {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(text);
  if (!m || !isIPv4(m[1]!) || Number(m[2]) < 1 || Number(m[2]) > 32) return undefined;
  return { address: m[1]!, prefix: Number(m[2]) };
}

/** Why a static network cannot be written into a job, undefined when it can. */
export function staticNetworkProblem(n: FlasherNetwork): string | undefined {
  if (n.mode === 'dhcp') return undefined;
  if (!isIPv4(n.address)) return `address '${n.address}' is not an IPv4 address`;
  if (!Number.isInteger(n.prefix) || n.prefix < 1 || n.prefix > 32) return `prefix length ${n.prefix} is not 1-32`;
  if (n.gateway !== undefined && !isIPv4(n.gateway)) return `gateway '${n.gateway}' is not an IPv4 address`;
  if (n.mac !== undefined && !isMac(n.mac)) return `'${n.mac}' is not a MAC address (aa:bb:cc:dd:ee:ff, lower case)`;
  const bad = n.dns.find((d) => !isIPv4(d));
  if (bad !== undefined) return `name server '${bad}' is not an IPv4 address`;
  return undefined;
}

/** `network dhcp`, or `network static MAC|any ADDRESS/PREFIX GATEWAY|none DNS,DNS|none` (flasher.sh check_job). */
function networkLine(n: FlasherNetwork): string {
  if (n.mode === 'dhcp') return 'network dhcp';
  return `network static ${n.mac ?? 'any'} ${n.address}/${n.prefix} ${n.gateway ?? 'none'} ${n.dns.length ? n.dns.join(',') : 'none'}`;
}

/** RAM beyond the payload: measured need of the flasher's userland, lz4 and dd, with room to spare. */
export const RAM_RESERVE = 48 * 1024 * 1024;

export function newNonce(): string {
  return randomBytes(16).toString('hex');
}

/** The job for a verified manifest; the payload is fetched from `url`. No nonce: a rescue job. */
export function jobFor(manifest: Manifest, url: string, targetUuid: string, nonce: string | undefined, extra: { network?: FlasherNetwork; targetDisk?: string; keep?: FlashJob['keep'] } = {}): FlashJob {
  const { network = { mode: 'dhcp' }, targetDisk, keep } = extra;
  const p = manifest.payload;
  if (p.compression !== 'lz4-frames' || !p.frames?.length) {
    throw new UpgradeError('UNSUPPORTED', `release ${manifest.version}: the flasher verifies every frame, but its payload is '${p.compression}' without a frame index`, {
      hint: `re-publish ${manifest.version} with upgradectl publish (it writes lz4-frames)`,
    });
  }
  return {
    ...(nonce === undefined ? {} : { nonce }),
    version: manifest.version,
    url,
    payloadSize: p.size,
    payloadSha256: p.sha256,
    imageSize: manifest.image.size,
    imageSha256: manifest.image.sha256,
    targetUuid,
    ...(targetDisk === undefined ? {} : { targetDisk }),
    ramReserve: RAM_RESERVE,
    frames: p.frames.map((f) => ({ offset: f.offset, length: f.length, rawLength: f.rawLength, sha256: f.sha256 })),
    network,
    ...(keep === undefined ? {} : { keep }),
  };
}

/** RAM the flasher needs, as it checks it: the payload, the reserve and the kept machine files. */
export function ramNeeded(job: Pick<FlashJob, 'payloadSize' | 'ramReserve' | 'keep'>): number {
  return job.payloadSize + job.ramReserve + (job.keep?.size ?? 0);
}

const HEX = (n: number) => new RegExp(`^[0-9a-f]{${n}}$`);
// What the flasher's check_job accepts: RFC 3986 characters, no quotes, spaces or backslashes.
const URL_RE = /^https?:\/\/[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]+$/;
const UUID_RE = /^[0-9A-Fa-f-]+$/;
/** A disk's kernel name, as /sys/class/block lists it (the flasher's check_job accepts the same). */
export const DISK_NAME_RE = /^[a-z][a-z0-9]{0,31}$/;

export function renderJob(job: FlashJob, kind: 'flash' | 'rescue' = 'flash'): string {
  const bad = (what: string) => {
    throw new UpgradeError('USAGE', `${kind} job: ${what}`);
  };
  const uint = (n: number) => Number.isSafeInteger(n) && n >= 0 && String(n).length <= 15;
  if (kind === 'flash' && !HEX(32).test(job.nonce ?? '')) bad('the nonce must be 32 hex digits');
  if (kind === 'rescue' && job.nonce !== undefined) bad('a rescue job has no nonce: it is valid for any boot that reaches rescue');
  if (!isVersion(job.version)) bad(`'${job.version}' is not a version`);
  if (!URL_RE.test(job.url) || job.url.includes("'")) bad(`the URL '${job.url}' must be http(s) with plain characters`);
  if (!UUID_RE.test(job.targetUuid)) bad(`'${job.targetUuid}' is not a filesystem UUID`);
  if (job.targetDisk !== undefined && kind === 'rescue') bad('a rescue job restores an image file; it never targets a disk');
  if (job.targetDisk !== undefined && !DISK_NAME_RE.test(job.targetDisk)) bad(`'${job.targetDisk}' is not a disk's kernel name (e.g. vda, sda, nvme0n1)`);
  if (![job.payloadSize, job.imageSize, job.ramReserve].every(uint)) bad('sizes must be whole numbers');
  if (job.keep !== undefined && kind === 'rescue') bad('a rescue job keeps nothing: there is no running system to take files from');
  if (job.keep !== undefined && (!uint(job.keep.size) || !HEX(64).test(job.keep.sha256))) bad('keep: a size and a SHA-256');
  if (!HEX(64).test(job.payloadSha256) || !HEX(64).test(job.imageSha256)) bad('hashes must be SHA-256 hex');
  const network = job.network ?? { mode: 'dhcp' };
  const netProblem = staticNetworkProblem(network);
  if (netProblem) bad(`network: ${netProblem}`);
  for (const f of job.frames) {
    if (![f.offset, f.length, f.rawLength].every(uint) || !HEX(64).test(f.sha256)) bad(`frame at ${f.offset} is malformed`);
  }
  return [
    kind === 'flash' ? JOB_MAGIC : RESCUE_JOB_MAGIC,
    ...(kind === 'flash' ? [`nonce ${job.nonce}`] : []),
    `version ${job.version}`,
    `url ${job.url}`,
    `payload_size ${job.payloadSize}`,
    `payload_sha256 ${job.payloadSha256}`,
    `image_size ${job.imageSize}`,
    `image_sha256 ${job.imageSha256}`,
    `target_uuid ${job.targetUuid}`,
    ...(job.targetDisk === undefined ? [] : [`target_disk ${job.targetDisk}`]),
    `ram_reserve ${job.ramReserve}`,
    networkLine(network),
    ...(job.keep === undefined ? [] : [`keep ${job.keep.size} ${job.keep.sha256}`]),
    `frames ${job.frames.length}`,
    ...job.frames.map((f) => `frame ${f.offset} ${f.length} ${f.rawLength} ${f.sha256}`),
    '',
  ].join('\n');
}

/** The job file in the flasher directory on the host partition. */
export function jobFile(flasherDir: string): string {
  return path.join(flasherDir, 'job');
}

/**
 * Root-only (0600) and durable: the flasher refuses a job anyone but root could have written. The
 * directory is made root-only-writable too, since whoever can write it can replace the file.
 */
export async function writeJob(flasherDir: string, job: FlashJob, file = jobFile(flasherDir), kind: 'flash' | 'rescue' = 'flash'): Promise<string> {
  const text = renderJob(job, kind);
  await fs.mkdir(flasherDir, { recursive: true, mode: 0o755 });
  await fs.chmod(flasherDir, 0o755);
  await writeFileDurable(file, text, 0o600);
  return file;
}
