import { promises as fs, type Stats } from 'node:fs';
import path from 'node:path';
import { UpgradeError } from '../core/errors.js';
import { run } from '../core/exec.js';
import { onPath } from '../core/which.js';

/**
 * A root filesystem handed over as a tarball (what docker export, mkosi, debootstrap --make-tarball
 * and most build systems produce) is extracted into a private directory and imaged like a tree, with
 * the same reproducibility promise: the same tarball gives the same image bytes, and so does the tree
 * it was made from.
 */

const COMPRESSION: Array<{ re: RegExp; flag: string[]; tool?: string }> = [
  { re: /\.tar$/, flag: [] },
  { re: /\.(tar\.gz|tgz)$/, flag: ['--gzip'], tool: 'gzip' },
  { re: /\.(tar\.zst|tar\.zstd|tzst)$/, flag: ['--zstd'], tool: 'zstd' },
];

/** tar's decompression option for a tarball name, or undefined when the name is not a tarball's. */
export function tarballKind(file: string): { flag: string[]; tool?: string } | undefined {
  return COMPRESSION.find((c) => c.re.test(file));
}

/**
 * Run `fn` on the tarball's tree, extracted into a root-only directory beside `near` (the output's
 * directory: it is on the filesystem that must have room for the image anyway, where /tmp is often a
 * small tmpfs), and remove the tree afterwards whatever happens.
 */
export async function withExtractedTarball<T>(tarball: string, near: string, fn: (tree: string) => Promise<T>): Promise<T> {
  const kind = tarballKind(tarball);
  if (!kind) throw new UpgradeError('USAGE', `${tarball} is not a .tar, .tar.gz, .tgz or .tar.zst file`, { hint: 'pass a directory or a tarball' });
  if (kind.tool && !onPath(kind.tool)) {
    throw new UpgradeError('IMAGE', `${tarball} needs ${kind.tool} to be read, and it is not installed`, { hint: `apt-get install ${kind.tool}` });
  }
  const work = await fs.mkdtemp(path.join(near, '.upgradectl-rootfs-'));
  try {
    const tree = path.join(work, 'root');
    await fs.mkdir(tree, { mode: 0o755 });
    try {
      // Owners by number (the image's /etc/passwd, not this machine's, gives them names), modes as
      // stored (no umask), xattrs (file capabilities, SELinux labels) and ACLs kept.
      await run('tar', [
        '--extract', `--file=${tarball}`, `--directory=${tree}`, ...kind.flag,
        '--numeric-owner', '--same-owner', '--same-permissions', '--xattrs', "--xattrs-include=*", '--acls',
      ], { timeoutMs: 3_600_000 });
    } catch (err) {
      throw new UpgradeError('IMAGE', `could not extract ${tarball}: ${(err as Error).message}`, { cause: err, hint: 'check the tarball (tar -tvf) and the free space beside the output' });
    }
    await normaliseRoot(tree);
    return await fn(tree);
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

/**
 * The directory the tree was extracted into was made now; a tarball may or may not carry an entry
 * for its root ("./"), and tar restores it only when it does. So the root is always set the same way:
 * owned by root, 0755, with the newest mtime found in the tree (which is also image build's default
 * build time). Building from a directory gives the same bytes when its root is set alike.
 */
async function normaliseRoot(tree: string): Promise<void> {
  let newest = 0;
  const visit = async (dir: string) => {
    for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      const st: Stats = await fs.lstat(full);
      newest = Math.max(newest, Math.floor(st.mtimeMs / 1000));
      if (entry.isDirectory()) await visit(full);
    }
  };
  await visit(tree);
  await fs.chown(tree, 0, 0).catch(() => undefined); // not root: tar could not set owners either
  await fs.chmod(tree, 0o755);
  const t = Math.max(newest, 1);
  await fs.utimes(tree, t, t);
}
