import type { Command } from '../cli.js';
import { checkForUpdate } from '../../operations/check.js';
import { loadConfig } from '../../operations/config.js';
import { trustPolicy, TRUST_OPTIONS } from './trust.js';

export const checkCommand: Command = {
  summary: 'ask the channel what is newest; download nothing',
  usage: 'check [--allow-downgrade] [--allow-unsigned] [--allow-expired] [--force]',
  options: { ...TRUST_OPTIONS },
  async run({ layout, options }) {
    const config = await loadConfig(layout);
    const { offer, current } = await checkForUpdate(layout, config, trustPolicy(options, config));
    if (offer.kind === 'up-to-date') {
      return { data: { available: false, version: offer.version, reason: offer.reason, current }, text: `up to date: ${offer.reason}` };
    }
    const m = offer.release.manifest;
    return {
      data: { available: true, version: m.version, current, size: m.image.size, download: m.payload.size, created: m.created, reflash: m.reflash },
      text: `${m.version} is available (current: ${current ?? 'none'}; built ${m.created}; download ${(m.payload.size / 1048576).toFixed(0)} MiB)${m.reflash ? ' — needs a full reflash' : ''}\n  next: upgradectl prepare`,
    };
  },
};
