import { UpgradeError } from '../../core/errors.js';

/**
 * What went wrong talking to the server, in the terms the check-in loop acts on:
 * - `unavailable`: 5xx, refused or dropped connections, timeouts: back off and poll again;
 * - `rate-limited`: 429: wait at least `retryAfterMs`, then poll again;
 * - `gone`: 410: the action is no longer active; forget it and its unsent feedback;
 * - `unauthorized`: 401/403: our credentials were refused; nothing is done until the operator fixes them;
 * - `rejected`: any other 4xx: the server understood and will not take it; sending it again cannot help;
 * - `refused`: we refuse what the server said: a link to another host or controller, a body over the
 *   size cap, JSON not in the documented shape, a redirect.
 */
export type DdiFailure = 'unavailable' | 'rate-limited' | 'gone' | 'unauthorized' | 'rejected' | 'refused';

export class DdiError extends UpgradeError {
  readonly kind: DdiFailure;
  readonly status: number | undefined;
  readonly retryAfterMs: number | undefined;

  constructor(kind: DdiFailure, message: string, opts: { hint?: string; cause?: unknown; status?: number; retryAfterMs?: number } = {}) {
    super('NETWORK', message, { hint: opts.hint ?? HINTS[kind], cause: opts.cause });
    this.name = 'DdiError';
    this.kind = kind;
    this.status = opts.status;
    this.retryAfterMs = opts.retryAfterMs;
  }
}

const HINTS: Record<DdiFailure, string> = {
  unavailable: 'the hawkBit server is unreachable or failing; upgradectl keeps polling with backoff',
  'rate-limited': 'the hawkBit server asked for fewer requests; upgradectl waits as told',
  gone: 'the server no longer has this action; nothing is left to do for it',
  unauthorized: 'check [hawkbit] token_file and token_kind (or cert_file/key_file) against the target in hawkBit',
  rejected: 'the server refused the request; compare [hawkbit] url, tenant and controller_id with the target in hawkBit',
  refused: 'upgradectl ignored what the server sent; check [hawkbit] url and the server',
};

export function isDdiError(err: unknown, kind?: DdiFailure): err is DdiError {
  return err instanceof DdiError && (kind === undefined || err.kind === kind);
}
