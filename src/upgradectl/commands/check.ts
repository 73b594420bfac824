import type { Command } from '../cli.js';
import { loadConfig } from '../../operations/config.js';
import { loadState } from '../../operations/state.js';
import { openConfiguredSource } from '../../operations/prepare.js';
import { checkChannel } from '../../operations/offer.js';
import { rememberChannel } from '../../operations/trust-memory.js';
import { trustPolicy, TRUST_OPTIONS } from './trust.js';

export const checkCommand: Command = {
  summary: 'ask the channel what is newest; download nothing',
  usage: 'check [--allow-downgrade] [--allow-unsigned] [--allow-expired] [--force]',
  options: { ...TRUST_OPTIONS },
  async run({ layout, options }) {
    const config = await loadConfig(layout);
    const state = await loadState(layout);
    const source = openConfiguredSource(layout, config);
    try {
      const offer = await checkChannel(source, config, layout, state, trustPolicy(options, config));
      await rememberChannel(layout, source.url, offer.seen);
      if (offer.kind === 'up-to-date') {
        return { data: { available: false, version: offer.version, reason: offer.reason, current: state.current }, text: `up to date: ${offer.reason}` };
      }
      const m = offer.release.manifest;
      return {
        data: { available: true, version: m.version, current: state.current, size: m.image.size, download: m.payload.size, created: m.created, reflash: m.reflash },
        text: `${m.version} is available (current: ${state.current ?? 'none'}; built ${m.created}; download ${(m.payload.size / 1048576).toFixed(0)} MiB)${m.reflash ? ' — needs a full reflash' : ''}\n  next: upgradectl prepare`,
      };
    } finally {
      await source.close();
    }
  },
};
