import { UpgradeError } from '../core/errors.js';
import { releaseKeys } from '../release/layout.js';
import type { Manifest } from '../release/manifest.js';
import type { Config } from './config.js';

/** Where the flasher fetches a release's payload: [flasher] url, else [source] url when it is http(s). */
export function payloadUrl(config: Config, manifest: Manifest): string {
  const base = config.flasher.url ?? (/^https?:\/\//.test(config.source.url ?? '') ? config.source.url : undefined);
  if (!base) {
    throw new UpgradeError('CONFIG', `the flasher downloads over http(s) with busybox wget, and [source] url is ${config.source.url ?? 'unset'}`, {
      hint: 'set [flasher] url = https://… to an http(s) address of the same releases (e.g. the bucket\'s website or a CDN)',
    });
  }
  const name = manifest.payload.path;
  if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new UpgradeError('MANIFEST', `payload path '${name}' is not a plain file name`);
  return `${base.replace(/\/+$/, '')}/${releaseKeys(manifest.version).dir}/${name}`;
}
