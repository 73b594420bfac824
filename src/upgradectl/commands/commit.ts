import { existsSync } from 'node:fs';
import { buildGrubInput } from '../../grub/boot-files.js';
import type { Command } from '../cli.js';
import { loadConfig } from '../../operations/config.js';
import { UpgradeError } from '../../core/errors.js';
import { migrateForCommit } from '../../operations/migration-step.js';
import { loadState } from '../../operations/state.js';
import { commit } from '../../operations/transitions.js';

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
      // The plan only: what would move into the image and which entries GRUB would get. Nothing is written.
      const state = await loadState(layout);
      if (state.phase !== 'prepared' || !state.next) {
        throw new UpgradeError('STATE', `nothing to commit: the machine is ${state.phase}`, { hint: 'run upgradectl prepare first' });
      }
      if (!existsSync(layout.imageFile(state.next))) {
        throw new UpgradeError('NOT_FOUND', `the prepared image ${layout.imageFile(state.next)} is missing`, { hint: `run upgradectl prepare ${state.next}` });
      }
      const migration = await migrateForCommit(layout, layout.imageFile(state.next), true);
      const grub = await buildGrubInput(layout, config, state);
      const data = { dryRun: true, from: state.current, to: state.next, migration, entries: grub.entries.map((e) => e.version) };
      return {
        data,
        text: [
          `would commit ${state.next} (from ${state.current ?? 'no recorded image'})`,
          `boot entries: ${data.entries.join(', ')}`,
          `migration plan: ${JSON.stringify(migration, null, 2)}`,
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
