import { promises as fs } from 'node:fs';
import path from 'node:path';
import { UpgradeError, errnoOf, messageOf } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { acquireLock } from '../core/lock.js';
import { log } from '../core/log.js';
import { jobFor, newNonce, ramNeeded, writeJob, type FlashJob } from '../flasher/job.js';
import { diskOfHostPartition } from '../flasher/target-disk.js';
import { checkpointHost, detectHostUuid } from '../grub/host-fs.js';
import { FLASHER_ENTRY_ID, FLASHER_NONCE_VAR } from '../grub/render.js';
import type { ResolvedRelease } from '../release/resolve.js';
import type { Source } from '../release/sources/source.js';
import { armOneShot, writeBootFiles } from './boot.js';
import type { Config } from './config.js';
import { checkChannel, fetchRelease, type OfferPolicy } from './offer.js';
import { openConfiguredSource } from './prepare.js';
import { FLASH_URL_SECONDS, flashPayloadUrl } from './flasher-url.js';
import { flasherNetwork } from './flasher-network.js';
import { rebootMachine } from './reboot.js';
import { flasherInstalled } from '../grub/boot-files.js';
import { reconcile } from './reconcile/index.js';
import { loadState } from './state.js';
import { packKeptFiles, type PackedFiles } from './kept-files.js';

/**
 * `commit --reflash [VERSION]`: rewrite the host partition from RAM (DESIGN.md §8, docs/flasher.md).
 * Here, in the running and trusted system: the release's signed manifest verified with keys.d (as
 * prepare does), the flasher's needs checked, the job written root-only, GRUB armed to boot the
 * flasher once with the job's nonce. The flasher does the rest after the reboot.
 */
export interface ReflashOptions {
  /** Default: the channel's newest release for this machine. */
  version?: string;
  reboot: boolean;
  policy: OfferPolicy;
  source?: Source;
}

export interface ReflashResult {
  version: string;
  job: string;
  nonce: string;
  /** Where the flasher fetches from, printable: a pre-signed URL without its signature (a bearer token). */
  url: string;
  ramNeeded: number;
  payloadSize: number;
  imageSize: number;
  /** What the flasher overwrites: the host partition, or (whole-disk release) the disk holding it. */
  target: { kind: 'partition'; uuid: string } | { kind: 'disk'; device: string; size: number; partition: string };
  signedBy: string;
  rebooted: boolean;
  /** The machine's files carried across (undefined: [flasher] keep = no). */
  kept: { file: string; entries: number; bytes: number; skipped: string[] } | undefined;
}

/**
 * `commit` with nothing prepared (a reflash release is never prepared, see prepare.ts): the version to
 * reflash when the channel's newest release for this machine is marked `reflash`, so that commit runs
 * it as `commit --reflash VERSION`. Refuses with the fix when the flasher is not installed. Undefined
 * when something is prepared or committed (commit proceeds as usual) or the channel offers no reflash.
 */
export async function reflashToRoute(layout: Layout, config: Config, policy: OfferPolicy, source?: Source): Promise<string | undefined> {
  const state = await reconcile(layout);
  if (state.phase === 'prepared' || state.phase === 'committed') return undefined;
  let offer;
  try {
    const src = source ?? openConfiguredSource(layout, config);
    try {
      offer = await checkChannel(src, config, layout, state, policy);
    } finally {
      if (!source) await src.close();
    }
  } catch (err) {
    // Only a hint for a commit that has nothing prepared: commit then says so itself.
    log.debug(`commit: no channel answer to look for a reflash release (${messageOf(err)})`);
    return undefined;
  }
  if (offer.kind === 'up-to-date' || !offer.release.manifest.reflash) return undefined;
  const version = offer.release.manifest.version;
  if (!flasherInstalled(layout)) {
    throw new UpgradeError('NOT_FOUND', `release ${version} rewrites the whole ${offer.release.manifest.reflash === 'disk' ? 'disk' : 'host partition'} and needs the RAM flasher, which is not installed in ${layout.flasherDir}`, {
      hint: 'run upgradectl flasher install, then upgradectl commit again',
    });
  }
  return version;
}

/** MemTotal of the running machine in bytes, undefined where <root>/proc/meminfo does not exist (a temp root). */
async function memTotal(layout: Layout): Promise<number | undefined> {
  try {
    const m = /^MemTotal:\s+(\d+) kB/m.exec(await fs.readFile(path.join(layout.root, 'proc/meminfo'), 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return undefined;
    throw err;
  }
}

export async function reflash(layout: Layout, config: Config, opts: ReflashOptions): Promise<ReflashResult> {
  if (!flasherInstalled(layout)) {
    throw new UpgradeError('NOT_FOUND', `the RAM flasher is not installed in ${layout.flasherDir}`, { hint: 'run upgradectl flasher install first' });
  }
  if (!config.boot.saveEnv) {
    throw new UpgradeError('UNSUPPORTED', 'reflash needs a GRUB one-shot, and save_env is off on this host', { hint: 'docs/grub.md, "Hosts where save_env does not work"' });
  }
  const source = opts.source ?? openConfiguredSource(layout, config);
  let release: ResolvedRelease;
  let payload: { url: string; signed: boolean };
  try {
    const state = await reconcile(layout);
    if (opts.version) release = await fetchRelease(source, opts.version, config, layout, state, opts.policy);
    else {
      const offer = await checkChannel(source, config, layout, state, opts.policy);
      if (offer.kind === 'up-to-date') throw new UpgradeError('NOT_FOUND', `nothing to reflash: ${offer.reason}`, { hint: 'name a version: upgradectl commit --reflash VERSION' });
      release = offer.release;
    }
    payload = await flashPayloadUrl(config, release.manifest, source);
  } finally {
    if (!opts.source) await source.close();
  }
  // The flasher cannot check a signature; the job is only as good as the manifest it copies.
  if (!release.signedBy) {
    throw new UpgradeError('SIGNATURE', `release ${release.manifest.version} is not signed: a reflash rewrites the whole host partition and needs a signed manifest`, {
      hint: 'publish the release with --key; allow_unsigned does not apply to reflash',
    });
  }
  const nonce = newNonce();
  const hostUuid = await detectHostUuid(layout.host, config.boot.hostUuid);
  const target = await targetOf(layout, release, hostUuid);
  const network = await flasherNetwork(layout, config);
  const jobOf = (keep?: PackedFiles) => jobFor(release.manifest, payload.url, hostUuid, nonce, {
    network,
    targetDisk: target.kind === 'disk' ? path.basename(target.device) : undefined,
    ...(keep ? { keep: { size: keep.size, sha256: keep.sha256 } } : {}),
  });
  const total = await memTotal(layout);
  // The flasher also keeps its own kernel and initrd in RAM while it writes: they go onto the new
  // partition for the hold mode of its first boot (docs/flasher.md, "The first boot after a flash").
  const kept = (await fs.stat(layout.flasherKernel)).size + (await fs.stat(layout.flasherInitrd)).size;
  const checkRam = (job: FlashJob) => {
    const needed = ramNeeded(job) + kept;
    if (total !== undefined && total < needed) {
      throw new UpgradeError('NO_SPACE', `the flasher would need ${mib(needed)} MiB of RAM (payload ${mib(job.payloadSize)} MiB + ${mib(job.ramReserve)} MiB + its own kernel and initrd ${mib(kept)} MiB${job.keep ? ` + this machine's files ${mib(job.keep.size)} MiB` : ''}), this machine has ${mib(total)} MiB`, {
        hint: 'publish the release with better compression or a smaller image, or add memory',
      });
    }
    return needed;
  };
  checkRam(jobOf());

  const lock = await acquireLock(layout, 'reflash');
  let file: string;
  let job: FlashJob;
  let packed: PackedFiles | undefined;
  let needed: number;
  try {
    const state = await loadState(layout);
    // What to keep: packed under the lock, right before the job that names its hash.
    packed = config.flasher.keep ? await packKeptFiles(layout) : undefined;
    job = jobOf(packed);
    needed = checkRam(job);
    file = await writeJob(layout.flasherDir, job);
    // grub.cfg with the flasher entry and its nonce selection, then the one-shot with the nonce:
    // after this write GRUB boots the flasher once; nothing before it may fail silently.
    await writeBootFiles(layout, config, state);
    await armOneShot(layout, config, state, FLASHER_ENTRY_ID, { [FLASHER_NONCE_VAR]: nonce });
    // The flasher reads the host partition without replaying its journal: the job must be in place.
    await checkpointHost(layout.host);
  } finally {
    await lock.release();
  }
  log.info(`flash job for ${job.version} written to ${file}; the flasher boots once at the next reboot and overwrites ${targetText(target)}`);
  if (packed) log.info(`this machine's files (${packed.entries} entries of the migration whitelist, ${packed.bytes} bytes) are kept across the reflash in ${packed.file}`);
  else log.warn('[flasher] keep = no: the reflashed system is the release as published, without this machine\'s identity, network, SSH host keys or accounts');
  // The signed URL is a bearer token: never printed, only its lifetime.
  if (payload.signed) log.info(`the flasher fetches the payload from S3 with a URL pre-signed for ${FLASH_URL_SECONDS / 3600} h (or until this machine's credentials expire): reboot before then`);
  const result: ReflashResult = {
    version: job.version, job: file, nonce, url: payload.signed ? `${job.url.split('?')[0]} (pre-signed for ${FLASH_URL_SECONDS / 3600} h)` : job.url, ramNeeded: needed,
    payloadSize: job.payloadSize, imageSize: job.imageSize, target, signedBy: release.signedBy, rebooted: false,
    kept: packed ? { file: packed.file, entries: packed.entries, bytes: packed.bytes, skipped: packed.skipped } : undefined,
  };
  if (opts.reboot) {
    await rebootMachine(config, `reflash ${job.version}`);
    result.rebooted = true;
  }
  return result;
}

const mib = (n: number) => Math.ceil(n / 1048576);

/**
 * A whole-disk release overwrites the disk holding the host partition (partition table, boot code and
 * every partition on it): refused here, before any job exists, when the image does not fit that disk.
 */
async function targetOf(layout: Layout, release: ResolvedRelease, hostUuid: string): Promise<ReflashResult['target']> {
  if (release.manifest.reflash !== 'disk') return { kind: 'partition', uuid: hostUuid };
  const d = await diskOfHostPartition(layout.root, hostUuid);
  const imageSize = release.manifest.image.size;
  if (imageSize > d.size) {
    throw new UpgradeError('NO_SPACE', `release ${release.manifest.version} is a whole-disk image of ${imageSize} bytes, larger than /dev/${d.disk} (${d.size} bytes), the disk holding the host partition ${d.partition}`, {
      hint: 'publish a disk image no larger than the smallest disk it is for',
    });
  }
  return { kind: 'disk', device: `/dev/${d.disk}`, size: d.size, partition: d.partition };
}

export function targetText(target: ReflashResult['target']): string {
  return target.kind === 'disk'
    ? `the WHOLE DISK ${target.device} (${mib(target.size)} MiB: its partition table and every partition on it, including the host partition ${target.partition})`
    : `the host partition (filesystem UUID ${target.uuid})`;
}
