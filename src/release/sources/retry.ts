import { setTimeout as sleep } from 'node:timers/promises';
import { UpgradeError, errnoOf, isUpgradeError, messageOf } from '../../core/errors.js';
import { log } from '../../core/log.js';
import { DEFAULT_RETRY, type RetryPolicy } from './source.js';

/**
 * The one retry loop of the transports (http and s3 alike): classify a failure as transient or
 * final, back off exponentially with jitter, and after the last attempt surface one NETWORK error
 * that names what was being done, how many attempts were made and the last cause.
 */

const MAX_DELAY_MS = 30_000;

/** A failure worth another attempt: the connection or the server hiccuped, the request itself is fine. */
export class TransientError extends Error {
  /** The server asked us to wait at least this long (Retry-After). */
  readonly retryAfterMs: number | undefined;

  constructor(message: string, opts: { cause?: unknown; retryAfterMs?: number } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'TransientError';
    this.retryAfterMs = opts.retryAfterMs;
  }
}

/** Socket-level failures of node:net, node:http and undici that a fresh connection may not repeat. */
const TRANSIENT_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EAI_AGAIN',
  'ERR_STREAM_PREMATURE_CLOSE',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
]);

const UNDICI_REASONS: Record<string, string> = {
  UND_ERR_HEADERS_TIMEOUT: 'stalled: no response headers in time',
  UND_ERR_BODY_TIMEOUT: 'stalled: no data in time',
  UND_ERR_CONNECT_TIMEOUT: 'connect timed out',
  UND_ERR_SOCKET: 'connection dropped',
};

/** Why `err` is worth retrying, or undefined when it is final. Looks through `cause` chains. */
export function transientReason(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 5; depth++) {
    if (isUpgradeError(e)) return undefined;
    if (e instanceof TransientError) return e.message;
    const code = errnoOf(e);
    if (code !== undefined && TRANSIENT_CODES.has(code)) {
      const reason = UNDICI_REASONS[code];
      return reason === undefined ? `${code}: ${messageOf(e)}` : `${reason} (${messageOf(e)})`;
    }
    if (e instanceof Error && e.name === 'TimeoutError') return messageOf(e);
    e = e instanceof Error ? e.cause : undefined;
  }
  return undefined;
}

export function resolvePolicy(partial: Partial<RetryPolicy> = {}): RetryPolicy {
  // An unset config value arrives as undefined: it means "the default", not "no value".
  const given = Object.fromEntries(Object.entries(partial).filter(([, v]) => v !== undefined));
  const policy: RetryPolicy = { ...DEFAULT_RETRY, ...given };
  for (const [name, value] of Object.entries(policy)) {
    if (!Number.isFinite(value) || value < 0) {
      throw new UpgradeError('CONFIG', `retry setting ${name} must be a number >= 0, not ${String(value)}`, {
        hint: 'fix [prepare] retries / stall_timeout in upgradectl.conf',
      });
    }
  }
  if (policy.stallTimeoutMs === 0) {
    throw new UpgradeError('CONFIG', 'stall timeout must be greater than 0', {
      hint: 'fix [prepare] stall_timeout in upgradectl.conf',
    });
  }
  return policy;
}

/** Exponential backoff with "equal jitter": half the delay fixed, half random, so clients spread out. */
export function backoffDelay(policy: RetryPolicy, failure: number, retryAfterMs?: number): number {
  const exp = Math.min(MAX_DELAY_MS, policy.baseDelayMs * 2 ** Math.max(0, failure - 1));
  const jittered = exp / 2 + Math.random() * (exp / 2);
  return Math.round(Math.min(MAX_DELAY_MS, Math.max(jittered, retryAfterMs ?? 0)));
}

/**
 * Counts failures of one operation against a policy. A stream calls `progressed()` when bytes arrive:
 * only failures without progress in between use up the budget, so a multi-gigabyte download that
 * keeps moving is not failed by drops spread over hours, while a dead server still fails fast.
 */
export class Retrier {
  private failures = 0;
  private attempts = 1;

  constructor(
    private readonly policy: RetryPolicy,
    /** e.g. `GET https://host/releases/2.0/image.lz4`: named in every log line and the final error. */
    private readonly what: string,
    private readonly hint = 'check the network and that the server is up, then run the command again',
  ) {}

  progressed(): void {
    this.failures = 0;
  }

  /** Returns after the backoff when `err` deserves another attempt; otherwise throws the error to surface. */
  async failed(err: unknown): Promise<void> {
    if (isUpgradeError(err)) throw err;
    const reason = transientReason(err);
    if (reason === undefined) {
      throw new UpgradeError('NETWORK', `${this.what} failed: ${messageOf(err)}`, { hint: this.hint, cause: err });
    }
    this.failures += 1;
    if (this.failures > this.policy.retries) {
      throw new UpgradeError(
        'NETWORK',
        `${this.what} failed after ${this.attempts} attempt${this.attempts === 1 ? '' : 's'}; last error: ${reason}`,
        { hint: this.hint, cause: err },
      );
    }
    const retryAfterMs = err instanceof TransientError ? err.retryAfterMs : undefined;
    const delay = backoffDelay(this.policy, this.failures, retryAfterMs);
    this.attempts += 1;
    log.warn(`${this.what}: ${reason}; retry ${this.failures} of ${this.policy.retries} in ${delay} ms`);
    log.debug(`${this.what}: retrying after %s`, err instanceof Error ? (err.stack ?? err.message) : String(err));
    await sleep(delay);
  }
}

/** Run `fn` until it succeeds, fails finally, or the policy's retries are used up. */
export async function withRetry<T>(
  fn: (attempt: number) => Promise<T>,
  policy: RetryPolicy,
  what: string,
  hint?: string,
): Promise<T> {
  const retrier = new Retrier(policy, what, hint);
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      await retrier.failed(err);
    }
  }
}

/** One response body positioned at the requested offset, and the object version that answered. */
export interface OpenedBody {
  chunks: AsyncIterable<Buffer>;
  etag: string | undefined;
}

/**
 * A sequential download that survives drops: when the body fails, reopen from the byte reached,
 * pinned to the version first seen (If-Match), until the retry budget runs out.
 */
export async function* resumingStream(
  open: (position: number, etag: string | undefined) => Promise<OpenedBody>,
  start: number,
  etag: string | undefined,
  retrier: Retrier,
): AsyncGenerator<Buffer> {
  let position = start;
  let pinned = etag;
  for (;;) {
    try {
      const opened = await open(position, pinned);
      pinned ??= opened.etag;
      for await (const chunk of opened.chunks) {
        position += chunk.length;
        retrier.progressed();
        yield chunk;
      }
      return;
    } catch (err) {
      await retrier.failed(err);
    }
  }
}
