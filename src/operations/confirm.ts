import { readBootId } from '../core/boot-id.js';
import { UpgradeError } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { checkpointHost } from '../grub/host-fs.js';
import { bootedVersion, disarmTrial, writeBootFiles } from './boot.js';
import type { Config } from './config.js';
import { runHooks, type HookRun } from './hooks.js';
import { MAX_REENTRIES, crashPoint, runEvent } from './lifecycle.js';
import { refreshFlasherAfterConfirm } from './flasher-install.js';
import { rebootMachine } from './reboot.js';
import { endTrialDeadline } from './trial-deadline.js';
import { endFailedTrial, reconcile } from './reconcile/index.js';
import { endFlashTrial } from './reconcile/flash-trial.js';
import { restoreLateKeptFiles } from './kept-files.js';
import type { TransitionResult } from './result.js';
import type { State } from './state.js';

/**
 * confirm, on the trial boot: health checks, then make the trial image GRUB's default — or, when a check
 * fails, disarm the trial so the reboot lands on the old default. Steps are marked before they act.
 */

export async function confirm(layout: Layout, config: Config, opts: { reboot: boolean }): Promise<TransitionResult> {
  await reconcile(layout);
  const detail: Record<string, unknown> = {};
  let from: string | undefined;
  const { state, event, outcome } = await runEvent(layout, 'confirm', async (state, ctl) => {
    const version = state.next;
    if (!version) throw new UpgradeError('STATE', 'the state names no trial image', { hint: 'run upgradectl status' });
    const booted = await bootedVersion(layout);
    if (booted !== version) {
      throw new UpgradeError('STATE', `this boot runs ${booted ?? 'no upgradectl image'}, not the trial image ${version}`, {
        hint: 'confirm runs on the trial boot; upgradectl status shows what booted',
      });
    }
    from = state.current;
    const ctx = { event: 'confirm', from: state.current, to: version };
    let failure: string | undefined;
    if (ctl.reentries >= MAX_REENTRIES) {
      // A confirm that keeps dying (or takes the machine down) must end in a rollback, not a loop.
      failure = `confirm was interrupted ${ctl.reentries} times (last at step '${ctl.resumedAt}')`;
    } else if (ctl.resumedAt !== 'set-default') {
      await ctl.mark('health', version);
      const kept = await restoreLateKeptFiles(layout);
      if (kept) {
        // A reflashed system that came up without its own identity, network and accounts is not healthy.
        failure = kept;
      } else {
        const checks: HookRun[] = await runHooks(layout, 'health', ctx, config.health.timeout);
        detail.checks = checks;
        const failed = checks.filter((c) => !c.ok);
        if (failed.length) failure = `health check ${failed.map((c) => `${c.name} ${c.reason}`).join('; ')}`;
      }
    }
    if (!failure) {
      await ctl.mark('set-default');
      const after: State = { ...state, phase: 'idle', current: version, previous: state.current, next: undefined };
      // After this write GRUB boots `version` by default; the state follows right after.
      await writeBootFiles(layout, config, after, { makeDefault: version });
      // Only now that GRUB's default is the image: a reflashed system's reboot entry stops holding in
      // the flasher (removed first, a reset would leave saved_entry on a reboot entry that reboots).
      await endFlashTrial(layout);
      crashPoint('confirm:default-set');
      return {
        event: 'confirm-ok',
        version,
        detail,
        update: (s) => {
          s.previous = s.current;
          s.current = version;
          s.next = undefined;
          s.trialKind = undefined;
          s.phaseBootId = readBootId(layout);
        },
      };
    }
    await ctl.mark('disarm');
    // The default never left the old image; drop the remaining trial attempts so the reboot lands there.
    await disarmTrial(layout, config, state);
    await checkpointHost(layout.host);
    crashPoint('confirm:disarmed');
    return {
      event: 'confirm-failed',
      version,
      ok: false,
      reason: failure,
      detail,
      update: (s) => {
        endFailedTrial(s, version, failure);
      },
    };
  });
  let rebooted = false;
  const ctx = { event: 'confirm', from, to: outcome.version };
  if (event === 'confirm-ok') {
    // The image is the default and the state says so: the deadline's reset is no longer wanted, and
    // must not land in the middle of the post-confirm hooks. After a failed confirm it stays armed: it
    // is what still resets the machine if the reboot below hangs or is not asked for (--no-reboot).
    detail.trialDeadline = await endTrialDeadline(layout);
    // After the state is saved: a failing post-confirm hook is reported, it does not undo the upgrade.
    detail.postConfirm = await runHooks(layout, 'post-confirm', ctx, config.hooks.timeout);
    const flasher = outcome.version ? await refreshFlasherAfterConfirm(layout, config, outcome.version) : undefined;
    if (flasher) detail.flasher = flasher;
  } else {
    detail.preRollback = await runHooks(layout, 'pre-rollback', { event: 'rollback', from: outcome.version, to: from }, config.hooks.timeout);
    if (opts.reboot) rebooted = (await rebootMachine(config, `${outcome.version} failed its health checks`), true);
  }
  return { event, state, version: outcome.version, rebooted, detail };
}

