import type { Config } from '../../operations/config.js';
import type { CommandContext } from '../cli.js';
import type { OfferPolicy } from '../../operations/offer.js';

export const TRUST_OPTIONS = {
  'allow-downgrade': { type: 'boolean' },
  'allow-unsigned': { type: 'boolean' },
  'allow-expired': { type: 'boolean' },
  force: { type: 'boolean' },
} as const;

/** What the operator allowed, on the command line or in the config; everything is refused by default. */
export function trustPolicy(options: CommandContext['options'], config: Config): OfferPolicy {
  return {
    allowDowngrade: Boolean(options['allow-downgrade']) || config.prepare.allowDowngrade,
    allowUnsigned: Boolean(options['allow-unsigned']) || config.prepare.allowUnsigned,
    allowExpired: Boolean(options['allow-expired']),
    force: Boolean(options.force),
  };
}
