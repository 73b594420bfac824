import type { Command } from '../cli.js';
import { loadConfig } from '../../operations/config.js';
import { commit, planCommit } from '../../operations/commit.js';
import { reflash, reflashToRoute, targetText } from '../../operations/reflash.js';
import { trustPolicy, TRUST_OPTIONS } from './trust.js';

export const commitCommand: Command = {
  summary: 'migrate, write boot entries, one-shot boot of the prepared image',
  usage: 'commit [--no-reboot] [--dry-run] [--force] | commit --reflash [VERSION] [--no-reboot] [--allow-downgrade] [--allow-expired]',
  options: {
    ...TRUST_OPTIONS,
    'no-reboot': { type: 'boolean' },
    'dry-run': { type: 'boolean' },
    reflash: { type: 'boolean' },
  },
  async run({ layout, options, positionals }) {
    const config = await loadConfig(layout);
    // A release marked reflash is never prepared: with nothing prepared, commit asks the channel and
    // boots the flasher for it, as commit --reflash VERSION (docs/flasher.md).
    const routed = options.reflash || options['dry-run'] ? undefined : await reflashToRoute(layout, config, trustPolicy(options, config));
    if (options.reflash || routed) {
      const r = await reflash(layout, config, { version: routed ?? positionals[0], reboot: !options['no-reboot'], policy: trustPolicy(options, config) });
      const mib = (n: number) => `${(n / 1048576).toFixed(0)} MiB`;
      return {
        data: r,
        text: [
          `${routed ? `release ${r.version} rewrites the whole ${r.target.kind === 'disk' ? 'disk' : 'host partition'}: ` : ''}flash job for ${r.version} written (${r.job}); signed by ${r.signedBy}`,
          `  the flasher fetches ${mib(r.payloadSize)} from ${r.url} into RAM (needs ${mib(r.ramNeeded)}), verifies it, and writes ${mib(r.imageSize)} over ${targetText(r.target)}`,
          r.kept
            ? `  keeps this machine's files: ${r.kept.entries} entries of the migration whitelist (${r.kept.bytes} bytes) in ${r.kept.file}, restored at the new system's first boot`
            : `  keeps nothing ([flasher] keep = no): the new system is the release as published`,
          r.rebooted ? '  rebooting into the flasher' : '  the flasher boots once at the next reboot',
        ].join('\n'),
      };
    }
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
