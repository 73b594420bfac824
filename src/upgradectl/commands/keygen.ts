import type { Command } from '../cli.js';
import { UpgradeError } from '../../core/errors.js';
import { generateKeyPair } from '../../release/signing.js';
import { parseWhole } from './args.js';

export const keygenCommand: Command = {
  summary: 'write an ed25519 key pair: PREFIX (private, PEM) and PREFIX.pub',
  usage: 'keygen --out PREFIX [--expires-days N]',
  options: { out: { type: 'string' }, 'expires-days': { type: 'string' } },
  async run({ options }) {
    const out = options.out;
    if (typeof out !== 'string' || !out) throw new UpgradeError('USAGE', 'keygen needs --out PREFIX', { hint: 'e.g. upgradectl keygen --out /secure/release-key' });
    const days = options['expires-days'] === undefined ? undefined : parseWhole(options['expires-days'] as string, '--expires-days', 0, 1, 36500);
    const pair = await generateKeyPair(out, days === undefined ? undefined : new Date(Date.now() + days * 86_400_000));
    return {
      data: pair,
      text: `private key: ${pair.privateKey} (keep it secret)\npublic key:  ${pair.publicKey} (key id ${pair.keyid}; copy it to /etc/upgradectl/keys.d/ on every machine)${pair.expires ? `\nexpires:     ${pair.expires} (machines refuse its signatures after that)` : ''}`,
    };
  },
};
