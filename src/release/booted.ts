import { readFileSync } from 'node:fs';
import type { Layout } from '../upgradectl/paths.js';

/**
 * The image this machine booted, from `upgradectl.loop=/images/<version>.img` on the kernel command
 * line (DIR/proc/cmdline); undefined when not booted from an image (first install, chroot, tests).
 */
export function bootedVersion(layout: Layout): string | undefined {
  let cmdline: string;
  try {
    cmdline = readFileSync(layout.cmdlineFile, 'utf8');
  } catch {
    return undefined;
  }
  const m = /(?:^|\s)upgradectl\.loop=\/images\/([^\s/]+)\.img(?:\s|$)/.exec(cmdline);
  return m?.[1];
}
