import { createHash } from 'node:crypto';
import { accessSync, constants, existsSync, promises as fs, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../../src/core/exec.js';
import { buildOnce } from './build-once.js';

/**
 * A realistic Debian root (debootstrap --variant=minbase bookworm) for tests that need real /etc
 * files, real account databases and a real login.defs. Building it takes ~40 s and 260 MB, so it is
 * built once per machine and cached as a tarball; a fresh CI machine pays for it on first use.
 *
 * Cache: $UPGRADECTL_TEST_CACHE, else /var/cache/upgradectl-test when writable (shared by every
 * checkout on the machine), else the repository's gitignored .cache/.
 * Mirror: $DEBIAN_MIRROR, else the Debian mirror apt is configured with, else deb.debian.org.
 */

export const SUITE = 'bookworm';

/** What is installed on top of debootstrap's minbase. Each flavour is its own cached tarball. */
export interface DebianFlavour {
  name: string;
  include: string[];
}

/** Real /etc files and account databases: the migration tests. */
export const MINBASE: DebianFlavour = { name: 'minbase', include: [] };

/**
 * What a bootable image running upgradectl needs besides Node: systemd as init, udev (systemd-networkd
 * waits for udev to initialise a link before configuring it), grub-common (grub-script-check checks
 * every grub.cfg before it is installed), attr (migration copies extended attributes with getfattr and
 * setfattr) and the CA bundle for https:// sources.
 */
export const SYSTEMD: DebianFlavour = { name: 'systemd', include: ['systemd-sysv', 'udev', 'grub-common', 'ca-certificates', 'attr'] };
const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export function cacheDir(): string {
  if (process.env.UPGRADECTL_TEST_CACHE) return process.env.UPGRADECTL_TEST_CACHE;
  const system = '/var/cache/upgradectl-test';
  try {
    accessSync(existsSync(system) ? system : path.dirname(system), constants.W_OK);
    return system;
  } catch {
    return path.join(repoRoot, '.cache');
  }
}

/** The mirror apt on this machine already uses, so the tests download from where the OS does. */
export function debianMirror(): string {
  if (process.env.DEBIAN_MIRROR) return process.env.DEBIAN_MIRROR;
  const files: string[] = [];
  if (existsSync('/etc/apt/sources.list')) files.push('/etc/apt/sources.list');
  if (existsSync('/etc/apt/sources.list.d')) {
    for (const f of readdirSync('/etc/apt/sources.list.d')) files.push(path.join('/etc/apt/sources.list.d', f));
  }
  for (const file of files) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    // deb822 (`URIs: …`) and one-line (`deb URI suite …`) formats; the main archive, not -security.
    for (const m of text.matchAll(/^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)/gm)) {
      const uri = m[1] ?? '';
      if (/^https?:\/\/.*\/debian\/?$/.test(uri)) return uri;
    }
  }
  return 'http://deb.debian.org/debian';
}

/** Where the flavour's tarball is cached. The package list is part of the name: adding a package must not reuse a tarball built without it. */
function tarballPath(flavour: DebianFlavour): string {
  const packages = createHash('sha256').update(flavour.include.join(',')).digest('hex').slice(0, 8);
  return path.join(cacheDir(), flavour.include.length ? `debian-${SUITE}-${flavour.name}-${packages}.tar` : `debian-${SUITE}-${flavour.name}.tar`);
}

/** The cached tarball when an earlier run built it, else undefined (for tests that use it only when it is there). */
export function cachedDebianRootTarball(flavour: DebianFlavour = MINBASE): string | undefined {
  const tarball = tarballPath(flavour);
  return existsSync(tarball) ? tarball : undefined;
}

/** Path of the cached tarball, building it first when it is missing. */
export async function debianRootTarball(flavour: DebianFlavour = MINBASE): Promise<string> {
  const tarball = tarballPath(flavour);
  const name = path.basename(tarball);
  return buildOnce(tarball, async (work) => {
    const target = path.join(work, 'root');
    const include = flavour.include.length > 0 ? [`--include=${flavour.include.join(',')}`] : [];
    await run('debootstrap', ['--variant=minbase', ...include, SUITE, target, debianMirror()], { timeoutMs: 15 * 60_000 });
    // Nothing of the build host may leak in: drop the apt cache and debootstrap's own leftovers.
    await fs.rm(path.join(target, 'var/cache/apt/archives'), { recursive: true, force: true });
    await fs.mkdir(path.join(target, 'var/cache/apt/archives/partial'), { recursive: true });
    const tmp = path.join(work, name);
    await run('tar', ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--acls', '-C', target, '-cf', tmp, '.']);
    await fs.rename(tmp, tarball);
  });
}

/**
 * Unpack the cached Debian root into `dest` (created if needed). `only` limits it to some top-level
 * paths (e.g. ['etc']) when a test needs a realistic /etc but not a whole OS.
 */
export async function extractDebianRoot(dest: string, opts: { only?: string[]; flavour?: DebianFlavour } = {}): Promise<void> {
  const tarball = await debianRootTarball(opts.flavour);
  await fs.mkdir(dest, { recursive: true });
  const members = (opts.only ?? []).map((p) => `./${p.replace(/^\/+/, '')}`);
  await run('tar', ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--acls', '-C', dest, '-xf', tarball, ...members]);
}

/**
 * A whole-filesystem ext4 image of `tree`, as `prepare` leaves them: `mke2fs -d` into a sparse file.
 * `size` is mke2fs's size argument (e.g. '64M', '1G').
 */
export async function makeExt4Image(tree: string, file: string, size: string): Promise<void> {
  await run('mke2fs', ['-q', '-t', 'ext4', '-d', tree, '-F', file, size], { timeoutMs: 120_000 });
}
