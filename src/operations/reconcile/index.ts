import { existsSync } from 'node:fs';
import { readBootId } from '../../core/boot-id.js';
import { isUpgradeError, messageOf } from '../../core/errors.js';
import type { Layout } from '../../core/layout.js';
import { acquireLock } from '../../core/lock.js';
import { log } from '../../core/log.js';
import { DEFAULT_TRIES_VAR, versionOfEntry } from '../../grub/render.js';
import { bootedVersion, readBootEnv } from '../boot.js';
import { loadConfig, parseConfig, type Config } from '../config.js';
import { failedBefore } from '../offer.js';
import { loadState, saveState, type State } from '../state.js';
import { clearCount, reconcileDefaultCount } from './default-count.js';
import type { BootFacts } from './facts.js';
import { reconcileFlashTrial } from './flash-trial.js';
import { reconcileTrial } from './trial.js';

export { endFailedTrial, endFailedDefault, markBad } from './trial-end.js';

/**
 * Boot-time reconciliation (DESIGN.md §4): compare the persisted state with what actually booted
 * (DIR/proc/cmdline) and record what happened across the reboot. Every operation runs it first (the
 * boot unit runs `confirm --if-trial` on every boot); idempotent, and a no-op (no lock, no write) when
 * there is nothing to learn. The rules live beside this file: flash-trial.ts (a reflashed system's first
 * boot), trial.ts (what became of a trial, commit or rollback), default-count.ts (GRUB's count of starts of the default).
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
    const config = await configForReconcile(layout, state, booted);
    const boot: BootFacts = {
      layout,
      config,
      state,
      booted,
      bootId,
      env: await readBootEnv(layout),
      newBoot: bootId !== undefined && bootId !== state.phaseBootId,
    };
    // Before the trial rules: they then see a reflashed system's first boot as any trial's boot.
    const flashed = await reconcileFlashTrial(boot);
    const trialChanged = (await reconcileTrial(boot)) || flashed;
    // After the trial rules: a failed trial is recorded (boot-old) before a failed default.
    const fromCount = await reconcileDefaultCount(boot);
    if (trialChanged || fromCount.changed) await saveState(layout, state);
    await fromCount.afterSave?.();
    return state;
  } finally {
    await lock.release();
  }
}

function mayChange(layout: Layout, s: State, booted: string | undefined, bootId: string | undefined): boolean {
  if (s.phase === 'committed' || s.phase === 'trying') return true;
  if (s.pending && s.pending.bootId !== bootId) return true;
  if (existsSync(layout.flashTrialFile)) return true;
  return !s.current && booted !== undefined && !failedBefore(s, booted) && existsSync(layout.imageFile(booted));
}

/**
 * The config, or — when it does not load (a typo) — the one thing that must not wait for the operator
 * to fix it: a default that came up clears GRUB's count of its starts, so ordinary reboots do not roll
 * a good image back. Then the config error is raised as usual.
 */
async function configForReconcile(layout: Layout, state: State, booted: string | undefined): Promise<Config> {
  try {
    return await loadConfig(layout);
  } catch (err) {
    const env = await readBootEnv(layout);
    if (booted !== undefined && env?.[DEFAULT_TRIES_VAR] && versionOfEntry(env.saved_entry) === booted) {
      log.error(`${messageOf(err)}; clearing GRUB's count of starts of the running default ${booted} anyway`);
      await clearCount(layout, parseConfig(''), state);
    }
    throw err;
  }
}
