import type { Command } from '../cli.js';
import { runDaemon } from '../../daemon/service.js';

export const daemonCommand: Command = {
  summary: 'the resident service: check, prefetch, commit in the window, report (systemd: upgradectl.service)',
  usage: 'daemon [--once]',
  // --pass: one pass as the supervisor's child (internal; the supervisor starts it).
  options: { once: { type: 'boolean' }, pass: { type: 'boolean' } },
  async run({ layout, options }) {
    const code = await runDaemon(layout, { once: Boolean(options.once), pass: Boolean(options.pass) });
    return { data: { stopped: true }, text: 'upgradectl daemon stopped', exitCode: code };
  },
};
