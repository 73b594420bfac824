import { createHash } from 'node:crypto';
import { UpgradeError, isUpgradeError } from '../core/errors.js';
import { log } from '../core/log.js';
import { channelKey, releaseKeys } from './layout.js';
import { assertVersion } from '../core/version.js';
import { CHANNEL_FORMAT, type Channel, type Manifest } from './manifest.js';
import { validateManifest } from './manifest-check.js';
import { loadTrustedKeys, verifySignature } from './signing.js';
import { objectUrl, type Source } from './sources/source.js';

/**
 * The release side of resolving: fetch a channel or a manifest, check its signature against the trusted
 * keys before anything parses it, validate it and its expiry. What a release means for this machine
 * (newer? failed before? in the rollout?) is decided by the operation (src/operations/offer.ts).
 */

/** What the operator allowed about signatures and expiry; everything is refused by default. */
export interface TrustPolicy {
  allowUnsigned: boolean;
  allowExpired: boolean;
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

/** A signed object: its exact bytes, checked against the trusted keys before anything parses them. */
async function fetchSigned(source: Source, key: string, keysDir: string, policy: TrustPolicy): Promise<{ bytes: Buffer; signedBy?: string }> {
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
  const keys = await loadTrustedKeys(keysDir);
  return { bytes, signedBy: verifySignature(where, bytes, sig, keys, keysDir) };
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

export interface VerifiedChannel {
  channel: Channel;
  where: string;
  signedBy: string | undefined;
}

/** A channel file, verified and validated; `hintFile` is where the operator names the channel. */
export async function readChannel(source: Source, name: string, keysDir: string, policy: TrustPolicy, hintFile: string): Promise<VerifiedChannel> {
  const key = channelKey(name);
  const where = objectUrl(source, key);
  let fetched;
  try {
    fetched = await fetchSigned(source, key, keysDir, policy);
  } catch (err) {
    if (isUpgradeError(err, 'NOT_FOUND')) {
      throw new UpgradeError('NOT_FOUND', `channel '${name}' does not exist at ${where}`, {
        cause: err,
        hint: `check [source] channel in ${hintFile}, or publish with --channel ${name}`,
      });
    }
    throw err;
  }
  const channel = parseJson<Channel | null>(fetched.bytes, where);
  if (channel === null || typeof channel !== 'object' || channel.format !== CHANNEL_FORMAT || typeof channel.version !== 'string' || typeof channel.manifest !== 'string') {
    throw new UpgradeError('MANIFEST', `${where} is not an upgradectl channel file (format ${String(channel?.format)})`, { hint: 're-publish it with upgradectl publish --channel' });
  }
  assertVersion(channel.version, `channel ${name}'s version`);
  checkExpiry(`channel ${where}`, channel.expires, policy);
  return { channel, where, signedBy: fetched.signedBy };
}

/** A named version's manifest, verified and validated (no judgement about this machine). */
export async function readRelease(source: Source, version: string, keysDir: string, policy: TrustPolicy, manifestKey = releaseKeys(version).manifest): Promise<ResolvedRelease> {
  assertVersion(version);
  const where = objectUrl(source, manifestKey);
  let fetched;
  try {
    fetched = await fetchSigned(source, manifestKey, keysDir, policy);
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
  return {
    manifest,
    manifestBytes: fetched.bytes,
    manifestSha256: createHash('sha256').update(fetched.bytes).digest('hex'),
    where,
    signedBy: fetched.signedBy,
  };
}
