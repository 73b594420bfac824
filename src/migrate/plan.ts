import { promises as fs, type BigIntStats, type Stats } from 'node:fs';
import path from 'node:path';
import { mergeAccounts, parseLoginDefs, type AccountsMergeResult, type AccountTexts } from './accounts-merge.js';
import type { ItemKind, MovedItem, SkippedItem } from './report.js';
import { expandPattern, linkTargetEscapes, resolveInTree, UnsafePathError } from './tree-path.js';
import { ACCOUNT_FILES, type Whitelist, type WhitelistEntry } from './whitelist.js';

/**
 * The migration plan: everything is checked here, before a single byte is written — what exists on
 * the machine, what the image already has, symlinks that would leave either tree, a directory where
 * a file goes, account clashes, space. A migration with problems stops with the image untouched.
 */

export interface PlanItem extends MovedItem {
  /** Source path on this host, with directory symlinks resolved inside the running root. */
  srcAbs: string;
  /** Destination path relative to the image's root (resolved inside the image). */
  destRel: string;
  uid: number;
  gid: number;
  permBits: number;
  atimeS: number;
  mtimeS: number;
  /** Identity of the source as planned: a file swapped underneath us is refused at copy time. */
  dev: bigint;
  ino: bigint;
}

export interface AccountsPlan {
  merge: AccountsMergeResult;
  /** Image account files (path inside the image) whose content changes, with the metadata they keep. */
  writes: Array<{ path: string; destRel: string; text: string; uid: number; gid: number; mode: number }>;
}

export interface Plan {
  items: PlanItem[];
  skipped: SkippedItem[];
  warnings: string[];
  problems: string[];
  accounts: AccountsPlan | null;
  spaceNeeded: number;
  spaceFree: number;
}

interface Candidate {
  entry: WhitelistEntry;
  specificity: number;
  path: string;
  srcRel: string;
  st: BigIntStats;
  target?: string;
  top: boolean;
}

export async function buildPlan(sourceRoot: string, imageRoot: string, whitelist: Whitelist): Promise<Plan> {
  const plan: Plan = { items: [], skipped: [], warnings: [], problems: [], accounts: null, spaceNeeded: 0, spaceFree: 0 };
  const candidates = new Map<string, Candidate>();
  const mergedFiles = new Set<string>(whitelist.accounts ? ACCOUNT_FILES : []);

  // 1. What this machine has, per entry; for a path matched by several entries the most specific wins.
  for (const entry of whitelist.entries) {
    const specificity = literalPrefix(entry.pattern).length;
    let matches: string[];
    try {
      matches = await expandPattern(sourceRoot, entry.pattern);
    } catch (err) {
      if (!(err instanceof UnsafePathError)) throw err;
      plan.problems.push(`${entry.pattern}: ${err.message}`);
      continue;
    }
    if (matches.length === 0) {
      plan.skipped.push({ path: entry.pattern, entry: entry.pattern, reason: 'not on this machine' });
      continue;
    }
    for (const p of matches) await collect(p, entry, specificity, true);
  }

  async function collect(p: string, entry: WhitelistEntry, specificity: number, top: boolean): Promise<void> {
    if (mergedFiles.has(p)) {
      plan.skipped.push({ path: p, entry: entry.pattern, reason: 'the account database is merged, not copied' });
      return;
    }
    let srcRel: string;
    let st: BigIntStats;
    try {
      const r = await resolveInTree(sourceRoot, p);
      if (!r.stat) return;
      srcRel = r.rel;
      st = await fs.lstat(path.join(sourceRoot, srcRel), { bigint: true });
    } catch (err) {
      if (!(err instanceof UnsafePathError)) throw err;
      plan.problems.push(`${p} on this machine: ${err.message}`);
      return;
    }
    const srcAbs = path.join(sourceRoot, srcRel);
    if (top && entry.dirOnly && !st.isDirectory()) {
      plan.skipped.push({ path: p, entry: `${entry.pattern}/`, reason: 'not a directory on this machine (the entry ends in /)' });
      return;
    }
    let target: string | undefined;
    if (st.isSymbolicLink()) {
      target = await fs.readlink(srcAbs);
      if (linkTargetEscapes(srcRel, target)) {
        plan.problems.push(`${srcAbs} is a symlink to ${target}, which leads out of ${sourceRoot}: refusing to migrate it`);
        return;
      }
    } else if (!st.isFile() && !st.isDirectory()) {
      const what = st.isSocket() ? 'a socket' : st.isFIFO() ? 'a FIFO' : 'a device node';
      plan.skipped.push({ path: p, entry: entry.pattern, reason: `${what}: only files, directories and symlinks are migrated` });
      plan.warnings.push(`skipped ${srcAbs}: ${what}`);
      return;
    }
    const prev = candidates.get(p);
    if (!prev || specificity >= prev.specificity) candidates.set(p, { entry, specificity, path: p, srcRel, st, target, top });
    if (st.isDirectory()) {
      for (const name of (await fs.readdir(srcAbs)).sort()) await collect(`${p === '/' ? '' : p}/${name}`, entry, specificity, false);
    }
  }

  // 2. Where each goes in the image, and whether it can.
  const blocked: string[] = [];
  const under = (p: string, dirs: string[]) => dirs.some((d) => p.startsWith(`${d}/`));
  const planned = new Map<string, PlanItem>();
  for (const c of [...candidates.values()].sort((a, b) => comparePaths(a.path, b.path))) {
    if (under(c.path, blocked)) continue;
    const isDir = c.st.isDirectory();
    let dest;
    try {
      dest = await resolveInTree(imageRoot, c.path, { followLast: isDir });
    } catch (err) {
      if (!(err instanceof UnsafePathError)) throw err;
      plan.problems.push(`${c.path} in the image: ${err.message}`);
      blocked.push(c.path);
      continue;
    }
    const keep = c.entry.mode === 'keep-if-absent';
    let action: PlanItem['action'];
    if (!dest.stat) action = 'create';
    else if (keep) {
      if (!(isDir && dest.stat.isDirectory())) {
        plan.skipped.push({ path: c.path, entry: c.entry.pattern, reason: 'present in the image (keep-if-absent)' });
        blocked.push(c.path);
      }
      continue;
    } else if (isDir) {
      if (!dest.stat.isDirectory()) {
        plan.problems.push(`the image has ${describe(dest.stat)} at ${c.path} where this machine has a directory`);
        blocked.push(c.path);
        continue;
      }
      action = 'update';
    } else if (dest.stat.isDirectory()) {
      plan.problems.push(`the image has a directory at ${c.path} where this machine has ${c.target !== undefined ? 'a symlink' : 'a file'}`);
      continue;
    } else action = 'replace';

    if (!dest.stat) {
      const missing = await missingParents(c, dest.rel);
      if (missing === null) continue;
      for (const parent of missing) planned.set(parent.path, parent);
    }
    planned.set(c.path, item(c, dest.rel, action));
  }

  async function missingParents(c: Candidate, destRel: string): Promise<PlanItem[] | null> {
    // Directories above a new item that the image lacks are created like the machine's.
    const out: PlanItem[] = [];
    const parts = c.path.split('/').filter(Boolean);
    const destParts = destRel.split('/');
    for (let i = 1; i < parts.length; i++) {
      const anc = `/${parts.slice(0, i).join('/')}`;
      if (planned.has(anc)) continue;
      const inImage = await resolveInTree(imageRoot, anc, { followLast: true });
      if (inImage.stat) continue;
      let src;
      try {
        src = await resolveInTree(sourceRoot, anc, { followLast: true });
      } catch (err) {
        if (!(err instanceof UnsafePathError)) throw err;
        plan.problems.push(`${anc} on this machine: ${err.message}`);
        return null;
      }
      const st = await fs.stat(path.join(sourceRoot, src.rel), { bigint: true });
      const ancDest = destParts.slice(0, destParts.length - (parts.length - i)).join('/');
      out.push(item({ entry: c.entry, specificity: 0, path: anc, srcRel: src.rel, st, top: false }, ancDest, 'create'));
    }
    return out;
  }

  function item(c: Candidate, destRel: string, action: PlanItem['action']): PlanItem {
    const kind: ItemKind = c.st.isDirectory() ? 'dir' : c.st.isSymbolicLink() ? 'symlink' : 'file';
    return {
      path: c.path,
      from: path.join(sourceRoot, c.srcRel),
      to: `/${destRel}`,
      kind,
      mode: c.entry.mode === 'keep-if-absent' ? 'keep-if-absent' : 'copy',
      action,
      entry: c.entry.dirOnly ? `${c.entry.pattern}/` : c.entry.pattern,
      bytes: kind === 'file' ? Number(c.st.size) : 0,
      owner: `${c.st.uid}:${c.st.gid}`,
      perm: `0${(Number(c.st.mode) & 0o7777).toString(8).padStart(3, '0')}`,
      ...(c.target !== undefined ? { target: c.target } : {}),
      srcAbs: path.join(sourceRoot, c.srcRel),
      destRel,
      uid: Number(c.st.uid),
      gid: Number(c.st.gid),
      permBits: Number(c.st.mode) & 0o7777,
      atimeS: nsToSeconds(c.st.atimeNs),
      mtimeS: nsToSeconds(c.st.mtimeNs),
      dev: c.st.dev,
      ino: c.st.ino,
    };
  }

  plan.items = [...planned.values()].sort((a, b) => comparePaths(a.path, b.path));

  // 3. Accounts.
  if (whitelist.accounts) plan.accounts = await planAccounts(sourceRoot, imageRoot, whitelist, plan);

  // 4. Space: every new or replacing file needs its full size while the old one still exists.
  const sfs = await fs.statfs(imageRoot);
  const bs = Number(sfs.bsize);
  const blocks = (n: number) => Math.ceil(n / bs) * bs;
  let needed = 0;
  let inodes = 0;
  for (const it of plan.items) {
    if (it.action === 'update') continue;
    inodes++;
    if (it.kind === 'file') needed += blocks(it.bytes);
    else if (it.kind === 'dir') needed += bs;
    else if ((it.target ?? '').length >= 60) needed += bs;
  }
  for (const w of plan.accounts?.writes ?? []) {
    inodes++;
    needed += blocks(Buffer.byteLength(w.text));
  }
  // Directories that grow, extent and xattr blocks: a margin rather than an exact count.
  needed += 16 * bs + Math.ceil(needed / 100);
  plan.spaceNeeded = needed;
  plan.spaceFree = Number(sfs.bfree) * bs;
  if (needed > plan.spaceFree || inodes > Number(sfs.ffree)) {
    plan.problems.push(
      inodes > Number(sfs.ffree)
        ? `the image has ${sfs.ffree} free inodes; the migration needs ${inodes}`
        : `the image is too full: the migration needs about ${mib(needed)} and the image has ${mib(plan.spaceFree)} free`,
    );
  }
  return plan;
}

async function planAccounts(sourceRoot: string, imageRoot: string, whitelist: Whitelist, plan: Plan): Promise<AccountsPlan | null> {
  const read = async (root: string, file: string, where: string): Promise<{ text: string; rel: string; st: Stats } | undefined> => {
    let r;
    try {
      r = await resolveInTree(root, file);
    } catch (err) {
      if (!(err instanceof UnsafePathError)) throw err;
      plan.problems.push(`${file} ${where}: ${err.message}`);
      return undefined;
    }
    if (!r.stat) return undefined;
    if (!r.stat.isFile()) {
      plan.problems.push(`${file} ${where} is ${describe(r.stat)}, not a file: refusing to merge accounts through it`);
      return undefined;
    }
    return { text: await fs.readFile(path.join(root, r.rel), 'utf8'), rel: r.rel, st: r.stat };
  };
  const mine: Record<string, Awaited<ReturnType<typeof read>>> = {};
  const theirs: Record<string, Awaited<ReturnType<typeof read>>> = {};
  for (const f of ACCOUNT_FILES) {
    mine[f] = await read(sourceRoot, f, 'on this machine');
    theirs[f] = await read(imageRoot, f, 'in the image');
  }
  const defs = await read(imageRoot, '/etc/login.defs', 'in the image');
  for (const f of ['/etc/passwd', '/etc/group']) {
    if (!mine[f] || !theirs[f]) {
      plan.problems.push(`${f} is missing ${mine[f] ? 'in the image' : 'on this machine'}: cannot merge accounts`);
      return null;
    }
  }
  const texts = (set: typeof mine): AccountTexts => ({
    passwd: set['/etc/passwd']?.text ?? '',
    group: set['/etc/group']?.text ?? '',
    ...(set['/etc/shadow'] ? { shadow: set['/etc/shadow'].text } : {}),
    ...(set['/etc/gshadow'] ? { gshadow: set['/etc/gshadow'].text } : {}),
  });
  if (!defs) plan.warnings.push('the image has no /etc/login.defs: human accounts are UID/GID 1000-60000');
  const merge = mergeAccounts(texts(mine), texts(theirs), parseLoginDefs(defs?.text), whitelist.onClash);
  plan.problems.push(...merge.problems);
  const writes: AccountsPlan['writes'] = [];
  const merged: Record<string, string | undefined> = {
    '/etc/passwd': merge.files.passwd,
    '/etc/shadow': merge.files.shadow,
    '/etc/group': merge.files.group,
    '/etc/gshadow': merge.files.gshadow,
  };
  for (const f of ACCOUNT_FILES) {
    const cur = theirs[f];
    const text = merged[f];
    if (!cur || text === undefined || text === cur.text) continue;
    writes.push({ path: f, destRel: cur.rel, text, uid: cur.st.uid, gid: cur.st.gid, mode: cur.st.mode & 0o7777 });
  }
  return { merge, writes };
}

function describe(st: Stats | BigIntStats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isSymbolicLink()) return 'a symlink';
  if (st.isFile()) return 'a file';
  return 'a special file';
}

/** Parents sort before their children: compare component by component. */
function comparePaths(a: string, b: string): number {
  const pa = a.split('/');
  const pb = b.split('/');
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    if (pa[i] !== pb[i]) return (pa[i] as string) < (pb[i] as string) ? -1 : 1;
  }
  return pa.length - pb.length;
}

function literalPrefix(pattern: string): string {
  const i = pattern.search(/[*?[]/);
  return i === -1 ? pattern : pattern.slice(0, i);
}

function nsToSeconds(ns: bigint): number {
  return Number(ns / 1000n) / 1e6;
}

function mib(n: number): string {
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}
