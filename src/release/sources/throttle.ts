import { setTimeout as sleep } from 'node:timers/promises';
import type { ObjectInfo, Source } from './source.js';

/**
 * [prepare] max_rate: a fleet on customers' links must not take the whole line. Every payload read
 * reserves its bytes on one schedule at `bytesPerSecond` and waits for its slot before it starts, so
 * the average rate over any stretch longer than one frame stays at or under the limit however many
 * ranges are in flight. Small metadata reads are not throttled: they are what decides whether there
 * is anything to download at all.
 */
export class RateLimit {
  private nextFree = 0;
  constructor(readonly bytesPerSecond: number) {}

  /** Wait until `bytes` may be transferred. */
  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    const now = Date.now();
    const start = Math.max(now, this.nextFree);
    this.nextFree = start + (bytes / this.bytesPerSecond) * 1000;
    if (start > now) await sleep(start - now, undefined, { signal }).catch(() => undefined);
  }
}

export function throttleSource(inner: Source, limit: RateLimit): Source {
  return {
    url: inner.url,
    // A worker that reads through the inner source's spec pays here first (admit), on the same schedule.
    ...(inner.workerSpec ? { workerSpec: (key: string) => inner.workerSpec!(key), admit: (bytes: number) => limit.take(bytes) } : {}),
    ...(inner.presignedUrl ? { presignedUrl: (key: string, seconds: number) => inner.presignedUrl!(key, seconds) } : {}),
    get: (key: string) => inner.get(key),
    head: (key: string): Promise<ObjectInfo> => inner.head(key),
    async range(key: string, start: number, end: number, etag?: string, into?: Buffer) {
      await limit.take(end - start);
      return inner.range(key, start, end, etag, into);
    },
    async *stream(key: string, start: number, etag?: string) {
      for await (const chunk of inner.stream(key, start, etag)) {
        // Paying after each chunk holds the next read back; the socket's window then fills and the
        // sender slows down, instead of the bytes piling up in memory.
        await limit.take(chunk.length);
        yield chunk;
      }
    },
    close: () => inner.close(),
  };
}
