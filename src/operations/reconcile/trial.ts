import { existsSync } from 'node:fs';
import type { Layout } from '../../core/layout.js';
import { log } from '../../core/log.js';
import { messageOf } from '../../core/errors.js';
import { checkpointHost } from '../../grub/host-fs.js';
import { entryId } from '../../grub/render.js';
import { disarmTrial } from '../boot.js';
import type { Config } from '../config.js';
import { allowed, applyEvent, record } from '../lifecycle.js';
import type { State } from '../state.js';
import type { BootFacts } from './facts.js';
import { endFailedTrial } from './trial-end.js';
import { deadlineCause } from '../trial-deadline.js';
import { failedBefore } from '../offer.js';

/**
 * What became of a trial, a commit or a rollback across a reboot, told by what booted and by grubenv.
 * A failed trial is disarmed in grubenv BEFORE the state forgets it: cut off in between, the next
 * reconciliation sees the same trial and decides the same again, while the reverse order could leave
 * an extra trial attempt armed behind a state that says the trial is over.
 */

/** What became of a pending trial, commit or rollback across the reboot. */
export async function reconcileTrial(boot: BootFacts): Promise<boolean> {
  const { layout, config, state, booted, bootId, env, newBoot } = boot;
  // Armed and not consumed: GRUB has not run the one-shot yet (with save_env off, "armed" is the default).
  const stillArmed = (v: string | undefined) => v !== undefined && config.boot.saveEnv && env?.next_entry === entryId(v);
  // On an adopted machine, a boot without upgradectl.loop= is the distribution's system (its last fallback).
  const bootedAs = booted ?? (state.adopted ? "the distribution's own system (the adopted install)" : 'an image upgradectl does not manage');

  const trialFailed = async (version: string, reason: string) => {
    applyEvent(state, 'boot-old', {
      version,
      ok: false,
      reason,
      update: (s) => {
        endFailedTrial(s, version, reason);
        s.phaseBootId = bootId;
      },
    });
    await restoreDefault(layout, config, state);
  };

  switch (state.phase) {
    case 'committed': {
      const next = state.next;
      if (!next) return false;
      if (booted === next) {
        applyEvent(state, 'boot-trial', { version: next, update: (s) => void (s.phaseBootId = bootId) });
        return true;
      }
      if (!newBoot) return false;
      if (state.pending?.event === 'rollback' && state.pending.step === 'cancel') {
        applyEvent(state, 'cancel', { version: next, reason: 'cancelled by the operator', update: clearTrial(bootId) });
        await restoreDefault(layout, config, state);
        return true;
      }
      if (stillArmed(next)) {
        log.warn(`the trial boot of ${next} is armed but GRUB has not taken it yet (this boot runs ${bootedAs}); it runs at the next reboot`);
        return false;
      }
      await trialFailed(next, `the trial boot of ${next} did not come up: the machine booted ${bootedAs} instead${deadlineCause(config.boot.trialDeadline, false)}`);
      return true;
    }
    case 'trying': {
      const next = state.next;
      if (!next) return false;
      if (state.pending?.event === 'confirm' && state.pending.step === 'set-default' && env?.saved_entry === entryId(next) && newBoot && booted === next) {
        // Confirm had passed the health checks and made `next` GRUB's default when it was cut off.
        applyEvent(state, 'confirm-ok', {
          version: next,
          reason: 'the interrupted confirm had already made it the default',
          update: (s) => {
            s.previous = s.current;
            s.current = next;
            s.next = undefined;
            s.trialKind = undefined;
            s.phaseBootId = bootId;
          },
        });
        return true;
      }
      if (booted === next) {
        if (!newBoot) return false;
        // Another attempt of the trial (trial_attempts > 1) or a reboot before confirm: still trying.
        state.phaseBootId = bootId;
        record(state, { event: 'boot-trial', from: 'trying', to: 'trying', version: next, ok: true, reason: 'the trial image booted again before it was confirmed' });
        return true;
      }
      if (!newBoot) return false;
      await trialFailed(next, `the trial image ${next} came up but was not confirmed before the machine booted ${bootedAs}${deadlineCause(config.boot.trialDeadline, true)}`);
      return true;
    }
    case 'prepared': {
      const p = state.pending;
      if (p?.event !== 'commit' || p.bootId === bootId || !state.next) break;
      const next = state.next;
      // A commit was cut by a reset. Where did it get to? Only GRUB's one-shot can tell.
      if (booted === next) {
        applyEvent(state, 'boot-trial', { version: next, reason: 'the interrupted commit had armed the trial', update: (s) => void (s.phaseBootId = bootId) });
        return true;
      }
      if (stillArmed(next)) {
        applyEvent(state, 'commit', { version: next, reason: 'the interrupted commit had armed the trial; it runs at the next reboot', update: (s) => {
          s.phaseBootId = bootId;
          s.trialKind = 'upgrade';
        } });
        return true;
      }
      applyEvent(state, 'commit-interrupted', {
        version: next,
        ok: false,
        reason: `commit of ${next} was interrupted at step '${p.step}' by a reset; ${next} is still prepared: run upgradectl commit again`,
      });
      await restoreDefault(layout, config, state);
      return true;
    }
    case 'idle':
    case 'rolled-back': {
      const p = state.pending;
      if (p?.event === 'rollback' && p.bootId !== bootId && p.version) {
        const target = p.version;
        if (booted === target || stillArmed(target)) {
          applyEvent(state, 'rollback', { version: target, reason: 'the interrupted rollback had armed the trial', update: (s) => {
            s.next = target;
            s.trialKind = 'rollback';
            s.phaseBootId = bootId;
          } });
          if (booted === target) applyEvent(state, 'boot-trial', { version: target });
          return true;
        }
        state.pending = undefined;
        record(state, { event: 'rollback', from: state.phase, to: state.phase, version: target, ok: false, reason: `rollback to ${target} was interrupted at step '${p.step}' by a reset; nothing changed` });
        await restoreDefault(layout, config, state);
        return true;
      }
      break;
    }
  }
  // Never an image whose trial failed: a reflashed system has no current image, and after its failed
  // confirm it still runs until the reboot (which holds in the flasher).
  if (!state.current && booted && !failedBefore(state, booted) && existsSync(layout.imageFile(booted)) && allowed(state.phase, 'adopt')) {
    applyEvent(state, 'adopt', { version: booted, reason: `${booted} is running and no default was recorded`, update: (s) => void (s.current = booted) });
    return true;
  }
  return false;
}

function clearTrial(bootId: string | undefined) {
  return (s: State) => {
    s.next = undefined;
    s.trialKind = undefined;
    s.phaseBootId = bootId;
  };
}

/** After a trial ended (or never started): grubenv names the current image and no trial. */
async function restoreDefault(layout: Layout, config: Config, state: State): Promise<void> {
  try {
    await disarmTrial(layout, config, state);
    await checkpointHost(layout.host);
  } catch (err) {
    // The state is the truth either way; the boot files are rewritten at the next operation.
    log.warn(`could not reset ${layout.grubEnv} to the default image: ${messageOf(err)}`);
  }
}
