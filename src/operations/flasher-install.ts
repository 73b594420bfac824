import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeFileDurable } from '../core/durable.js';
import { UpgradeError } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { acquireLock } from '../core/lock.js';
import { buildFlasherInitrd } from '../flasher/initrd.js';
import { writeBootFiles } from './boot.js';
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
}

export interface FlasherInstallResult {
  kernel: string;
  initrd: string;
  initrdBytes: number;
  modules: string[];
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
  const kernel = opts.kernel ?? firstExisting('kernel of the running image', [r(`boot/vmlinuz-${release}`), r('vmlinuz')], 'pass --kernel FILE --modules-dir DIR');
  const modulesDir = opts.modulesDir ?? r(`lib/modules/${release}`);
  if (!existsSync(path.join(modulesDir, 'modules.dep'))) {
    throw new UpgradeError('NOT_FOUND', `no modules.dep in ${modulesDir}`, { hint: 'pass --modules-dir /lib/modules/<release of the flasher kernel>, or run depmod' });
  }
  const busybox = opts.busybox ?? firstExisting('busybox', [r('bin/busybox'), r('usr/bin/busybox')], 'apt-get install busybox-static');
  const lz4 = opts.lz4 ?? firstExisting('lz4', [r('usr/bin/lz4'), r('bin/lz4')], 'apt-get install lz4');
  // Built before the lock: it only reads, and takes a few seconds.
  const built = await buildFlasherInitrd({ busybox, lz4, modulesDir });

  const lock = await acquireLock(layout, 'flasher install');
  try {
    await fs.mkdir(layout.flasherDir, { recursive: true, mode: 0o755 });
    const kernelOut = path.join(layout.flasherDir, 'vmlinuz');
    const initrdOut = path.join(layout.flasherDir, 'initrd.img');
    await writeFileDurable(kernelOut, await fs.readFile(kernel), 0o644);
    await writeFileDurable(initrdOut, built.data, 0o644);
    // Both files exist now, so grub.cfg gets the flasher entry.
    await writeBootFiles(layout, config, await loadState(layout));
    return { kernel: kernelOut, initrd: initrdOut, initrdBytes: built.data.length, modules: built.modules };
  } finally {
    await lock.release();
  }
}
