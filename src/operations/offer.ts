import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { UpgradeError } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { compareVersions } from '../core/version.js';
import { readChannel, readRelease, type ResolvedRelease, type TrustPolicy } from '../release/resolve.js';
import type { Source } from '../release/sources/source.js';
import type { Config } from './config.js';
import type { State } from './state.js';

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
  | { kind: 'release'; release: ResolvedRelease }
  | { kind: 'up-to-date'; version: string; reason: string };

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

/** The channel's newest release for this machine, or why there is nothing to do. */
export async function checkChannel(source: Source, config: Config, layout: Layout, state: State, policy: OfferPolicy): Promise<Offer> {
  const { channel } = await readChannel(source, config.source.channel, layout.keysDir, policy, layout.configFile);
  const v = channel.version;
  if (state.current && v === state.current) return { kind: 'up-to-date', version: v, reason: `${v} is already the current image` };
  if (state.current && compareVersions(v, state.current) < 0 && !policy.allowDowngrade) {
    return { kind: 'up-to-date', version: v, reason: `the channel offers ${v}, older than the current ${state.current}` };
  }
  const bad = failedBefore(state, v);
  if (bad && !policy.force) return { kind: 'up-to-date', version: v, reason: `${v} failed its trial before (${bad.reason}); not offered again` };
  const percent = channel.rollout?.percent ?? 100;
  const bucket = await rolloutBucket(layout, v);
  if (bucket >= percent) return { kind: 'up-to-date', version: v, reason: `${v} is rolling out to ${percent}% of machines; this one (bucket ${bucket}) is not yet included` };
  const release = await fetchRelease(source, v, layout, state, policy, channel.manifest);
  return { kind: 'release', release: { ...release, channel } };
}

/** A named version's manifest, verified and checked against this machine's state. */
export async function fetchRelease(source: Source, version: string, layout: Layout, state: State, policy: OfferPolicy, manifestKey?: string): Promise<ResolvedRelease> {
  const release = await readRelease(source, version, layout.keysDir, policy, manifestKey);
  if (state.current && compareVersions(version, state.current) < 0 && !policy.allowDowngrade) {
    // Point at rollback only when it would boot this very version: its own hint leads back here otherwise.
    const viaRollback = state.previous === version ? ` (or upgradectl rollback, which boots the previous image ${version} without a download)` : '';
    throw new UpgradeError('DOWNGRADE', `release ${version} is older than the current image ${state.current}`, {
      hint: `to go back on purpose, run upgradectl prepare --allow-downgrade ${version}${viaRollback}`,
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
