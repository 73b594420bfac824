import { UpgradeError } from '../../core/errors.js';

/**
 * Object keys are relative, slash-separated paths under a source prefix (`releases/2.0/manifest.json`).
 * Refusing empty, `.` and `..` segments keeps every transport inside its prefix whatever a channel or
 * manifest names.
 */
export function keySegments(key: string): string[] {
  const segments = key.split('/');
  const bad = key.length === 0 || segments.some((s) => s === '' || s === '.' || s === '..' || s.includes('\0'));
  if (bad) {
    throw new UpgradeError('USAGE', `invalid object key "${key}": keys are relative paths like releases/2.0/manifest.json`, {
      hint: 'a key may not be empty, start or end with "/", or contain "." or ".." segments',
    });
  }
  return segments;
}

/** The key as it goes into a URL path: each segment percent-encoded, the slashes kept. */
export function encodeKey(key: string): string {
  return keySegments(key).map(encodeURIComponent).join('/');
}

/** Check a byte range [start, end) asked of a source. */
export function checkRange(what: string, start: number, end?: number): void {
  const ok = Number.isSafeInteger(start) && start >= 0 && (end === undefined || (Number.isSafeInteger(end) && end >= start));
  if (!ok) {
    throw new UpgradeError('INTERNAL', `invalid byte range [${start}, ${end ?? 'end'}) for ${what}`, {
      hint: 'this is a bug in upgradectl; please report it with the command that failed',
    });
  }
}
