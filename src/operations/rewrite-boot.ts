import { UpgradeError } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { acquireLock } from '../core/lock.js';
import type { BootFilesResult } from '../grub/boot-files.js';
import { bootImages, writeBootFiles } from './boot.js';
import type { Config } from './config.js';
import { reconcile } from './reconcile/index.js';
import { loadState } from './state.js';

/**
 * grub-config --write: rewrite grub.cfg and grubenv from the state and the images on disk, under the
 * operation lock (a commit or confirm in flight owns the boot files). Refuses to write a menu with no
 * image in it: GRUB would then sit at its prompt forever.
 */
export async function rewriteBootFiles(layout: Layout, config: Config, opts: { ifAdopted?: boolean } = {}): Promise<BootFilesResult | undefined> {
  // The kernel hook (kernel/zz-upgradectl) runs on every Debian machine with the package: only an
  // adopted one has a grub.cfg of ours that update-grub has just replaced.
  if (opts.ifAdopted && !(await loadState(layout)).adopted) return undefined;
  await reconcile(layout);
  const lock = await acquireLock(layout, 'grub-config');
  try {
    if ((await bootImages(layout)).length === 0) {
      throw new UpgradeError('NOT_FOUND', `no images under ${layout.imagesDir}: a grub.cfg without entries would leave the machine at a GRUB prompt`, {
        hint: 'prepare an image first (upgradectl prepare VERSION), then run upgradectl grub-config --write',
      });
    }
    return await writeBootFiles(layout, config, await loadState(layout));
  } finally {
    await lock.release();
  }
}
