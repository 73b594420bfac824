import { UpgradeError, isUpgradeError } from '../core/errors.js';
import { acquireLock } from '../core/lock.js';
import type { Layout } from '../core/layout.js';
import { log } from '../core/log.js';
import { compareVersions } from '../core/version.js';
import type { TrustInput, VerifiedChannel } from '../release/resolve.js';
import type { Config } from './config.js';
import { loadState, saveState, type State } from './state.js';

/**
 * What this machine remembers about trust, on the host partition so that it survives every image
 * switch (docs/security.md): the newest signed channel it has seen per source and channel (a signed
 * file replayed later is still validly signed: only memory can tell it is old, as TUF's timestamp
 * version does), the version floor those channels raised, and the key ids they revoked.
 */

export function channelMemoryKey(sourceUrl: string, name: string): string {
  return `${sourceUrl}#${name}`;
}

/** The trust anchors for verifying: keys.d, minus what this machine saw revoked (and `also`, a channel's fresh list). */
export function trustInput(layout: Layout, state: State, also?: VerifiedChannel): TrustInput {
  const revoked = new Map<string, string>();
  for (const [id, r] of Object.entries(state.revokedKeys ?? {})) revoked.set(id, `${r.by}, seen ${r.at}`);
  for (const id of also?.channel.revokedKeys ?? []) if (!revoked.has(id)) revoked.set(id, also!.where);
  return { keysDir: layout.keysDir, revoked };
}

/** Refuse a channel older than one already seen for the same source and name. */
export function refuseReplay(state: State, sourceUrl: string, seen: VerifiedChannel): void {
  const name = seen.channel.channel;
  const before = own(state.channels, channelMemoryKey(sourceUrl, name));
  if (!before || Date.parse(seen.channel.published) >= Date.parse(before.published)) return;
  throw new UpgradeError(
    'REPLAY',
    `${seen.where} was published ${seen.channel.published} (offering ${seen.channel.version}), but this machine already saw channel ${name} published ${before.published} (offering ${before.version})`,
    {
      hint: 'an old, validly signed channel file is being served again (a stale mirror or a replay): do not act on it; if the publisher really meant it, re-publishing the channel gives it a newer published time',
    },
  );
}

/**
 * The lowest version this machine may install: the operator's `[source] min_version`, raised by the
 * highest minVersion a signed channel of the configured source has set (remembered, or `fresh`).
 */
export function versionFloor(config: Config, state: State, sourceUrl: string, fresh?: VerifiedChannel): { version: string; by: string } | undefined {
  const candidates: Array<{ version: string; by: string }> = [];
  if (config.source.minVersion) candidates.push({ version: config.source.minVersion, by: '[source] min_version in upgradectl.conf' });
  const name = config.source.channel;
  const seen = own(state.channels, channelMemoryKey(sourceUrl, name));
  if (seen?.minVersion) candidates.push({ version: seen.minVersion, by: `channel ${name} (published ${seen.published})` });
  if (fresh?.channel.minVersion) candidates.push({ version: fresh.channel.minVersion, by: `channel ${name} (published ${fresh.channel.published})` });
  return candidates.reduce<{ version: string; by: string } | undefined>((hi, c) => (!hi || compareVersions(c.version, hi.version) > 0 ? c : hi), undefined);
}

/** Fold a verified channel into the state (in memory): newest published, highest floor, revocations. */
export function remember(state: State, sourceUrl: string, seen: VerifiedChannel): void {
  const c = seen.channel;
  const key = channelMemoryKey(sourceUrl, c.channel);
  const now = new Date().toISOString();
  const before = own(state.channels, key);
  const floors = [before?.minVersion, c.minVersion].filter((v): v is string => Boolean(v));
  const minVersion = floors.sort(compareVersions).at(-1);
  const newer = !before || Date.parse(c.published) >= Date.parse(before.published);
  state.channels ??= {};
  state.channels[key] = newer
    ? { published: c.published, version: c.version, ...(minVersion ? { minVersion } : {}), seenAt: now }
    : { ...before, ...(minVersion ? { minVersion } : {}) };
  for (const id of c.revokedKeys ?? []) {
    state.revokedKeys ??= {};
    if (!own(state.revokedKeys, id)) state.revokedKeys[id] = { by: seen.where, at: now };
  }
}

/**
 * Persist what a check saw, taking the operation lock only for this write. When another operation holds
 * the lock the memory is not updated now (it is again at the next check or prepare): a check must not
 * fail because a download is running.
 */
export async function rememberChannel(layout: Layout, sourceUrl: string, seen: VerifiedChannel): Promise<void> {
  let lock;
  try {
    lock = await acquireLock(layout, 'check');
  } catch (err) {
    if (!isUpgradeError(err, 'LOCKED')) throw err;
    log.info(`not recording channel ${seen.channel.channel} (published ${seen.channel.published}) now: ${(err as Error).message}`);
    return;
  }
  try {
    const state = await loadState(layout);
    remember(state, sourceUrl, seen);
    await saveState(layout, state);
  } finally {
    await lock.release();
  }
}

/** Keys come from the network (channel names, key ids): look them up as own keys only. */
function own<T>(record: Record<string, T> | undefined, key: string): T | undefined {
  return record && Object.prototype.hasOwnProperty.call(record, key) ? record[key] : undefined;
}
