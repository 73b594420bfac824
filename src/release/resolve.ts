import { createHash } from 'node:crypto';
import { UpgradeError, isUpgradeError } from '../core/errors.js';
import { log } from '../core/log.js';
import { channelKey, releaseKeys } from './layout.js';
import { assertVersion } from '../core/version.js';
import { CHANNEL_FORMAT, type Channel, type Manifest } from './manifest.js';
import { validateManifest } from './manifest-check.js';
import { loadTrustStore, normalKeyId, verifySignature } from './signing.js';
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

/**
 * Where trust comes from: the key directory, and the key ids this machine already knows to be revoked
 * (from signed channels it has seen; the lists the image ships in keys.d are read with the keys).
 */
export interface TrustInput {
  keysDir: string;
  revoked: ReadonlyMap<string, string>;
}

/** A signed object: its exact bytes, checked against the trusted keys before anything parses them. */
async function fetchSigned(source: Source, key: string, trust: TrustInput, policy: TrustPolicy): Promise<{ bytes: Buffer; signer?: { keyid: string; file: string } }> {
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
  const store = await loadTrustStore(trust.keysDir, trust.revoked);
  return { bytes, signer: verifySignature(where, bytes, sig, store) };
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
  signerKeyId: string | undefined;
}

/**
 * A channel file, verified and validated; `hintFile` is where the operator names the channel. The body
 * must name the channel it was fetched as: the signature covers the bytes, not the file name, so
 * without this a signed `beta` copied over `stable` would pass.
 */
export async function readChannel(source: Source, name: string, trust: TrustInput, policy: TrustPolicy, hintFile: string): Promise<VerifiedChannel> {
  const key = channelKey(name);
  const where = objectUrl(source, key);
  let fetched;
  try {
    fetched = await fetchSigned(source, key, trust, policy);
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
  if (channel.channel !== name) {
    throw new UpgradeError('SIGNATURE', `${where} is the signed pointer of channel '${String(channel.channel)}', not of '${name}'`, {
      hint: `someone copied another channel's file over this one: do not trust this source until ${where} is re-published with upgradectl publish --channel ${name}`,
    });
  }
  assertVersion(channel.version, `channel ${name}'s version`);
  if (typeof channel.published !== 'string' || Number.isNaN(Date.parse(channel.published))) {
    throw new UpgradeError('MANIFEST', `${where}: published is missing or invalid (expected an ISO 8601 time)`, { hint: 're-publish it with upgradectl publish --channel' });
  }
  if (channel.minVersion !== undefined) assertVersion(channel.minVersion, `channel ${name}'s minVersion`);
  checkRevokedKeys(channel, where, fetched.signer?.keyid);
  checkExpiry(`channel ${where}`, channel.expires, policy);
  return { channel, where, signedBy: fetched.signer?.file, signerKeyId: fetched.signer?.keyid };
}

function checkRevokedKeys(channel: Channel, where: string, signer: string | undefined): void {
  if (channel.revokedKeys === undefined) return;
  const ids = channel.revokedKeys;
  if (!Array.isArray(ids) || ids.some((id) => typeof id !== 'string' || normalKeyId(id) !== id)) {
    throw new UpgradeError('MANIFEST', `${where}: revokedKeys is invalid (expected a list of 16-hex-digit key ids)`, { hint: 're-publish it with upgradectl publish --revoke KEYID' });
  }
  if (signer && ids.includes(signer)) {
    // Accepting it would trust the key for this file and distrust it from the next: ambiguous, refuse.
    throw new UpgradeError('SIGNATURE', `${where} revokes key ${signer}, the key it is signed with`, { hint: 'the publisher must sign the channel with a key that is not revoked' });
  }
}

/** A named version's manifest, verified and validated (no judgement about this machine). */
export async function readRelease(source: Source, version: string, trust: TrustInput, policy: TrustPolicy, manifestKey = releaseKeys(version).manifest): Promise<ResolvedRelease> {
  assertVersion(version);
  const where = objectUrl(source, manifestKey);
  let fetched;
  try {
    fetched = await fetchSigned(source, manifestKey, trust, policy);
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
    signedBy: fetched.signer?.file,
  };
}
