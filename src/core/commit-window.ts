import { createHash } from 'node:crypto';
import { UpgradeError } from './errors.js';

/**
 * The operator's commit window, `HH:MM-HH:MM` in local time (it may cross midnight: `23:00-01:30`).
 * Each machine starts at its own moment inside it, so a fleet does not reboot in the same minute:
 * the offset is drawn from the machine id and the day, stable across daemon restarts that day.
 */
export interface CommitWindow {
  /** Minutes after local midnight. */
  start: number;
  /** Length in minutes (1 to 1440). */
  length: number;
  text: string;
}

/** Whether `text` is a window parseWindow takes: the config's check, so a bad value fails at load, not at commit time. */
export function isWindow(text: string): boolean {
  try {
    parseWindow(text, 'window');
    return true;
  } catch {
    return false;
  }
}

export function parseWindow(text: string, where: string): CommitWindow {
  const m = /^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$/.exec(text);
  const minutes = (h: string, mm: string) => Number(h) * 60 + Number(mm);
  const bad = () =>
    new UpgradeError('CONFIG', `${where}: '${text}' is not a window`, { hint: 'write it as HH:MM-HH:MM in local time, e.g. commit = 02:00-04:00 (it may cross midnight)' });
  if (!m) throw bad();
  const [, h1, m1, h2, m2] = m as unknown as [string, string, string, string, string];
  if (Number(h1) > 23 || Number(h2) > 24 || Number(m1) > 59 || Number(m2) > 59) throw bad();
  const start = minutes(h1, m1);
  let end = minutes(h2, m2);
  if (end > 1440) throw bad();
  if (end <= start) end += 1440;
  return { start, length: Math.min(1440, end - start), text: text.trim() };
}

/** Local midnight of the day that `t` falls in. */
function localMidnight(t: Date): Date {
  return new Date(t.getFullYear(), t.getMonth(), t.getDate());
}

function addMinutes(t: Date, minutes: number): Date {
  return new Date(t.getTime() + minutes * 60_000);
}

/**
 * This machine's moment in the window that opens on the day of `midnight`: somewhere in its first
 * half, so that a commit started then has the rest of the window to reboot and confirm.
 */
function jitteredStart(window: CommitWindow, midnight: Date, machineId: string): Date {
  const day = `${midnight.getFullYear()}-${midnight.getMonth() + 1}-${midnight.getDate()}`;
  const h = parseInt(createHash('sha256').update(`${machineId}:${day}`).digest('hex').slice(0, 8), 16);
  const spread = Math.floor(window.length / 2);
  return addMinutes(midnight, window.start + (spread > 0 ? h % spread : 0));
}

export interface WindowVerdict {
  /** The machine may commit now. */
  open: boolean;
  /** When it may next (the jittered start of the next window), when not open now. */
  next: Date;
  /** End of the window that is open now, or of the next one. */
  closes: Date;
}

/** Whether `now` is between this machine's start in a window and that window's end, and if not, when next. */
export function windowAt(window: CommitWindow, now: Date, machineId: string): WindowVerdict {
  // The window that began yesterday may still be open (e.g. 23:00-01:30 at 00:40).
  for (const dayOffset of [-1, 0, 1]) {
    const midnight = localMidnight(new Date(now.getFullYear(), now.getMonth(), now.getDate() + dayOffset));
    const opens = jitteredStart(window, midnight, machineId);
    const closes = addMinutes(midnight, window.start + window.length);
    if (now < closes && now >= opens) return { open: true, next: opens, closes };
    if (now < opens) return { open: false, next: opens, closes };
  }
  // Unreachable: tomorrow's window always lies ahead of now.
  throw new Error(`no commit window after ${now.toISOString()}`);
}
