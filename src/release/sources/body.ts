/** Helpers over response bodies seen as async iterables of Buffers (undici, node:http, the AWS SDK). */

/**
 * The bytes of `chunks` after skipping `skip` and up to `limit` more. Stopping early releases the
 * underlying body (the for-await `return`), which matters when a server ignored a Range.
 */
export async function* byteWindow(chunks: AsyncIterable<Buffer>, skip: number, limit: number): AsyncGenerator<Buffer> {
  let toSkip = skip;
  let left = limit;
  if (left <= 0) return;
  for await (const raw of chunks) {
    let chunk = raw;
    if (toSkip > 0) {
      if (chunk.length <= toSkip) {
        toSkip -= chunk.length;
        continue;
      }
      chunk = chunk.subarray(toSkip);
      toSkip = 0;
    }
    if (chunk.length >= left) {
      yield chunk.subarray(0, left);
      return;
    }
    left -= chunk.length;
    yield chunk;
  }
}

/**
 * The whole of a body in one buffer (`into`, when given), refused with `tooLarge()` as soon as it passes `cap` bytes: a
 * broken or hostile server cannot make us hold more than we meant to read (leaving the for-await
 * releases the body, so nothing more is read either).
 */
export async function collect(chunks: AsyncIterable<Buffer>, cap: number, tooLarge: () => Error, into?: Buffer): Promise<Buffer> {
  if (into) {
    // Straight into the caller's buffer: one copy, no allocation.
    let filled = 0;
    for await (const chunk of chunks) {
      if (filled + chunk.length > Math.min(cap, into.length)) throw tooLarge();
      filled += chunk.copy(into, filled);
    }
    return into.subarray(0, filled);
  }
  const parts: Buffer[] = [];
  let total = 0;
  for await (const chunk of chunks) {
    total += chunk.length;
    if (total > cap) throw tooLarge();
    parts.push(chunk);
  }
  return Buffer.concat(parts, total);
}

/** View any Uint8Array chunk as a Buffer without copying (the AWS SDK types its bodies loosely). */
export async function* asBuffers(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<Buffer> {
  for await (const chunk of chunks) {
    yield Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  }
}
