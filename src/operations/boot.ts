import { readJsonIfExists } from '../core/durable.js';
import { messageOf } from '../core/errors.js';
import { listImages } from '../core/images.js';
import type { Layout } from '../core/layout.js';
import { log } from '../core/log.js';
import * as control from '../grub/boot-control.js';
import { installGrubConfig, renderBootConfig, writeBootFiles as writeGrubFiles, type BootContext, type BootFilesResult, type BootImage } from '../grub/boot-files.js';
import type { GrubEnv } from '../grub/env.js';
import type { Manifest } from '../release/manifest.js';
import type { Config } from './config.js';
import { refreshRescueJob } from './rescue-job.js';
import type { State } from './state.js';

/**
 * The lifecycle's side of the bootloader contract (src/grub/boot-control.ts): it turns the machine's
 * state and config into the plain roles and settings GRUB's side takes, and the images on disk with
 * their verified manifests into menu entries. Every boot-file write of an operation goes through here.
 */

export function bootContext(layout: Layout, config: Config, state: State): BootContext {
  return {
    layout,
    settings: config.boot,
    roles: {
      current: state.current,
      previous: state.previous,
      next: state.next,
      armed: state.phase === 'committed' ? state.next : undefined,
      distro: Boolean(state.adopted),
    },
  };
}

/** The images on disk with the boot data of their verified manifests (kept beside them by prepare). */
export async function bootImages(layout: Layout): Promise<BootImage[]> {
  const out: BootImage[] = [];
  for (const { version } of await listImages(layout)) {
    let manifest: Manifest | undefined;
    try {
      manifest = await readJsonIfExists<Manifest>(layout.manifestFile(version));
    } catch (err) {
      log.warn(`manifest ${layout.manifestFile(version)} is unreadable (${messageOf(err)}): standard kernel paths used`);
    }
    if (!manifest) log.debug(`no manifest for ${version}: using /vmlinuz and /initrd.img`);
    out.push({ version, kernel: manifest?.boot?.kernel, initrd: manifest?.boot?.initrd, cmdline: manifest?.boot?.cmdline, created: manifest?.created });
  }
  return out;
}

export async function renderForState(layout: Layout, config: Config, state: State, fragment = false): Promise<string> {
  // update-grub on an adopted machine runs on the distribution's system: its output must be the
  // distribution's plain menu, which upgradectl keeps as the last fallback at its next write (a copy
  // of our entries in it would point at images that may be gone by then). docs/grub.md, "Adopted machines".
  // (One command: grub-script-check refuses a script of comments only.)
  if (fragment && state.adopted) return '# upgradectl: this machine was adopted; upgradectl writes grub.cfg itself (docs/grub.md)\nset upgradectl_adopted=1';
  return renderBootConfig(bootContext(layout, config, state), await bootImages(layout), fragment);
}

/** grub.cfg and grubenv for `state`, checkpointed for GRUB; `makeDefault` switches the default image. */
export async function writeBootFiles(layout: Layout, config: Config, state: State, opts: { makeDefault?: string } = {}): Promise<BootFilesResult> {
  // Before grub.cfg: whether the rescue entry is rendered depends on the job being there. After a
  // confirm (makeDefault) it follows the new current image.
  await refreshRescueJob(layout, config, opts.makeDefault ? { ...state, current: opts.makeDefault } : state);
  return writeGrubFiles(bootContext(layout, config, state), await bootImages(layout), opts);
}

/** grub.cfg alone (validated, atomic), for the current roles. */
export async function installConfigFor(layout: Layout, config: Config, state: State): Promise<void> {
  await installGrubConfig(layout, await renderForState(layout, config, state));
}

export const armTrial = (layout: Layout, config: Config, state: State, version: string): Promise<GrubEnv> =>
  control.armTrial(bootContext(layout, config, state), version);
export const armOneShot = (layout: Layout, config: Config, state: State, id: string, vars: Record<string, string> = {}): Promise<GrubEnv> =>
  control.armOneShot(bootContext(layout, config, state), id, vars);
export const disarmTrial = (layout: Layout, config: Config, state: State): Promise<GrubEnv> => control.disarmTrial(bootContext(layout, config, state));
export const setDefault = (layout: Layout, config: Config, state: State, version: string): Promise<GrubEnv> =>
  control.setDefault(bootContext(layout, config, state), version);
export const clearDefaultCount = (layout: Layout, config: Config, state: State): Promise<boolean> => control.clearDefaultCount(bootContext(layout, config, state));
export { bootedVersion } from '../grub/boot-control.js';
export { readBootEnv } from '../grub/boot-files.js';
