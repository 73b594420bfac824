/**
 * Typed errors: every failure an operator can see has a code, a message that names the thing
 * (file, version, URL) and a hint with what to do next. Lower errors travel as `cause`.
 */
export type ErrorCode =
  | 'USAGE'
  | 'CONFIG'
  | 'LOCKED'
  | 'STATE'
  | 'SIGNATURE'
  | 'MANIFEST'
  | 'EXPIRED'
  | 'DOWNGRADE'
  | 'REPLAY'
  | 'BAD_VERSION'
  | 'NOT_FOUND'
  | 'CORRUPT'
  | 'CHANGED'
  | 'NETWORK'
  | 'NO_SPACE'
  | 'EXEC'
  | 'IMAGE'
  | 'GRUB'
  | 'MIGRATE'
  | 'HOOK'
  | 'HEALTH'
  | 'UNSUPPORTED'
  | 'INTERRUPTED'
  | 'INTERNAL';

export class UpgradeError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;

  constructor(code: ErrorCode, message: string, opts: { hint?: string; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'UpgradeError';
    this.code = code;
    this.hint = opts.hint;
  }
}

export function isUpgradeError(err: unknown, code?: ErrorCode): err is UpgradeError {
  return err instanceof UpgradeError && (code === undefined || err.code === code);
}

/** The message of any thrown value, for logs and wrapped errors. */
export function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** Node's errno code (ENOENT, ENOSPC, …) of a thrown value, if it has one. */
export function errnoOf(err: unknown): string | undefined {
  if (err && typeof err === 'object' && 'code' in err && typeof (err as { code: unknown }).code === 'string') {
    return (err as { code: string }).code;
  }
  return undefined;
}
