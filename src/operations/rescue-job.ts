import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { readJsonIfExists } from '../core/durable.js';
import { messageOf } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { log } from '../core/log.js';
import { jobFor, renderJob, writeJob, type FlashJob } from '../flasher/job.js';
import { flasherInstalled } from '../grub/boot-files.js';
import { detectHostUuid } from '../grub/host-fs.js';
import type { Manifest } from '../release/manifest.js';
import type { Config } from './config.js';
import { payloadUrl } from './flasher-url.js';
import { flasherNetwork } from './flasher-network.js';
import type { State } from './state.js';

/**
 * The rescue job follows the current image (docs/flasher.md, "Rescue"): whenever upgradectl writes the
 * boot files, HOST/boot/upgradectl/flasher/rescue-job names the release of the image GRUB boots by
 * default, with the hashes of its manifest as prepare verified and stored it. When GRUB can load no image
 * at all, it falls back to the flasher in rescue mode, which fetches exactly that release into /images.
 *
 * Best effort on purpose: a boot-file write (commit, confirm, rollback) must never fail because rescue
 * cannot be armed. When it cannot, the job is removed (a job for an image that is no longer current
 * would restore the wrong release) and the reason is logged; `doctor` reports it.
 */
export type RescueJobResult = { kind: 'written'; version: string; file: string } | { kind: 'off'; reason: string };


/** The job for the current image, or why there is none. */
async function rescueJobText(layout: Layout, config: Config, state: State): Promise<{ version: string; job: FlashJob; text: string } | { reason: string }> {
  if (!flasherInstalled(layout)) return { reason: 'the RAM flasher is not installed (upgradectl flasher install)' };
  const version = state.current;
  if (!version) return { reason: 'no current image' };
  const manifest = await readJsonIfExists<Manifest>(layout.manifestFile(version));
  if (!manifest) return { reason: `no verified manifest of the current image ${version} in ${layout.manifestsDir} (it was not installed by prepare)` };
  if (manifest.version !== version) return { reason: `${layout.manifestFile(version)} is the manifest of ${manifest.version}, not ${version}` };
  if (manifest.reflash) return { reason: `release ${version} is a whole host partition (reflash), not an image rescue can put into /images` };
  try {
    const job = jobFor(manifest, payloadUrl(config, manifest), await detectHostUuid(layout.host, config.boot.hostUuid), undefined, { network: await flasherNetwork(layout, config) });
    return { version, job, text: renderJob(job, 'rescue') };
  } catch (err) {
    return { reason: messageOf(err) };
  }
}

export async function refreshRescueJob(layout: Layout, config: Config, state: State): Promise<RescueJobResult> {
  const file = layout.rescueJobFile;
  try {
    const r = await rescueJobText(layout, config, state);
    if ('reason' in r) {
      if (existsSync(file)) log.warn(`rescue job removed: ${r.reason}`);
      await fs.rm(file, { force: true });
      return { kind: 'off', reason: r.reason };
    }
    const old = await fs.readFile(file, 'utf8').catch(() => undefined);
    if (old !== r.text) {
      await writeJob(layout.flasherDir, r.job, file, 'rescue');
      log.info(`rescue job: GRUB's last fallback re-downloads release ${r.version} when no image can be loaded`);
    }
    // upgradectl runs and writes the boot files: the rescues the flasher counted are acknowledged.
    await fs.rm(path.join(layout.flasherDir, 'rescue-count'), { force: true });
    return { kind: 'written', version: r.version, file };
  } catch (err) {
    log.warn(`could not write the rescue job ${file}: ${messageOf(err)}`);
    await fs.rm(file, { force: true }).catch(() => undefined);
    return { kind: 'off', reason: messageOf(err) };
  }
}
