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
  const m = /\nelse\n  set fallback=(\d+)\nfi/.exec(grubCfg);
  if (!m) return undefined;
  const ids = [...grubCfg.matchAll(/^menuentry .*--id[ =]'?([^\s'{]+)'?/gm)].map((x) => x[1]);
  return ids[Number(m[1])];
}
