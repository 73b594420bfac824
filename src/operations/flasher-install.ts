import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readJsonIfExists, writeFileDurable } from '../core/durable.js';
import { UpgradeError, messageOf } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { acquireLock } from '../core/lock.js';
import { buildFlasherInitrd } from '../flasher/initrd.js';
import { checkpointHost } from '../grub/host-fs.js';
import { log } from '../core/log.js';
import { bootedVersion, writeBootFiles } from './boot.js';
import { flasherInstalled } from '../grub/boot-files.js';
import type { Config } from './config.js';
import { loadState } from './state.js';

/**
 * `upgradectl flasher install`: the RAM flasher under HOST/boot/upgradectl/flasher/ — the running
 * image's kernel and an initrd built from the running image's busybox-static, lz4 and that kernel's
 * modules — and its GRUB entry (docs/flasher.md). Everything comes from the root (`--root`), so what
 * the flasher runs is what this image runs; the options point elsewhere (the boot tests use the build
 * machine's kernel).
 */
export interface FlasherInstallOptions {
  /** Kernel to boot; default <root>/boot/vmlinuz-<running release>, else <root>/vmlinuz. */
  kernel?: string;
  /** That kernel's /lib/modules/<release>; default <root>/lib/modules/<running release>. */
  modulesDir?: string;
  busybox?: string;
  lz4?: string;
  /** Debian's dropbear for SSH into the flasher; default <root>/usr/sbin/dropbear when installed, else no SSH. */
  dropbear?: string;
  /** openssl for fast SHA-256; default <root>/usr/bin/openssl when installed, else busybox hashes. */
  openssl?: string;
}

export interface FlasherInstallResult {
  kernel: string;
  initrd: string;
  initrdBytes: number;
  modules: string[];
  /** Whether the initrd has dropbear (SSH with the keys of flasher add-key). */
  ssh: boolean;
  /** The image whose kernel, busybox and lz4 the flasher was built from. */
  builtFrom?: string;
}

/**
 * HOST/boot/upgradectl/flasher/built-from: which image built the flasher, and with which options, so
 * that doctor can tell a flasher built by an image that is no longer current, and confirm can rebuild
 * it from the new image the same way.
 */
export interface FlasherProvenance {
  image?: string;
  options: FlasherInstallOptions;
  at: string;
}

const provenanceFile = (layout: Layout) => path.join(layout.flasherDir, 'built-from');

export async function flasherProvenance(layout: Layout): Promise<FlasherProvenance | undefined> {
  return readJsonIfExists<FlasherProvenance>(provenanceFile(layout));
}

function firstExisting(what: string, candidates: string[], hint: string): string {
  const found = candidates.find((c) => existsSync(c));
  if (!found) throw new UpgradeError('NOT_FOUND', `no ${what} (looked for ${candidates.join(', ')})`, { hint });
  return found;
}

export async function installFlasher(layout: Layout, config: Config, opts: FlasherInstallOptions = {}): Promise<FlasherInstallResult> {
  const release = os.release();
  const r = (p: string) => path.join(layout.root, p);
  if (opts.kernel && !opts.modulesDir) {
    throw new UpgradeError('USAGE', '--kernel needs --modules-dir: the flasher loads modules of the kernel it boots', { hint: 'add --modules-dir /lib/modules/<that kernel release>' });
  }
  const kernel = firstExisting('kernel of the running image', opts.kernel ? [opts.kernel] : [r(`boot/vmlinuz-${release}`), r('vmlinuz')], 'pass --kernel FILE --modules-dir DIR');
  const modulesDir = opts.modulesDir ?? r(`lib/modules/${release}`);
  if (!existsSync(path.join(modulesDir, 'modules.dep'))) {
    throw new UpgradeError('NOT_FOUND', `no modules.dep in ${modulesDir}`, { hint: 'pass --modules-dir /lib/modules/<release of the flasher kernel>, or run depmod' });
  }
  // Given paths are checked too: confirm rebuilds with the options of the last install (built-from).
  const busybox = firstExisting('busybox', opts.busybox ? [opts.busybox] : [r('bin/busybox'), r('usr/bin/busybox')], 'apt-get install busybox-static, or upgradectl flasher install --busybox FILE');
  const lz4 = firstExisting('lz4', opts.lz4 ? [opts.lz4] : [r('usr/bin/lz4'), r('bin/lz4')], 'apt-get install lz4');
  const dropbear = opts.dropbear
    ? firstExisting('dropbear', [opts.dropbear], 'apt-get install dropbear-bin')
    : [r('usr/sbin/dropbear')].find((c) => existsSync(c));
  if (!dropbear) log.warn('no dropbear in this image (apt-get install dropbear-bin): the flasher will have no SSH');
  const openssl = opts.openssl ? firstExisting('openssl', [opts.openssl], 'apt-get install openssl') : [r('usr/bin/openssl')].find((c) => existsSync(c));
  if (!openssl) log.info('no openssl in this image: the flasher hashes with busybox (several times slower on a large image)');
  // Built before the lock: it only reads, and takes a few seconds.
  const built = await buildFlasherInitrd({ busybox, lz4, modulesDir, dropbear, openssl });

  const lock = await acquireLock(layout, 'flasher install');
  try {
    await fs.mkdir(layout.flasherDir, { recursive: true, mode: 0o755 });
    const kernelOut = layout.flasherKernel;
    const initrdOut = layout.flasherInitrd;
    await writeFileDurable(kernelOut, await fs.readFile(kernel), 0o644);
    await writeFileDurable(initrdOut, built.data, 0o644);
    const state = await loadState(layout);
    const builtFrom = (await bootedVersion(layout)) ?? state.current;
    const provenance: FlasherProvenance = { image: builtFrom, options: opts, at: new Date().toISOString() };
    await writeFileDurable(provenanceFile(layout), `${JSON.stringify(provenance, null, 2)}\n`, 0o644);
    // Both files exist now, so grub.cfg gets the flasher entry (and the rescue entry, with its job).
    await writeBootFiles(layout, config, state);
    return { kernel: kernelOut, initrd: initrdOut, initrdBytes: built.data.length, modules: built.modules, ssh: Boolean(dropbear), builtFrom };
  } finally {
    await lock.release();
  }
}

/**
 * After a confirm made `version` the current image: rebuild an installed flasher from it. This is the
 * safe moment: the new image runs and passed its health checks, and its kernel is the running one, so
 * the modules the initrd takes match the kernel it boots. At commit the new image has never booted (a
 * flasher built from it could fail exactly when needed); left alone, the flasher keeps the old image's
 * kernel and busybox, which the next upgrade may delete with the old image's release. Never fails the
 * confirm: the upgrade is done, a flasher that could not be rebuilt is logged and doctor reports it.
 */
export async function refreshFlasherAfterConfirm(layout: Layout, config: Config, version: string): Promise<string | undefined> {
  if (!flasherInstalled(layout)) return undefined;
  const from = await flasherProvenance(layout).catch(() => undefined);
  if (from?.image === version) return undefined;
  try {
    const r = await installFlasher(layout, config, from?.options ?? {});
    log.info(`the RAM flasher was rebuilt from ${version} (it was built from ${from?.image ?? 'an unknown image'})`);
    return `rebuilt from ${r.builtFrom ?? version}`;
  } catch (err) {
    log.warn(`the RAM flasher could not be rebuilt from ${version}: ${messageOf(err)}; it still runs the kernel of ${from?.image ?? 'an older image'} (upgradectl doctor)`);
    return `not rebuilt: ${messageOf(err)}`;
  }
}

/** Key types an OpenSSH authorized_keys line may start with that dropbear 2022 accepts. */
const KEY_LINE = /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\n]*)?$/;

/**
 * `upgradectl flasher add-key FILE`: an operator's SSH public key for root in the flasher (docs/flasher.md,
 * "SSH"). Kept on the host partition, root-only, and read by the flasher at each of its boots, so adding
 * a key needs no rebuild of the initrd; the flasher refuses the file unless root wrote it.
 */
export async function addFlasherKey(layout: Layout, publicKey: string): Promise<{ file: string; added: boolean; keys: number }> {
  const line = publicKey.trim();
  if (line.includes('\n') || !KEY_LINE.test(line)) {
    throw new UpgradeError('USAGE', 'not one SSH public key line (ssh-ed25519, ssh-rsa or ecdsa-sha2-…, as in id_ed25519.pub)', { hint: 'pass the .pub file: upgradectl flasher add-key ~/.ssh/id_ed25519.pub' });
  }
  const file = path.join(layout.flasherDir, 'authorized_keys');
  const lock = await acquireLock(layout, 'flasher add-key');
  try {
    const old = await fs.readFile(file, 'utf8').catch(() => '');
    const lines = old.split('\n').filter(Boolean);
    const key = line.split(' ').slice(0, 2).join(' ');
    const added = !lines.some((l) => l.split(' ').slice(0, 2).join(' ') === key);
    if (added) lines.push(line);
    await fs.mkdir(layout.flasherDir, { recursive: true, mode: 0o755 });
    // Root-only and durable: the flasher reads it from the host partition without replaying the journal.
    await writeFileDurable(file, `${lines.join('\n')}\n`, 0o600);
    await checkpointHost(layout.host);
    return { file, added, keys: lines.length };
  } finally {
    await lock.release();
  }
}
