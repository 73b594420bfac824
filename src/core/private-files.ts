import { promises as fs } from 'node:fs';
import path from 'node:path';
import { errnoOf } from './errors.js';
import type { Layout } from './layout.js';

/**
 * Everything under HOST/images is root-only: an image holds the machine's migrated /etc/shadow and SSH
 * host private keys, staging files become images, and the state keeps hook and health-check output.
 * Modes are set explicitly (chmod), never left to the umask, which a shell or a unit may have opened up.
 */
export const PRIVATE_FILE_MODE = 0o600;
export const PRIVATE_DIR_MODE = 0o700;

/** mkdir -p where `dir` and every directory this call creates are exactly 0700. */
export async function mkdirPrivate(dir: string): Promise<void> {
  const first = await fs.mkdir(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  const created: string[] = [dir];
  if (first) for (let d = path.dirname(dir); d.length >= first.length && d !== path.dirname(d); d = path.dirname(d)) created.push(d);
  for (const d of created) await fs.chmod(d, PRIVATE_DIR_MODE);
}

export interface ModeRepair {
  path: string;
  /** Permission bits found (e.g. 0o644) and set. */
  was: number;
  now: number;
}

/**
 * Give HOST/images and everything below it the private modes (directories 0700, files 0600), for
 * images written by older versions or touched by hand. Symbolic links are left alone (chmod would
 * follow them out of the tree). Returns what it changed.
 */
export async function repairPrivateModes(layout: Layout): Promise<ModeRepair[]> {
  const fixed: ModeRepair[] = [];
  await repair(layout.imagesDir, fixed);
  return fixed;
}

async function repair(target: string, fixed: ModeRepair[]): Promise<void> {
  let st;
  try {
    st = await fs.lstat(target);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return;
    throw err;
  }
  const want = st.isDirectory() ? PRIVATE_DIR_MODE : st.isFile() ? PRIVATE_FILE_MODE : undefined;
  if (want === undefined) return;
  const was = st.mode & 0o7777;
  if (was !== want) {
    await fs.chmod(target, want);
    fixed.push({ path: target, was, now: want });
  }
  if (st.isDirectory()) for (const name of await fs.readdir(target)) await repair(path.join(target, name), fixed);
}

/** 0o644 as "0644", for messages. */
export function modeText(mode: number): string {
  return `0${mode.toString(8).padStart(3, '0')}`;
}
