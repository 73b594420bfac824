import { createHash } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import path from 'node:path';
import { renameDurable } from '../core/durable.js';
import { UpgradeError, errnoOf, messageOf } from '../core/errors.js';
import { ExecError, run } from '../core/exec.js';
import { Layout } from '../core/layout.js';
import { log } from '../core/log.js';
import { PRIVATE_DIR_MODE } from '../core/private-files.js';
import { KEPT_FILES_HASH, KEPT_FILES_NAME } from '../flasher/job.js';
import { applyPlan } from '../migrate/apply.js';
import { buildPlan, type Plan } from '../migrate/plan.js';
import { loadWhitelist, type Whitelist } from '../migrate/index.js';
import { ACCOUNT_FILES } from '../migrate/whitelist.js';
import { mountTable } from '../migrate/mount-claim.js';

/**
 * What a reflash keeps (issue 12, docs/flasher.md "What a reflash keeps"). A reflash replaces the whole
 * host partition or disk, so the machine's own files (its identity, network, SSH host keys, accounts:
 * the migration whitelist) cannot be migrated into an image on it the way commit does. Instead:
 *
 *   pack      commit --reflash copies what the whitelist selects out of the running root with the
 *             migration's own planner (the same escape and special-file checks, owners, modes, times,
 *             xattrs) into a private staging tree, and packs it with GNU tar into KEPT_FILES_NAME
 *             beside the job (root-only); the job carries its size and SHA-256.
 *   carry     the flasher checks size and hash before it writes anything (a mismatch: nothing written),
 *             holds the archive in RAM with its own files and puts it on the new partition with
 *             KEPT_FILES_HASH, which says it came through a flash.
 *   restore   the new system's first boot, before its network and SSH start
 *             (upgradectl-kept-files.service): unpack into a private directory under /run and migrate
 *             from it into the running root with the same planner — files replaced, accounts merged
 *             with the new image's system accounts — then remove the archive. A trial's confirm fails
 *             while the archive is still there: a machine that came up without its own identity is not
 *             healthy.
 */

export interface PackedFiles {
  file: string;
  size: number;
  sha256: string;
  /** Files, links and directories packed (account files included). */
  entries: number;
  /** Bytes of file content. */
  bytes: number;
  skipped: string[];
}

export interface RestoredFiles {
  archive: string;
  moved: number;
  bytes: number;
  accounts: boolean;
  /** Items left out because their destination is a mount point of the running system (e.g. a transient machine-id). */
  leftOut: string[];
  warnings: string[];
  /** The kernel's host name, set from the restored /etc/hostname (systemd read the image's before this ran). */
  hostname?: string;
}

export function keptFilesArchive(layout: Layout): string {
  return path.join(layout.flasherDir, KEPT_FILES_NAME);
}

/** GNU tar, numeric owners, every xattr namespace and ACLs: what the migration itself carries. */
const TAR_METADATA = ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--acls'];

/** Secrets in transit: a private directory under the running root's /run (a tmpfs on a real system). */
async function privateWorkDir(layout: Layout, prefix: string): Promise<string> {
  const base = path.join(layout.root, 'run/upgradectl');
  await fs.mkdir(base, { recursive: true, mode: PRIVATE_DIR_MODE });
  return fs.mkdtemp(path.join(base, prefix));
}

/** The running root's files the whitelist selects, packed root-only beside the job. */
export async function packKeptFiles(layout: Layout): Promise<PackedFiles> {
  const whitelist = await loadWhitelist(layout);
  const staging = await privateWorkDir(layout, 'keep-');
  const tree = path.join(staging, 'tree');
  const file = keptFilesArchive(layout);
  const tmp = `${file}.tmp`;
  try {
    await fs.mkdir(tree, { mode: 0o755 });
    // Against an empty tree every selected path is a 'create'; the account files are merged on the
    // other side, so here they are only copied as they are (with their owner and mode).
    const plan = await buildPlan(layout.root, tree, { ...whitelist, accounts: false });
    if (plan.problems.length > 0) {
      throw new UpgradeError('MIGRATE', `cannot keep this machine's files across the reflash: ${plan.problems.join('; ')}`, {
        hint: `fix the machine or the whitelist (${whitelist.file ?? 'etc/upgradectl/migrate.conf'}, docs/migration.md); nothing was written`,
      });
    }
    await applyPlan(plan, tree);
    const accounts = whitelist.accounts ? await copyAccountFiles(layout.root, tree) : 0;
    await fs.mkdir(layout.flasherDir, { recursive: true, mode: 0o755 });
    await fs.rm(tmp, { force: true });
    await run('tar', ['--create', '--file', tmp, ...TAR_METADATA, '--sort=name', '--directory', tree, '.'], { timeoutMs: 10 * 60_000 });
    await fs.chmod(tmp, 0o600);
    await renameDurable(tmp, file);
    const { size } = await fs.stat(file);
    return {
      file, size, sha256: await sha256Of(file),
      entries: plan.items.length + accounts,
      bytes: plan.items.reduce((n, it) => n + it.bytes, 0),
      skipped: plan.skipped.filter((s) => s.reason !== 'not on this machine').map((s) => `${s.path} (${s.reason})`),
    };
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  } finally {
    await fs.rm(staging, { recursive: true, force: true });
  }
}

async function copyAccountFiles(root: string, tree: string): Promise<number> {
  let n = 0;
  for (const f of ACCOUNT_FILES) {
    const from = path.join(root, f);
    let st;
    try {
      st = await fs.lstat(from);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') continue;
      throw err;
    }
    if (!st.isFile()) throw new UpgradeError('MIGRATE', `${from} is not a regular file: refusing to keep the accounts through it`, { hint: 'make it a plain file, or set it to skip in migrate.conf' });
    const to = path.join(tree, f);
    await fs.mkdir(path.dirname(to), { recursive: true, mode: 0o755 });
    await fs.copyFile(from, to);
    await fs.chown(to, st.uid, st.gid);
    await fs.chmod(to, st.mode & 0o7777);
    n++;
  }
  return n;
}

async function sha256Of(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/**
 * The kept files back into the running root: undefined when there is nothing to restore. Only an
 * archive the flasher carried is restored: it writes KEPT_FILES_HASH beside it on the new partition,
 * and nothing else does. An archive without it was packed by a commit --reflash whose flash never
 * happened (every boot after a commit consumes its one-shot, so that job is dead): it is removed, not
 * applied over files the machine may have changed since. The archive must be root's and private and
 * match the hash; nothing is written unless the whole plan is clean; on failure both files stay for
 * another attempt (and keep a trial from being confirmed).
 */
export async function restoreKeptFiles(layout: Layout): Promise<RestoredFiles | undefined> {
  const archive = keptFilesArchive(layout);
  const hashFile = path.join(layout.flasherDir, KEPT_FILES_HASH);
  let st;
  try {
    st = await fs.lstat(archive);
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT') throw err;
    await fs.rm(hashFile, { force: true });
    return undefined;
  }
  const refuse = (why: string, hint: string) => new UpgradeError('MIGRATE', `${archive}: ${why}`, { hint });
  if (!st.isFile()) throw refuse('not a regular file', 'remove it; only commit --reflash and the RAM flasher put the machine files there');
  if (st.uid !== 0 || (st.mode & 0o077) !== 0) {
    throw refuse(`owned by uid ${st.uid} with mode 0${(st.mode & 0o777).toString(8)}: it may hold /etc/shadow, and only a root-only archive is trusted`, 'remove it; only commit --reflash and the RAM flasher put the machine files there');
  }
  let expected: string;
  try {
    expected = (await fs.readFile(hashFile, 'utf8')).trim();
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT') throw err;
    await fs.rm(archive, { force: true });
    log.info(`removed ${archive}: packed by a commit --reflash whose flash did not happen`);
    return undefined;
  }
  if ((await sha256Of(archive)) !== expected) {
    throw refuse(`its SHA-256 is not the one the flasher recorded in ${hashFile}`, 'the archive was damaged after the flash; restore the machine files by hand from a backup, then remove both files');
  }
  const work = await privateWorkDir(layout, 'restore-');
  try {
    try {
      await run('tar', ['--extract', '--file', archive, ...TAR_METADATA, '--same-owner', '--same-permissions', '--directory', work], { timeoutMs: 10 * 60_000 });
    } catch (err) {
      const detail = err instanceof ExecError ? err.stderr.trim().split('\n').slice(-3).join(' | ') : messageOf(err);
      throw refuse(`cannot unpack it (${detail})`, 'check the host partition (e2fsck) and free space under /run');
    }
    const plan = await buildPlan(work, layout.root, await whitelistOf(work));
    const leftOut = await dropMountPoints(plan, layout.root);
    if (plan.problems.length > 0) {
      throw new UpgradeError('MIGRATE', `cannot restore the machine files kept across the reflash: ${plan.problems.join('; ')}`, {
        hint: `nothing was written; ${archive} stays for another attempt (systemctl start upgradectl-kept-files) once fixed`,
      });
    }
    await applyPlan(plan, layout.root);
    await run('sync', [], { timeoutMs: 120_000 });
    const hostname = await setRunningHostname(layout, plan);
    await fs.rm(archive);
    await fs.rm(hashFile, { force: true });
    const result: RestoredFiles = {
      archive,
      moved: plan.items.length,
      bytes: plan.items.reduce((n, it) => n + it.bytes, 0),
      accounts: (plan.accounts?.writes.length ?? 0) > 0,
      leftOut,
      warnings: plan.warnings,
      ...(hostname ? { hostname } : {}),
    };
    log.info(`restored ${result.moved} machine files kept across the reflash (${result.bytes} bytes${result.accounts ? ', accounts merged' : ''})`);
    for (const p of leftOut) log.warn(`kept file ${p} not restored: a mount point of the running system`);
    return result;
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

/**
 * At confirm, the kept files the flasher carried that upgradectl-kept-files.service did not restore
 * (the image does not enable it, or it failed): restored now, late (network and SSH already started
 * with the image's own set-up; what they read at start takes effect at the next boot). Undefined when
 * nothing is pending or the late restore worked; else why the trial must fail.
 */
export async function restoreLateKeptFiles(layout: Layout): Promise<string | undefined> {
  try {
    await fs.access(path.join(layout.flasherDir, KEPT_FILES_HASH));
  } catch {
    return undefined;
  }
  try {
    const r = await restoreKeptFiles(layout);
    if (r) log.warn(`restored the machine files kept across the reflash only now, at confirm: enable upgradectl-kept-files.service in the image so that they are in place before the network and SSH start`);
    return undefined;
  } catch (err) {
    return `the machine's files kept across the reflash (${keptFilesArchive(layout)}) could not be restored: ${messageOf(err)}`;
  }
}

/**
 * systemd set the kernel's host name from the image's /etc/hostname before any unit ran: on the running
 * system (root /) the restored name is set now, before the network (a DHCP request sends it) and the
 * journal's later lines use it.
 */
async function setRunningHostname(layout: Layout, plan: Plan): Promise<string | undefined> {
  if (layout.root !== '/' || !plan.items.some((it) => it.path === '/etc/hostname' && it.kind === 'file')) return undefined;
  const name = (await fs.readFile('/etc/hostname', 'utf8')).split('\n')[0]?.trim() ?? '';
  if (!/^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$/.test(name)) {
    log.warn(`/etc/hostname holds '${name.slice(0, 64)}', not a host name: the running name is left as it is until the next boot`);
    return undefined;
  }
  await fs.writeFile('/proc/sys/kernel/hostname', name);
  return name;
}

/**
 * For doctor: machine files waiting on the host partition. `pending`: the flasher carried them and
 * nothing restored them yet; `stale`: packed by a commit --reflash whose flash never happened (a copy
 * of /etc/shadow and the host keys that `upgradectl flasher restore` removes).
 */
export async function keptFilesState(layout: Layout): Promise<'none' | 'pending' | 'stale'> {
  const exists = (f: string) => fs.access(f).then(() => true, () => false);
  if (!(await exists(keptFilesArchive(layout)))) return 'none';
  return (await exists(path.join(layout.flasherDir, KEPT_FILES_HASH))) ? 'pending' : 'stale';
}

/** The old machine's own migrate.conf chose what was packed; it also says how to apply it. */
async function whitelistOf(tree: string): Promise<Whitelist> {
  return loadWhitelist(new Layout(tree));
}

/**
 * A destination the running system has mounted over (systemd's transient /etc/machine-id, a container's
 * /etc/hostname) cannot be replaced by a rename: left out with a warning instead of failing the rest.
 */
async function dropMountPoints(plan: Plan, root: string): Promise<string[]> {
  let points: Map<string, unknown>;
  try {
    points = mountTable();
  } catch {
    return [];
  }
  const left = plan.items.filter((it) => it.kind !== 'dir' && points.has(path.join(root, it.destRel)));
  plan.items = plan.items.filter((it) => !left.includes(it));
  return left.map((it) => it.path);
}
