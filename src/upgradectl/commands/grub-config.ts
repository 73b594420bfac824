import { checkGrubScript, renderForLayout, writeBootFiles } from '../../grub/boot-files.js';
import type { Command } from '../cli.js';
import { loadConfig } from '../../operations/config.js';
import { acquireLock } from '../../core/lock.js';
import { reconcile } from '../../operations/reconcile.js';
import { loadState } from '../../operations/state.js';

export const grubConfigCommand: Command = {
  summary: 'print the grub.cfg that would be written (--write installs it, --fragment for /etc/grub.d)',
  usage: 'grub-config [--fragment] [--write]',
  options: { fragment: { type: 'boolean' }, write: { type: 'boolean' } },
  async run({ layout, options }) {
    const config = await loadConfig(layout);
    if (options.write) {
      await reconcile(layout);
      // Under the operation lock: a commit or confirm in flight owns the boot files.
      const lock = await acquireLock(layout, 'grub-config');
      try {
        const state = await loadState(layout);
        const r = await writeBootFiles(layout, config, state);
        return { data: { written: layout.grubCfg, env: r.env, checkpoint: r.checkpoint }, text: `wrote ${layout.grubCfg} and ${layout.grubEnv}` };
      } finally {
        await lock.release();
      }
    }
    const state = await loadState(layout);
    const text = await renderForLayout(layout, config, state, Boolean(options.fragment));
    // update-grub pastes this into grub.cfg: never hand it something GRUB cannot parse.
    await checkGrubScript(text);
    return { data: { config: text }, text };
  },
};
