import type { Command } from '../cli.js';
import { UpgradeError } from '../../core/errors.js';
import { pointChannel } from '../../release/publish.js';
import { loadPrivateKey } from '../../release/signing.js';
import { parseWhole, TARGET_OPTIONS, requiredOption, targetOptions } from './args.js';

export const channelSetCommand: Command = {
  summary: 'point a channel at a published release: widen, narrow, pause or resume its rollout, or go back',
  usage: 'channel set NAME --version V --to URL --key KEY [--rollout PCT] [--pause] [--min-version V] [--revoke KEYID[,KEYID…]]',
  options: {
    version: { type: 'string' },
    to: { type: 'string' },
    key: { type: 'string' },
    rollout: { type: 'string' },
    pause: { type: 'boolean' },
    'min-version': { type: 'string' },
    revoke: { type: 'string' },
    ...TARGET_OPTIONS,
  },
  async run({ options, positionals }) {
    const need = (name: string) => requiredOption(options, name, 'channel set', channelSetCommand.usage);
    const [name] = positionals;
    if (!name || positionals.length > 1) throw new UpgradeError('USAGE', 'channel set needs exactly one channel NAME', { hint: `usage: upgradectl ${channelSetCommand.usage}` });
    const channel = await pointChannel({
      to: need('to'),
      key: await loadPrivateKey(need('key')),
      channel: name,
      version: need('version'),
      rollout: parseWhole(options.rollout as string | undefined, '--rollout', 100, 0, 100),
      paused: Boolean(options.pause),
      minVersion: options['min-version'] as string | undefined,
      revokeKeys: typeof options.revoke === 'string' ? options.revoke.split(',').map((id) => id.trim()).filter(Boolean) : [],
      sourceOptions: targetOptions(options),
    });
    const state = channel.rollout.paused ? 'paused' : `${channel.rollout.percent}% of machines`;
    return { data: channel, text: `channel ${name} now offers ${channel.version} to ${state} (published ${channel.published})` };
  },
};
