import { UpgradeError } from '../core/errors.js';
import { PRIVATE_FILE_MODE, mkdirPrivate } from '../core/private-files.js';
import { readJsonIfExists, writeFileDurable } from '../core/durable.js';
import type { Layout } from '../core/layout.js';
import { validateState, type Phase } from './state-check.js';

export { PHASES, type Phase } from './state-check.js';

export interface HistoryEntry {
  at: string;
  event: string;
  from: Phase;
  to: Phase;
  version?: string;
  ok: boolean;
  reason?: string;
  /** Free-form facts of the step: bytes fetched, files migrated, hook output, … */
  detail?: Record<string, unknown>;
}

export interface Pending {
  event: string;
  step: string;
  version?: string;
  since: string;
  /** The boot in which the step was reached: an intent from an earlier boot was cut by a reset. */
  bootId?: string;
}

/** `HOST/images/.upgradectl/state.json`: the lifecycle's persisted truth, replaced atomically. */
export interface State {
  schema: 1;
  phase: Phase;
  /** The default image (GRUB saved_entry). */
  current?: string;
  /** The image to roll back to. */
  previous?: string;
  /** The prepared, committed or trying image. */
  next?: string;
  /** Versions whose trial failed: never offered again unless forced. No prototype: keys are versions (input). */
  bad: Record<string, { reason: string; at: string }>;
  /** Re-entries of the step in progress; bounds crash loops (STYLE.md: Mender's loop breaker). */
  reentries?: { event: string; count: number };
  /**
   * The step an operation is about to do, persisted BEFORE it acts: after a crash or reset, the
   * re-run and the boot-time reconciliation read it to tell what was done from what was not.
   */
  pending?: Pending;
  /** The kernel boot id when the phase was entered: a different id later means the machine rebooted. */
  phaseBootId?: string;
  /** What a committed/trying trial is: an upgrade to next, or a rollback to the previous image. */
  trialKind?: 'upgrade' | 'rollback';
  /**
   * A traditional install that `upgradectl adopt` took over (operations/adopt.ts): its root filesystem is
   * the host partition, and the distribution's boot menu, kept as `distroConfig`, stays the last
   * fallback entry until `upgradectl adopt --finish`.
   */
  adopted?: { at: string; distroConfig: string };
  history: HistoryEntry[];
  // --- Trust memory (src/operations/trust-memory.ts, docs/security.md); both optional, absent = nothing seen.
  /** The newest signed channel seen, per `<source url>#<channel name>`: anti-replay and the version floor. */
  channels?: Record<string, ChannelSeen>;
  /** Key ids a signed channel revoked: refused from then on, whatever keys.d says. */
  revokedKeys?: Record<string, { by: string; at: string }>;
  // --- end trust memory
}

export interface ChannelSeen {
  /** The channel's signed `published` time: an older one is a replay. */
  published: string;
  version: string;
  /** The highest signed minVersion seen on this channel (a floor is only ever raised). */
  minVersion?: string;
  seenAt: string;
}

export const HISTORY_LIMIT = 100;

export function initialState(): State {
  return { schema: 1, phase: 'idle', bad: Object.create(null) as State['bad'], history: [] };
}

export async function loadState(layout: Layout): Promise<State> {
  let doc: unknown;
  try {
    doc = await readJsonIfExists<unknown>(layout.stateFile);
  } catch (err) {
    throw new UpgradeError('STATE', `${layout.stateFile} is not valid JSON: ${(err as Error).message}`, {
      cause: err,
      hint: `move it aside (mv ${layout.stateFile} ${layout.stateFile}.broken); upgradectl rebuilds it from what is on disk`,
    });
  }
  // Only a missing file means a fresh machine; `null`, `0` or `""` in it is damage, refused below.
  if (doc === undefined) return initialState();
  return validateState(doc, layout.stateFile);
}

export async function saveState(layout: Layout, state: State): Promise<void> {
  await mkdirPrivate(layout.stateDir);
  if (state.history.length > HISTORY_LIMIT) state.history = state.history.slice(-HISTORY_LIMIT);
  await writeFileDurable(layout.stateFile, `${JSON.stringify(state, null, 2)}\n`, PRIVATE_FILE_MODE);
}
