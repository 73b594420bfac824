import type { AccountsReport } from './accounts-merge.js';

/**
 * What a migration moved, skipped and why: JSON-serialisable (it is kept in the state's history and
 * printed by `--json`) and printable as text for `commit --dry-run`.
 */

export type ItemKind = 'file' | 'dir' | 'symlink';

export interface MovedItem {
  /** The path as both systems see it, e.g. /etc/ssh/ssh_host_ed25519_key. */
  path: string;
  /** Where it is read on this machine (the running root on the host's view). */
  from: string;
  /** Where it goes inside the image (directory symlinks of the image resolved). */
  to: string;
  kind: ItemKind;
  mode: 'copy' | 'keep-if-absent';
  /** create: absent in the image; replace: a file or link of the image is replaced; update: an existing directory gets the machine's owner, mode, mtime. */
  action: 'create' | 'replace' | 'update';
  /** The whitelist entry that selected it. */
  entry: string;
  bytes: number;
  /** uid:gid */
  owner: string;
  /** Permission bits in octal, e.g. 0600. */
  perm: string;
  target?: string;
}

export interface SkippedItem {
  path: string;
  entry: string;
  reason: string;
}

export interface MigrationReport {
  /** The image file migrated into. */
  image: string;
  /** The running root migrated from. */
  source: string;
  /** The migrate.conf used, or null for the default whitelist alone. */
  whitelist: string | null;
  dryRun: boolean;
  moved: MovedItem[];
  skipped: SkippedItem[];
  /** null when the whitelist does not merge accounts. */
  accounts: AccountsReport | null;
  /** Account files of the image rewritten (or, on a dry run, that would be). */
  accountFiles: string[];
  warnings: string[];
  /** What stops the migration; a real migration with problems throws before writing anything. */
  problems: string[];
  /** Bytes of file content copied. */
  bytes: number;
  /** Space the migration needs in the image, and what the image had free. */
  spaceNeeded: number;
  spaceFree: number;
  fsck: 'clean' | 'not run';
  durationMs: number;
}

export function formatMigrationReport(r: MigrationReport): string {
  const out: string[] = [];
  const verb = r.dryRun ? 'would migrate' : 'migrated';
  out.push(`${r.dryRun ? 'Migration plan' : 'Migration'}: ${r.source} -> ${r.image}`);
  out.push(`whitelist: ${r.whitelist ?? 'built-in defaults'}`);
  if (r.problems.length) {
    out.push(`${r.dryRun ? 'WOULD FAIL' : 'FAILED'} (${r.problems.length} problem${r.problems.length === 1 ? '' : 's'}):`);
    for (const p of r.problems) out.push(`  ! ${p}`);
  }
  out.push(`${verb} ${r.moved.length} item${r.moved.length === 1 ? '' : 's'} (${formatBytes(r.bytes)}):`);
  for (const m of r.moved) {
    const what = m.kind === 'symlink' ? `symlink -> ${m.target ?? '?'}` : m.kind === 'dir' ? 'dir' : formatBytes(m.bytes);
    const where = m.to === m.path ? '' : ` (image: ${m.to})`;
    out.push(`  ${m.action.padEnd(7)} ${m.path}${where}  [${what}, ${m.owner} ${m.perm}, ${m.mode} by ${m.entry}]`);
  }
  if (r.accounts) {
    const a = r.accounts;
    out.push(`accounts (human: UID ${a.range.uidMin}-${a.range.uidMax}, GID ${a.range.gidMin}-${a.range.gidMax} from the image's login.defs):`);
    const line = (label: string, list: string[]) => {
      if (list.length) out.push(`  ${label}: ${list.join(', ')}`);
    };
    line('users added', a.usersAdded);
    line('users updated', a.usersUpdated);
    line('groups added', a.groupsAdded);
    line('memberships added', a.membershipsAdded);
    line('password hashes carried', a.hashesCarried);
    line('clashes', a.clashes);
    for (const s of a.skipped) out.push(`  skipped ${s.name}: ${s.reason}`);
    line('files rewritten', r.accountFiles);
  }
  if (r.skipped.length) {
    out.push(`skipped ${r.skipped.length}:`);
    for (const s of r.skipped) out.push(`  ${s.path}: ${s.reason} [${s.entry}]`);
  }
  for (const w of [...r.warnings, ...(r.accounts?.warnings ?? [])]) out.push(`warning: ${w}`);
  out.push(`space: needs ${formatBytes(r.spaceNeeded)} of ${formatBytes(r.spaceFree)} free in the image`);
  if (!r.dryRun) out.push(`e2fsck -n: ${r.fsck}; took ${r.durationMs} ms`);
  return `${out.join('\n')}\n`;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}
