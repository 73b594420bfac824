import { UpgradeError } from '../../core/errors.js';
export { parseSize, MAX_SIZE } from '../../core/size.js';

/** A whole number in plain decimal (Number() would take "" as 0, 0x10 as 16 and 1e1 as 10). */
export function parseWhole(text: string | undefined, what: string, dflt: number, min: number, max: number): number {
  if (text === undefined) return dflt;
  const n = /^\d{1,15}$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new UpgradeError('USAGE', `${what} ${text} is not valid`, { hint: `give a whole number from ${min} to ${max}` });
  return n;
}

type Options = Record<string, string | boolean | string[] | undefined>;

/** A string option the command cannot run without; the usage line is the hint. */
export function requiredOption(options: Options, name: string, command: string, usage: string): string {
  const v = options[name];
  if (typeof v !== 'string' || !v) throw new UpgradeError('USAGE', `${command} needs --${name}`, { hint: `usage: upgradectl ${usage}` });
  return v;
}

/** The options of commands that write to a release target (publish, channel set): S3 region, endpoint, path style. */
export const TARGET_OPTIONS = {
  region: { type: 'string' },
  endpoint: { type: 'string' },
  'path-style': { type: 'boolean' },
} as const;

export function targetOptions(options: Options): { region: string | undefined; endpoint: string | undefined; forcePathStyle: boolean } {
  return { region: options.region as string | undefined, endpoint: options.endpoint as string | undefined, forcePathStyle: Boolean(options['path-style']) };
}
