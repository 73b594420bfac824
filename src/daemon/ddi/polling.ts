import { log } from '../../core/log.js';
import { isDdiError } from './errors.js';

/**
 * When to poll next. The server's `config.polling.sleep` decides in normal times; a fleet must not
 * poll in lock-step (every machine rebooted by the same power cut would), so each wait gets jitter.
 * A down server is backed off exponentially; a 429 is obeyed.
 */

/** Used when the server names no sleep or an unreadable one (hawkBit's own default is 5 minutes). */
export const DEFAULT_SLEEP_MS = 5 * 60_000;
/** Never poll faster than this, whatever the server says: "00:00:00" must not become a busy loop. */
export const MIN_SLEEP_MS = 1_000;

/** "HH:MM:SS" (hours may exceed 23) to milliseconds; undefined when it is not that. */
export function parseSleep(value: string | undefined): number | undefined {
  const m = value === undefined ? null : /^(\d{1,4}):([0-5]\d):([0-5]\d)$/.exec(value);
  if (!m) return undefined;
  return ((Number(m[1]) * 60 + Number(m[2])) * 60 + Number(m[3])) * 1000;
}

/** The sleep the server asked for, defaulted and floored. */
export function sleepFrom(value: string | undefined): number {
  const ms = parseSleep(value);
  if (ms === undefined) {
    if (value !== undefined) log.warn(`hawkBit: unreadable polling sleep "${String(value).slice(0, 40)}"; polling every ${DEFAULT_SLEEP_MS / 1000} s`);
    return DEFAULT_SLEEP_MS;
  }
  return Math.max(MIN_SLEEP_MS, ms);
}

export interface PollTimerOptions {
  /** First backoff after a failure (doubles each time). */
  backoffBaseMs?: number;
  /** Backoff ceiling; the server's sleep is used when longer. */
  backoffMaxMs?: number;
  /** Replaceable for tests: a number in [0, 1). */
  random?: () => number;
  /** Failures in a row so far: for a loop whose state lives in a file between processes (the daemon's passes). */
  failures?: number;
}

/**
 * Tracks consecutive failures of a poll loop and says how long to wait before the next poll:
 * `afterSuccess(sleepMs)` or `afterFailure(err)`, then sleep that long.
 */
export class PollTimer {
  private failures = 0;
  private lastSleepMs = DEFAULT_SLEEP_MS;
  private readonly base: number;
  private readonly max: number;
  private readonly random: () => number;

  constructor(opts: PollTimerOptions = {}) {
    this.failures = opts.failures ?? 0;
    this.base = opts.backoffBaseMs ?? 5_000;
    this.max = opts.backoffMaxMs ?? 15 * 60_000;
    this.random = opts.random ?? Math.random;
  }

  get consecutiveFailures(): number {
    return this.failures;
  }

  /** The server answered: wait its sleep, plus up to 10% so that a fleet spreads out. */
  afterSuccess(sleepMs: number): number {
    this.failures = 0;
    this.lastSleepMs = sleepMs;
    return Math.round(sleepMs * (1 + 0.1 * this.random()));
  }

  afterFailure(err: unknown): number {
    this.failures += 1;
    if (isDdiError(err, 'rate-limited')) {
      // hawkBit's DoS filter: "the client has to wait another second" when it names no time.
      const wait = Math.max(err.retryAfterMs ?? 1_000, 1_000);
      return Math.round(wait * (1 + 0.1 * this.random()));
    }
    // Equal jitter: half fixed, half random; ceiling at the longer of the cap and the normal sleep.
    const ceiling = Math.max(this.max, this.lastSleepMs);
    const exp = Math.min(ceiling, this.base * 2 ** Math.min(30, this.failures - 1));
    return Math.round(exp / 2 + (exp / 2) * this.random());
  }
}
