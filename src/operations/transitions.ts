import { existsSync } from 'node:fs';
import { armTrial, bootedVersion, disarmTrial } from '../grub/boot-control.js';
import { newDefault, writeBootFiles } from '../grub/boot-files.js';
import { checkpointHost } from '../grub/host-fs.js';
import type { Config } from './config.js';
import { UpgradeError } from '../core/errors.js';
import { runBlockingHooks, runHooks, type HookRun } from './hooks.js';
import { readBootId } from '../core/boot-id.js';
import { MAX_REENTRIES, crashPoint, runEvent, type LifecycleEvent } from './lifecycle.js';
import { migrateForCommit } from './migration-step.js';
import type { Layout } from '../core/layout.js';
import { rebootMachine } from './reboot.js';
import { endFailedTrial, reconcile } from './reconcile.js';
import type { State } from './state.js';

/**
 * The stories of commit, confirm and rollback, each read top to bottom. Every step is announced with
 * ctl.mark() (persisted) before it acts, so that a crash or a reset anywhere leaves a state that the
 * re-run and the boot-time reconciliation (reconcile.ts) can read truthfully. The invariant at every
 * point: grubenv's default (saved_entry) names an image that exists, and a trial is armed only as a
 * one-shot that GRUB consumes before booting it.
 */

export interface TransitionResult {
  event: LifecycleEvent;
  state: State;
  version?: string;
  rebooted: boolean;
  detail: Record<string, unknown>;
}

export async function commit(layout: Layout, config: Config, opts: { reboot: boolean; force?: boolean }): Promise<TransitionResult> {
  await reconcile(layout);
  const detail: Record<string, unknown> = {};
  const { state, event, outcome } = await runEvent(layout, 'commit', async (state, ctl) => {
    const version = state.next;
    if (!version) throw new UpgradeError('STATE', 'nothing is prepared', { hint: 'run upgradectl prepare first' });
    requireImage(layout, version, 'the prepared image');
    if (state.bad[version] && !opts.force) {
      throw new UpgradeError('BAD_VERSION', `${version} is marked bad: ${state.bad[version].reason}`, {
        hint: 'prepare another release, or pass --force to try this one again',
      });
    }
    if (!state.current) {
      throw new UpgradeError('STATE', 'no current image is recorded, so a failed trial would have nothing to fall back to', {
        hint: 'run upgradectl on a machine booted from an upgradectl image (upgradectl.loop= on the kernel command line); upgradectl status adopts it',
      });
    }
    requireImage(layout, state.current, 'the current image (the fallback)');
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
      const checks: HookRun[] = await runHooks(layout, 'health', ctx, config.health.timeout);
      detail.checks = checks;
      const failed = checks.filter((c) => !c.ok);
      if (failed.length) failure = `health check ${failed.map((c) => `${c.name} ${c.reason}`).join('; ')}`;
    }
    if (!failure) {
      await ctl.mark('set-default');
      const after: State = { ...state, phase: 'idle', current: version, previous: state.current, next: undefined };
      // After this write GRUB boots `version` by default; the state follows right after.
      await writeBootFiles(layout, config, after, newDefault(version));
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
    // After the state is saved: a failing post-confirm hook is reported, it does not undo the upgrade.
    detail.postConfirm = await runHooks(layout, 'post-confirm', ctx, config.hooks.timeout);
  } else {
    detail.preRollback = await runHooks(layout, 'pre-rollback', { event: 'rollback', from: outcome.version, to: from }, config.hooks.timeout);
    if (opts.reboot) rebooted = (await rebootMachine(config, `${outcome.version} failed its health checks`), true);
  }
  return { event, state, version: outcome.version, rebooted, detail };
}

export async function rollback(layout: Layout, config: Config, opts: { reboot: boolean }): Promise<TransitionResult> {
  await reconcile(layout);
  const detail: Record<string, unknown> = {};
  let needsReboot = false;
  const { state, event, outcome } = await runEvent(layout, 'rollback', async (state, ctl) => {
    switch (state.phase) {
      case 'prepared':
      case 'committed': {
        // Cancel: drop the one-shot, keep the files (the image can be committed again after prepare).
        const version = state.next;
        await ctl.mark('cancel', version);
        await disarmTrial(layout, config, state);
        await checkpointHost(layout.host);
        crashPoint('rollback:cancelled');
        return {
          event: 'cancel',
          version,
          reason: 'cancelled by the operator',
          update: (s) => {
            s.next = undefined;
            s.trialKind = undefined;
          },
        };
      }
      case 'trying': {
        // Abandon the trial: the default never left the old image.
        const version = state.next;
        if (!version) throw new UpgradeError('STATE', 'the state names no trial image', { hint: 'run upgradectl status' });
        await ctl.mark('pre-rollback', version);
        detail.hooks = await runBlockingHooks(layout, 'pre-rollback', { event: 'rollback', from: version, to: state.current }, config.hooks.timeout);
        await ctl.mark('disarm');
        await disarmTrial(layout, config, state);
        await checkpointHost(layout.host);
        needsReboot = (await bootedVersion(layout)) === version;
        const reason = `the operator rolled back the trial of ${version}`;
        return {
          event: 'rollback',
          version,
          reason,
          update: (s) => {
            endFailedTrial(s, version, reason);
          },
        };
      }
      default: {
        // Boot the previous image the safe way: one-shot, then confirm on that boot.
        const target = state.previous;
        if (!target || !state.current) {
          throw new UpgradeError('STATE', 'there is no previous image to roll back to', {
            hint: 'upgradectl status lists the images; prepare and commit a release to change images',
          });
        }
        requireImage(layout, target, 'the previous image');
        await ctl.mark('pre-rollback', target);
        detail.hooks = await runBlockingHooks(layout, 'pre-rollback', { event: 'rollback', from: state.current, to: target }, config.hooks.timeout);
        await ctl.mark('boot-files');
        await writeBootFiles(layout, config, state);
        await ctl.mark('arm');
        detail.env = await armTrial(layout, config, state, target);
        detail.checkpoint = await checkpointHost(layout.host);
        crashPoint('rollback:armed');
        needsReboot = true;
        return {
          event: 'rollback',
          version: target,
          detail,
          update: (s) => {
            s.next = target;
            s.trialKind = 'rollback';
            s.phaseBootId = readBootId(layout);
          },
        };
      }
    }
  });
  let rebooted = false;
  if (event === 'rollback' && needsReboot && opts.reboot) rebooted = (await rebootMachine(config, `rollback to ${state.current ?? state.next}`), true);
  return { event, state, version: outcome.version, rebooted, detail };
}

function requireImage(layout: Layout, version: string, what: string): void {
  if (!existsSync(layout.imageFile(version))) {
    throw new UpgradeError('NOT_FOUND', `${what} ${layout.imageFile(version)} is missing`, {
      hint: `prepare it again with upgradectl prepare ${version}`,
    });
  }
}
