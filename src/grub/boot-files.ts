import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeFileDurable } from '../core/durable.js';
import { UpgradeError, messageOf } from '../core/errors.js';
import { ExecError, run } from '../core/exec.js';
import type { Layout } from '../core/layout.js';
import { log } from '../core/log.js';
import { emptyGrubEnv, readGrubEnvFile, writeGrubEnvFile, type GrubEnv } from './env.js';
import { distroConfigFile, keepDistroConfig } from './distro-config.js';
import { checkpointHost, detectHostUuid, type CheckpointResult } from './host-fs.js';
import { DEFAULT_TRIES_VAR, DISTRO_ENTRY_ID, FLASHER_NONCE_VAR, entryId, renderGrubConfig, renderGrubFragment, type BootSettings, type GrubConfigInput, type GrubEntry } from './render.js';

/**
 * Boot files on the host partition, from plain inputs: grub.cfg (validated, replaced atomically) and
 * grubenv (rewritten in place). The caller says which images exist and what role each plays; nothing
 * here knows the lifecycle's state or the config file.
 */

/** Which image plays which part. `armed`: a trial armed and not booted yet (grubenv is rebuilt with it). */
export interface BootRoles {
  current?: string;
  previous?: string;
  next?: string;
  armed?: string;
  /** An adopted machine: the distribution's kept menu is the last fallback (and the default while no image is current). */
  distro?: boolean;
}

/** Everything a boot-file write needs: where, how, and the roles of the images. */
export interface BootContext {
  layout: Layout;
  settings: BootSettings;
  roles: BootRoles;
}

/** An image on disk as the menu shows it; boot data from its verified manifest when there is one. */
export interface BootImage {
  version: string;
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  /** Build date (ISO) for the menu title. */
  created?: string;
}

/**
 * One entry per image, in menu order: current, next, previous, then the rest newest first. An image
 * without boot data gets the standard /vmlinuz and /initrd.img: a machine must never lose the entry of
 * the image it runs because a side file went missing.
 */
export function orderEntries(images: BootImage[], roles: BootRoles, layout: Layout): GrubEntry[] {
  const order = [roles.current, roles.next, roles.previous];
  const rank = (v: string) => (order.indexOf(v) < 0 ? 99 : order.indexOf(v));
  const sorted = [...images].sort((a, b) => rank(a.version) - rank(b.version) || b.version.localeCompare(a.version, undefined, { numeric: true }));
  for (const v of order) {
    if (v && !images.some((i) => i.version === v)) log.warn(`image ${layout.imageFile(v)} is missing: it gets no boot entry`);
  }
  return sorted.map((img) => ({
    version: img.version,
    title: `upgradectl image ${img.version}${img.created ? ` (built ${img.created.slice(0, 10)})` : ''}`,
    kernel: img.kernel ?? '/vmlinuz',
    initrd: img.initrd ?? '/initrd.img',
    cmdline: img.cmdline ?? '',
  }));
}

/** The RAM flasher's files are installed: grub.cfg then has its entries (flasher, and rescue with a rescue job). */
export function flasherInstalled(layout: Layout): boolean {
  return existsSync(layout.flasherKernel) && existsSync(layout.flasherInitrd);
}

export async function buildGrubInput(ctx: BootContext, images: BootImage[]): Promise<GrubConfigInput> {
  const { layout, settings, roles } = ctx;
  const entries = orderEntries(images, roles, layout);
  const versions = new Set(entries.map((e) => e.version));
  const onHost = (file: string) => '/' + path.relative(layout.host, file);
  const distroKept = roles.distro && existsSync(distroConfigFile(layout));
  if (roles.distro && !distroKept) log.warn(`${distroConfigFile(layout)} is missing: the distribution's system gets no fallback entry (upgradectl adopt keeps it again)`);
  return {
    hostUuid: await detectHostUuid(layout.host, settings.hostUuid),
    entries,
    panicTimeout: settings.panicTimeout,
    trialAttempts: settings.trialAttempts,
    defaultAttempts: settings.defaultAttempts,
    kernelArgs: settings.kernelArgs,
    serialConsole: settings.serialConsole,
    menuTimeout: settings.menuTimeout,
    fallbackVersion: roles.previous && versions.has(roles.previous) ? roles.previous : undefined,
    saveEnv: settings.saveEnv,
    trialDeadline: settings.trialDeadline,
    flasher: flasherInstalled(layout)
      ? { kernel: onHost(layout.flasherKernel), initrd: onHost(layout.flasherInitrd), cmdline: '', rescue: existsSync(layout.rescueJobFile) }
      : undefined,
    distro: distroKept ? { isDefault: !roles.current } : undefined,
    hold: { kernel: onHost(layout.flasherKernel), initrd: onHost(layout.flasherInitrd), marker: onHost(layout.flashTrialFile) },
  };
}

export async function renderBootConfig(ctx: BootContext, images: BootImage[], fragment = false): Promise<string> {
  const input = await buildGrubInput(ctx, images);
  return fragment ? renderGrubFragment(input) : renderGrubConfig(input);
}

/** Run grub-script-check on a config text; throws GRUB with its complaint. */
export async function checkGrubScript(text: string): Promise<void> {
  const tmp = path.join(os.tmpdir(), `upgradectl-grub-${process.pid}-${randomBytes(4).toString('hex')}.cfg`);
  await fs.writeFile(tmp, text);
  try {
    await run('grub-script-check', [tmp]);
  } catch (err) {
    const detail = err instanceof ExecError ? (err.stderr || err.stdout).trim() : messageOf(err);
    throw new UpgradeError('GRUB', `the generated grub.cfg does not pass grub-script-check: ${detail}`, {
      cause: err,
      hint:
        err instanceof ExecError && err.exitCode === null
          ? 'install grub-common (it provides grub-script-check); upgradectl never installs an unchecked grub.cfg'
          : 'the old grub.cfg was kept; report this as a bug with upgradectl grub-config output',
    });
  } finally {
    await fs.rm(tmp, { force: true });
  }
}

/** Validate, then replace grub.cfg atomically: a refused config leaves the old one in place. */
export async function installGrubConfig(layout: Layout, text: string): Promise<void> {
  await checkGrubScript(text);
  await fs.mkdir(layout.grubDir, { recursive: true });
  // An adopted machine: a grub.cfg that update-grub wrote since our last write is the distribution's
  // newest menu; it is kept before ours replaces it (grub/distro-config.ts).
  if (existsSync(distroConfigFile(layout))) await keepDistroConfig(layout);
  await writeFileDurable(layout.grubCfg, text.endsWith('\n') ? text : `${text}\n`, 0o644);
}

/** The variables upgradectl owns in grubenv; everything else there (other tools') is kept. */
export const ENV_KEYS = ['saved_entry', 'next_entry', 'upgradectl_trial', 'upgradectl_tries', DEFAULT_TRIES_VAR, FLASHER_NONCE_VAR] as const;
export type EnvChange = Partial<Record<(typeof ENV_KEYS)[number], string | null>>;

/**
 * grubenv as the roles say it should be: the default image, and when a trial is armed the one-shot
 * plus its extra attempts. Used to rebuild a missing or corrupt block.
 */
export function envForRoles(roles: BootRoles, settings: BootSettings): GrubEnv {
  const env = emptyGrubEnv();
  if (roles.current) env.saved_entry = entryId(roles.current);
  else if (roles.distro) env.saved_entry = DISTRO_ENTRY_ID;
  if (roles.armed) Object.assign(env, armChange(roles.armed, settings));
  return env;
}

/** The env change that arms a trial boot of `version`: GRUB's one-shot plus the extra-attempt chain. */
export function armChange(version: string, settings: BootSettings): Record<string, string> {
  const extra = settings.trialAttempts - 1;
  return {
    next_entry: entryId(version),
    upgradectl_trial: entryId(version),
    upgradectl_tries: extra > 0 ? String(extra) : '',
  };
}

/** Drops a pending trial. The count of the default's starts stays: the default has not changed. */
export const DISARM: EnvChange = { next_entry: null, upgradectl_trial: null, upgradectl_tries: null, [FLASHER_NONCE_VAR]: null };

/** The env change that makes `version` the default: no trial pending, and no starts of it counted yet. */
export function newDefault(version: string): EnvChange {
  return { ...DISARM, [DEFAULT_TRIES_VAR]: null, saved_entry: entryId(version) };
}

export async function readBootEnv(layout: Layout): Promise<GrubEnv | undefined> {
  const r = await readGrubEnvFile(layout.grubEnv);
  return r.kind === 'ok' ? r.env : undefined;
}

/**
 * Apply a change to grubenv. A missing, corrupt or wrong-size block is rebuilt from the roles first
 * (with a warning), so the machine is never left without a default.
 */
export async function updateBootEnv(ctx: BootContext, change: EnvChange): Promise<GrubEnv> {
  const { layout } = ctx;
  const r = await readGrubEnvFile(layout.grubEnv);
  let env: GrubEnv;
  if (r.kind === 'ok') env = r.env;
  else {
    if (r.kind === 'corrupt') log.warn(`${r.error.message}; rebuilding it from the upgradectl state`);
    else log.info(`creating ${layout.grubEnv}`);
    env = envForRoles(ctx.roles, ctx.settings);
  }
  for (const [k, v] of Object.entries(change)) {
    if (v === null || v === undefined) delete env[k];
    else env[k] = v;
  }
  // Empty values are dropped: GRUB treats unset and empty alike, and the block stays small.
  for (const k of Object.keys(env)) if (env[k] === '' && (ENV_KEYS as readonly string[]).includes(k)) delete env[k];
  await writeGrubEnvFile(layout.grubEnv, env);
  return env;
}

export interface BootFilesResult {
  grubCfg: string;
  env: GrubEnv;
  checkpoint: CheckpointResult;
}

/**
 * Write every boot file: grub.cfg (validated, atomic), grubenv (in place; rebuilt from the roles when
 * missing or corrupt), then checkpoint the host filesystem so GRUB sees both after a hard reset. With
 * `makeDefault`, grubenv names that image as the default with no trial pending and no starts counted.
 */
export async function writeBootFiles(ctx: BootContext, images: BootImage[], opts: { makeDefault?: string } = {}): Promise<BootFilesResult> {
  const { layout } = ctx;
  const text = await renderBootConfig(ctx, images);
  await installGrubConfig(layout, text);
  // An adopted machine with no image confirmed yet: the distribution is the default, by name, so that a
  // saved_entry the distribution left in grubenv (GRUB_SAVEDEFAULT) never makes GRUB pick entry 0.
  const distroDefault: EnvChange = ctx.roles.distro && !ctx.roles.current ? { saved_entry: DISTRO_ENTRY_ID } : {};
  const env = await updateBootEnv(ctx, opts.makeDefault ? newDefault(opts.makeDefault) : distroDefault);
  const checkpoint = await checkpointHost(layout.host);
  return { grubCfg: text, env, checkpoint };
}
