import { UpgradeError } from './errors.js';

/** 16 TiB: the largest file ext4 holds with 4 KiB blocks, so no image or frame is larger. */
export const MAX_SIZE = 2 ** 44;

/**
 * `512M`, `1.5G`, `1048576`: sizes as operators write them, in plain decimal, from 1 byte to `max`.
 * Bounded so that a long run of digits cannot become Infinity or an integer past 2^53.
 */
export function parseSize(text: string, what: string, max = MAX_SIZE): number {
  const m = /^(\d{1,20}(?:\.\d{1,20})?)\s*([KMGT]?)(i?B)?$/i.exec(text.trim());
  const hint = `write it as bytes or with K, M, G or T, from 1 byte to ${max} bytes, e.g. 2G`;
  if (!m) throw new UpgradeError('USAGE', `${what} ${text} is not a size`, { hint });
  const mult = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[m[2]!.toUpperCase() as '' | 'K' | 'M' | 'G' | 'T'];
  const n = Math.round(Number(m[1]) * mult);
  if (!Number.isSafeInteger(n) || n < 1 || n > max) throw new UpgradeError('USAGE', `${what} ${text} is out of range`, { hint });
  return n;
}
