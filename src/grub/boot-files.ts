import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Manifest } from '../release/manifest.js';
import type { Config } from '../operations/config.js';
import { writeFileDurable, readJsonIfExists } from '../core/durable.js';
import { UpgradeError, errnoOf, messageOf } from '../core/errors.js';
import { ExecError, run } from '../core/exec.js';
import { log } from '../core/log.js';
import type { Layout } from '../core/layout.js';
import type { State } from '../operations/state.js';
import { emptyGrubEnv, readGrubEnvFile, writeGrubEnvFile, type GrubEnv } from './env.js';
import { checkpointHost, detectHostUuid, type CheckpointResult } from './host-fs.js';
import { DEFAULT_TRIES_VAR, entryId, renderGrubConfig, renderGrubFragment, type GrubConfigInput, type GrubEntry } from './render.js';

/**
 * Boot files on the host partition, built from what is on disk (HOST/images, verified manifests) and
 * the lifecycle state: grub.cfg (validated, replaced atomically) and grubenv (rewritten in place).
 */

const VERSION_RE = /^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$/;

/** Versions of the image files under HOST/images (downloads in .staging are never listed). */
export async function imageVersions(layout: Layout): Promise<string[]> {
  let names: string[];
  try {
    names = await fs.readdir(layout.imagesDir);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return [];
    throw err;
  }
  return names
    .filter((n) => n.endsWith('.img') && !n.startsWith('.'))
    .map((n) => n.slice(0, -'.img'.length))
    .filter((v) => VERSION_RE.test(v));
}

/**
 * One entry per image file, in menu order: current, next, previous, then the rest newest first.
 * An image without its manifest still gets an entry with the standard /vmlinuz and /initrd.img: a
 * machine must never lose the entry of the image it runs because a side file went missing.
 */
export async function collectEntries(layout: Layout, state: State): Promise<GrubEntry[]> {
  const versions = await imageVersions(layout);
  const rank = (v: string) => [state.current, state.next, state.previous].indexOf(v);
  versions.sort((a, b) => {
    const ra = rank(a) < 0 ? 99 : rank(a);
    const rb = rank(b) < 0 ? 99 : rank(b);
    if (ra !== rb) return ra - rb;
    return b.localeCompare(a, undefined, { numeric: true });
  });
  for (const v of [state.current, state.next, state.previous]) {
    if (v && !versions.includes(v)) log.warn(`image ${layout.imageFile(v)} is missing: it gets no boot entry`);
  }
  const entries: GrubEntry[] = [];
  for (const version of versions) {
    let manifest: Manifest | undefined;
    try {
      manifest = await readJsonIfExists<Manifest>(layout.manifestFile(version));
    } catch (err) {
      log.warn(`manifest ${layout.manifestFile(version)} is unreadable (${messageOf(err)}): standard kernel paths used`);
    }
    if (!manifest) log.debug(`no manifest for ${version}: using /vmlinuz and /initrd.img`);
    const built = manifest?.created ? ` (built ${manifest.created.slice(0, 10)})` : '';
    entries.push({
      version,
      title: `upgradectl image ${version}${built}`,
      kernel: manifest?.boot?.kernel ?? '/vmlinuz',
      initrd: manifest?.boot?.initrd ?? '/initrd.img',
      cmdline: manifest?.boot?.cmdline ?? '',
    });
  }
  return entries;
}

export async function buildGrubInput(layout: Layout, config: Config, state: State): Promise<GrubConfigInput> {
  const entries = await collectEntries(layout, state);
  const versions = new Set(entries.map((e) => e.version));
  const flasherKernel = path.join(layout.flasherDir, 'vmlinuz');
  const flasherInitrd = path.join(layout.flasherDir, 'initrd.img');
  const flasherOnHost = '/' + path.relative(layout.host, layout.flasherDir);
  return {
    hostUuid: await detectHostUuid(layout.host, config.boot.hostUuid),
    entries,
    panicTimeout: config.boot.panicTimeout,
    trialAttempts: config.boot.trialAttempts,
    defaultAttempts: config.boot.defaultAttempts,
    kernelArgs: config.boot.kernelArgs,
    serialConsole: config.boot.serialConsole,
    menuTimeout: config.boot.menuTimeout,
    fallbackVersion: state.previous && versions.has(state.previous) ? state.previous : undefined,
    saveEnv: config.boot.saveEnv,
    flasher:
      existsSync(flasherKernel) && existsSync(flasherInitrd)
        ? { kernel: `${flasherOnHost}/vmlinuz`, initrd: `${flasherOnHost}/initrd.img`, cmdline: 'upgradectl.flasher=1' }
        : undefined,
  };
}

export async function renderForLayout(layout: Layout, config: Config, state: State, fragment = false): Promise<string> {
  const input = await buildGrubInput(layout, config, state);
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
  await writeFileDurable(layout.grubCfg, text.endsWith('\n') ? text : `${text}\n`, 0o644);
}

/** The variables upgradectl owns in grubenv; everything else there (other tools') is kept. */
export const ENV_KEYS = ['saved_entry', 'next_entry', 'upgradectl_trial', 'upgradectl_tries', DEFAULT_TRIES_VAR] as const;
export type EnvChange = Partial<Record<(typeof ENV_KEYS)[number], string | null>>;

/**
 * grubenv as the state says it should be: the default image, and when a trial is armed (committed)
 * the one-shot plus its extra attempts. Used to rebuild a missing or corrupt block.
 */
export function envFromState(state: State, config: Config): GrubEnv {
  const env = emptyGrubEnv();
  if (state.current) env.saved_entry = entryId(state.current);
  if (state.phase === 'committed' && state.next) {
    Object.assign(env, armChange(state.next, config));
  }
  return env;
}

/** The env change that arms a trial boot of `version`: GRUB's one-shot plus the extra-attempt chain. */
export function armChange(version: string, config: Config): Record<string, string> {
  const extra = config.boot.trialAttempts - 1;
  return {
    next_entry: entryId(version),
    upgradectl_trial: entryId(version),
    upgradectl_tries: extra > 0 ? String(extra) : '',
  };
}

/** Drops a pending trial. The count of the default's starts stays: the default has not changed. */
export const DISARM: EnvChange = { next_entry: null, upgradectl_trial: null, upgradectl_tries: null };

/** The env change that makes `version` the default: no trial pending, and no starts of it counted yet. */
export function newDefault(version: string): EnvChange {
  return { ...DISARM, [DEFAULT_TRIES_VAR]: null, saved_entry: entryId(version) };
}

export async function readBootEnv(layout: Layout): Promise<GrubEnv | undefined> {
  const r = await readGrubEnvFile(layout.grubEnv);
  return r.kind === 'ok' ? r.env : undefined;
}

/**
 * Apply a change to grubenv. A missing, corrupt or wrong-size block is rebuilt from the state first
 * (with a warning), so the machine is never left without a default.
 */
export async function updateBootEnv(layout: Layout, config: Config, state: State, change: EnvChange): Promise<GrubEnv> {
  const r = await readGrubEnvFile(layout.grubEnv);
  let env: GrubEnv;
  if (r.kind === 'ok') env = r.env;
  else {
    if (r.kind === 'corrupt') log.warn(`${r.error.message}; rebuilding it from the upgradectl state`);
    else log.info(`creating ${layout.grubEnv}`);
    env = envFromState(state, config);
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
 * Write every boot file for `state`: grub.cfg (validated, atomic), grubenv (in place; `change` applied,
 * or rebuilt from state when missing or corrupt), then checkpoint the host filesystem so GRUB sees both
 * after a hard reset.
 */
export async function writeBootFiles(layout: Layout, config: Config, state: State, change: EnvChange = {}): Promise<BootFilesResult> {
  const text = await renderForLayout(layout, config, state);
  await installGrubConfig(layout, text);
  const env = await updateBootEnv(layout, config, state, change);
  const checkpoint = await checkpointHost(layout.host);
  return { grubCfg: text, env, checkpoint };
}
