import type { Command } from '../cli.js';
import { UpgradeError } from '../../core/errors.js';
import { publishRelease } from '../../release/publish.js';
import { loadPrivateKey } from '../../release/signing.js';
import { parseSize, parseWhole, TARGET_OPTIONS, requiredOption, targetOptions } from './args.js';
import { terminalProgress } from '../progress-view.js';
import { promises as fs } from 'node:fs';

export const publishCommand: Command = {
  summary: 'compress, index, sign and upload a release (file:// or s3://)',
  usage: 'publish IMAGE --version V --to URL --key KEY [--channel NAME] [--rollout PCT] [--kernel P] [--initrd P] [--cmdline ARGS] [--reflash | --reflash-disk] [--expires-days N] [--min-version V] [--revoke KEYID[,KEYID…]]',
  options: {
    version: { type: 'string' },
    to: { type: 'string' },
    key: { type: 'string' },
    channel: { type: 'string' },
    rollout: { type: 'string' },
    kernel: { type: 'string' },
    initrd: { type: 'string' },
    cmdline: { type: 'string' },
    reflash: { type: 'boolean' },
    'reflash-disk': { type: 'boolean' },
    'expires-days': { type: 'string' },
    'min-version': { type: 'string' },
    revoke: { type: 'string' },
    'frame-size': { type: 'string' },
    'chunk-size': { type: 'string' },
    ...TARGET_OPTIONS,
  },
  async run({ options, positionals }) {
    const [image] = positionals;
    const need = (name: string) => requiredOption(options, name, 'publish', publishCommand.usage);
    if (!image || positionals.length > 1) throw new UpgradeError('USAGE', 'publish needs exactly one IMAGE (file or block device)', { hint: `usage: upgradectl ${publishCommand.usage}` });
    if (options.reflash && options['reflash-disk']) throw new UpgradeError('USAGE', '--reflash (a host partition) and --reflash-disk (a whole disk) exclude each other', { hint: 'give the one that says what IMAGE is' });
    const key = await loadPrivateKey(need('key'));
    const size = await fs.stat(image).then((s) => s.size).catch(() => 0);
    const result = await publishRelease({
      image,
      version: need('version'),
      to: need('to'),
      key,
      channel: options.channel as string | undefined,
      rollout: parseWhole(options.rollout as string | undefined, '--rollout', 100, 0, 100),
      boot: {
        kernel: (options.kernel as string | undefined) ?? '/vmlinuz',
        initrd: (options.initrd as string | undefined) ?? '/initrd.img',
        cmdline: (options.cmdline as string | undefined) ?? '',
      },
      reflash: options['reflash-disk'] ? 'disk' : Boolean(options.reflash),
      minVersion: options['min-version'] as string | undefined,
      revokeKeys: typeof options.revoke === 'string' ? options.revoke.split(',').map((id) => id.trim()).filter(Boolean) : [],
      expiresInDays: parseWhole(options['expires-days'] as string | undefined, '--expires-days', 365, 1, 36500),
      frameSize: options['frame-size'] ? parseSize(options['frame-size'] as string, '--frame-size') : 4 << 20,
      chunkSize: options['chunk-size'] ? parseSize(options['chunk-size'] as string, '--chunk-size') : undefined,
      sourceOptions: targetOptions(options),
      progress: terminalProgress('compressing', size),
    });
    const m = result.manifest;
    return {
      data: result,
      text: [
        `published ${m.version} to ${result.url} in ${result.seconds.toFixed(1)} s`,
        `  image   ${m.image.size} bytes (${m.image.allocated} allocated), sha256 ${m.image.sha256}`,
        `  payload ${m.payload.size} bytes, ${m.payload.compression}${m.payload.frames ? `, ${m.payload.frames.length} frames` : ''}`,
        result.channel ? `  channel ${result.channel.channel} → ${m.version} (rollout ${result.channel.rollout.percent}%, published ${result.channel.published}${result.channel.minVersion ? `, minimum ${result.channel.minVersion}` : ''}${result.channel.revokedKeys ? `, revoked ${result.channel.revokedKeys.join(' ')}` : ''})` : '',
      ].filter(Boolean).join('\n'),
    };
  },
};
