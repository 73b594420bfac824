import winston from 'winston';

/**
 * Logs go to stderr only (stdout carries results and --json). Under systemd (JOURNAL_STREAM set)
 * each line starts with its syslog priority, `<3>` … `<7>`, which journald turns into PRIORITY=.
 */
const PRIORITY: Record<string, number> = { error: 3, warn: 4, info: 6, verbose: 6, debug: 7 };

const underJournal = () => Boolean(process.env.JOURNAL_STREAM);

const lineFormat = winston.format.printf((info) => {
  const stack = typeof info.stack === 'string' && info.level === 'debug' ? `\n${info.stack}` : '';
  const text = `${String(info.message)}${stack}`;
  if (underJournal()) return `<${PRIORITY[info.level] ?? 6}>${text}`;
  return info.level === 'info' ? text : `${info.level}: ${text}`;
});

export const log = winston.createLogger({
  level: process.env.UPGRADECTL_LOG_LEVEL ?? 'info',
  format: winston.format.combine(winston.format.errors({ stack: true }), winston.format.splat(), lineFormat),
  transports: [new winston.transports.Console({ stderrLevels: Object.keys(PRIORITY) })],
});

export function setLogLevel(level: 'error' | 'warn' | 'info' | 'debug'): void {
  log.level = level;
}
