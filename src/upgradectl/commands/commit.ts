import type { Command } from '../cli.js';
import { loadConfig } from '../../operations/config.js';
import { UpgradeError } from '../../core/errors.js';
import { commit, planCommit } from '../../operations/commit.js';

export const commitCommand: Command = {
  summary: 'migrate, write boot entries, one-shot boot of the prepared image',
  usage: 'commit [--no-reboot] [--dry-run] [--force] [--reflash]',
  options: {
    'no-reboot': { type: 'boolean' },
    'dry-run': { type: 'boolean' },
    force: { type: 'boolean' },
    reflash: { type: 'boolean' },
  },
  async run({ layout, options }) {
    if (options.reflash) {
      throw new UpgradeError('UNSUPPORTED', 'commit --reflash (the RAM flasher) is not available in this upgradectl yet', {
        hint: 'commit without --reflash to add the image beside the current one',
      });
    }
    const config = await loadConfig(layout);
    if (options['dry-run']) {
      const plan = await planCommit(layout, config);
      return {
        data: { dryRun: true, ...plan },
        text: [
          `would commit ${plan.to} (from ${plan.from})`,
          `boot entries: ${plan.entries.join(', ')}`,
          `migration plan: ${JSON.stringify(plan.migration, null, 2)}`,
        ].join('\n'),
      };
    }
    const r = await commit(layout, config, { reboot: !options['no-reboot'], force: Boolean(options.force) });
    return {
      data: { event: r.event, version: r.version, phase: r.state.phase, rebooted: r.rebooted, ...r.detail },
      text: r.rebooted
        ? `committed ${r.version}: rebooting into its trial boot`
        : `committed ${r.version}: its trial boot starts at the next reboot (upgradectl rollback cancels it)`,
    };
  },
};
