import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Layout } from './layout.js';

const KERNEL_BOOT_ID = '/proc/sys/kernel/random/boot_id';

/**
 * The kernel's id of this boot: tells one boot from the next, for the lifecycle (was this reset
 * between commit and now?) and for the lock (a holder from an earlier boot is gone whatever its pid).
 * Read under the root, so tests and the demo can stage a reboot; a temporary root with no boot id of
 * its own runs in this kernel's boot.
 */
export function readBootId(layout: Layout): string | undefined {
  const underRoot = path.join(layout.root, KERNEL_BOOT_ID);
  const file = existsSync(underRoot) ? underRoot : KERNEL_BOOT_ID;
  try {
    return readFileSync(file, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}
