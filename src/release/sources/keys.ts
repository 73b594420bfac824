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

/**
 * The most a source reads of an object fetched whole (get): metadata, never payloads. Each cap is far
 * above what a publisher makes and far below what would hurt the machine, so an object that large is
 * not a release (a wrong URL, a broken or hostile server) and is refused while it streams in.
 * - signature (.sig): an ed25519 signature is 64 bytes (88 in base64); 64 KiB leaves room for any armour.
 * - key (.pub): a PEM public key is ~113 bytes; 64 KiB likewise.
 * - channel (channels/*.json): a signed pointer with rollout rules, a few hundred bytes; 1 MiB.
 * - manifest (and anything else read whole): its frame index is ~100 bytes per frame, ~10 MB for a
 *   100 GiB image in 1 MiB frames; 64 MiB.
 */
export function metadataCap(key: string): { bytes: number; kind: string } {
  if (key.endsWith('.sig')) return { bytes: 64 * 1024, kind: 'signature' };
  if (key.endsWith('.pub')) return { bytes: 64 * 1024, kind: 'key' };
  if (key.startsWith('channels/')) return { bytes: 1024 * 1024, kind: 'channel' };
  return { bytes: 64 * 1024 * 1024, kind: 'manifest' };
}

/** The error for an object over its cap, naming it and the cap. */
export function metadataTooLarge(where: string, key: string): UpgradeError {
  const cap = metadataCap(key);
  return new UpgradeError('CORRUPT', `${where} is larger than ${cap.bytes} bytes, the most upgradectl reads for a ${cap.kind}; refused`, {
    hint: 'this is not an upgradectl release object: check [source] url in upgradectl.conf and what the server serves there',
  });
}

/** The error for a range answer longer than the range asked: a broken or hostile server. */
export function rangeTooLong(where: string, start: number, end: number): UpgradeError {
  return new UpgradeError('NETWORK', `${where} answered bytes ${start}-${end - 1} with more than the ${end - start} bytes asked; cut off`, {
    hint: 'the server or a proxy in between sends more than it was asked for; serve the release from a plain static file server',
  });
}
