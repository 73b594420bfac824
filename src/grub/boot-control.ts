import { promises as fs } from 'node:fs';
import { UpgradeError, errnoOf } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { isVersion } from '../core/version.js';
import { DISARM, armChange, newDefault, readBootEnv, updateBootEnv, type BootContext } from './boot-files.js';
import type { GrubEnv } from './env.js';
import { DEFAULT_TRIES_VAR, TRIAL_ARG, TRIAL_DEADLINE_ARG, entryId } from './render.js';

/**
 * The bootloader contract the lifecycle uses (after RAUC's bootchooser): which image booted, arm a
 * one-shot trial, make an image the default, disarm a trial, clear the count of the default's starts. Each call rewrites grubenv in place; the
 * caller checkpoints the host filesystem (checkpointHost) before it relies on GRUB seeing the change.
 */

/** The version named by `upgradectl.loop=/images/<version>.img` on a kernel command line. */
export function parseBootedVersion(cmdline: string): string | undefined {
  for (const word of cmdline.trim().split(/\s+/)) {
    const m = /^upgradectl\.loop=\/images\/(.+)\.img$/.exec(word);
    // Only a plain version names an image of ours: `/images/../x.img` or `/images/a/b.img` name none.
    if (m) return isVersion(m[1]) ? m[1] : undefined;
  }
  return undefined;
}

/** Whether GRUB booted this kernel as a trial (trialKernelArgs), and the deadline it was given in seconds. */
export function parseTrialBoot(cmdline: string): { trial: boolean; deadline: number | undefined } {
  const words = cmdline.trim().split(/\s+/);
  const value = words.find((w) => w.startsWith(`${TRIAL_DEADLINE_ARG}=`))?.slice(TRIAL_DEADLINE_ARG.length + 1);
  return { trial: words.includes(TRIAL_ARG), deadline: value && /^\d{1,5}$/.test(value) ? Number(value) : undefined };
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
 * Arm a trial boot of `version`: GRUB boots it once (trialAttempts times in all), then falls back to
 * saved_entry, the current image. With save_env unavailable GRUB cannot consume a one-shot, so the image
 * becomes the default directly and only a failed confirm rolls back (docs/grub.md, "Hosts where
 * save_env does not work").
 */
export async function armTrial(ctx: BootContext, version: string): Promise<GrubEnv> {
  if (!ctx.settings.saveEnv) return updateBootEnv(ctx, newDefault(version));
  const change: Record<string, string | null> = { ...armChange(version, ctx.settings) };
  if (ctx.roles.current) change.saved_entry = entryId(ctx.roles.current);
  return updateBootEnv(ctx, change);
}

/**
 * Arm a one-shot boot of a non-image entry (the RAM flasher): GRUB boots `id` once, then saved_entry,
 * the current image. Any pending trial is dropped so that its extra attempts cannot follow; `vars` are
 * set with it (the flash job's nonce). Without save_env GRUB could not consume a one-shot: refused.
 */
export async function armOneShot(ctx: BootContext, id: string, vars: Record<string, string> = {}): Promise<GrubEnv> {
  if (!ctx.settings.saveEnv) {
    throw new UpgradeError('UNSUPPORTED', `a one-shot boot of ${id} needs GRUB's save_env, which is off on this host ([boot] save_env = false)`, {
      hint: 'keep /boot/grub on a plain partition GRUB can write (docs/grub.md, "Hosts where save_env does not work")',
    });
  }
  return updateBootEnv(ctx, { ...DISARM, ...(ctx.roles.current ? { saved_entry: entryId(ctx.roles.current) } : {}), next_entry: id, ...vars });
}

/** Make `version` the default, with no starts of it counted yet, and drop any pending trial. */
export function setDefault(ctx: BootContext, version: string): Promise<GrubEnv> {
  return updateBootEnv(ctx, newDefault(version));
}

/**
 * The default came up: clear GRUB's count of its starts (docs/grub.md, "Boot counting of the
 * default"). Returns whether grubenv was written; nothing is written when there is no count, so a
 * machine that boots normally writes grubenv once per boot at most.
 */
export async function clearDefaultCount(ctx: BootContext): Promise<boolean> {
  const env = await readBootEnv(ctx.layout);
  if (!env?.[DEFAULT_TRIES_VAR]) return false;
  await updateBootEnv(ctx, { [DEFAULT_TRIES_VAR]: null });
  return true;
}

/** Drop a pending trial; the default becomes (or stays) the current image. */
export function disarmTrial(ctx: BootContext): Promise<GrubEnv> {
  return updateBootEnv(ctx, { ...DISARM, ...(ctx.roles.current ? { saved_entry: entryId(ctx.roles.current) } : {}) });
}
