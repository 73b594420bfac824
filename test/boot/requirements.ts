import type { Requirement } from '../helpers/requirements.js';

/**
 * What every boot test needs on the machine. Root: mkinitramfs reads /lib/modules and writes device
 * nodes. In CI (CI=true) skipUnless never skips, so a missing package fails the suite loudly.
 */
export const BOOT_REQUIREMENTS: Requirement = {
  root: true,
  commands: ['qemu-system-x86_64', 'mkinitramfs', 'unmkinitramfs', 'grub-mkimage', 'grub-script-check', 'sfdisk', 'mke2fs', 'debugfs', 'e2fsck', 'zstd', 'busybox'],
};
