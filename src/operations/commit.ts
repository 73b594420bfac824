import type { MigrationReport } from '../migrate/index.js';
import { UpgradeError } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { readBootId } from '../core/boot-id.js';
import { buildGrubInput } from '../grub/boot-files.js';
import { checkpointHost } from '../grub/host-fs.js';
import { armTrial, bootContext, bootImages, writeBootFiles } from './boot.js';
import type { Config } from './config.js';
import { runBlockingHooks } from './hooks.js';
import { MAX_REENTRIES, crashPoint, runEvent } from './lifecycle.js';
import { migrateForCommit } from './migration-step.js';
import { failedBefore } from './offer.js';
import { rebootMachine } from './reboot.js';
import { reconcile } from './reconcile/index.js';
import { requireImage, type TransitionResult } from './result.js';
import { loadState, type State } from './state.js';

/**
 * commit, read top to bottom. Every step is announced with ctl.mark() (persisted) before it acts, so
 * that a crash or a reset anywhere leaves a state that the re-run and the boot-time reconciliation can
 * read truthfully. The invariant at every point: grubenv's default (saved_entry) names an image that
 * exists, and a trial is armed only as a one-shot that GRUB consumes before booting it.
 */

export async function commit(layout: Layout, config: Config, opts: { reboot: boolean; force?: boolean }): Promise<TransitionResult> {
  await reconcile(layout);
  const detail: Record<string, unknown> = {};
  const { state, event, outcome } = await runEvent(layout, 'commit', async (state, ctl) => {
    const { version } = commitPreflight(layout, state, opts);
    if (ctl.reentries > MAX_REENTRIES) {
      throw new UpgradeError('STATE', `commit of ${version} was interrupted ${ctl.reentries} times (last at step '${ctl.resumedAt}'); giving up`, {
        hint: 'read the log of the earlier attempts (journalctl -u upgradectl), then cancel with upgradectl rollback',
      });
    }
    const rearm = state.phase === 'committed';
    if (!rearm) {
      await ctl.mark('pre-commit', version);
      detail.hooks = await runBlockingHooks(layout, 'pre-commit', { event: 'commit', from: state.current, to: version }, config.hooks.timeout);
      await ctl.mark('migrate');
      // Migration writes only into the new image; a failure here leaves the running system as it was.
      detail.migration = await migrateForCommit(layout, layout.imageFile(version));
    }
    await ctl.mark('boot-files');
    // Entries first, with the default unchanged: a reset after this boots the current image as before.
    const files = await writeBootFiles(layout, config, state);
    detail.checkpoint = files.checkpoint;
    await ctl.mark('arm');
    // From this write on, the next boot is the trial of `version`.
    detail.env = await armTrial(layout, config, state, version);
    detail.checkpoint = await checkpointHost(layout.host);
    crashPoint('commit:armed');
    return {
      version,
      detail,
      update: (s) => {
        s.phaseBootId = readBootId(layout);
        if (!rearm) s.trialKind = 'upgrade';
      },
    };
  });
  const rebooted = opts.reboot ? (await rebootMachine(config, `trial boot of ${outcome.version}`), true) : false;
  return { event, state, version: outcome.version, rebooted, detail };
}


/** What commit would do, checked without writing anything: shared by commit and commit --dry-run. */
export interface CommitPlan {
  version: string;
  current: string;
}

/**
 * Everything commit needs that can be checked before it writes: a prepared image on disk that has not
 * failed before (unless forced), and a current image to fall back to.
 */
export function commitPreflight(layout: Layout, state: State, opts: { force?: boolean } = {}): CommitPlan {
  const version = state.next;
  if (!version || (state.phase !== 'prepared' && state.phase !== 'committed')) {
    throw new UpgradeError('STATE', `nothing to commit: the machine is ${state.phase}`, { hint: 'run upgradectl prepare first' });
  }
  requireImage(layout, version, 'the prepared image');
  const bad = failedBefore(state, version);
  if (bad && !opts.force) {
    throw new UpgradeError('BAD_VERSION', `${version} is marked bad: ${bad.reason}`, {
      hint: 'prepare another release, or pass --force to try this one again',
    });
  }
  if (!state.current) {
    throw new UpgradeError('STATE', 'no current image is recorded, so a failed trial would have nothing to fall back to', {
      hint: 'run upgradectl on a machine booted from an upgradectl image (upgradectl.loop= on the kernel command line); upgradectl status adopts it',
    });
  }
  requireImage(layout, state.current, 'the current image (the fallback)');
  return { version, current: state.current };
}

/** commit --dry-run: the plan only — what would move into the image and which entries GRUB would get. */
export async function planCommit(layout: Layout, config: Config): Promise<{ from: string; to: string; migration: MigrationReport; entries: string[] }> {
  await reconcile(layout);
  const state = await loadState(layout);
  const plan = commitPreflight(layout, state);
  const migration = await migrateForCommit(layout, layout.imageFile(plan.version), true);
  const grub = await buildGrubInput(bootContext(layout, config, state), await bootImages(layout));
  return { from: plan.current, to: plan.version, migration, entries: grub.entries.map((e) => e.version) };
}
