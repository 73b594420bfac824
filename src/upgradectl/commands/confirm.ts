import type { Command } from '../cli.js';
import { loadConfig } from '../../operations/config.js';
import { reconcile } from '../../operations/reconcile/index.js';
import { confirm } from '../../operations/confirm.js';

export const confirmCommand: Command = {
  summary: 'on a trial boot: health checks, then make it the default (or roll back)',
  usage: 'confirm [--no-reboot] [--if-trial]',
  options: { 'no-reboot': { type: 'boolean' }, 'if-trial': { type: 'boolean' } },
  async run({ layout, options }) {
    const config = await loadConfig(layout);
    if (options['if-trial']) {
      // For the boot unit, which runs on every boot: outside a trial there is nothing to confirm.
      const state = await reconcile(layout);
      if (state.phase !== 'trying') {
        return { data: { event: 'none', phase: state.phase }, text: `not a trial boot (phase ${state.phase}); nothing to confirm` };
      }
    }
    const r = await confirm(layout, config, { reboot: !options['no-reboot'] });
    const ok = r.event === 'confirm-ok';
    const last = r.state.history[r.state.history.length - 1];
    return {
      data: { event: r.event, version: r.version, phase: r.state.phase, rebooted: r.rebooted, reason: ok ? undefined : last?.reason, ...r.detail },
      text: ok
        ? `${r.version} confirmed: it is now the default image (previous: ${r.state.previous ?? 'none'})`
        : `${r.version} failed its health checks and was marked bad (${last?.reason ?? 'no reason recorded'}); ` +
          // No current image after a reflashed system's first boot: GRUB then boots the flasher in hold mode.
          (r.rebooted ? `rebooting into ${r.state.current ?? 'the flasher in hold mode'}` : `reboot to return to ${r.state.current ?? 'the flasher in hold mode (docs/flasher.md)'}`),
      exitCode: ok ? 0 : 1,
    };
  },
};
