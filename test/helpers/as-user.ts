import { spawnSync } from 'node:child_process';

/**
 * Whether an unprivileged local user can read `file` (open it and read a byte), tried for real as that
 * user with runuser. Tests of root-only files pair it with a world-readable control file in the same
 * tree, so that a tree nobody can enter at all does not pass for a private file.
 */
export function readableBy(file: string, user = 'nobody'): boolean {
  return spawnSync('runuser', ['-u', user, '--', 'head', '-c', '1', file], { stdio: 'ignore' }).status === 0;
}

/** Whether the user can list `dir`. */
export function listableBy(dir: string, user = 'nobody'): boolean {
  return spawnSync('runuser', ['-u', user, '--', 'ls', dir], { stdio: 'ignore' }).status === 0;
}

/** Run `fn` with the process umask set to `mask`, restoring it after. */
export async function withUmask<T>(mask: number, fn: () => Promise<T>): Promise<T> {
  const before = process.umask(mask);
  try {
    return await fn();
  } finally {
    process.umask(before);
  }
}
