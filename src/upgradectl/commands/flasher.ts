import type { Command } from '../cli.js';
import { loadConfig } from '../../operations/config.js';
import { installFlasher } from '../../operations/flasher-install.js';

export const flasherInstallCommand: Command = {
  summary: 'install the RAM flasher (kernel + initrd under HOST/boot/upgradectl/flasher/) and its GRUB entry',
  usage: 'flasher install [--kernel FILE --modules-dir DIR] [--busybox FILE] [--lz4 FILE]',
  options: {
    kernel: { type: 'string' },
    'modules-dir': { type: 'string' },
    busybox: { type: 'string' },
    lz4: { type: 'string' },
  },
  async run({ layout, options }) {
    const config = await loadConfig(layout);
    const str = (k: string) => (typeof options[k] === 'string' ? (options[k] as string) : undefined);
    const r = await installFlasher(layout, config, { kernel: str('kernel'), modulesDir: str('modules-dir'), busybox: str('busybox'), lz4: str('lz4') });
    return {
      data: r,
      text: `installed the RAM flasher: ${r.kernel}, ${r.initrd} (${(r.initrdBytes / 1048576).toFixed(1)} MiB, ${r.modules.length} modules); grub.cfg has its entry\n  next: upgradectl commit --reflash VERSION`,
    };
  },
};
