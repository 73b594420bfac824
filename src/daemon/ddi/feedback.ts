import type { DdiActionFeedback, ExecutionStatus, FinalResult } from './types.js';

/**
 * The feedback messages upgradectl sends (DdiActionFeedback). hawkBit keeps an action open until it
 * gets `closed` (or `downloaded` for a download-only action); intermediate ones are informational.
 * The timestamp is taken when the status changed on the machine, not when the message finally got
 * through: the outbox may deliver it hours later, after a reboot.
 */
function status(execution: ExecutionStatus, finished: FinalResult, details: string[], progress?: { cnt: number; of?: number }, now = Date.now()): DdiActionFeedback {
  return { timestamp: now, status: { execution, result: { finished, ...(progress && { progress }) }, details: details.map((d) => d.slice(0, 512)) } };
}

export const feedback = {
  /** Work under way (downloading, staging, rebooting into the trial), with progress as cnt of `of`. */
  proceeding: (detail: string, progress?: { cnt: number; of?: number }) => status('proceeding', 'none', [detail], progress),
  /** The release is staged and verified (ends a download-only action). */
  downloaded: (detail: string) => status('downloaded', 'none', [detail]),
  /** The machine will not start this action now (e.g. it does not carry an upgradectl release). */
  rejected: (detail: string) => status('rejected', 'none', [detail]),
  /** The end: the trial was confirmed (success) or rolled back / the action failed (failure), and why. */
  closed: (result: 'success' | 'failure', detail: string) => status('closed', result, [detail]),
};
