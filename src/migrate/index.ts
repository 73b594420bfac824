import { existsSync } from 'node:fs';
import path from 'node:path';
import { UpgradeError, messageOf } from '../core/errors.js';
import { ExecError, run } from '../core/exec.js';
import { log } from '../core/log.js';
import type { Layout } from '../core/layout.js';
import { onPath } from '../core/which.js';
import { ApplyError, applyPlan } from './apply.js';
import { withMountedImage, type MountedImage } from './image-mount.js';
import { buildPlan, type Plan } from './plan.js';
import { formatBytes, type MigrationReport } from './report.js';
import { loadWhitelist, migrateConfFile, type Whitelist } from './whitelist.js';

export { formatMigrationReport, type MigrationReport, type MovedItem, type SkippedItem } from './report.js';
export type { AccountsReport } from './accounts-merge.js';
export { withMountedImage, type MountedImage } from './image-mount.js';
export { cleanStaleMounts, type CleanedMount } from './mount-claim.js';
export { loadWhitelist, parseWhitelist, type Whitelist } from './whitelist.js';
export { DEFAULT_WHITELIST } from './default-whitelist.js';

/**
 * A failed migration. `imageModified` tells the caller (commit) whether the image may hold part of
 * the migration and must be marked unusable; when false the image is exactly as prepare left it.
 */
export class MigrationError extends UpgradeError {
  readonly imageModified: boolean;
  /** The plan as far as it got, with its problems: for the state's history. */
  readonly report: MigrationReport | undefined;

  constructor(message: string, opts: { imageModified: boolean; hint?: string; cause?: unknown; report?: MigrationReport }) {
    super('MIGRATE', message, { hint: opts.hint, cause: opts.cause });
    this.name = 'MigrationError';
    this.imageModified = opts.imageModified;
    this.report = opts.report;
  }
}

export interface MigrateOptions {
  layout: Layout;
  /** The prepared image (an ext4 filesystem file), not attached anywhere. */
  imageFile: string;
  /** Plan only: the image is attached read-only and nothing is written. */
  dryRun?: boolean;
}

/** Every program the migration runs, and the Debian package that has it. */
const TOOLS: ReadonlyArray<readonly [tool: string, pkg: string]> = [
  ['losetup', 'mount'], ['mount', 'mount'], ['umount', 'mount'], ['e2fsck', 'e2fsprogs'],
  ['getfattr', 'attr'], ['setfattr', 'attr'],
];

/**
 * A tool missing halfway through would leave a half-migrated image: look for all of them before the
 * image is even attached, and name the packages to install.
 */
async function requireTools(): Promise<void> {
  const { missing, packages } = findMigrationTools();
  if (missing.length === 0) return;
  throw new MigrationError(`cannot migrate: ${missing.join(', ')} not found on PATH (${process.env.PATH ?? ''})`, {
    imageModified: false,
    hint: `install them (Debian/Ubuntu: apt-get install ${packages.join(' ')}), then run the command again; the image was not touched`,
  });
}

/** The migration's programs, which of them are not on PATH, and the Debian packages that have those (also for doctor). */
export function findMigrationTools(): { all: string[]; missing: string[]; packages: string[] } {
  const missing = TOOLS.filter(([tool]) => !onPath(tool));
  return { all: TOOLS.map(([tool]) => tool), missing: missing.map(([tool]) => tool), packages: [...new Set(missing.map(([, pkg]) => pkg))] };
}

/**
 * Migrate the whitelisted files of the running root (layout.root) into `imageFile`, the story of
 * DESIGN.md §7: read the whitelist, attach and mount the image, plan and check everything, write,
 * unmount, detach, and prove the filesystem clean with `e2fsck -n`. The running system is only read.
 */
export async function migrateIntoImage(opts: MigrateOptions): Promise<MigrationReport> {
  const started = Date.now();
  const image = path.resolve(opts.imageFile);
  const dryRun = opts.dryRun ?? false;
  if (!existsSync(image)) {
    throw new MigrationError(`cannot migrate into ${image}: no such image`, {
      imageModified: false,
      hint: 'prepare the image first: upgradectl prepare',
    });
  }
  await requireTools();
  const whitelist = await loadWhitelistOrFail(opts.layout);
  // Until the plan is clean, nothing in the image has been written (the mount is read-only).
  let wrote = false;
  let planned: MigrationReport | undefined;

  let report: MigrationReport;
  try {
    report = await withMountedImage(image, { readOnly: true }, async (m) => {
      const plan = await buildPlan(opts.layout.root, m.mountPoint, whitelist);
      return toReport(plan, opts.layout.root, image, whitelist, true, started);
    });
    if (dryRun || report.problems.length > 0) {
      if (report.problems.length > 0 && !dryRun) throw problemsError(report, image);
      return report;
    }
    report = await withMountedImage(image, {}, async (m) => {
      const plan = await buildPlan(opts.layout.root, m.mountPoint, whitelist);
      const fresh = toReport(plan, opts.layout.root, image, whitelist, false, started);
      // The plan on the read-write mount must agree with the one checked read-only.
      if (fresh.problems.length > 0) throw problemsError(fresh, image);
      planned = fresh;
      wrote = true;
      await applyPlan(plan, m.mountPoint);
      await syncMount(m);
      return fresh;
    });
  } catch (err) {
    throw wrapFailure(err, image, wrote, planned);
  }

  try {
    await run('e2fsck', ['-n', '-f', image], { timeoutMs: 10 * 60_000 });
  } catch (err) {
    const detail = err instanceof ExecError ? err.stdout.trim().split('\n').slice(-6).join(' | ') : messageOf(err);
    throw new MigrationError(`${image} is not clean after the migration (e2fsck -n): ${detail}`, {
      imageModified: true,
      cause: err,
      hint: `the image cannot be booted safely; prepare it again (upgradectl prepare) and retry the commit`,
      report,
    });
  }
  report.fsck = 'clean';
  report.durationMs = Date.now() - started;
  log.info(`migrated ${report.moved.length} items (${formatBytes(report.bytes)}) into ${image} in ${report.durationMs} ms`);
  return report;
}

/** The plan alone, as `commit --dry-run` and `status` show it. */
export async function planMigration(opts: Omit<MigrateOptions, 'dryRun'>): Promise<MigrationReport> {
  return migrateIntoImage({ ...opts, dryRun: true });
}

async function loadWhitelistOrFail(layout: Layout): Promise<Whitelist> {
  try {
    return await loadWhitelist(layout);
  } catch (err) {
    if (err instanceof UpgradeError) throw new MigrationError(err.message, { imageModified: false, hint: err.hint, cause: err });
    throw new MigrationError(`cannot read ${migrateConfFile(layout)}: ${messageOf(err)}`, { imageModified: false, cause: err });
  }
}

/** Everything written so far reaches the image file before the unmount can fail. */
async function syncMount(m: MountedImage): Promise<void> {
  await run('sync', ['-f', m.mountPoint], { timeoutMs: 120_000 });
}

function problemsError(report: MigrationReport, image: string): MigrationError {
  const n = report.problems.length;
  return new MigrationError(`cannot migrate into ${image}: ${report.problems.join('; ')}`, {
    imageModified: false,
    report,
    hint:
      `nothing was written (${n} problem${n === 1 ? '' : 's'}); fix the machine or the whitelist ` +
      `(${report.whitelist ?? 'etc/upgradectl/migrate.conf'}; see docs/migration.md) and see the plan with: upgradectl commit --dry-run`,
  });
}

function wrapFailure(err: unknown, image: string, wrote: boolean, planned: MigrationReport | undefined): unknown {
  if (err instanceof MigrationError) return err;
  const state = wrote
    ? `${image} may be partially migrated and must not be booted`
    : `${image} was not modified`;
  if (err instanceof ApplyError) {
    if (err.errno === 'ENOSPC' || err.errno === 'EDQUOT') {
      const need = planned ? ` (the migration needs about ${formatBytes(planned.spaceNeeded)}; the image had ${formatBytes(planned.spaceFree)} free)` : '';
      return new MigrationError(`${image} ran out of space while writing ${err.path}${need}; ${state}`, {
        imageModified: wrote,
        cause: err,
        report: planned,
        hint: 'the image needs more free space for the migrated files: build the image larger, or whitelist less (docs/migration.md)',
      });
    }
    return new MigrationError(`migrating ${err.path} into ${image} failed: ${err.message}; ${state}`, {
      imageModified: wrote,
      cause: err,
      hint: 'prepare the image again (upgradectl prepare) and retry the commit; the running system was not changed',
    });
  }
  const hint = err instanceof UpgradeError ? err.hint : undefined;
  return new MigrationError(`migration into ${image} failed: ${messageOf(err)}; ${state}`, {
    imageModified: wrote,
    cause: err,
    hint: hint ?? 'the running system was not changed; run upgradectl commit --dry-run to see the plan',
  });
}

function toReport(plan: Plan, source: string, image: string, whitelist: Whitelist, dryRun: boolean, started: number): MigrationReport {
  return {
    image,
    source,
    whitelist: whitelist.file,
    dryRun,
    moved: plan.items.map(
      ({ path: p, from, to, kind, mode, action, entry, bytes, owner, perm, target }) =>
        ({ path: p, from, to, kind, mode, action, entry, bytes, owner, perm, ...(target !== undefined ? { target } : {}) }),
    ),
    skipped: plan.skipped,
    accounts: plan.accounts?.merge.report ?? null,
    accountFiles: plan.accounts?.writes.map((w) => w.path) ?? [],
    warnings: plan.warnings,
    problems: plan.problems,
    bytes: plan.items.reduce((n, it) => n + it.bytes, 0),
    spaceNeeded: plan.spaceNeeded,
    spaceFree: plan.spaceFree,
    fsck: 'not run',
    durationMs: Date.now() - started,
  };
}
