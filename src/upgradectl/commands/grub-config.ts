import { checkGrubScript } from '../../grub/boot-files.js';
import type { Command } from '../cli.js';
import { loadConfig } from '../../operations/config.js';
import { renderForState } from '../../operations/boot.js';
import { rewriteBootFiles } from '../../operations/rewrite-boot.js';
import { loadState } from '../../operations/state.js';

export const grubConfigCommand: Command = {
  summary: 'print the grub.cfg that would be written (--write installs it, --fragment for /etc/grub.d)',
  usage: 'grub-config [--fragment] [--write [--if-adopted]]',
  options: { fragment: { type: 'boolean' }, write: { type: 'boolean' }, 'if-adopted': { type: 'boolean' } },
  async run({ layout, options }) {
    const config = await loadConfig(layout);
    if (options.write) {
      const r = await rewriteBootFiles(layout, config, { ifAdopted: Boolean(options['if-adopted']) });
      if (!r) return { data: { written: null, reason: 'not adopted' }, text: 'this machine was not adopted: nothing to write' };
      return { data: { written: layout.grubCfg, env: r.env, checkpoint: r.checkpoint }, text: `wrote ${layout.grubCfg} and ${layout.grubEnv}` };
    }
    const state = await loadState(layout);
    const text = await renderForState(layout, config, state, Boolean(options.fragment));
    // update-grub pastes this into grub.cfg: never hand it something GRUB cannot parse.
    await checkGrubScript(text);
    return { data: { config: text }, text };
  },
};
