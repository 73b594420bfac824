import { promises as fs } from 'node:fs';
import type { Config } from '../upgradectl/config.js';
import { UpgradeError, errnoOf } from '../upgradectl/errors.js';
import type { Layout } from '../upgradectl/paths.js';
import type { State } from '../upgradectl/state.js';
import { DISARM, armChange, updateBootEnv } from './boot-files.js';
import type { GrubEnv } from './env.js';
import { entryId } from './render.js';

/**
 * The bootloader contract the lifecycle uses (after RAUC's bootchooser): which image booted, arm a
 * one-shot trial, make an image the default, disarm a trial. Each call rewrites grubenv in place; the
 * caller checkpoints the host filesystem (checkpointHost) before it relies on GRUB seeing the change.
 */

/** The version named by `upgradectl.loop=/images/<version>.img` on a kernel command line. */
export function parseBootedVersion(cmdline: string): string | undefined {
  for (const word of cmdline.trim().split(/\s+/)) {
    const m = /^upgradectl\.loop=\/images\/(.+)\.img$/.exec(word);
    if (m) return m[1];
  }
  return undefined;
}

/** The image this boot runs, from DIR/proc/cmdline; undefined when not booted from an upgradectl image. */
export async function bootedVersion(layout: Layout): Promise<string | undefined> {
  try {
    return parseBootedVersion(await fs.readFile(layout.cmdlineFile, 'utf8'));
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return undefined;
    throw new UpgradeError('STATE', `cannot read ${layout.cmdlineFile}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Arm a trial boot of `version`: GRUB boots it once (config.boot.trialAttempts times in all), then
 * falls back to saved_entry. With save_env unavailable (config.boot.saveEnv false) GRUB cannot consume
 * a one-shot, so the image becomes the default directly and only a failed confirm rolls back
 * (docs/grub.md, "Hosts where save_env does not work").
 */
export async function armTrial(layout: Layout, config: Config, state: State, version: string): Promise<GrubEnv> {
  if (!config.boot.saveEnv) return updateBootEnv(layout, config, state, { ...DISARM, saved_entry: entryId(version) });
  const change: Record<string, string | null> = { ...armChange(version, config) };
  if (state.current) change.saved_entry = entryId(state.current);
  return updateBootEnv(layout, config, state, change);
}

/** Make `version` the default and drop any pending trial. */
export function setDefault(layout: Layout, config: Config, state: State, version: string): Promise<GrubEnv> {
  return updateBootEnv(layout, config, state, { ...DISARM, saved_entry: entryId(version) });
}

/** Drop a pending trial; the default becomes (or stays) `state.current`. */
export function disarmTrial(layout: Layout, config: Config, state: State): Promise<GrubEnv> {
  return updateBootEnv(layout, config, state, { ...DISARM, ...(state.current ? { saved_entry: entryId(state.current) } : {}) });
}
