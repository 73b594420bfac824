import { existsSync } from 'node:fs';
import { UpgradeError } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import type { LifecycleEvent } from './lifecycle.js';
import type { State } from './state.js';

/** What commit, confirm and rollback return; only the CLI (or the daemon's report) turns it into words. */
export interface TransitionResult {
  event: LifecycleEvent;
  state: State;
  version?: string;
  rebooted: boolean;
  detail: Record<string, unknown>;
}

export function requireImage(layout: Layout, version: string, what: string): void {
  if (!existsSync(layout.imageFile(version))) {
    throw new UpgradeError('NOT_FOUND', `${what} ${layout.imageFile(version)} is missing`, {
      hint: `prepare it again with upgradectl prepare ${version}`,
    });
  }
}
