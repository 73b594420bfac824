import { UpgradeError } from '../core/errors.js';

/** Object keys of a release source, relative to its prefix (DESIGN.md §3). */
export function releaseKeys(version: string): { manifest: string; payload: string; dir: string } {
  const dir = `releases/${version}`;
  return { dir, manifest: `${dir}/manifest.json`, payload: `${dir}/image.lz4` };
}

/** Channel names become object keys and config values: one plain path segment, like a version. */
const CHANNEL_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function assertChannelName(name: string, what = 'channel name'): string {
  if (typeof name !== 'string' || !CHANNEL_RE.test(name)) {
    throw new UpgradeError('USAGE', `${what} '${String(name)}' is not valid`, {
      hint: 'use letters, digits and . _ - (at most 64, starting with a letter or digit), e.g. stable or beta',
    });
  }
  return name;
}

export function channelKey(channel: string): string {
  return `channels/${assertChannelName(channel)}.json`;
}
