import type { DdiDeploymentBase } from './types.js';

/** The machine's own commit window (the daemon's schedule): when it next allows a commit, `now` if open. */
export interface LocalWindow {
  earliest(now: Date): Date;
}

export interface DeploymentPlan {
  /** Download and stage: `now` when the server forces it, `background` when it only asks; false: not yet. */
  prepare: 'now' | 'background' | false;
  /** When to commit (reboot into the trial); undefined: not in this answer. Poll again to learn more. */
  commitAt: Date | undefined;
  /** update=skip with no maintenance schedule: hawkBit's download-only action, ended by `downloaded`. */
  downloadOnly: boolean;
  /** One line for the log and `status`. */
  why: string;
}

/**
 * What a deployment asks of this machine, as hawkBit defines `download`, `update` and
 * `maintenanceWindow` (DdiDeployment): download maps to prepare, update to commit; `forced` does not
 * wait for the local window, `attempt` does; a maintenance window that is `unavailable` holds the
 * commit whatever the rest says (hawkBit then sends update=skip itself; we do not rely on that).
 * Pure: the server's word decides *when*; what is installed is decided by the signed manifest.
 */
export function planFromDeployment(base: DdiDeploymentBase, now: Date, localWindow?: LocalWindow): DeploymentPlan {
  const { download = 'attempt', update = 'attempt', maintenanceWindow } = base.deployment;
  if (download === 'skip') return { prepare: false, commitAt: undefined, downloadOnly: false, why: 'the server says not to download yet' };
  const prepare = download === 'forced' ? 'now' : 'background';
  if (update === 'skip') {
    const downloadOnly = maintenanceWindow === undefined;
    const why = downloadOnly ? 'download only: the server installs nothing with this action' : 'the server holds the update (maintenance window)';
    return { prepare, commitAt: undefined, downloadOnly, why };
  }
  if (maintenanceWindow === 'unavailable') {
    return { prepare, commitAt: undefined, downloadOnly: false, why: 'the maintenance window is unavailable: prepare, commit when it opens' };
  }
  if (update === 'forced') return { prepare, commitAt: now, downloadOnly: false, why: 'the server forces the update: commit as soon as it is prepared' };
  const at = localWindow ? localWindow.earliest(now) : now;
  const later = at.getTime() > now.getTime();
  return { prepare, commitAt: at, downloadOnly: false, why: later ? `the server asks for the update: commit in the local window at ${at.toISOString()}` : 'the server asks for the update: commit once prepared' };
}
