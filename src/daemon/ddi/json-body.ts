import type { Dispatcher } from 'undici';
import { DdiError } from './errors.js';

/** Largest JSON answer accepted: a deployment of a few chunks is a few KiB; a hostile one is not read. */
export const JSON_CAP = 1 << 20;

/**
 * Read a response body of at most `cap` bytes. A larger one is cut off as soon as it is known to be
 * larger (its Content-Length, or the byte that crosses the cap), so a server cannot make the daemon
 * read or buffer 50 MB.
 */
export async function readCapped(res: Dispatcher.ResponseData, cap: number, what: string): Promise<Buffer> {
  const declared = Number(res.headers['content-length'] ?? NaN);
  if (declared > cap) {
    res.body.destroy();
    throw tooLarge(what, cap, `${declared} bytes announced`);
  }
  const parts: Buffer[] = [];
  let total = 0;
  for await (const chunk of res.body as AsyncIterable<Buffer>) {
    total += chunk.length;
    // Leaving the loop by throwing destroys the body and its connection.
    if (total > cap) throw tooLarge(what, cap, 'the body kept coming');
    parts.push(chunk);
  }
  return Buffer.concat(parts);
}

export async function readJson(res: Dispatcher.ResponseData, cap: number, what: string): Promise<unknown> {
  const bytes = await readCapped(res, cap, what);
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new DdiError('refused', `${what} answered with invalid JSON: ${(err as Error).message}`, { cause: err });
  }
}

function tooLarge(what: string, cap: number, why: string): DdiError {
  return new DdiError('refused', `${what} answered more than ${cap} bytes (${why}); refused`, {
    hint: 'a DDI answer is a few KiB: the server is broken or hostile; check [hawkbit] url',
  });
}
