import type { Layout } from '../../core/layout.js';
import { log } from '../../core/log.js';
import { messageOf } from '../../core/errors.js';
import { checkpointHost } from '../../grub/host-fs.js';
import { DEFAULT_TRIES_VAR, defaultTriesExhausted, versionOfEntry } from '../../grub/render.js';
import { clearDefaultCount, installConfigFor, setDefault } from '../boot.js';
import type { Config } from '../config.js';
import { allowed, applyEvent } from '../lifecycle.js';
import type { State } from '../state.js';
import type { BootFacts, RuleResult } from './facts.js';
import { endFailedDefault } from './trial-end.js';

/**
 * GRUB's count of starts of the default (docs/grub.md, "Boot counting of the default"). Only a boot of
 * the default itself clears it: anything else running means the default did not come up this time
 * (GRUB fell back, or gave up on it). Once the count is exhausted, whatever runs instead (the previous
 * image GRUB boots then, or one picked in the menu) becomes the default and the default is marked bad.
 * The new default is written to grubenv after the state is saved (RuleResult.afterSave): cut off in
 * between, the next reconciliation finds the count still exhausted and only rewrites the boot files.
 */
export async function reconcileDefaultCount(boot: BootFacts): Promise<RuleResult> {
  const { layout, config, state, booted, bootId, env } = boot;
  const count = env?.[DEFAULT_TRIES_VAR];
  if (!count || booted === undefined) return { changed: false };
  const failed = versionOfEntry(env?.saved_entry);
  if (booted === failed) {
    await clearCount(layout, config, state);
    return { changed: false };
  }
  // A trial runs: GRUB does not count trial boots, and the trial's end settles the default.
  if (booted === state.next && state.phase === 'trying') return { changed: false };
  if (!failed || !defaultTriesExhausted(count, config.boot.defaultAttempts)) {
    log.warn(`the default image ${failed ?? env?.saved_entry ?? '(none)'} did not come up at this boot (${booted} runs; GRUB's count ${DEFAULT_TRIES_VAR}=${count})`);
    return { changed: false };
  }
  if (state.current === booted && Object.prototype.hasOwnProperty.call(state.bad, failed)) {
    // Recorded by an earlier run whose boot-file writes failed: only those are left to do.
    await makeRunningDefault(layout, config, state, booted);
    return { changed: false };
  }
  if (!allowed(state.phase, 'default-failed')) {
    log.warn(`the default image ${failed} did not come up in ${count} starts, but the machine is ${state.phase}; left for the end of that`);
    return { changed: false };
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
  return { changed: true, afterSave: () => makeRunningDefault(layout, config, state, booted) };
}

/** The default came up: GRUB starts counting afresh at the next boot. */
export async function clearCount(layout: Layout, config: Config, state: State): Promise<void> {
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
    await installConfigFor(layout, config, state);
  } catch (err) {
    log.warn(`could not rewrite ${layout.grubCfg} after switching the default to ${version}: ${messageOf(err)}; run upgradectl grub-config --write`);
  }
  try {
    await checkpointHost(layout.host);
  } catch (err) {
    log.warn(`could not checkpoint ${layout.host} after switching the default to ${version}: ${messageOf(err)}`);
  }
}

