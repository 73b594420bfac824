import { readBootId } from '../core/boot-id.js';
import { UpgradeError } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { checkpointHost } from '../grub/host-fs.js';
import { armTrial, bootedVersion, disarmTrial, writeBootFiles } from './boot.js';
import type { Config } from './config.js';
import { runBlockingHooks } from './hooks.js';
import { crashPoint, runEvent } from './lifecycle.js';
import { rebootMachine } from './reboot.js';
import { endFailedTrial, reconcile } from './reconcile/index.js';
import { requireImage, type TransitionResult } from './result.js';

/**
 * rollback: cancel a prepared or committed upgrade, abandon a trial in progress, or boot the previous
 * image the safe way (one-shot, then confirm on that boot). Steps are marked before they act.
 */

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
            hint: 'to run an older release, prepare it on purpose: upgradectl prepare --allow-downgrade VERSION, then upgradectl commit',
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

