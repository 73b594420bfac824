import { promises as fs } from 'node:fs';
import type { Config } from '../operations/config.js';
import { UpgradeError, errnoOf } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import type { State } from '../operations/state.js';
import { DISARM, armChange, newDefault, readBootEnv, updateBootEnv } from './boot-files.js';
import type { GrubEnv } from './env.js';
import { DEFAULT_TRIES_VAR, entryId } from './render.js';

/**
 * The bootloader contract the lifecycle uses (after RAUC's bootchooser): which image booted, arm a
 * one-shot trial, make an image the default, disarm a trial, clear the count of the default's starts. Each call rewrites grubenv in place; the
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
  if (!config.boot.saveEnv) return updateBootEnv(layout, config, state, newDefault(version));
  const change: Record<string, string | null> = { ...armChange(version, config) };
  if (state.current) change.saved_entry = entryId(state.current);
  return updateBootEnv(layout, config, state, change);
}

/** Make `version` the default, with no starts of it counted yet, and drop any pending trial. */
export function setDefault(layout: Layout, config: Config, state: State, version: string): Promise<GrubEnv> {
  return updateBootEnv(layout, config, state, newDefault(version));
}

/**
 * The default came up: clear GRUB's count of its starts (docs/grub.md, "Boot counting of the
 * default"). Returns whether grubenv was written; nothing is written when there is no count, so a
 * machine that boots normally writes grubenv once per boot at most.
 */
export async function clearDefaultCount(layout: Layout, config: Config, state: State): Promise<boolean> {
  const env = await readBootEnv(layout);
  if (!env?.[DEFAULT_TRIES_VAR]) return false;
  await updateBootEnv(layout, config, state, { [DEFAULT_TRIES_VAR]: null });
  return true;
}

/** Drop a pending trial; the default becomes (or stays) `state.current`. */
export function disarmTrial(layout: Layout, config: Config, state: State): Promise<GrubEnv> {
  return updateBootEnv(layout, config, state, { ...DISARM, ...(state.current ? { saved_entry: entryId(state.current) } : {}) });
}
