import { UpgradeError } from '../core/errors.js';
import { releaseKeys } from '../release/layout.js';
import type { Manifest } from '../release/manifest.js';
import type { Source } from '../release/sources/source.js';
import type { Config } from './config.js';

/**
 * How long the pre-signed URL of a flash job may be used: the flasher runs at the reboot that follows
 * `commit --reflash`; a day covers a `--no-reboot` arming and a reboot in the next maintenance window.
 * Instance-role credentials expire sooner (hours), and the URL with them: a flasher that finds it
 * expired fails before writing and the old system boots (docs/flasher.md, "S3").
 */
export const FLASH_URL_SECONDS = 24 * 3600;

/** The payload's key and checked file name. */
function payloadKey(manifest: Manifest): string {
  const name = manifest.payload.path;
  if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new UpgradeError('MANIFEST', `payload path '${name}' is not a plain file name`);
  return `${releaseKeys(manifest.version).dir}/${name}`;
}

/** The http(s) prefix the flasher reads releases from: [flasher] url, else [source] url when it is http(s). */
function httpBase(config: Config): string | undefined {
  return config.flasher.url ?? (/^https?:\/\//.test(config.source.url ?? '') ? config.source.url : undefined);
}

/** Where the flasher fetches a release's payload for a rescue job: a lasting http(s) URL, never a signed one. */
export function payloadUrl(config: Config, manifest: Manifest): string {
  const base = httpBase(config);
  if (!base) {
    throw new UpgradeError('CONFIG', `the flasher downloads over http(s) with busybox wget, and [source] url is ${config.source.url ?? 'unset'}`, {
      hint: 'set [flasher] url = https://… to an http(s) address of the same releases (e.g. the bucket\'s website or a CDN)',
    });
  }
  return `${base.replace(/\/+$/, '')}/${payloadKey(manifest)}`;
}

/**
 * Where the flasher fetches a flash job's payload: as payloadUrl, or, for an S3 source without
 * [flasher] url, a GET pre-signed here with this machine's credentials (the SDK's chain: an instance
 * role on EC2). The flasher has no SDK and no credentials; the URL grants that one object for a
 * limited time, and the job holding it is root-only.
 */
export async function flashPayloadUrl(config: Config, manifest: Manifest, source: Source): Promise<{ url: string; signed: boolean }> {
  if (httpBase(config) || !source.presignedUrl) return { url: payloadUrl(config, manifest), signed: false };
  return { url: await source.presignedUrl(payloadKey(manifest), FLASH_URL_SECONDS), signed: true };
}
