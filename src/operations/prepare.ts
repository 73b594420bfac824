import { promises as fs } from 'node:fs';
import path from 'node:path';
import { readConfiguredFile, type Config } from './config.js';
import { flasherInstalled } from '../grub/boot-files.js';
import { UpgradeError } from '../core/errors.js';
import { runEvent } from './lifecycle.js';
import { log } from '../core/log.js';
import type { Layout } from '../core/layout.js';
import type { State } from './state.js';
import { reconcile } from './reconcile/index.js';
import { bootedVersion } from './boot.js';
import { modeText, repairPrivateModes } from '../core/private-files.js';
import type { Progress } from '../release/progress.js';
import type { ResolvedRelease, VerifiedChannel } from '../release/resolve.js';
import { checkChannel, fetchRelease, type OfferPolicy } from './offer.js';
import { remember, rememberChannel } from './trust-memory.js';
import { ensureSpace } from '../release/space.js';
import { checkImagesWritable } from '../release/images-writable.js';
import { stageImage, stagingPaths, type StageResult } from '../release/stage.js';
import { FramePool } from '../release/frame-pool.js';
import { openSource } from '../release/sources/index.js';
import { RateLimit, throttleSource } from '../release/sources/throttle.js';
import type { Source } from '../release/sources/source.js';

export interface PrepareOptions {
  layout: Layout;
  config: Config;
  version?: string;
  policy: OfferPolicy;
  progress?: (total: number) => Progress;
  signal?: AbortSignal;
  /** Where to read the release instead of [source] url (the daemon's hawkBit artifacts); the caller closes it. */
  source?: Source;
  /**
   * Frame workers the caller started before loading this module, because a download was likely (see
   * commands/prepare.ts); the caller closes it.
   */
  pool?: FramePool;
}

export type PrepareResult =
  | { action: 'prepared'; version: string; image: string; stage: StageResult; removed: string[]; signedBy?: string }
  | { action: 'already-prepared'; version: string; image: string }
  | { action: 'nothing-to-do'; version: string; reason: string }
  /** A release whose payload is a whole host partition: never staged as an image (it would not boot as one). */
  | { action: 'needs-reflash'; version: string; flasherInstalled: boolean; hint: string };

/** What to run for a release that needs the RAM flasher. */
export function reflashHint(version: string, installed: boolean): string {
  return installed
    ? `release ${version} rewrites the whole host partition: run upgradectl commit (it boots the RAM flasher, as commit --reflash ${version})`
    : `release ${version} rewrites the whole host partition with the RAM flasher, which is not installed: run upgradectl flasher install, then upgradectl commit`;
}

export function openConfiguredSource(layout: Layout, config: Config): Source {
  if (!config.source.url) {
    throw new UpgradeError('CONFIG', `no release source configured in ${layout.configFile}`, {
      hint: `add a [source] section with url = s3://BUCKET/PREFIX, https://HOST/PREFIX or file:///DIR`,
    });
  }
  const source = openSource(config.source.url, {
    region: config.source.region,
    endpoint: config.source.endpoint,
    forcePathStyle: config.source.forcePathStyle,
    ca: config.source.caFile ? readCaFile(layout, config.source.caFile) : undefined,
    retry: { retries: config.prepare.retries, stallTimeoutMs: config.prepare.stallTimeout * 1000 },
  });
  return config.prepare.maxRate > 0 ? throttleSource(source, new RateLimit(config.prepare.maxRate)) : source;
}

/** [source] ca_file, read under --root like every configured path: PEM certificates, or a CONFIG error naming it. */
function readCaFile(layout: Layout, file: string): string {
  const where = path.join(layout.root, file);
  const pem = readConfiguredFile(where, 'source', 'ca_file', "check [source] ca_file in upgradectl.conf: a PEM file of the CA certificates that sign the release server's certificate");
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) {
    throw new UpgradeError('CONFIG', `[source] ca_file ${where} holds no PEM certificate`, { hint: 'give it the CA certificate(s) in PEM form (-----BEGIN CERTIFICATE-----)' });
  }
  return pem;
}

/**
 * prepare [VERSION]: channel → manifest → signature, expiry and downgrade checks → space → frames
 * fetched, decoded, verified, written sparse under .staging → fsync → renamed to images/<v>.img →
 * phase `prepared`. Idempotent: a release already on disk and verified is not fetched again.
 */
export async function prepareRelease(opts: PrepareOptions): Promise<PrepareResult> {
  const { layout, config } = opts;
  await repairPrivateModes(layout).then((fixed) => fixed.forEach((f) => log.warn(`made ${f.path} root-only (was ${modeText(f.was)})`)));
  const source = opts.source ?? openConfiguredSource(layout, config);
  // Its threads start only once a download is certain (below), unless the caller started them already:
  // a prepare that finds nothing to do, the daemon's usual pass, would otherwise start and stop them
  // for ~0.2 s of CPU each.
  const pool = opts.pool ?? new FramePool();
  try {
    // What booted first: a new machine adopts the image it runs, so a downgrade check and the commit
    // after this have a current image to go by.
    const before = await reconcile(layout);
    // Resolve without the lock: it only reads, and "nothing to do" must not touch the state.
    let release: ResolvedRelease;
    let seen: VerifiedChannel | undefined;
    if (opts.version) {
      release = await fetchRelease(source, opts.version, config, layout, before, opts.policy);
    } else {
      const offer = await checkChannel(source, config, layout, before, opts.policy);
      seen = offer.seen;
      if (offer.kind === 'up-to-date') {
        // Remembered even when there is nothing to do: the replay it protects against comes later.
        await rememberChannel(layout, source.url, offer.seen);
        return { action: 'nothing-to-do', version: offer.version, reason: offer.reason };
      }
      release = offer.release;
    }
    const version = release.manifest.version;
    if (release.manifest.reflash) {
      // Its payload is a host filesystem (boot/grub, images/), not an OS: as /images/<v>.img GRUB would
      // find no kernel in it. Nothing is downloaded; commit routes it to the flasher (docs/flasher.md).
      const installed = flasherInstalled(layout);
      return { action: 'needs-reflash', version, flasherInstalled: installed, hint: reflashHint(version, installed) };
    }
    if (before.phase === 'prepared' && before.next === version && (await sameManifest(layout, version, release))) {
      return { action: 'already-prepared', version, image: layout.imageFile(version) };
    }
    if (before.current === version) return { action: 'nothing-to-do', version, reason: `${version} is already the current image` };
    // A download follows: the frame workers load their modules while the lock is taken, the space
    // checked and the payload looked up, rather than before the first frame.
    pool.start();

    let result: PrepareResult | undefined;
    await runEvent(layout, 'prepare', async (state) => {
      // First, so that a failed download still persists the channel it saw (runLocked saves on failure).
      if (seen) remember(state, source.url, seen);
      const booted = await bootedVersion(layout);
      const keep = keepSet(state, version, booted);
      // A prepared image that was never committed is dropped when another is prepared — unless it is
      // also an image the machine needs: current, previous (the fallback) or the one that runs.
      const superseded = state.phase === 'prepared' && state.next && state.next !== version && ![state.current, state.previous, booted].includes(state.next) ? state.next : undefined;
      // A host that cannot take the finished image must fail now, not after the download.
      await checkImagesWritable(layout);
      const staged = await stagedBytes(layout, version);
      const { removed } = await ensureSpace(layout, Math.max(0, release.manifest.image.allocated - staged), keep, version);
      const progress = opts.progress?.(release.manifest.image.size);
      // Said once the first frames are on their way: the first log line loads winston (~55 ms of this
      // thread), which then overlaps the download instead of holding it back.
      let announced = false;
      const announce = () => {
        if (!announced) log.info(`preparing ${version} from ${release.where}`);
        announced = true;
      };
      // The images this machine holds are where a delta finds its blocks; the one being prepared is not one.
      const seeds = [...keep].filter((v) => v !== version).map((v) => layout.imageFile(v));
      const stage = await stageImage({ layout, source, release, parallel: config.prepare.parallel, requestBytes: config.prepare.requestSize, progress, signal: opts.signal, seeds, pool, started: announce });
      announce();
      if (superseded) {
        await fs.rm(layout.imageFile(superseded), { force: true });
        await fs.rm(layout.manifestFile(superseded), { force: true });
        removed.push(layout.imageFile(superseded));
      }
      result = { action: 'prepared', version, image: stage.imageFile, stage, removed, signedBy: release.signedBy };
      return {
        version,
        detail: {
          fetched: stage.fetched,
          requests: stage.requests,
          localBytes: stage.localBytes,
          reusedFrames: stage.reusedFrames,
          holeFrames: stage.holeFrames,
          seconds: stage.seconds,
          signedBy: release.signedBy,
          removed,
        },
        update: (s: State) => {
          s.next = version;
        },
      };
    });
    return result!;
  } finally {
    if (!opts.pool) await pool.close();
    if (!opts.source) await source.close();
  }
}

function keepSet(state: State, version: string, booted: string | undefined): Set<string> {
  const keep = new Set<string>([version]);
  for (const v of [state.current, state.previous, state.next, booted]) if (v) keep.add(v);
  return keep;
}

async function stagedBytes(layout: Layout, version: string): Promise<number> {
  try {
    return (await fs.stat(stagingPaths(layout, version).image)).blocks * 512;
  } catch {
    return 0;
  }
}

async function sameManifest(layout: Layout, version: string, release: ResolvedRelease): Promise<boolean> {
  try {
    const [local] = await Promise.all([fs.readFile(layout.manifestFile(version)), fs.access(layout.imageFile(version))]);
    return local.equals(release.manifestBytes);
  } catch {
    return false;
  }
}
