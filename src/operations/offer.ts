import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { UpgradeError } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { compareVersions } from '../core/version.js';
import { readChannel, readRelease, type ResolvedRelease, type TrustPolicy, type VerifiedChannel } from '../release/resolve.js';
import type { Source } from '../release/sources/source.js';
import type { Config } from './config.js';
import type { State } from './state.js';
import { refuseReplay, trustInput, versionFloor } from './trust-memory.js';

/**
 * What a verified release means for this machine: is it newer than what runs, did it fail here before,
 * is this machine in its rollout. The release layer verifies; this decides.
 */

export interface OfferPolicy extends TrustPolicy {
  allowDowngrade: boolean;
  /** Offer a version whose trial failed before. */
  force: boolean;
}

/** What the channel offers this machine, if anything (no download, no state change). */
export type Offer =
  | { kind: 'release'; release: ResolvedRelease; seen: VerifiedChannel }
  | { kind: 'up-to-date'; version: string; reason: string; seen: VerifiedChannel };

/** Which bucket (0–99) this machine is in for a rollout: stable per machine and release, spread across the fleet. */
export async function rolloutBucket(layout: Layout, version: string): Promise<number> {
  let id = '';
  try {
    id = (await fs.readFile(`${layout.root}/etc/machine-id`, 'utf8')).trim();
  } catch {
    // No machine-id (a chroot, a test root): every such machine lands in bucket 0, i.e. always offered.
  }
  if (!id) return 0;
  return parseInt(createHash('sha256').update(`${id}:${version}`).digest('hex').slice(0, 8), 16) % 100;
}


/**
 * What the channel offers this machine, if anything (no download, no state change: the caller records
 * `seen` with trust-memory.ts). Refuses a channel older than one seen before; honours the version floor.
 */
export async function checkChannel(source: Source, config: Config, layout: Layout, state: State, policy: OfferPolicy): Promise<Offer> {
  const seen = await readChannel(source, config.source.channel, trustInput(layout, state), policy, layout.configFile);
  refuseReplay(state, source.url, seen);
  const { channel } = seen;
  const v = channel.version;
  const nothing = (reason: string): Offer => ({ kind: 'up-to-date', version: v, reason, seen });
  if (state.current && v === state.current) return nothing(`${v} is already the current image`);
  if (state.current && compareVersions(v, state.current) < 0 && !policy.allowDowngrade) {
    return nothing(`the channel offers ${v}, older than the current ${state.current}`);
  }
  const floor = versionFloor(config, state, source.url, seen);
  if (floor && compareVersions(v, floor.version) < 0 && !policy.allowDowngrade) {
    return nothing(`the channel offers ${v}, below the minimum version ${floor.version} (set by ${floor.by})`);
  }
  const bad = failedBefore(state, v);
  if (bad && !policy.force) return nothing(`${v} failed its trial before (${bad.reason}); not offered again`);
  if (channel.rollout?.paused) return nothing(`the rollout of ${v} is paused by the publisher`);
  const percent = channel.rollout?.percent ?? 100;
  const bucket = await rolloutBucket(layout, v);
  if (bucket >= percent) return nothing(`${v} is rolling out to ${percent}% of machines; this one (bucket ${bucket}) is not yet included`);
  const release = await fetchRelease(source, v, config, layout, state, policy, seen);
  return { kind: 'release', release: { ...release, channel }, seen };
}

/**
 * A named version's manifest, verified and checked against this machine's state: not older than the
 * current image, not below the floor, not failed before. `via` is the channel that named it, if any:
 * its manifest key, and its revocations and floor, which apply at once.
 */
export async function fetchRelease(
  source: Source,
  version: string,
  config: Config,
  layout: Layout,
  state: State,
  policy: OfferPolicy,
  via?: VerifiedChannel,
): Promise<ResolvedRelease> {
  const release = await readRelease(source, version, trustInput(layout, state, via), policy, via?.channel.manifest);
  if (state.current && compareVersions(version, state.current) < 0 && !policy.allowDowngrade) {
    // Point at rollback only when it would boot this very version: its own hint leads back here otherwise.
    const viaRollback = state.previous === version ? ` (or upgradectl rollback, which boots the previous image ${version} without a download)` : '';
    throw new UpgradeError('DOWNGRADE', `release ${version} is older than the current image ${state.current}`, {
      hint: `to go back on purpose, run upgradectl prepare --allow-downgrade ${version}${viaRollback}`,
    });
  }
  const floor = versionFloor(config, state, source.url, via);
  if (floor && compareVersions(version, floor.version) < 0 && !policy.allowDowngrade) {
    throw new UpgradeError('DOWNGRADE', `release ${version} is below the minimum version ${floor.version} (set by ${floor.by})`, {
      hint: `install ${floor.version} or newer; to go below the floor on purpose, run upgradectl prepare --allow-downgrade ${version}`,
    });
  }
  const bad = failedBefore(state, version);
  if (bad && !policy.force) {
    throw new UpgradeError('BAD_VERSION', `release ${version} failed its trial boot before: ${bad.reason}`, {
      hint: 'publish a fixed release under a new version, or retry this one on purpose with --force',
    });
  }
  return release;
}

/** The record of a failed trial of `version`, looked up as an own key (versions come from the network). */
export function failedBefore(state: State, version: string): { reason: string; at: string } | undefined {
  return Object.prototype.hasOwnProperty.call(state.bad, version) ? state.bad[version] : undefined;
}
