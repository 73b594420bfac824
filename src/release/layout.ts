/** Object keys of a release source, relative to its prefix (DESIGN.md §3). */
export function releaseKeys(version: string): { manifest: string; payload: string; dir: string } {
  const dir = `releases/${version}`;
  return { dir, manifest: `${dir}/manifest.json`, payload: `${dir}/image.lz4` };
}

export function channelKey(channel: string): string {
  return `channels/${channel}.json`;
}
