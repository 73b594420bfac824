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
  | 'IO'
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

/** What each errno means for the file an operator named, and what to do about it. */
const ERRNO_TEXT: Record<string, { what: string; hint: (file: string) => string; code?: ErrorCode }> = {
  EROFS: { what: 'is on a read-only filesystem', hint: (f) => `remount the filesystem holding ${f} read-write (mount -o remount,rw MOUNTPOINT; findmnt -T ${f} names it), or use a writable path` },
  EPERM: { what: 'cannot be changed: operation not permitted', hint: (f) => `run as root; if you are, the file or its directory may be immutable or append-only (lsattr -d ${f}; chattr -i removes it)` },
  EACCES: { what: 'cannot be accessed: permission denied', hint: () => 'run upgradectl as root (it manages boot files and root-only images)' },
  ENOSPC: { what: 'cannot be written: no space left on its filesystem', hint: (f) => `free space there (df -h ${f}; df -i for inodes); upgradectl status lists the images kept`, code: 'NO_SPACE' },
  EDQUOT: { what: 'cannot be written: disk quota exceeded', hint: (f) => `raise the quota or free space on the filesystem of ${f}`, code: 'NO_SPACE' },
  EISDIR: { what: 'is a directory where a file was expected', hint: (f) => `give the path of a file, not the directory ${f}` },
  ENOTDIR: { what: 'has a part that is not a directory', hint: (f) => `check each component of ${f}` },
  ENOENT: { what: 'does not exist', hint: (f) => `check the path ${f} (and --root, if given)` },
  EXDEV: { what: 'cannot be renamed across filesystems', hint: (f) => `keep ${f} and its destination on one filesystem (a separate mount in between?)` },
};

/**
 * A raw filesystem error (what Node throws: code, syscall, path) turned into an operator's error that
 * names the file and the way out. Undefined when the error is not one of those.
 */
export function explainSystemError(err: unknown): UpgradeError | undefined {
  const code = errnoOf(err);
  const text = code === undefined ? undefined : ERRNO_TEXT[code];
  if (!text) return undefined;
  const e = err as NodeJS.ErrnoException & { dest?: string };
  // Errors on an open descriptor (read, write) carry no path: say so rather than invent one.
  const file = e.path ?? 'a file given to this command';
  const target = e.dest ? `${file} -> ${e.dest}` : file;
  return new UpgradeError(text.code ?? 'IO', `${target} ${text.what} (${e.syscall ?? 'system call'} ${code})`, { hint: text.hint(e.dest ?? e.path ?? 'the paths on the command line'), cause: err });
}
