import { existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

export interface Requirement {
  /** Needs to run as root (loop devices, mount). */
  root?: boolean;
  /** Programs that must be on PATH. */
  commands?: string[];
  /** Files a package installs that are not programs (firmware, GRUB platform modules). */
  files?: string[];
}

/**
 * For tap's `{ skip }` option: the reason a test cannot run on this machine, or false to run it.
 * In CI (CI=true) it is always false: a missing tool there must fail the test, not hide it.
 */
export function skipUnless(req: Requirement): false | string {
  const reasons: string[] = [];
  if (req.root && process.getuid?.() !== 0) reasons.push('needs root');
  for (const cmd of req.commands ?? []) {
    if (!onPath(cmd)) reasons.push(`needs ${cmd}`);
  }
  for (const file of req.files ?? []) {
    if (!existsSync(file)) reasons.push(`needs ${file}`);
  }
  if (reasons.length === 0) return false;
  return process.env.CI ? false : reasons.join(', ');
}

export function onPath(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', 'command -v "$1"', 'sh', cmd], { stdio: 'ignore', env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` } });
    return true;
  } catch {
    return false;
  }
}
