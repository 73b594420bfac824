import type { Command } from '../cli.js';
import { loadConfig } from '../../operations/config.js';
import { promises as fs } from 'node:fs';
import { UpgradeError } from '../../core/errors.js';
import { addFlasherKey, installFlasher } from '../../operations/flasher-install.js';
import { restoreKeptFiles } from '../../operations/kept-files.js';

export const flasherInstallCommand: Command = {
  summary: 'install the RAM flasher (kernel + initrd under HOST/boot/upgradectl/flasher/) and its GRUB entry',
  usage: 'flasher install [--kernel FILE --modules-dir DIR] [--busybox FILE] [--lz4 FILE] [--dropbear FILE] [--openssl FILE]',
  options: {
    kernel: { type: 'string' },
    'modules-dir': { type: 'string' },
    busybox: { type: 'string' },
    lz4: { type: 'string' },
    dropbear: { type: 'string' },
    openssl: { type: 'string' },
  },
  async run({ layout, options }) {
    const config = await loadConfig(layout);
    const str = (k: string) => (typeof options[k] === 'string' ? (options[k] as string) : undefined);
    const r = await installFlasher(layout, config, { kernel: str('kernel'), modulesDir: str('modules-dir'), busybox: str('busybox'), lz4: str('lz4'), dropbear: str('dropbear'), openssl: str('openssl') });
    return {
      data: r,
      text: `installed the RAM flasher: ${r.kernel}, ${r.initrd} (${(r.initrdBytes / 1048576).toFixed(1)} MiB, ${r.modules.length} modules${r.ssh ? ', SSH: upgradectl flasher add-key KEY.pub' : ', no SSH: apt-get install dropbear-bin and install again'}); grub.cfg has its entry\n  next: upgradectl commit --reflash VERSION`,
    };
  },
};

export const flasherAddKeyCommand: Command = {
  summary: "let an SSH public key log in to the RAM flasher as root (while it works, or when it stays up)",
  usage: 'flasher add-key PUBKEY_FILE',
  options: {},
  async run({ layout, positionals }) {
    const from = positionals[0];
    if (!from) throw new UpgradeError('USAGE', 'flasher add-key needs the public key file', { hint: 'upgradectl flasher add-key ~/.ssh/id_ed25519.pub' });
    const r = await addFlasherKey(layout, await fs.readFile(from, 'utf8'));
    return { data: r, text: `${r.added ? 'added' : 'already there'}: ${from} (${r.keys} key${r.keys === 1 ? '' : 's'} in ${r.file}); the flasher reads them at each of its boots` };
  },
};

export const flasherRestoreCommand: Command = {
  summary: "restore this machine's files kept across a reflash (run once at the reflashed system's first boot by upgradectl-kept-files.service)",
  usage: 'flasher restore',
  options: {},
  async run({ layout }) {
    const r = await restoreKeptFiles(layout);
    if (!r) return { data: { restored: false }, text: 'nothing to restore: no machine files kept across a reflash' };
    const left = r.leftOut.length ? `; left out (mount points of the running system): ${r.leftOut.join(', ')}` : '';
    return {
      data: { restored: true, ...r },
      text: `restored ${r.moved} machine files kept across the reflash (${r.bytes} bytes${r.accounts ? ', accounts merged' : ''})${left}`,
    };
  },
};
