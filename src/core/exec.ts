import { execFile, type ExecFileOptions } from 'node:child_process';
import { UpgradeError } from './errors.js';
import { log } from './log.js';

export interface RunResult {
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Milliseconds before the process is killed (SIGKILL) and the run fails. */
  timeoutMs?: number;
  input?: string | Buffer;
  maxBuffer?: number;
}

/**
 * The one way upgradectl starts a program: an argument array (never a shell string), logged argv,
 * and an error that carries the command, its exit status and its stderr.
 */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const argv = [cmd, ...args];
  log.debug(`exec: ${argv.map(quoteForLog).join(' ')}`);
  const options: ExecFileOptions = {
    env: opts.env ?? process.env,
    cwd: opts.cwd,
    timeout: opts.timeoutMs ?? 0,
    killSignal: 'SIGKILL',
    maxBuffer: opts.maxBuffer ?? 64 * 1024 * 1024,
    encoding: 'utf8',
  };
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, options, (err, stdout, stderr) => {
      const out = String(stdout ?? '');
      const errText = String(stderr ?? '');
      if (!err) {
        resolve({ stdout: out, stderr: errText });
        return;
      }
      const e = err as NodeJS.ErrnoException & { code?: number | string; killed?: boolean; signal?: string };
      let why: string;
      if (e.code === 'ENOENT') why = 'not installed or not on PATH';
      else if (e.killed && opts.timeoutMs) why = `killed after ${opts.timeoutMs} ms`;
      else if (e.signal) why = `killed by ${e.signal}`;
      else why = `exit status ${String(e.code)}`;
      const detail = errText.trim() ? `: ${lastLines(errText.trim(), 8)}` : '';
      reject(
        new ExecError(argv, typeof e.code === 'number' ? e.code : null, errText, out, `${argv[0]} failed (${why})${detail}`, err, e.killed ? undefined : e.signal ?? undefined),
      );
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

export class ExecError extends UpgradeError {
  constructor(
    readonly argv: string[],
    readonly exitCode: number | null,
    readonly stderr: string,
    readonly stdout: string,
    message: string,
    cause: unknown,
    /** The signal that ended the process when it did not exit by itself (not a timeout's kill). */
    readonly signal?: string,
  ) {
    super('EXEC', message, {
      cause,
      hint: exitCode === null && /not installed/.test(message) ? `install the package that provides ${argv[0]}` : undefined,
    });
  }
}

function lastLines(text: string, n: number): string {
  return text.split('\n').slice(-n).join(' | ');
}

function quoteForLog(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}
