import { createHash } from 'node:crypto';
import { promises as fs, type Stats } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { UpgradeError } from '../core/errors.js';
import { run } from '../core/exec.js';
import { log } from '../core/log.js';
import { checkImageOutput } from './image-output.js';
import { tarballKind, withExtractedTarball } from './rootfs-tarball.js';

export interface ImageBuildOptions {
  /** A directory, or a .tar, .tar.gz, .tgz or .tar.zst of one (rootfs-tarball.ts). */
  rootfs: string;
  out: string;
  /** Bytes; default: what the tree needs plus headroom. */
  size?: number;
  /** Filesystem UUID and hash seed; default: derived from the label, so a rebuild gives the same bytes. */
  uuid?: string;
  label?: string;
  /**
   * Seconds since the epoch for every time mke2fs makes up (superblock, journal, crtime): by default
   * SOURCE_DATE_EPOCH, else the newest mtime in the tree, so it means "built from a tree as of".
   */
  time?: number;
  kernel?: string;
  initrd?: string;
  /** Replace an existing OUT (never the booted image nor one a loop device uses: see image-output.ts). */
  force?: boolean;
  /** Files never to replace, even with force: the booted image. */
  protect?: string[];
}

export interface ImageBuildResult {
  out: string;
  size: number;
  uuid: string;
  sha256: string;
  files: number;
}

/**
 * A reproducible ext4 image of a directory tree. `mke2fs -d` is byte-deterministic only with a fixed
 * UUID, hash seed and E2FSPROGS_FAKE_TIME, and it copies each file's atime and ctime, which merely
 * reading the tree changes (FACTS.md): so after mke2fs every inode's atime and ctime are set to its
 * mtime with debugfs. The same tree (same contents, modes, owners, mtimes) then gives the same bytes.
 */
export async function buildImage(opts: ImageBuildOptions): Promise<ImageBuildResult> {
  if (tarballKind(opts.rootfs) && (await fs.stat(opts.rootfs).then((s) => s.isFile(), () => false))) {
    // The label defaults to the output's name, whatever the tree was extracted into.
    return withExtractedTarball(path.resolve(opts.rootfs), path.dirname(path.resolve(opts.out)), (tree) => buildImage({ ...opts, rootfs: tree }));
  }
  const rootfs = path.resolve(opts.rootfs);
  const kernel = opts.kernel ?? '/vmlinuz';
  const initrd = opts.initrd ?? '/initrd.img';
  await checkTree(rootfs, kernel, initrd);
  await checkImageOutput(rootfs, opts.out, { force: opts.force, protect: opts.protect });
  const entries = await walk(rootfs);
  const label = (opts.label ?? path.basename(opts.out).replace(/\.img$/, '')).slice(0, 16);
  const uuid = opts.uuid ?? uuidFrom(`upgradectl-image:${label}`);
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(uuid)) {
    throw new UpgradeError('USAGE', `--uuid ${uuid} is not a UUID`, { hint: 'use the form 01234567-89ab-cdef-0123-456789abcdef' });
  }
  const used = entries.reduce((n, e) => n + e.stat.blocks * 512, 0);
  const size = opts.size ?? roundUp(used * 1.2 + entries.length * 4096 + 64 * 1048576, 1048576);
  // 0 would mean "not faked" to e2fsprogs, hence at least 1.
  const newest = Math.max(1, ...entries.map((e) => Math.floor(e.stat.mtimeMs / 1000)));
  const time = opts.time ?? (process.env.SOURCE_DATE_EPOCH ? Number(process.env.SOURCE_DATE_EPOCH) : newest);
  if (!Number.isInteger(time) || time < 1) {
    throw new UpgradeError('USAGE', `build time ${String(time)} is not valid`, { hint: 'give --time (or SOURCE_DATE_EPOCH) as whole seconds since 1970, above 0' });
  }

  const out = path.resolve(opts.out);
  const tmp = path.join(path.dirname(out), `.${path.basename(out)}.${process.pid}.building`);
  const cmdFile = path.join(await fs.mkdtemp(path.join(os.tmpdir(), 'upgradectl-image-')), 'times.debugfs');
  try {
    await fs.rm(tmp, { force: true });
    const env = { ...process.env, E2FSPROGS_FAKE_TIME: String(time) };
    try {
      await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-I', '256', '-L', label, '-U', uuid, '-E', `hash_seed=${uuid},nodiscard`, '-d', rootfs, tmp, `${Math.floor(size / 1024)}k`], { env });
    } catch (err) {
      throw new UpgradeError('IMAGE', `mke2fs could not build an image of ${rootfs} in ${mib(size)}: ${(err as Error).message}`, {
        cause: err,
        hint: 'give a larger --size, or check the tree is readable',
      });
    }
    const inodes = await inodesOfUnquotable(tmp, entries.map((e) => e.rel), env);
    await fs.writeFile(cmdFile, entries.map((e) => timeCommands(e.rel, e.stat, inodes.get(e.rel))).join(''));
    await run('debugfs', ['-w', '-f', cmdFile, tmp], { env });
    await run('e2fsck', ['-fn', tmp], { env });
    await fs.rename(tmp, out);
  } finally {
    await fs.rm(tmp, { force: true });
    await fs.rm(path.dirname(cmdFile), { recursive: true, force: true });
  }
  const sha256 = createHash('sha256');
  for await (const chunk of (await fs.open(out)).createReadStream()) sha256.update(chunk as Buffer);
  const result = { out, size, uuid, sha256: sha256.digest('hex'), files: entries.length };
  log.info(`built ${out}: ${mib(size)}, ${entries.length} files, UUID ${uuid}`);
  return result;
}

/** A kernel, an initrd and an empty /host: what the boot entry and the initramfs hook need. */
async function checkTree(rootfs: string, kernel: string, initrd: string): Promise<void> {
  let st: Stats;
  try {
    st = await fs.stat(rootfs);
  } catch (err) {
    throw new UpgradeError('USAGE', `root filesystem tree ${rootfs} does not exist`, { cause: err, hint: 'pass the directory that holds the OS (e.g. made by debootstrap)' });
  }
  if (!st.isDirectory()) throw new UpgradeError('USAGE', `${rootfs} is not a directory`, { hint: 'pass the directory that holds the OS' });
  const missing: string[] = [];
  for (const [what, p] of [['kernel', kernel], ['initrd', initrd]] as const) {
    if (!(await existsInTree(rootfs, p))) missing.push(`no ${what} at ${p} (install one, e.g. linux-image-amd64, or point --${what} at it)`);
  }
  const host = path.join(rootfs, 'host');
  try {
    const hs = await fs.lstat(host);
    if (!hs.isDirectory()) missing.push('/host is not a directory (make it an empty directory: the host partition is mounted there)');
    else if ((await fs.readdir(host)).length) missing.push('/host is not empty (empty it: the host partition is mounted there)');
  } catch {
    missing.push(`no /host (mkdir ${host}: the host partition is mounted there)`);
  }
  if (missing.length) {
    throw new UpgradeError('IMAGE', `${rootfs} cannot boot as an upgradectl image: ${missing.join('; ')}`, { hint: 'fix the tree and run image build again' });
  }
}

/** Does `p` name a regular file inside the tree, following symlinks only within it? */
async function existsInTree(root: string, p: string, depth = 0): Promise<boolean> {
  if (depth > 16) return false;
  const full = path.join(root, path.normalize(`/${p}`));
  let st: Stats;
  try {
    st = await fs.lstat(full);
  } catch {
    return false;
  }
  if (st.isFile()) return true;
  if (!st.isSymbolicLink()) return false;
  const link = await fs.readlink(full);
  const next = link.startsWith('/') ? link : path.posix.join(path.posix.dirname(path.normalize(`/${p}`)), link);
  return existsInTree(root, next, depth + 1);
}

async function walk(root: string): Promise<Array<{ rel: string; stat: Stats }>> {
  const out: Array<{ rel: string; stat: Stats }> = [{ rel: '/', stat: await fs.lstat(root) }];
  const visit = async (dir: string, rel: string) => {
    for (const name of (await fs.readdir(dir)).sort()) {
      const full = path.join(dir, name);
      const r = rel === '/' ? `/${name}` : `${rel}/${name}`;
      const stat = await fs.lstat(full);
      out.push({ rel: r, stat });
      if (stat.isDirectory()) await visit(full, r);
    }
  };
  await visit(root, '/');
  return out;
}

/** debugfs's command parser has no escapes: a name with a quote, backslash or newline cannot be written. */
const UNQUOTABLE = /["\n\\]/;

/**
 * Inode numbers (in the new image) of the entries whose names debugfs cannot take, so that they can be
 * named as <inode> instead. systemd's escaped unit names (system-systemd\x2dcryptsetup.slice) are in
 * every Debian image. One `ls -p` of each such entry's parent directory, which must itself be quotable.
 */
async function inodesOfUnquotable(image: string, rels: string[], env: NodeJS.ProcessEnv): Promise<Map<string, number>> {
  const byParent = new Map<string, string[]>();
  for (const rel of rels.filter((r) => UNQUOTABLE.test(path.posix.basename(r)))) {
    const parent = path.posix.dirname(rel);
    byParent.set(parent, [...(byParent.get(parent) ?? []), rel]);
  }
  const inodes = new Map<string, number>();
  for (const [parent, children] of byParent) {
    if (UNQUOTABLE.test(parent)) continue;
    const { stdout } = await run('debugfs', ['-R', `ls -p "${parent}"`, image], { env });
    // Lines: /<inode>/<mode>/<uid>/<gid>/<name>/<size>/ (a name cannot contain "/").
    for (const m of stdout.matchAll(/^\/(\d+)\/\d+\/\d+\/\d+\/([^/\n]*)\/\d*\/$/gm)) {
      const rel = path.posix.join(parent, m[2]!);
      if (children.includes(rel)) inodes.set(rel, Number(m[1]));
    }
  }
  return inodes;
}

function timeCommands(rel: string, stat: Stats, inode: number | undefined): string {
  let name = `"${rel}"`;
  if (UNQUOTABLE.test(rel)) {
    if (inode === undefined) {
      log.warn(`image build: cannot normalise the times of ${JSON.stringify(rel)} (debugfs cannot name it); the image may not be reproducible`);
      return '';
    }
    name = `<${inode}>`;
  }
  const t = Math.floor(stat.mtimeMs / 1000);
  return `sif ${name} atime @${t}\nsif ${name} ctime @${t}\nsif ${name} atime_extra 0\nsif ${name} ctime_extra 0\n`;
}

function uuidFrom(text: string): string {
  const h = createHash('sha256').update(text).digest('hex');
  // RFC 4122 variant bits and version 5 (name-based): a valid UUID that blkid accepts.
  const v = `5${h.slice(13, 16)}`;
  const variant = ((parseInt(h.slice(16, 17), 16) & 0x3) | 0x8).toString(16) + h.slice(17, 20);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${v}-${variant}-${h.slice(20, 32)}`;
}

const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;
const mib = (n: number) => `${(n / 1048576).toFixed(0)} MiB`;
