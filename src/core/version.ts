import { UpgradeError } from './errors.js';

/**
 * Versions name image files (`images/<v>.img`), GRUB entry ids and object keys: a conservative alphabet
 * with no path separators, quoting or whitespace. The one definition every layer checks against.
 */
const VERSION_RE = /^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$/;

export function isVersion(text: unknown): text is string {
  return typeof text === 'string' && VERSION_RE.test(text);
}

/** Versions name files and GRUB entry ids: a conservative alphabet, no path or quoting tricks. */
export function assertVersion(version: string, what = 'version'): string {
  if (!isVersion(version)) {
    throw new UpgradeError('USAGE', `${what} '${String(version)}' is not a valid version`, {
      hint: 'use letters, digits and . _ + ~ - (at most 64, starting with a letter or digit), e.g. 2026.11.1',
    });
  }
  return version;
}

/**
 * Natural order: digit runs compare as numbers, the rest as text, so 1.10 > 1.9 and 2026.11.2 > 2026.9.30.
 * A version with a `~` part sorts before the same version without it (1.0~rc1 < 1.0), as in Debian.
 * Only identical strings are equal: versions that differ only in leading zeros (1.0 and 1.00, 01 and 1)
 * are different files and releases, so they are ordered by their text (a tie-break, never 0).
 */
export function compareVersions(a: string, b: string): number {
  if (a === b) return 0;
  const [aMain, aPre] = splitTilde(a);
  const [bMain, bPre] = splitTilde(b);
  let c = compareNatural(aMain, bMain);
  if (c === 0) {
    if (aPre === undefined && bPre !== undefined) c = 1;
    else if (bPre === undefined && aPre !== undefined) c = -1;
    else if (aPre !== undefined && bPre !== undefined) c = compareNatural(aPre, bPre);
  }
  if (c !== 0) return c;
  return a < b ? -1 : 1;
}

function splitTilde(v: string): [string, string | undefined] {
  const i = v.indexOf('~');
  return i < 0 ? [v, undefined] : [v.slice(0, i), v.slice(i + 1)];
}

function compareNatural(a: string, b: string): number {
  const pa = a.match(/\d+|\D+/g) ?? [];
  const pb = b.match(/\d+|\D+/g) ?? [];
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i];
    const y = pb[i];
    if (x === undefined) return -1;
    if (y === undefined) return 1;
    const nx = /^\d/.test(x);
    const ny = /^\d/.test(y);
    if (nx && ny) {
      const d = BigInt(x) - BigInt(y);
      if (d !== 0n) return d < 0n ? -1 : 1;
    } else if (x !== y) {
      if (nx !== ny) return nx ? 1 : -1;
      return x < y ? -1 : 1;
    }
  }
  return 0;
}
