import type { Layout } from '../core/layout.js';
import type { Config } from './config.js';
import { checkChannel, type Offer, type OfferPolicy } from './offer.js';
import { openConfiguredSource } from './prepare.js';
import { loadState } from './state.js';

/** check: what the channel offers this machine; downloads nothing and changes nothing. */
export async function checkForUpdate(layout: Layout, config: Config, policy: OfferPolicy): Promise<{ offer: Offer; current: string | undefined }> {
  const state = await loadState(layout);
  const source = openConfiguredSource(layout, config);
  try {
    return { offer: await checkChannel(source, config, layout, state, policy), current: state.current };
  } finally {
    await source.close();
  }
}
