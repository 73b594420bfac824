import type { Command } from '../cli.js';
import { UpgradeError } from '../../core/errors.js';
import { generateKeyPair } from '../../release/signing.js';

export const keygenCommand: Command = {
  summary: 'write an ed25519 key pair: PREFIX (private, PEM) and PREFIX.pub',
  usage: 'keygen --out PREFIX',
  options: { out: { type: 'string' } },
  async run({ options }) {
    const out = options.out;
    if (typeof out !== 'string' || !out) throw new UpgradeError('USAGE', 'keygen needs --out PREFIX', { hint: 'e.g. upgradectl keygen --out /secure/release-key' });
    const pair = await generateKeyPair(out);
    return {
      data: pair,
      text: `private key: ${pair.privateKey} (keep it secret)\npublic key:  ${pair.publicKey} (key id ${pair.keyid}; copy it to /etc/upgradectl/keys.d/ on every machine)`,
    };
  },
};
