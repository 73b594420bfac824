import { promises as fs, existsSync } from 'node:fs';
import path from 'node:path';
import { orderEntries } from '../../grub/boot-files.js';
import { listImages } from '../../core/images.js';
import { bootImages } from '../../operations/boot.js';
import { readGrubEnvFile } from '../../grub/env.js';
import { detectHostUuid, saveEnvCapability } from '../../grub/host-fs.js';
import { DEFAULT_TRIES_VAR, versionOfEntry } from '../../grub/render.js';
import type { Command } from '../cli.js';
import { resolveInImage } from '../../core/ext4-image.js';
import { firmwareOf } from '../../grub/firmware.js';
import { checkImageFiles, checkKernelSignatures, firmwareFinding } from './doctor-boot.js';
import { loadConfig, type Config } from '../../operations/config.js';
import { messageOf } from '../../core/errors.js';
import { cleanStaleMounts, findMigrationTools } from '../../migrate/index.js';
import { run } from '../../core/exec.js';
import type { Layout } from '../../core/layout.js';
import { modeText, repairPrivateModes } from '../../core/private-files.js';
import { initialState, loadState, type State } from '../../operations/state.js';
import { flasherProvenance } from '../../operations/flasher-install.js';
import { keptFilesArchive, keptFilesState } from '../../operations/kept-files.js';
import { flasherInstalled } from '../../grub/boot-files.js';

export interface Finding {
  check: string;
  level: 'ok' | 'warn' | 'error';
  message: string;
  /** What to do about it (warn and error only). */
  fix?: string;
}

export const doctorCommand: Command = {
  summary: 'check this machine can do all of the above, and say what is missing',
  usage: 'doctor',
  async run({ layout }) {
    const findings = await diagnose(layout);
    const errors = findings.filter((f) => f.level === 'error').length;
    const text = findings
      .map((f) => `${f.level === 'ok' ? 'ok   ' : f.level === 'warn' ? 'WARN ' : 'ERROR'} ${f.check}: ${f.message}${f.fix ? `\n      fix: ${f.fix}` : ''}`)
      .join('\n');
    return { data: { ok: errors === 0, findings }, text, exitCode: errors ? 1 : 0 };
  },
};

export async function diagnose(layout: Layout): Promise<Finding[]> {
  const out: Finding[] = [];
  const step = async (check: string, fn: () => Promise<Omit<Finding, 'check'> | Array<Omit<Finding, 'check'>>>) => {
    try {
      const r = await fn();
      for (const f of Array.isArray(r) ? r : [r]) out.push({ check, ...f });
    } catch (err) {
      out.push({ check, level: 'error', message: messageOf(err), fix: (err as { hint?: string }).hint });
    }
  };
  let config: Config | undefined;
  let state: State | undefined;
  await step('config', async () => {
    config = await loadConfig(layout);
    return { level: 'ok', message: existsSync(layout.configFile) ? layout.configFile : `${layout.configFile} absent: defaults apply` };
  });
  await step('state', async () => {
    state = await loadState(layout);
    return { level: 'ok', message: `phase ${state.phase}, current ${state.current ?? 'unknown'}, previous ${state.previous ?? 'none'}` };
  });
  await step('save_env', () => checkSaveEnv(layout, config));
  await step('host uuid', async () => ({ level: 'ok', message: await detectHostUuid(layout.host, config?.boot.hostUuid) }));
  await step('grub tools', checkGrubTools);
  await step('migration tools', async () => checkMigrationTools());
  await step('stale mounts', checkStaleMounts);
  await step('grub installed', async () => checkGrubInstalled(layout));
  await step('grubenv', async () => checkGrubEnv(layout, state));
  await step('images', async () => checkImages(layout, state ?? initialState()));
  const firmware = await firmwareOf(layout.root);
  await step('firmware', async () => firmwareFinding(firmware));
  await step('image files', async () => checkImageFiles(layout, firmware));
  if (firmware.secureBoot) await step('signed kernels', async () => checkKernelSignatures(layout));
  await step('private files', async () => checkPrivateModes(layout));
  await step('space', async () => checkSpace(layout));
  await step('flasher', async () => checkFlasher(layout, state ?? initialState()));
  await step('kept files', async () => checkKeptFiles(layout));
  return out;
}

/** Machine files a reflash carried (or a dead reflash left): docs/flasher.md, "What a reflash keeps". */
async function checkKeptFiles(layout: Layout): Promise<Omit<Finding, 'check'>> {
  const archive = keptFilesArchive(layout);
  switch (await keptFilesState(layout)) {
    case 'pending':
      return { level: 'error', message: `the machine files the RAM flasher carried across a reflash (${archive}) were not restored: this system runs without its own identity, network set-up, host keys or accounts`, fix: 'upgradectl flasher restore (journalctl -u upgradectl-kept-files says why the boot-time restore did not)' };
    case 'stale':
      return { level: 'warn', message: `${archive} was packed by a commit --reflash whose flash did not happen: a root-only copy of this machine's /etc/shadow and host keys`, fix: 'upgradectl flasher restore removes it' };
    default:
      return { level: 'ok', message: 'no machine files waiting from a reflash' };
  }
}

/**
 * The RAM flasher (docs/flasher.md): needed for reflash releases and for GRUB's rescue fallback. Built
 * from an image that is no longer current, it boots a kernel and busybox the machine no longer runs,
 * which the next cleanup may delete the modules' source of: confirm rebuilds it, this says when it did not.
 */
async function checkFlasher(layout: Layout, state: State): Promise<Array<Omit<Finding, 'check'>>> {
  if (!flasherInstalled(layout)) {
    return [{ level: 'warn', message: `the RAM flasher is not installed in ${layout.flasherDir}: a release marked reflash cannot be committed, and GRUB has no rescue entry when no image can be loaded`, fix: 'upgradectl flasher install' }];
  }
  const out: Array<Omit<Finding, 'check'>> = [];
  const from = await flasherProvenance(layout);
  if (!from?.image) {
    out.push({ level: 'warn', message: 'the RAM flasher was built from an unknown image (no built-from record)', fix: 'upgradectl flasher install' });
  } else if (state.current && from.image !== state.current) {
    out.push({ level: 'warn', message: `the RAM flasher is stale: built from image ${from.image} on ${from.at.slice(0, 10)}, the current image is ${state.current}`, fix: 'upgradectl flasher install (confirm rebuilds it; see the log of the last confirm for why it did not)' });
  } else {
    out.push({ level: 'ok', message: `the RAM flasher is built from the current image ${from.image}` });
  }
  const rescue = await fs.readFile(layout.rescueJobFile, 'utf8').catch(() => undefined);
  const version = rescue && /^version (\S+)$/m.exec(rescue)?.[1];
  if (version) out.push({ level: version === state.current ? 'ok' : 'warn', message: `rescue: when no image can be loaded, the flasher re-downloads release ${version}`, ...(version === state.current ? {} : { fix: 'upgradectl grub-config --write rewrites the rescue job for the current image' }) });
  else out.push({ level: 'warn', message: 'rescue is off: no rescue job (the current image has no verified manifest with an http(s) payload, see the log of the last commit/confirm)', fix: 'set [flasher] url; an image installed by upgradectl prepare gets a rescue job at the next boot-file write (upgradectl grub-config --write)' });
  return out;
}

/** Images hold /etc/shadow and SSH host keys: anything under HOST/images readable by others is repaired now. */
async function checkPrivateModes(layout: Layout): Promise<Omit<Finding, 'check'>> {
  const fixed = await repairPrivateModes(layout);
  if (!fixed.length) return { level: 'ok', message: `${layout.imagesDir} and everything in it are root-only (0700/0600)` };
  const list = fixed.map((f) => `${path.relative(layout.host, f.path)} ${modeText(f.was)}->${modeText(f.now)}`).join(', ');
  return {
    level: 'warn',
    message: `repaired modes under ${layout.imagesDir} (were readable beyond root): ${list}`,
    fix: 'nothing more to do; find out who loosened them (an older upgradectl, a manual copy) — images hold /etc/shadow and SSH host keys',
  };
}

async function checkSaveEnv(layout: Layout, config: Config | undefined): Promise<Omit<Finding, 'check'>> {
  const v = await saveEnvCapability(layout.host);
  const where = `${layout.host} is on ${v.mount.source} (${v.mount.fstype}, mounted at ${v.mount.target})`;
  if (!v.ok) {
    if (config && !config.boot.saveEnv) {
      return { level: 'warn', message: `${where}: GRUB cannot save_env through ${v.layers.join(', ')}; fallback mode is on (save_env = false)`, fix: 'a trial that fails before userspace needs the console: see docs/grub.md' };
    }
    return {
      level: 'error',
      message: `${where}: GRUB cannot save_env through ${v.layers.join(', ')}, so a one-shot trial would never be cleared`,
      fix: 'set save_env = false in the [boot] section of upgradectl.conf (fallback mode, docs/grub.md), or keep /boot/grub on a plain partition',
    };
  }
  if (config && !config.boot.saveEnv) {
    return { level: 'warn', message: `${where}: save_env works here but is switched off`, fix: 'set save_env = true in [boot] for automatic fallback from failed trials' };
  }
  return { level: 'ok', message: `${where}: GRUB can save_env` };
}

async function checkGrubTools(): Promise<Array<Omit<Finding, 'check'>>> {
  const out: Array<Omit<Finding, 'check'>> = [];
  for (const tool of ['grub-editenv', 'grub-script-check']) {
    try {
      await run(tool, ['--version']);
      out.push({ level: 'ok', message: `${tool} found` });
    } catch {
      out.push({ level: 'error', message: `${tool} is not installed`, fix: 'apt-get install grub-common' });
    }
  }
  return out;
}

/** What commit's migration runs (src/migrate checks the same list before it touches an image). */
function checkMigrationTools(): Omit<Finding, 'check'> {
  const { all, missing, packages } = findMigrationTools();
  if (missing.length > 0) {
    return { level: 'error', message: `commit cannot migrate files: ${missing.join(', ')} not installed`, fix: `apt-get install ${packages.join(' ')}` };
  }
  return { level: 'ok', message: `found ${all.join(', ')}` };
}

/**
 * A migration killed mid-way (SIGKILL, power loss of a container) leaves its image mounted read-write
 * and attached; commit cleans that up too, but doctor says so first and frees the loop device.
 */
async function checkStaleMounts(): Promise<Array<Omit<Finding, 'check'>>> {
  const { cleaned, busy } = await cleanStaleMounts();
  const out: Array<Omit<Finding, 'check'>> = cleaned.map((c) => ({
    level: 'warn',
    message: `cleaned up a mount of ${c.image} left by an interrupted migration${c.owner ? ` (process ${c.owner})` : ''}: ${[c.unmounted ? `unmounted ${c.mountPoint}` : '', c.detached.length ? `detached ${c.detached.join(', ')}` : ''].filter(Boolean).join(', ') || 'removed its empty mount point'}`,
    fix: 'nothing more to do; if it recurs, look for what killed upgradectl in journalctl -u upgradectl',
  }));
  for (const b of busy) out.push({ level: 'ok', message: `${b.image} is mounted by the running process ${b.pid}` });
  if (out.length === 0) out.push({ level: 'ok', message: 'no mounts left by interrupted migrations' });
  return out;
}

function checkGrubInstalled(layout: Layout): Omit<Finding, 'check'> {
  const platforms = ['i386-pc', 'x86_64-efi', 'arm64-efi', 'i386-efi'].filter((p) => existsSync(path.join(layout.grubDir, p)));
  if (platforms.length === 0) {
    return {
      level: 'error',
      message: `no GRUB modules under ${layout.grubDir}: GRUB is not installed for the disk holding ${layout.host}`,
      fix: `grub-install --boot-directory=${path.join(layout.host, 'boot')} /dev/<disk> (BIOS) or with --target=x86_64-efi (UEFI)`,
    };
  }
  if (!existsSync(layout.grubCfg)) {
    return { level: 'warn', message: `GRUB (${platforms.join(', ')}) has no ${layout.grubCfg}`, fix: 'upgradectl grub-config --write' };
  }
  return { level: 'ok', message: `GRUB ${platforms.join(', ')} with ${layout.grubCfg}` };
}

async function checkGrubEnv(layout: Layout, state: State | undefined): Promise<Omit<Finding, 'check'>> {
  const r = await readGrubEnvFile(layout.grubEnv);
  if (r.kind === 'missing') return { level: 'warn', message: `${layout.grubEnv} is missing`, fix: 'upgradectl grub-config --write' };
  if (r.kind === 'corrupt') return { level: 'error', message: r.error.message, fix: 'upgradectl grub-config --write (rebuilds it from the state)' };
  const def = versionOfEntry(r.env.saved_entry);
  if (!def) return { level: state?.current ? 'error' : 'warn', message: `${layout.grubEnv} names no upgradectl default (saved_entry=${r.env.saved_entry ?? ''})`, fix: 'upgradectl grub-config --write' };
  if (!existsSync(layout.imageFile(def))) return { level: 'error', message: `the default image ${layout.imageFile(def)} is missing`, fix: 'upgradectl grub-config --write, or upgradectl rollback' };
  // GRUB's count of the default's starts (docs/grub.md): set between GRUB and the boot's reconciliation.
  const starts = r.env[DEFAULT_TRIES_VAR] ? `, ${r.env[DEFAULT_TRIES_VAR]} start(s) of it not yet cleared by the booted OS (${DEFAULT_TRIES_VAR})` : '';
  return { level: 'ok', message: `default ${def}${r.env.next_entry ? `, one-shot ${r.env.next_entry}` : ''}${starts}` };
}

async function checkImages(layout: Layout, state: State): Promise<Array<Omit<Finding, 'check'>>> {
  const images = await bootImages(layout);
  if (images.length === 0) return [{ level: 'warn', message: `no images under ${layout.imagesDir}`, fix: 'upgradectl prepare' }];
  const out: Array<Omit<Finding, 'check'>> = [];
  for (const e of orderEntries(images, state, layout)) {
    const file = layout.imageFile(e.version);
    const missing: string[] = [];
    for (const p of [e.kernel, e.initrd]) {
      const found = await resolveInImage(file, p);
      if ('missing' in found) missing.push(`${p} (${found.missing})`);
    }
    if (!existsSync(layout.manifestFile(e.version))) {
      out.push({ level: 'warn', message: `${e.version} has no manifest: its entry uses /vmlinuz and /initrd.img`, fix: `upgradectl prepare ${e.version} restores it` });
    }
    out.push(
      missing.length
        ? { level: 'error', message: `${file} lacks ${missing.join(', ')}: its boot entry cannot start`, fix: 'rebuild the image with a kernel and initrd at those paths (upgradectl image build)' }
        : { level: 'ok', message: `${e.version}: ${e.kernel} and ${e.initrd} present` },
    );
  }
  return out;
}

async function checkSpace(layout: Layout): Promise<Omit<Finding, 'check'>> {
  if (!existsSync(layout.imagesDir)) return { level: 'warn', message: `${layout.imagesDir} does not exist`, fix: 'upgradectl prepare creates it' };
  const st = await fs.statfs(layout.imagesDir);
  const free = st.bavail * st.bsize;
  let largest = 0;
  for (const img of await listImages(layout)) largest = Math.max(largest, img.bytes);
  const gib = (n: number) => `${(n / 2 ** 30).toFixed(1)} GiB`;
  if (largest > 0 && free < largest) {
    return { level: 'warn', message: `${gib(free)} free under ${layout.imagesDir}, less than one image (${gib(largest)})`, fix: 'remove images that are neither current nor previous, or grow the host partition' };
  }
  return { level: 'ok', message: `${gib(free)} free under ${layout.imagesDir}${largest ? ` (largest image ${gib(largest)})` : ''}` };
}
