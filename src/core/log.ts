import { createRequire } from 'node:module';
import type winston from 'winston';

/**
 * Logs go to stderr only (stdout carries results and --json). Under systemd (JOURNAL_STREAM set)
 * each line starts with its syslog priority, `<3>` … `<7>`, which journald turns into PRIORITY=.
 */
const PRIORITY: Record<string, number> = { error: 3, warn: 4, info: 6, verbose: 6, debug: 7 };

const underJournal = () => Boolean(process.env.JOURNAL_STREAM);

let logger: winston.Logger | undefined;
/** winston's npm levels; a call below `level` is dropped here, without loading winston for it. */
const SEVERITY: Record<string, number> = { error: 0, warn: 1, info: 2, http: 3, verbose: 4, debug: 5, silly: 6 };
let level = process.env.UPGRADECTL_LOG_LEVEL ?? 'info';
const ignore = () => undefined;

/**
 * winston is loaded on the first log call, not on import: the frame worker threads import modules
 * that can log (sources, retries) but rarely do, and loading winston costs each thread ~65 ms of a
 * download that takes ~1.5 s.
 */
function load(): winston.Logger {
  if (logger) return logger;
  const w = createRequire(import.meta.url)('winston') as typeof winston;
  const lineFormat = w.format.printf((info) => {
    const stack = typeof info.stack === 'string' && info.level === 'debug' ? `\n${info.stack}` : '';
    const text = `${String(info.message)}${stack}`;
    if (underJournal()) return `<${PRIORITY[info.level] ?? 6}>${text}`;
    return info.level === 'info' ? text : `${info.level}: ${text}`;
  });
  logger = w.createLogger({
    level,
    format: w.format.combine(w.format.errors({ stack: true }), w.format.splat(), lineFormat),
    transports: [new w.transports.Console({ stderrLevels: Object.keys(PRIORITY) })],
  });
  return logger;
}

export const log: winston.Logger = new Proxy({} as winston.Logger, {
  get(_, key) {
    // A debug line when debug is off (FramePool's, on the way to the first frame) costs nothing: loading
    // winston takes ~55 ms, and on the main thread that is ~55 ms before the download starts.
    const severity = typeof key === 'string' ? SEVERITY[key] : undefined;
    const threshold = SEVERITY[level];
    if (severity !== undefined && threshold !== undefined && severity > threshold) return ignore;
    const l = load();
    const value = Reflect.get(l, key, l) as unknown;
    return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(l) : value;
  },
  set(_, key, value) {
    // The level is also read here, before winston is loaded (see get).
    if (key === 'level') level = String(value);
    return Reflect.set(load(), key, value);
  },
});

export function setLogLevel(to: 'error' | 'warn' | 'info' | 'debug'): void {
  level = to;
  if (logger) logger.level = to;
}
