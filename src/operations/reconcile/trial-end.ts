import type { State } from '../state.js';

/**
 * How a failed trial or a failed default is written into the state, however it was noticed (a failed
 * confirm, an operator's rollback, or reconciliation after GRUB fell back).
 */

/** Mark a version bad: never offered again unless forced, and no longer a rollback target. */
export function markBad(state: State, version: string, reason: string): void {
  state.bad[version] = { reason, at: new Date().toISOString() };
  if (state.previous === version) state.previous = undefined;
}

/** A trial that ended badly, however it was noticed: the version is marked bad and the trial forgotten. */
export function endFailedTrial(state: State, version: string, reason: string): void {
  markBad(state, version, reason);
  state.next = undefined;
  state.trialKind = undefined;
}

/**
 * A default that never came up (GRUB gave up counting its starts): it is marked bad, and the image
 * that runs instead becomes current. It is no longer its own rollback target.
 */
export function endFailedDefault(state: State, failed: string, running: string, reason: string): void {
  state.current = running;
  if (state.previous === running) state.previous = undefined;
  markBad(state, failed, reason);
}

