import { createHash } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UpgradeError } from '../../src/core/errors.js';
import { run } from '../../src/core/exec.js';
import { cacheDir } from '../helpers/debian-root.js';

/**
 * The kernel every boot test runs: Debian's linux-image-amd64 as installed on this machine (read from
 * /boot, never written), with an initramfs built by this machine's initramfs-tools from OUR hooks in
 * initramfs-hooks/. The initramfs is cached; its name carries a hash of everything that goes into it,
 * so editing a hook rebuilds it on the next run and nothing else does.
 */

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const HOOKS_DIR = path.join(repoRoot, 'initramfs-hooks');

/**
 * Only what a VM needs to find its disk and loop-mount an image (FACTS.md: 7.4 MB, ~2 s to build,
 * against ~60 MB for MODULES=most). virtio_blk is what the tests use; the rest cover IDE/SATA/SCSI
 * disks so a failing test can be rerun with another -drive if=.
 */
export const INITRAMFS_MODULES = ['loop', 'ext4', 'virtio_pci', 'virtio_blk', 'virtio_scsi', 'ata_piix', 'ahci', 'sd_mod'];

const INITRAMFS_CONF = [
  'MODULES=list',
  'BUSYBOX=y',
  'KEYMAP=n',
  'COMPRESS=zstd',
  'DEVICE=',
  'NFSROOT=auto',
  'RUNSIZE=10%',
  'FSTYPE=auto',
  '',
].join('\n');

/** Files of initramfs-hooks/ that mkinitramfs reads: the hook and the boot scripts. */
const HOOK_FILES = ['hooks/upgradectl', 'scripts/local-bottom/upgradectl'];

export interface BootKernel {
  /** `uname -r` of the kernel, e.g. 6.1.0-56-amd64. */
  release: string;
  vmlinuz: string;
  /** Built with initramfs-hooks/, cached. */
  initrd: string;
  /** Seconds spent building the initramfs in this call; 0 when it came from the cache. */
  buildSeconds: number;
}

/** The newest installed kernel that has its modules, by version order (6.1.0-10 < 6.1.0-56). */
export async function newestKernel(): Promise<{ release: string; vmlinuz: string }> {
  const names = (await fs.readdir('/boot')).filter((n) => n.startsWith('vmlinuz-'));
  const releases = names
    .map((n) => n.slice('vmlinuz-'.length))
    .filter((r) => existsSync(path.join('/lib/modules', r, 'modules.dep')))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const release = releases.at(-1);
  if (!release) {
    throw new UpgradeError('NOT_FOUND', 'no kernel with modules in /boot and /lib/modules', {
      hint: 'apt-get install linux-image-amd64',
    });
  }
  return { release, vmlinuz: path.join('/boot', `vmlinuz-${release}`) };
}

/** The kernel plus an initramfs with our hooks, building the initramfs when its inputs changed. */
export async function bootKernel(): Promise<BootKernel> {
  const { release, vmlinuz } = await newestKernel();
  const dir = path.join(cacheDir(), 'boot');
  await fs.mkdir(dir, { recursive: true });

  const hash = createHash('sha256');
  hash.update(`${release}\n${INITRAMFS_CONF}\n${INITRAMFS_MODULES.join(' ')}\n`);
  for (const rel of HOOK_FILES) {
    const file = path.join(HOOKS_DIR, rel);
    const st = await fs.stat(file);
    // The mode is part of the input: initramfs-tools silently skips a boot script that is not executable.
    hash.update(`${rel} ${(st.mode & 0o777).toString(8)}\n`).update(await fs.readFile(file));
  }
  // initramfs-tools itself (its init and functions) changes what the initramfs does.
  hash.update(await fs.readFile('/usr/share/initramfs-tools/init'));
  hash.update(await fs.readFile('/usr/share/initramfs-tools/scripts/functions'));
  const key = hash.digest('hex').slice(0, 16);
  const initrd = path.join(dir, `initrd-${release}-${key}.img`);
  if (existsSync(initrd)) return { release, vmlinuz, initrd, buildSeconds: 0 };

  const started = performance.now();
  const work = await fs.mkdtemp(path.join(dir, 'initramfs-build-'));
  try {
    const conf = path.join(work, 'conf');
    await fs.mkdir(path.join(conf, 'conf.d'), { recursive: true });
    await fs.writeFile(path.join(conf, 'initramfs.conf'), INITRAMFS_CONF);
    await fs.writeFile(path.join(conf, 'modules'), `${INITRAMFS_MODULES.join('\n')}\n`);
    for (const rel of HOOK_FILES) {
      await fs.mkdir(path.dirname(path.join(conf, rel)), { recursive: true });
      await fs.copyFile(path.join(HOOKS_DIR, rel), path.join(conf, rel));
      await fs.chmod(path.join(conf, rel), (await fs.stat(path.join(HOOKS_DIR, rel))).mode & 0o777);
    }
    const tmp = path.join(work, 'initrd.img');
    await run('mkinitramfs', ['-d', conf, '-o', tmp, release], { timeoutMs: 300_000 });
    await assertHasOurScript(tmp);
    // Older builds are dead weight: only the current key is ever used again.
    for (const old of await fs.readdir(dir)) {
      if (old.startsWith('initrd-') && old.endsWith('.img')) await fs.rm(path.join(dir, old), { force: true });
    }
    await fs.rename(tmp, initrd);
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
  return { release, vmlinuz, initrd, buildSeconds: (performance.now() - started) / 1000 };
}

/**
 * mkinitramfs succeeds even when it leaves a boot script out (not executable, odd name) or keeps
 * busybox's losetup instead of ours, and such an initramfs fails only at boot, with a worse message.
 * Catch that here, where the message can say why.
 */
async function assertHasOurScript(initrd: string): Promise<void> {
  const out = `${initrd}.unpacked`;
  try {
    await run('unmkinitramfs', [initrd, out], { timeoutMs: 120_000 });
    // With early microcode the main archive is unpacked into main/.
    const root = existsSync(path.join(out, 'main')) ? path.join(out, 'main') : out;
    const order = await fs.readFile(path.join(root, 'scripts/local-bottom/ORDER'), 'utf8').catch(() => '');
    if (!order.includes('/scripts/local-bottom/upgradectl')) {
      throw new UpgradeError('IMAGE', `the initramfs built from ${HOOKS_DIR} does not run scripts/local-bottom/upgradectl`, {
        hint: 'make initramfs-hooks/scripts/local-bottom/upgradectl executable (chmod 755)',
      });
    }
    const busybox = (await fs.stat(path.join(root, 'bin/busybox')).catch(() => undefined))?.ino;
    for (const tool of ['sbin/losetup', 'sbin/e2fsck', 'sbin/fsck']) {
      const st = await fs.stat(path.join(root, tool)).catch(() => undefined);
      if (!st || st.ino === busybox) {
        throw new UpgradeError('IMAGE', `the initramfs built from ${HOOKS_DIR} lacks the real ${tool} (${st ? 'busybox applet' : 'missing'})`, {
          hint: 'check initramfs-hooks/hooks/upgradectl: it must replace busybox links with copy_exec',
        });
      }
    }
  } finally {
    await fs.rm(out, { recursive: true, force: true });
  }
}
