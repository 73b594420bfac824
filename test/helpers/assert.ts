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
