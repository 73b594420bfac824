import { createHash } from 'node:crypto';

export const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** The error a promise rejects with; fails the test when it resolves instead. */
export async function failure(p: Promise<unknown>): Promise<{ code?: string; message: string; hint?: string }> {
  try {
    await p;
  } catch (err) {
    return err as { code?: string; message: string; hint?: string };
  }
  throw new Error('expected a failure');
}

/**
 * The entry id GRUB falls back to outside a trial boot. GRUB's `fallback` takes entry numbers only,
 * so the number is mapped back to the id of the menu entry at that position.
 */
export function fallbackEntryId(grubCfg: string): string | undefined {
  // A full config lists the reboot entry after the previous image: `set fallback="2 3"`.
  const m = /\nelse\n  set fallback="?(\d+)[ "\n]/.exec(grubCfg);
  if (!m) return undefined;
  const ids = [...grubCfg.matchAll(/^menuentry .*--id[ =]'?([^\s'{]+)'?/gm)].map((x) => x[1]);
  return ids[Number(m[1])];
}

/**
 * Boot counting of the default as a grub.cfg renders it (src/grub/render.ts): how many starts GRUB
 * counts, and the entry id it boots instead once they are used up. Undefined when the config does not
 * count (no previous image, save_env off, or not upgradectl's config).
 */
export function defaultCountOf(grubCfg: string): { attempts: number; instead: string } | undefined {
  const links = [...grubCfg.matchAll(/\n    set upgradectl_default_tries=(\d+)\n/g)].map((m) => Number(m[1]));
  const gaveUp = /\n  else\n    set default=(\d+)\n    set upgradectl_not_default=1\n/.exec(grubCfg);
  if (links.length === 0 || !gaveUp) return undefined;
  const ids = [...grubCfg.matchAll(/^menuentry .*--id[ =]'?([^\s'{]+)'?/gm)].map((x) => x[1]!);
  return { attempts: Math.max(...links), instead: ids[Number(gaveUp[1])]! };
}
