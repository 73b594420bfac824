import { UpgradeError } from '../core/errors.js';
import { isVersion } from '../core/version.js';
import type { HistoryEntry, Pending, State } from './state.js';

/** The lifecycle's phases (docs/lifecycle.md); defined here so that state.ts needs no runtime cycle. */
export const PHASES = ['idle', 'prepared', 'committed', 'trying', 'rolled-back'] as const;
export type Phase = (typeof PHASES)[number];

/**
 * Check every field of a parsed state.json before the lifecycle trusts it, as a manifest is checked:
 * a hand-edited or damaged file must fail here with its field named, not later as
 * `history.push is not a function`; and a version read from it names image files and GRUB entries, so
 * `"next": "../../../tmp/x"` must never get that far. Returns a fresh object whose `bad` map has no
 * prototype, so that a version named `constructor` is not found in it. Fields it does not know are
 * kept as they are (schema 1 may grow).
 */
export function validateState(doc: unknown, file: string): State {
  try {
    return checkState(doc, file);
  } catch (err) {
    if (!(err instanceof FieldError)) throw err;
    throw new UpgradeError('STATE', `${file}: ${err.field} is ${describe(err.found)}, expected ${err.want}`, {
      hint: `move it aside (mv ${file} ${file}.broken); upgradectl then rebuilds the state from the image that booted`,
    });
  }
}

class FieldError extends Error {
  constructor(
    readonly field: string,
    readonly want: string,
    readonly found: unknown,
  ) {
    super(`${field}: expected ${want}`);
  }
}

function checkState(doc: unknown, file: string): State {
  const s = obj(doc, 'the file');
  if (s.schema !== 1) {
    throw new UpgradeError('STATE', `${file} has an unknown schema (${describe(s.schema)})`, {
      hint: `this state was written by a newer upgradectl; upgrade upgradectl, or move it aside (mv ${file} ${file}.broken)`,
    });
  }
  const state: State = { ...s, schema: 1, phase: phase(s.phase, 'phase'), bad: Object.create(null) as State['bad'], history: [] };
  for (const field of ['current', 'previous', 'next'] as const) {
    if (s[field] !== undefined) state[field] = version(s[field], field);
  }
  for (const [v, entry] of Object.entries(obj(s.bad ?? {}, 'bad'))) {
    version(v, `bad key "${v}"`);
    const e = obj(entry, `bad["${v}"]`);
    state.bad[v] = { reason: str(e.reason, `bad["${v}"].reason`), at: str(e.at, `bad["${v}"].at`) };
  }
  if (s.reentries !== undefined) {
    const r = obj(s.reentries, 'reentries');
    if (!Number.isSafeInteger(r.count) || (r.count as number) < 0) throw new FieldError('reentries.count', 'a whole number ≥ 0', r.count);
    state.reentries = { event: str(r.event, 'reentries.event'), count: r.count as number };
  }
  if (s.pending !== undefined) state.pending = pending(obj(s.pending, 'pending'));
  if (s.phaseBootId !== undefined) str(s.phaseBootId, 'phaseBootId');
  if (s.trialKind !== undefined && s.trialKind !== 'upgrade' && s.trialKind !== 'rollback') {
    throw new FieldError('trialKind', 'upgrade or rollback', s.trialKind);
  }
  if (s.adopted !== undefined) {
    const a = obj(s.adopted, 'adopted');
    state.adopted = { at: str(a.at, 'adopted.at'), distroConfig: str(a.distroConfig, 'adopted.distroConfig') };
  }
  const history = s.history ?? [];
  if (!Array.isArray(history)) throw new FieldError('history', 'a list', history);
  history.forEach((h, i) => state.history.push(historyEntry(obj(h, `history[${i}]`), `history[${i}]`)));
  return state;
}

function pending(p: Record<string, unknown>): Pending {
  const out: Pending = { ...p, event: str(p.event, 'pending.event'), step: str(p.step, 'pending.step'), since: str(p.since, 'pending.since') };
  if (p.version !== undefined) out.version = version(p.version, 'pending.version');
  if (p.bootId !== undefined) out.bootId = str(p.bootId, 'pending.bootId');
  return out;
}

function historyEntry(h: Record<string, unknown>, at: string): HistoryEntry {
  if (typeof h.ok !== 'boolean') throw new FieldError(`${at}.ok`, 'true or false', h.ok);
  if (h.version !== undefined) version(h.version, `${at}.version`);
  if (h.reason !== undefined) str(h.reason, `${at}.reason`);
  if (h.detail !== undefined) obj(h.detail, `${at}.detail`);
  return { ...h, at: str(h.at, `${at}.at`), event: str(h.event, `${at}.event`), from: phase(h.from, `${at}.from`), to: phase(h.to, `${at}.to`), ok: h.ok };
}

function obj(v: unknown, field: string): Record<string, unknown> {
  if (v !== null && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  throw new FieldError(field, 'an object', v);
}

function str(v: unknown, field: string): string {
  if (typeof v === 'string') return v;
  throw new FieldError(field, 'a string', v);
}

function version(v: unknown, field: string): string {
  if (isVersion(v)) return v;
  throw new FieldError(field, 'a version (letters, digits and . _ + ~ -)', v);
}

function phase(v: unknown, field: string): Phase {
  if ((PHASES as readonly unknown[]).includes(v)) return v as Phase;
  throw new FieldError(field, `one of ${PHASES.join(', ')}`, v);
}

/** A found value for a message: short, and never a whole object. */
function describe(v: unknown): string {
  if (v === undefined) return 'missing';
  if (Array.isArray(v)) return 'a list';
  if (v !== null && typeof v === 'object') return 'an object';
  const text = JSON.stringify(v);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}
