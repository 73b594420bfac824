import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import type { Config } from '../operations/config.js';
import { UpgradeError, isUpgradeError } from '../core/errors.js';
import { log } from '../core/log.js';
import type { Layout } from '../core/layout.js';
import type { State } from '../operations/state.js';
import { channelKey, releaseKeys } from './layout.js';
import { assertVersion, compareVersions } from '../core/version.js';
import { CHANNEL_FORMAT, type Channel, type Manifest } from './manifest.js';
import { validateManifest } from './manifest-check.js';
import { loadTrustedKeys, verifySignature } from './signing.js';
import { objectUrl, type Source } from './sources/source.js';

export interface TrustPolicy {
  allowUnsigned: boolean;
  allowExpired: boolean;
  allowDowngrade: boolean;
  /** Offer a version whose trial failed before. */
  force: boolean;
}

export interface ResolvedRelease {
  manifest: Manifest;
  /** The exact manifest bytes that were verified: kept beside the image. */
  manifestBytes: Buffer;
  manifestSha256: string;
  /** URL of the manifest, for messages. */
  where: string;
  signedBy: string | undefined;
  channel?: Channel;
}

/** What the channel offers this machine, if anything (no download, no state change). */
export type Offer =
  | { kind: 'release'; release: ResolvedRelease }
  | { kind: 'up-to-date'; version: string; reason: string };

/** A signed object: its exact bytes, checked against the trusted keys before anything parses them. */
async function fetchSigned(source: Source, key: string, layout: Layout, policy: TrustPolicy): Promise<{ bytes: Buffer; signedBy?: string }> {
  const where = objectUrl(source, key);
  const bytes = await source.get(key);
  let sig: Buffer | undefined;
  try {
    sig = await source.get(`${key}.sig`);
  } catch (err) {
    if (!isUpgradeError(err, 'NOT_FOUND')) throw err;
  }
  if (!sig && policy.allowUnsigned) {
    log.warn(`${where} is not signed; accepted because unsigned releases are allowed`);
    return { bytes };
  }
  const keys = await loadTrustedKeys(layout.keysDir);
  return { bytes, signedBy: verifySignature(where, bytes, sig, keys, layout.keysDir) };
}

function parseJson<T>(bytes: Buffer, where: string): T {
  try {
    return JSON.parse(bytes.toString('utf8')) as T;
  } catch (err) {
    throw new UpgradeError('MANIFEST', `${where} is not valid JSON: ${(err as Error).message}`, { cause: err, hint: 're-publish the release' });
  }
}

function checkExpiry(what: string, expires: string | undefined, policy: TrustPolicy): void {
  if (!expires) return;
  const at = Date.parse(expires);
  if (Number.isNaN(at)) throw new UpgradeError('MANIFEST', `${what} has an invalid expiry '${expires}'`, { hint: 're-publish it' });
  if (at < Date.now()) {
    if (policy.allowExpired) {
      log.warn(`${what} expired on ${expires}; accepted because expired releases are allowed`);
      return;
    }
    throw new UpgradeError('EXPIRED', `${what} expired on ${expires}`, {
      hint: 'ask the publisher to re-publish or re-sign it, or accept it once with --allow-expired',
    });
  }
}

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
export async function checkChannel(source: Source, config: Config, layout: Layout, state: State, policy: TrustPolicy): Promise<Offer> {
  const key = channelKey(config.source.channel);
  const where = objectUrl(source, key);
  let fetched;
  try {
    fetched = await fetchSigned(source, key, layout, policy);
  } catch (err) {
    if (isUpgradeError(err, 'NOT_FOUND')) {
      throw new UpgradeError('NOT_FOUND', `channel '${config.source.channel}' does not exist at ${where}`, {
        cause: err,
        hint: `check [source] channel in ${layout.configFile}, or publish with --channel ${config.source.channel}`,
      });
    }
    throw err;
  }
  const channel = parseJson<Channel>(fetched.bytes, where);
  if (channel.format !== CHANNEL_FORMAT || typeof channel.version !== 'string' || typeof channel.manifest !== 'string') {
    throw new UpgradeError('MANIFEST', `${where} is not an upgradectl channel file (format ${String(channel.format)})`, { hint: 're-publish it with upgradectl publish --channel' });
  }
  assertVersion(channel.version, `channel ${config.source.channel}'s version`);
  checkExpiry(`channel ${where}`, channel.expires, policy);
  const v = channel.version;
  if (state.current && compareVersions(v, state.current) === 0) return { kind: 'up-to-date', version: v, reason: `${v} is already the current image` };
  if (state.current && compareVersions(v, state.current) < 0 && !policy.allowDowngrade) {
    return { kind: 'up-to-date', version: v, reason: `the channel offers ${v}, older than the current ${state.current}` };
  }
  if (state.bad[v] && !policy.force) return { kind: 'up-to-date', version: v, reason: `${v} failed its trial before (${state.bad[v].reason}); not offered again` };
  const percent = channel.rollout?.percent ?? 100;
  const bucket = await rolloutBucket(layout, v);
  if (bucket >= percent) return { kind: 'up-to-date', version: v, reason: `${v} is rolling out to ${percent}% of machines; this one (bucket ${bucket}) is not yet included` };
  const release = await fetchRelease(source, v, layout, state, policy, channel.manifest);
  return { kind: 'release', release: { ...release, channel } };
}

/** A named version's manifest, verified and checked against this machine's state. */
export async function fetchRelease(
  source: Source,
  version: string,
  layout: Layout,
  state: State,
  policy: TrustPolicy,
  manifestKey = releaseKeys(version).manifest,
): Promise<ResolvedRelease> {
  assertVersion(version);
  const where = objectUrl(source, manifestKey);
  let fetched;
  try {
    fetched = await fetchSigned(source, manifestKey, layout, policy);
  } catch (err) {
    if (isUpgradeError(err, 'NOT_FOUND')) {
      throw new UpgradeError('NOT_FOUND', `release ${version} does not exist at ${source.url} (no ${manifestKey})`, {
        cause: err,
        hint: 'check the version (upgradectl check lists what the channel offers) and [source] url',
      });
    }
    throw err;
  }
  const manifest = validateManifest(parseJson<unknown>(fetched.bytes, where), where);
  if (manifest.version !== version) {
    throw new UpgradeError('MANIFEST', `${where} describes version ${manifest.version}, not ${version}`, { hint: 'the release was published under the wrong name; re-publish it' });
  }
  checkExpiry(`release ${version}`, manifest.expires, policy);
  if (state.current && compareVersions(version, state.current) < 0 && !policy.allowDowngrade) {
    throw new UpgradeError('DOWNGRADE', `release ${version} is older than the current image ${state.current}`, {
      hint: 'to go back on purpose, run upgradectl prepare --allow-downgrade VERSION (or upgradectl rollback for the previous image)',
    });
  }
  if (state.bad[version] && !policy.force) {
    throw new UpgradeError('BAD_VERSION', `release ${version} failed its trial boot before: ${state.bad[version].reason}`, {
      hint: 'publish a fixed release under a new version, or retry this one on purpose with --force',
    });
  }
  return {
    manifest,
    manifestBytes: fetched.bytes,
    manifestSha256: createHash('sha256').update(fetched.bytes).digest('hex'),
    where,
    signedBy: fetched.signedBy,
  };
}
