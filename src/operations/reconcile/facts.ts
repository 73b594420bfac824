import type { Layout } from '../../core/layout.js';
import type { GrubEnv } from '../../grub/env.js';
import type { Config } from '../config.js';
import type { State } from '../state.js';

/** What one reconciliation knows about this boot; `state` is updated in place by the rules. */
export interface BootFacts {
  layout: Layout;
  config: Config;
  state: State;
  /** The image this boot runs (kernel command line), if it is one of ours. */
  booted: string | undefined;
  bootId: string | undefined;
  /** grubenv as GRUB left it for this boot, before any rule rewrites it. */
  env: GrubEnv | undefined;
  /** The kernel boot id differs from the one recorded when the phase was entered. */
  newBoot: boolean;
}

/** A rule's verdict: whether the state changed, and boot-file writes that must follow the saved state. */
export interface RuleResult {
  changed: boolean;
  afterSave?: () => Promise<void>;
}
