import type { MigrationReport } from '../migrate/index.js';
import { UpgradeError, messageOf } from '../core/errors.js';
import { log } from '../core/log.js';
import { freeBytes } from '../release/space.js';
import type { Layout } from '../core/layout.js';
import { readBootId } from '../core/boot-id.js';
import { buildGrubInput, checkGrubScript } from '../grub/boot-files.js';
import { checkpointHost, saveEnvCapability } from '../grub/host-fs.js';
import { ensureFirstBlockWritten } from '../core/first-block.js';
import { armTrial, bootContext, bootImages, renderForState, writeBootFiles } from './boot.js';
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
  let afterArm: unknown;
  const { state, event, outcome } = await runEvent(layout, 'commit', async (state, ctl) => {
    const { version } = commitPreflight(layout, state, opts);
    // Everything that can refuse the commit is checked before the first write (hooks, migration).
    await bootPreflight(layout, config, { ...state, phase: 'committed' });
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
    // Before any boot file names the image: signed GRUB cannot open an image file whose first block is
    // a hole or unwritten (core/first-block.ts); the boot files' checkpoint makes the repair visible to GRUB.
    const firstBlock = await ensureFirstBlockWritten(layout.imageFile(version));
    if (firstBlock.kind === 'hole' || firstBlock.kind === 'unwritten') {
      log.warn(`the first block of ${layout.imageFile(version)} was ${firstBlock.kind === 'hole' ? 'a hole' : 'unwritten'}: rewritten so that GRUB can open it`);
      detail.firstBlock = `repaired (${firstBlock.kind})`;
    }
    await ctl.mark('boot-files');
    // Entries first, with the default unchanged: a reset after this boots the current image as before.
    const files = await writeBootFiles(layout, config, state);
    detail.checkpoint = files.checkpoint;
    await ctl.mark('arm');
    // From this write on, the next boot is the trial of `version`. Nothing after it may make the state
    // forget that: a failure from here on is reported, but the phase becomes `committed` regardless,
    // so the trial that may boot is reconciled and confirmed like any other.
    detail.env = await armTrial(layout, config, state, version);
    try {
      detail.checkpoint = await checkpointHost(layout.host);
    } catch (err) {
      afterArm = err;
      log.error(`the trial of ${version} is armed, but ${messageOf(err)}`);
    }
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
  if (afterArm) {
    throw new UpgradeError('GRUB', `the trial of ${outcome.version} is armed and recorded, but the host filesystem could not be checkpointed for GRUB: ${messageOf(afterArm)}`, {
      cause: afterArm,
      hint: `run sync and reboot (the trial boots if GRUB sees the armed entry; either way the next boot reconciles it), or cancel with upgradectl rollback`,
    });
  }
  const rebooted = opts.reboot ? (await rebootMachine(config, `trial boot of ${outcome.version}`), true) : false;
  return { event, state, version: outcome.version, rebooted, detail };
}


/** What commit would do, checked without writing anything: shared by commit and commit --dry-run. */
export interface CommitPlan {
  version: string;
  /** The image a failed trial falls back to, or DISTRO_SYSTEM on an adopted machine's first commit. */
  current: string;
}

/** What an adopted machine falls back to before its first image is confirmed (never a version). */
export const DISTRO_SYSTEM = 'the distribution system (adopted)';

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
  // An adopted machine's first commit falls back to the distribution's system it runs now.
  if (!state.current && state.adopted) return { version, current: DISTRO_SYSTEM };
  if (!state.current) {
    throw new UpgradeError('STATE', 'no current image is recorded, so a failed trial would have nothing to fall back to', {
      hint: 'run upgradectl on a machine booted from an upgradectl image (upgradectl.loop= on the kernel command line), or take over this traditional install with upgradectl adopt',
    });
  }
  requireImage(layout, state.current, 'the current image (the fallback)');
  return { version, current: state.current };
}

/**
 * What GRUB needs for the commit to be safe, checked before anything is written: a host filesystem
 * whose grubenv GRUB can rewrite (or the documented fallback mode), a boot menu that renders for the
 * new roles (the host partition's UUID found, grub-script-check passes), and room for the boot files.
 */
export async function bootPreflight(layout: Layout, config: Config, after: State): Promise<void> {
  if (config.boot.saveEnv) {
    let verdict;
    try {
      verdict = await saveEnvCapability(layout.host);
    } catch (err) {
      log.warn(`could not tell whether GRUB can write grubenv on ${layout.host}: ${messageOf(err)} (upgradectl doctor)`);
    }
    if (verdict && !verdict.ok) {
      throw new UpgradeError('UNSUPPORTED', `GRUB cannot write grubenv (save_env) on ${layout.host} through ${verdict.layers.join(', ')}: a trial that fails would boot again at every reset`, {
        hint: `set save_env = false in the [boot] section of ${layout.configFile} (fallback mode, docs/grub.md), or keep /boot/grub on a plain partition`,
      });
    }
  }
  await checkGrubScript(await renderForState(layout, config, after));
  const free = await freeBytes(layout.host);
  if (free < BOOT_FILES_ROOM) {
    throw new UpgradeError('NO_SPACE', `only ${free} bytes are free on ${layout.host}: grub.cfg and grubenv cannot be rewritten safely`, {
      hint: 'free some space on the host partition (upgradectl status lists the images), then commit again',
    });
  }
}

/** Room for a new grub.cfg beside the old one, grubenv and the state: far more than they take. */
const BOOT_FILES_ROOM = 1 << 20;

/** commit --dry-run: the plan only — what would move into the image and which entries GRUB would get. */
export async function planCommit(layout: Layout, config: Config): Promise<{ from: string; to: string; migration: MigrationReport; entries: string[] }> {
  await reconcile(layout);
  const state = await loadState(layout);
  const plan = commitPreflight(layout, state);
  await bootPreflight(layout, config, { ...state, phase: 'committed' });
  const migration = await migrateForCommit(layout, layout.imageFile(plan.version), true);
  const grub = await buildGrubInput(bootContext(layout, config, state), await bootImages(layout));
  return { from: plan.current, to: plan.version, migration, entries: grub.entries.map((e) => e.version) };
}
