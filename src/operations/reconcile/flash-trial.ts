import { promises as fs } from 'node:fs';
import { errnoOf, messageOf } from '../../core/errors.js';
import type { Layout } from '../../core/layout.js';
import { log } from '../../core/log.js';
import { isVersion } from '../../core/version.js';
import { allowed, applyEvent } from '../lifecycle.js';
import { failedBefore } from '../offer.js';
import type { BootFacts } from './facts.js';

/** The first line of the marker the RAM flasher writes (flasher/flasher.sh, arm_on_new_host). */
export const FLASH_TRIAL_MAGIC = 'upgradectl-flash-trial 1';

export interface FlashTrial {
  /** The image the flasher armed as the new system's first boot (the published partition's default). */
  version: string;
  /** The reflash release that was written. */
  release: string;
}

/** The marker on the host partition, or undefined when there is none or it is not well-formed (logged). */
export async function readFlashTrial(layout: Layout): Promise<FlashTrial | undefined> {
  let text: string;
  try {
    text = await fs.readFile(layout.flashTrialFile, 'utf8');
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT') log.warn(`cannot read ${layout.flashTrialFile}: ${messageOf(err)}`);
    return undefined;
  }
  const [magic, ...lines] = text.split('\n');
  const field = (key: string) => lines.find((l) => l.startsWith(`${key} `))?.slice(key.length + 1);
  const version = field('version');
  const release = field('release');
  if (magic !== FLASH_TRIAL_MAGIC || !version || !isVersion(version) || !release || !isVersion(release)) {
    log.warn(`${layout.flashTrialFile} is not a flash trial marker ('${FLASH_TRIAL_MAGIC}', version, release): ignored`);
    return undefined;
  }
  return { version, release };
}

/**
 * The first boot of a reflashed system (docs/flasher.md, "The first boot after a flash"). The flasher
 * armed GRUB's one-shot for it and left the marker, but does not write this JSON state (busybox has no
 * JSON tool, and the published state may carry trust memory that a rewrite would lose). So the first
 * reconciliation on the new system records the trial as commit would have: committed to the marker's
 * image, with no current or previous image (what a failed trial comes back to is the flasher in hold
 * mode, GRUB's saved_entry). The trial rules then take it from there: this boot is its trial boot, and
 * `confirm --if-trial` confirms it as any trial. Only on a boot of the marker's image, never again
 * for an image whose trial failed, and not while a trial of it is already recorded.
 */
export async function reconcileFlashTrial(boot: BootFacts): Promise<boolean> {
  const { layout, state, booted } = boot;
  const trial = await readFlashTrial(layout);
  if (!trial || booted !== trial.version) return false;
  const version = trial.version;
  if (state.next === version && (state.phase === 'committed' || state.phase === 'trying')) return false;
  if (failedBefore(state, version)) return false;
  if (!allowed(state.phase, 'flash-trial')) {
    log.warn(`the RAM flasher armed the first boot of ${version} as a trial, but the machine is ${state.phase}: not recorded`);
    return false;
  }
  applyEvent(state, 'flash-trial', {
    version,
    reason: `the RAM flasher wrote release ${trial.release} and armed the first boot of ${version} as a trial`,
    update: (s) => {
      s.current = undefined;
      s.previous = undefined;
      s.next = version;
      s.trialKind = 'upgrade';
    },
  });
  return true;
}

/** After a confirm made the flashed image the default: the reboot entry no longer holds in the flasher. */
export async function endFlashTrial(layout: Layout): Promise<void> {
  await fs.rm(layout.flashTrialFile, { force: true });
}
