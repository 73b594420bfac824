import type { Layout } from '../core/layout.js';
import type { Config } from './config.js';
import { checkChannel, type Offer, type OfferPolicy } from './offer.js';
import { openConfiguredSource } from './prepare.js';
import { rememberChannel } from './trust-memory.js';
import { loadState } from './state.js';

/**
 * check: what the channel offers this machine; downloads nothing. The one thing it writes is the
 * newest channel it saw (trust-memory.ts), so that an older one replayed later is refused.
 */
export async function checkForUpdate(layout: Layout, config: Config, policy: OfferPolicy): Promise<{ offer: Offer; current: string | undefined }> {
  const state = await loadState(layout);
  const source = openConfiguredSource(layout, config);
  try {
    const offer = await checkChannel(source, config, layout, state, policy);
    await rememberChannel(layout, source.url, offer.seen);
    return { offer, current: state.current };
  } finally {
    await source.close();
  }
}
