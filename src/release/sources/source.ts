import { isIP } from 'node:net';
import { UpgradeError } from '../../core/errors.js';

/**
 * Where releases come from and go to. One implementation per URL scheme: file://, http(s)://, s3://.
 * Keys are paths relative to the source prefix, e.g. `releases/2.0/manifest.json`.
 * Implementations retry transient failures (5xx, resets, stalls) with backoff themselves and throw
 * UpgradeError: NOT_FOUND (no such object), CHANGED (the object's ETag is not the expected one),
 * NETWORK (after the last retry, or a non-retryable HTTP status), naming the URL.
 */
export interface ObjectInfo {
  size: number;
  /** Opaque version tag (HTTP ETag, S3 ETag, or size+mtime for files); compared for resume. */
  etag: string | undefined;
}

/**
 * What another thread needs to open the same source itself (`openSpec` in sources/index.ts). The
 * frame workers fetch their own ranges with it, so the bytes never cross the main thread. The URL
 * may carry credentials: it stays inside this process and is never printed.
 */
export interface SourceSpec {
  /** The source's prefix URL; with `signedKey`, the pre-signed URL of that one object. */
  url: string;
  opts: SourceOptions;
  /**
   * S3: `url` is a short-lived pre-signed GET of this key, which the worker fetches over plain
   * HTTP(S) with undici (no SDK, no credentials in the worker). It must be asked for again before
   * `expiresAt` (ms since the epoch).
   */
  signedKey?: string;
  /** When the URL was made, and when it stops working (the shorter of its own life and its credentials'). */
  signedAt?: number;
  expiresAt?: number;
  /** With `signedKey`: what messages call the object (s3://bucket/key), and what to check when it is refused. */
  store?: StoreNames;
}

/** How messages name a store read over HTTP that is not a plain web server (S3 without the SDK). */
export interface StoreNames {
  /** What messages call the source's URL instead, e.g. `s3://bucket/prefix/` (or one object's s3:// name). */
  shownBase: string;
  /** The hint when the server refuses access (HTTP 401, 403): the default is about user:password in the URL. */
  refusedHint: string;
}

export interface Source {
  /** Printable location of the prefix, for messages (no credentials). */
  readonly url: string;
  /**
   * How a worker thread reaches `key` on its own; absent for sources built by a caller, undefined
   * when another thread cannot reach it (then read it here). Ask again for each frame: an S3 answer
   * is a pre-signed URL that expires (a fresh one comes back well before it does).
   */
  workerSpec?(key: string): Promise<SourceSpec | undefined>;
  /** S3: a pre-signed http(s) GET of `key`, for a reader without the SDK or credentials (the RAM flasher). */
  presignedUrl?(key: string, seconds: number): Promise<string>;
  /**
   * Throttled sources: wait until `bytes` of payload may be read through `workerSpec` by another thread, so
   * that reads made by workers keep to the same rate as reads made here.
   */
  admit?(bytes: number): Promise<void>;
  /** A whole small object (channel, manifest, signature). */
  get(key: string): Promise<Buffer>;
  head(key: string): Promise<ObjectInfo>;
  /**
   * Bytes [start, end) of an object. With `etag`, fails with CHANGED when the object is not that version.
   * With `into` (at least end - start bytes) a source may fill that buffer and return a view of it
   * instead of allocating one: a worker that fetches frame after frame reuses its memory.
   */
  range(key: string, start: number, end: number, etag?: string, into?: Buffer): Promise<Buffer>;
  /**
   * Consecutive ranges of one object in one request: bytes [bounds[i], bounds[i + 1]) are read into
   * `into` (at least as long as the longest) and handed to `take(i, bytes)` in order, each as soon as
   * it is in; the bytes are valid until `take` returns or its promise settles. A drop resumes from the
   * first range not yet taken; a throw from `take` ends it with that error. Without it, one `range` each.
   */
  rangePieces?(key: string, bounds: number[], etag: string | undefined, into: Buffer, take: PieceTaker): Promise<void>;
  /**
   * Bytes worth asking for in one ranged request when the caller may merge ranges (S3: its per-request
   * latency and price). Unset: one request per frame, the least a `kill -9` can throw away.
   */
  readonly requestBytes?: number;
  /** The object from `start` to its end, as a stream of chunks (sequential payloads). */
  stream(key: string, start: number, etag?: string): AsyncIterable<Buffer>;
  close(): Promise<void>;
}

/**
 * Bytes per ranged GET of an S3 payload's frames: AWS's guidance for byte-range fetches is 8–16 MB
 * (each request pays its latency and its price; s3rver's per-request work is ~3 ms of CPU).
 */
export const S3_REQUEST_BYTES = 16 << 20;

export type PieceTaker = (index: number, bytes: Buffer) => void | Promise<void>;

/**
 * An object's full location for messages. `url` is the prefix as each source prints it: an http(s)
 * one ends in a slash, file:// and s3:// ones do not.
 */
export function objectUrl(source: { readonly url: string }, key: string): string {
  return `${source.url.replace(/\/+$/, '')}/${key}`;
}

export interface Target {
  readonly url: string;
  putBytes(key: string, body: Uint8Array): Promise<void>;
  /** Upload a local file (multipart for large ones). */
  putFile(key: string, file: string): Promise<void>;
  close(): Promise<void>;
}

export interface RetryPolicy {
  retries: number;
  /** Milliseconds without progress before a transfer counts as stalled. */
  stallTimeoutMs: number;
  /** First backoff delay in ms; doubles each retry, with jitter, capped at 30 s. */
  baseDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { retries: 5, stallTimeoutMs: 30_000, baseDelayMs: 500 };

export interface SourceOptions {
  retry?: Partial<RetryPolicy>;
  /** S3 only. */
  region?: string;
  endpoint?: string;
  forcePathStyle?: boolean;
  /**
   * PEM of the CA certificates that sign the release server's (or S3 endpoint's) certificate, trusted
   * instead of the system's public CAs: `[source] ca_file`, for a mirror under a private CA.
   */
  ca?: string;
}

/**
 * Plain http:// only to this machine (tests, a local mirror through a tunnel): anywhere else it could be
 * read and tampered with on the way. For HTTP sources and S3 endpoints alike.
 */
export function refusePlainHttp(url: URL, what: string): void {
  if (url.protocol === 'http:' && !isLoopbackHost(url.hostname)) {
    throw new UpgradeError('USAGE', `refusing plain http:// to ${url.hostname} in ${what}`, {
      hint: `use https://${url.host}${url.pathname} (http:// is only allowed for 127.0.0.0/8, ::1 and localhost)`,
    });
  }
}

export function isLoopbackHost(hostname: string): boolean {
  const host = hostname.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  if (isIP(host) === 6) return host === '::1';
  return false;
}
