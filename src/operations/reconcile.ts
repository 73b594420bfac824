import { existsSync } from 'node:fs';
import { installGrubConfig, readBootEnv, renderForLayout } from '../grub/boot-files.js';
import { bootedVersion, clearDefaultCount, disarmTrial, setDefault } from '../grub/boot-control.js';
import type { GrubEnv } from '../grub/env.js';
import { checkpointHost } from '../grub/host-fs.js';
import { DEFAULT_TRIES_VAR, defaultTriesExhausted, entryId, versionOfEntry } from '../grub/render.js';
import { loadConfig, type Config } from './config.js';
import { isUpgradeError, messageOf } from '../core/errors.js';
import { readBootId } from '../core/boot-id.js';
import { allowed, applyEvent, record } from './lifecycle.js';
import { acquireLock } from '../core/lock.js';
import { log } from '../core/log.js';
import type { Layout } from '../core/layout.js';
import { loadState, saveState, type State } from './state.js';

/**
 * Boot-time reconciliation (DESIGN.md §4): compare the persisted state with what actually booted
 * (DIR/proc/cmdline) and record what happened across the reboot. Run by confirm (the boot unit runs
 * `confirm --if-trial` on every boot), rollback, commit, status and the daemon; idempotent, and a
 * no-op (no lock, no write) when there is nothing to learn.
 */
export async function reconcile(layout: Layout): Promise<State> {
  const seen = await loadState(layout);
  const booted = await bootedVersion(layout);
  const bootId = readBootId(layout);
  // GRUB counted a start of the default: this boot must clear it, or judge the default failed.
  const counted = booted !== undefined && Boolean((await readBootEnv(layout))?.[DEFAULT_TRIES_VAR]);
  if (!counted && !mayChange(layout, seen, booted, bootId)) return seen;
  let lock;
  try {
    lock = await acquireLock(layout, 'reconcile');
  } catch (err) {
    // Another operation holds the lock (a long prepare): it will see the same facts later.
    if (isUpgradeError(err, 'LOCKED')) {
      if (counted) {
        log.warn(`GRUB's count of starts of the default (${DEFAULT_TRIES_VAR}) was not cleared: ${messageOf(err)}; upgradectl status clears it once that is done`);
      } else log.debug(`reconcile skipped: ${messageOf(err)}`);
      return seen;
    }
    throw err;
  }
  try {
    const state = await loadState(layout);
    const config = await loadConfig(layout);
    if (await reconcileState(layout, config, state, booted, bootId)) await saveState(layout, state);
    return state;
  } finally {
    await lock.release();
  }
}

function mayChange(layout: Layout, s: State, booted: string | undefined, bootId: string | undefined): boolean {
  if (s.phase === 'committed' || s.phase === 'trying') return true;
  if (s.pending && s.pending.bootId !== bootId) return true;
  return !s.current && booted !== undefined && existsSync(layout.imageFile(booted));
}

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

/**
 * The rules, applied to a state in memory (caller holds the lock). Returns whether anything changed.
 * "A new boot" means the kernel boot id differs from the one recorded when the phase was entered; the
 * same boot (e.g. after commit --no-reboot) never counts as a failed trial.
 */
export async function reconcileState(
  layout: Layout,
  config: Config,
  state: State,
  booted: string | undefined,
  bootId: string | undefined,
): Promise<boolean> {
  // grubenv as GRUB left it for this boot, before the rules below rewrite it.
  const env = await readBootEnv(layout);
  const boot: BootFacts = { layout, config, state, booted, bootId, env };
  const trialChanged = await reconcileTrial(boot);
  // After the trial rules: a failed trial is recorded (boot-old) before a failed default.
  const defaultChanged = await reconcileDefaultCount(boot);
  return trialChanged || defaultChanged;
}

/** What one reconciliation knows about this boot; `state` is updated in place. */
interface BootFacts {
  layout: Layout;
  config: Config;
  state: State;
  booted: string | undefined;
  bootId: string | undefined;
  /** grubenv as GRUB left it for this boot. */
  env: GrubEnv | undefined;
}

/** What became of a pending trial, commit or rollback across the reboot. */
async function reconcileTrial(boot: BootFacts): Promise<boolean> {
  const { layout, config, state, booted, bootId, env } = boot;
  const newBoot = bootId !== undefined && bootId !== state.phaseBootId;
  // Armed and not consumed: GRUB has not run the one-shot yet (with save_env off, "armed" is the default).
  const stillArmed = (v: string | undefined) => v !== undefined && config.boot.saveEnv && env?.next_entry === entryId(v);
  const bootedAs = booted ?? 'an image upgradectl does not manage';

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
      await trialFailed(next, `the trial boot of ${next} did not come up: the machine booted ${bootedAs} instead`);
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
      await trialFailed(next, `the trial image ${next} came up but was not confirmed before the machine booted ${bootedAs}`);
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
      if (!state.current && booted && existsSync(layout.imageFile(booted))) {
        applyEvent(state, 'adopt', { version: booted, reason: `${booted} is running and no default was recorded`, update: (s) => void (s.current = booted) });
        return true;
      }
      break;
    }
  }
  return false;
}

/**
 * GRUB's count of starts of the default (docs/grub.md, "Boot counting of the default"). Only a boot of
 * the default itself clears it: anything else running means the default did not come up this time
 * (GRUB fell back, or gave up on it). Once the count is exhausted, whatever runs instead (the previous
 * image GRUB boots then, or one picked in the menu) becomes the default and the default is marked bad.
 * Returns whether the state changed.
 */
async function reconcileDefaultCount(boot: BootFacts): Promise<boolean> {
  const { layout, config, state, booted, bootId, env } = boot;
  const count = env?.[DEFAULT_TRIES_VAR];
  if (!count || booted === undefined) return false;
  const failed = versionOfEntry(env?.saved_entry);
  if (booted === failed) {
    await clearCount(layout, config, state);
    return false;
  }
  // A trial runs: GRUB does not count trial boots, and the trial's end settles the default.
  if (booted === state.next && state.phase === 'trying') return false;
  if (!failed || !defaultTriesExhausted(count, config.boot.defaultAttempts)) {
    log.warn(`the default image ${failed ?? env?.saved_entry ?? '(none)'} did not come up at this boot (${booted} runs; GRUB's count ${DEFAULT_TRIES_VAR}=${count})`);
    return false;
  }
  if (state.current === booted && state.bad[failed]) {
    // Recorded by an earlier run whose boot-file writes failed: only those are left to do.
    await makeRunningDefault(layout, config, state, booted);
    return false;
  }
  if (!allowed(state.phase, 'default-failed')) {
    log.warn(`the default image ${failed} did not come up in ${count} starts, but the machine is ${state.phase}; left for the end of that`);
    return false;
  }
  const reason = `the default image ${failed} was started ${count} times without coming up (GRUB's ${DEFAULT_TRIES_VAR}=${count}, [boot] default_attempts = ${config.boot.defaultAttempts}); GRUB booted ${booted} instead, which is now the default`;
  applyEvent(state, 'default-failed', {
    version: failed,
    ok: false,
    reason,
    update: (s) => {
      endFailedDefault(s, failed, booted, reason);
      s.phaseBootId = bootId;
    },
  });
  // The state first: cut off after it, the next reconciliation finds the count still exhausted and
  // only rewrites the boot files (above). Cut off before, it decides the same again.
  await saveState(layout, state);
  await makeRunningDefault(layout, config, state, booted);
  return true;
}

/** The default came up: GRUB starts counting afresh at the next boot. */
async function clearCount(layout: Layout, config: Config, state: State): Promise<void> {
  try {
    // An unclean reset after an uncheckpointed write would show GRUB the old count (FACTS.md): two
    // such boots in a row would look like a default that never came up.
    if (await clearDefaultCount(layout, config, state)) await checkpointHost(layout.host);
  } catch (err) {
    log.warn(`could not clear ${DEFAULT_TRIES_VAR} in ${layout.grubEnv}: ${messageOf(err)}; GRUB boots the previous image after ${config.boot.defaultAttempts} uncleared starts`);
  }
}

/** After the default failed: the running image is GRUB's default, and grub.cfg is rendered for the new current/previous. */
async function makeRunningDefault(layout: Layout, config: Config, state: State, version: string): Promise<void> {
  try {
    await setDefault(layout, config, state, version);
  } catch (err) {
    // GRUB keeps booting `version` anyway while the exhausted count stays in grubenv.
    log.warn(`could not make ${version} the default in ${layout.grubEnv}: ${messageOf(err)}; run upgradectl grub-config --write`);
    return;
  }
  try {
    // The old grub.cfg would count starts of `version` against itself as the previous image: harmless,
    // but the menu order, the fallback and the counting follow the new current and previous from here.
    await installGrubConfig(layout, await renderForLayout(layout, config, state));
  } catch (err) {
    log.warn(`could not rewrite ${layout.grubCfg} after switching the default to ${version}: ${messageOf(err)}; run upgradectl grub-config --write`);
  }
  try {
    await checkpointHost(layout.host);
  } catch (err) {
    log.warn(`could not checkpoint ${layout.host} after switching the default to ${version}: ${messageOf(err)}`);
  }
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
