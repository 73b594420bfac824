import { UpgradeError } from '../../core/errors.js';

/** `512M`, `2G`, `1048576`: sizes as operators write them. */
export function parseSize(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?$/i.exec(text.trim());
  if (!m) throw new UpgradeError('USAGE', `${what} ${text} is not a size`, { hint: 'write it as bytes or with K, M, G or T, e.g. 2G' });
  const mult = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[m[2]!.toUpperCase() as '' | 'K' | 'M' | 'G' | 'T'];
  return Math.round(Number(m[1]) * mult);
}

export function parseWhole(text: string | undefined, what: string, dflt: number, min: number, max: number): number {
  if (text === undefined) return dflt;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) throw new UpgradeError('USAGE', `${what} ${text} is not valid`, { hint: `give a whole number from ${min} to ${max}` });
  return n;
}
