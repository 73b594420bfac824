import { UpgradeError } from '../../core/errors.js';
export { parseSize, MAX_SIZE } from '../../core/size.js';

/** A whole number in plain decimal (Number() would take "" as 0, 0x10 as 16 and 1e1 as 10). */
export function parseWhole(text: string | undefined, what: string, dflt: number, min: number, max: number): number {
  if (text === undefined) return dflt;
  const n = /^\d{1,15}$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new UpgradeError('USAGE', `${what} ${text} is not valid`, { hint: `give a whole number from ${min} to ${max}` });
  return n;
}
