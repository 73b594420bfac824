import { promises as fs } from 'node:fs';
import path from 'node:path';
import ini from 'ini';
import { UpgradeError } from '../core/errors.js';
import { checkIniLines, IniLineError, type IniLines, type IniSchema } from '../core/ini-lines.js';
import type { Layout } from '../core/layout.js';
import { DEFAULT_WHITELIST } from './default-whitelist.js';
import { compileGlob, GlobError } from './glob.js';
import { hasWildcard } from './tree-path.js';

/**
 * The migration whitelist: `DIR/etc/upgradectl/migrate.conf` (INI) over the default list.
 *
 *   [options]
 *   defaults = yes            ; start from the shipped list (no: only what this file says)
 *   [accounts]
 *   on_clash = stop           ; stop | skip (leave the clashing machine account or group out)
 *   [paths]
 *   /etc/hostname = copy
 *   /etc/ssh/ssh_host_* = copy
 *   /srv/app/config/ = keep-if-absent
 *   /etc/netplan/ = skip      ; drop an entry of the default list
 */

export type EntryMode = 'copy' | 'keep-if-absent' | 'accounts';
const MODES = ['copy', 'keep-if-absent', 'accounts', 'skip'] as const;

/** The four files of the account database; they reference each other, so they are merged as one. */
export const ACCOUNT_FILES = ['/etc/passwd', '/etc/shadow', '/etc/group', '/etc/gshadow'] as const;

export interface WhitelistEntry {
  /** Absolute, normalised, without the trailing slash. May hold `*`, `?` and `[…]` wildcards. */
  pattern: string;
  mode: EntryMode;
  /** Written with a trailing slash: only a directory matches. */
  dirOnly: boolean;
  from: 'default' | 'migrate.conf';
}

export type ClashPolicy = 'stop' | 'skip';

export interface Whitelist {
  /** The migrate.conf read, or null when there is none (defaults only). */
  file: string | null;
  entries: WhitelistEntry[];
  /** Merge the account database (one of ACCOUNT_FILES has mode accounts). */
  accounts: boolean;
  onClash: ClashPolicy;
}

export function migrateConfFile(layout: Layout): string {
  return path.join(layout.etc, 'migrate.conf');
}

export async function loadWhitelist(layout: Layout): Promise<Whitelist> {
  const file = migrateConfFile(layout);
  let text: string | null = null;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new UpgradeError('MIGRATE', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
    }
  }
  return parseWhitelist(text ?? '', text === null ? null : file);
}

/** [paths] keys are patterns, checked one by one below. */
const WHITELIST_SCHEMA: IniSchema = { options: ['defaults'], accounts: ['on_clash'], paths: 'any' };

function checkLines(text: string, where: string): IniLines {
  try {
    return checkIniLines(text, WHITELIST_SCHEMA);
  } catch (err) {
    if (!(err instanceof IniLineError)) throw err;
    throw bad(`${where}:${err.line}`, err.what, err.hint);
  }
}

export function parseWhitelist(text: string, file: string | null): Whitelist {
  const where = file ?? 'migrate.conf';
  const lines = checkLines(text, where);
  // Only the three known sections and their keys are left (checked above).
  const raw = ini.parse(text) as Record<string, unknown>;
  const at = (section: string, key: string) => `${where}:${lines.lineOf(section, key) ?? '?'}`;
  const options = (raw.options ?? {}) as Record<string, unknown>;
  const accounts = (raw.accounts ?? {}) as Record<string, unknown>;
  const paths = (raw.paths ?? {}) as Record<string, unknown>;

  const useDefaults = parseBool(at('options', 'defaults'), 'options', 'defaults', options.defaults, true);
  const onClashRaw = accounts.on_clash === undefined ? 'stop' : String(accounts.on_clash).trim();
  if (onClashRaw !== 'stop' && onClashRaw !== 'skip') {
    throw bad(at('accounts', 'on_clash'), `[accounts] on_clash = ${onClashRaw} is not valid`, 'set on_clash to stop or skip');
  }

  const byPattern = new Map<string, WhitelistEntry | 'skip'>();
  if (useDefaults) {
    for (const [p, mode] of DEFAULT_WHITELIST) {
      const { pattern, dirOnly } = normalisePattern(p, 'the default whitelist');
      byPattern.set(pattern, { pattern, mode, dirOnly, from: 'default' });
    }
  }
  for (const [key, value] of Object.entries(paths)) {
    const here = at('paths', key);
    const { pattern, dirOnly } = normalisePattern(key, here);
    const mode = String(value).trim();
    if (!(MODES as readonly string[]).includes(mode)) {
      throw bad(here, `[paths] ${key} = ${String(value)}: unknown mode`, `use one of: ${MODES.join(', ')}`);
    }
    const isAccountFile = (ACCOUNT_FILES as readonly string[]).includes(pattern);
    if (mode === 'accounts' && !isAccountFile) {
      throw bad(here, `[paths] ${key} = accounts: only ${ACCOUNT_FILES.join(', ')} can be merged`, 'use copy or keep-if-absent for other files');
    }
    if (isAccountFile && mode !== 'accounts' && mode !== 'skip') {
      throw bad(
        here,
        `[paths] ${key} = ${mode}: copying the account database would throw away the image's system accounts`,
        `use ${key} = accounts (merge) or ${key} = skip (keep the image's)`,
      );
    }
    byPattern.set(pattern, mode === 'skip' ? 'skip' : { pattern, mode: mode as EntryMode, dirOnly, from: 'migrate.conf' });
  }

  const entries = [...byPattern.values()].filter((e): e is WhitelistEntry => e !== 'skip');
  return {
    file,
    entries: entries.filter((e) => e.mode !== 'accounts'),
    accounts: entries.some((e) => e.mode === 'accounts'),
    onClash: onClashRaw,
  };
}

/** `/etc/ssh/` → `/etc/ssh` + dirOnly. Relative paths, `..` and `.` are refused: they mean nothing in two trees at once. */
function normalisePattern(p: string, where: string): { pattern: string; dirOnly: boolean } {
  const trimmed = p.trim();
  const dirOnly = trimmed.length > 1 && trimmed.endsWith('/');
  const body = dirOnly ? trimmed.replace(/\/+$/, '') : trimmed;
  const parts = body.split('/').slice(1);
  if (!body.startsWith('/') || body === '' || parts.some((c) => c === '' || c === '.' || c === '..') || /[\0]/.test(body)) {
    throw bad(where, `"${p}" is not a valid whitelist path`, 'paths are absolute, without "." or ".." components, e.g. /etc/hostname or /etc/netplan/');
  }
  if (parts.some((c) => c.includes('**'))) {
    throw bad(where, `"${p}": ** is not supported`, 'wildcards (*, ?, […]) match within one path component; list a directory with a trailing slash to take its whole tree');
  }
  for (const c of parts.filter(hasWildcard)) {
    try {
      compileGlob(c);
    } catch (err) {
      if (!(err instanceof GlobError)) throw err;
      throw bad(where, err.message, 'write ranges low to high, e.g. [a-z]; a ] right after [ or [! is a member, e.g. []a]');
    }
  }
  return { pattern: body, dirOnly };
}

function parseBool(where: string, section: string, key: string, v: unknown, dflt: boolean): boolean {
  if (v === undefined || v === '') return dflt;
  if (typeof v === 'boolean') return v;
  const s = String(v).trim().toLowerCase();
  if (['1', 'yes', 'true', 'on'].includes(s)) return true;
  if (['0', 'no', 'false', 'off'].includes(s)) return false;
  throw bad(where, `[${section}] ${key} = ${String(v)} is not valid`, `set ${key} to yes or no`);
}

function bad(where: string, what: string, hint: string): UpgradeError {
  return new UpgradeError('MIGRATE', `${where}: ${what}`, { hint: `${hint} (see docs/migration.md)` });
}
