import type { Command } from '../cli.js';
import { loadConfig } from '../../operations/config.js';
import { rollback } from '../../operations/rollback.js';

export const rollbackCommand: Command = {
  summary: 'boot the previous image (one-shot + confirm), or cancel a pending upgrade',
  usage: 'rollback [--no-reboot]',
  options: { 'no-reboot': { type: 'boolean' } },
  async run({ layout, options }) {
    const config = await loadConfig(layout);
    const r = await rollback(layout, config, { reboot: !options['no-reboot'] });
    let text: string;
    if (r.event === 'cancel') text = `cancelled the upgrade to ${r.version ?? 'the prepared image'}; the machine stays on ${r.state.current ?? 'its image'}`;
    else if (r.state.phase === 'committed') text = `rollback to ${r.version} armed: ${r.rebooted ? 'rebooting into it' : 'it boots once at the next reboot'}; confirm it there`;
    else text = `abandoned the trial of ${r.version}; ${r.rebooted ? 'rebooting into' : 'the next boot runs'} ${r.state.current}`;
    return { data: { event: r.event, version: r.version, phase: r.state.phase, rebooted: r.rebooted, ...r.detail }, text };
  },
};
