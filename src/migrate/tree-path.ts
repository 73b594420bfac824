import { promises as fs, type Stats } from 'node:fs';
import path from 'node:path';
import { compileGlob, matchTokens } from './glob.js';

/**
 * Path resolution confined to a tree (the running root or the mounted image), component by
 * component with lstat, as the tree's own kernel would see it after boot: an absolute symlink target
 * starts at the tree's root, never at this process's `/`. A `..` that would climb above the tree's
 * root is refused outright instead of being clamped, because a link like that is either broken or an
 * attempt to reach the other tree's files. The last component is never followed: a symlink there is
 * migrated as the link itself.
 */

/** Refused: the path would leave the tree, or is not what it must be. */
export class UnsafePathError extends Error {
  override name = 'UnsafePathError';
}

export interface Resolved {
  /** The path inside the tree with every directory symlink resolved, e.g. `etc/ssh/ssh_host_rsa_key`. */
  rel: string;
  /** lstat of the final component; undefined when it (or a directory above it) does not exist. */
  stat: Stats | undefined;
}

const MAX_LINKS = 40;

/**
 * Resolve `abs` (an absolute path as seen inside the tree) under `root`. `followLast` also follows a
 * symlink in the last component (still only inside the tree): for a directory that the image keeps
 * behind a link and into which files are merged.
 */
export async function resolveInTree(root: string, abs: string, opts: { followLast?: boolean } = {}): Promise<Resolved> {
  const pending = abs.split('/').filter((c) => c !== '' && c !== '.');
  const done: string[] = [];
  let links = 0;
  while (pending.length > 0) {
    const comp = pending.shift() as string;
    if (comp === '.') continue;
    if (comp === '..') {
      if (done.length === 0) throw new UnsafePathError(`${abs} leads above the root of ${root}`);
      done.pop();
      continue;
    }
    const here = path.join(root, ...done, comp);
    const last = pending.length === 0;
    let st: Stats;
    try {
      st = await fs.lstat(here);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return { rel: [...done, comp, ...pending].join('/'), stat: undefined };
      if (code === 'ENOTDIR') throw new UnsafePathError(`${path.join(root, ...done)} is not a directory (on the way to ${abs})`);
      throw err;
    }
    if (last && !(opts.followLast && st.isSymbolicLink())) return { rel: [...done, comp].join('/'), stat: st };
    if (st.isSymbolicLink()) {
      if (++links > MAX_LINKS) throw new UnsafePathError(`${here}: too many levels of symbolic links`);
      const target = await fs.readlink(here);
      const targetParts = target.split('/').filter((c) => c !== '' && c !== '.');
      if (target.startsWith('/')) done.length = 0;
      // Refuse before walking on, so the message names the link that escapes.
      if (climbsAbove(done.length, targetParts)) {
        throw new UnsafePathError(`${here} is a symlink to ${target}, which leads out of ${root}`);
      }
      pending.unshift(...targetParts);
      continue;
    }
    if (!st.isDirectory()) throw new UnsafePathError(`${here} is not a directory (on the way to ${abs})`);
    done.push(comp);
  }
  return { rel: done.join('/'), stat: await fs.lstat(path.join(root, ...done)) };
}

/**
 * A symlink that is migrated as a link is not followed by us, but the machine that boots the image
 * will follow it: one whose target climbs out of the tree from where it sits is refused.
 * `linkRel` is the link's own resolved path inside the tree.
 */
export function linkTargetEscapes(linkRel: string, target: string): boolean {
  const parts = target.split('/').filter((c) => c !== '' && c !== '.');
  const depth = target.startsWith('/') ? 0 : linkRel.split('/').filter(Boolean).length - 1;
  return climbsAbove(depth, parts);
}

function climbsAbove(depth: number, parts: string[]): boolean {
  let d = depth;
  for (const p of parts) {
    if (p === '..') {
      if (d === 0) return true;
      d--;
    } else d++;
  }
  return false;
}

export function hasWildcard(component: string): boolean {
  return /[*?[]/.test(component);
}

/**
 * A shell-style pattern for one path component (glob.ts: `*`, `?`, `[abc]`, `[!abc]`); a leading dot
 * must be matched literally. Throws GlobError for a pattern that cannot match (whitelist.ts checks
 * every pattern when it reads the file, so this is a programming error here).
 */
export function componentMatcher(glob: string): (name: string) => boolean {
  const tokens = compileGlob(glob);
  const dotOk = glob.startsWith('.');
  return (name) => (dotOk || !name.startsWith('.')) && matchTokens(tokens, name);
}

/**
 * Expand a whitelist pattern against a tree: the absolute in-tree paths that exist and match,
 * sorted. Directories on the way are resolved with resolveInTree (never out of the tree).
 */
export async function expandPattern(root: string, pattern: string): Promise<string[]> {
  const comps = pattern.split('/').filter(Boolean);
  let prefixes = [''];
  for (let i = 0; i < comps.length; i++) {
    const comp = comps[i] as string;
    const next: string[] = [];
    for (const prefix of prefixes) {
      if (!hasWildcard(comp)) {
        next.push(`${prefix}/${comp}`);
        continue;
      }
      const dir = await resolveInTree(root, prefix || '/');
      if (!dir.stat?.isDirectory()) continue;
      const match = componentMatcher(comp);
      const names = await fs.readdir(path.join(root, dir.rel));
      for (const name of names.filter(match).sort()) next.push(`${prefix}/${name}`);
    }
    prefixes = next;
  }
  const found: string[] = [];
  for (const p of prefixes) {
    if ((await resolveInTree(root, p)).stat) found.push(p);
  }
  return found;
}
