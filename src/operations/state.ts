import { UpgradeError } from '../core/errors.js';
import { PRIVATE_FILE_MODE, mkdirPrivate } from '../core/private-files.js';
import { readJsonIfExists, writeFileDurable } from '../core/durable.js';
import type { Layout } from '../core/layout.js';

export type Phase = 'idle' | 'prepared' | 'committed' | 'trying' | 'rolled-back';

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
  /** Versions whose trial failed: never offered again unless forced. */
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
  history: HistoryEntry[];
}

export const HISTORY_LIMIT = 100;

export function initialState(): State {
  return { schema: 1, phase: 'idle', bad: {}, history: [] };
}

export async function loadState(layout: Layout): Promise<State> {
  let state: State | undefined;
  try {
    state = await readJsonIfExists<State>(layout.stateFile);
  } catch (err) {
    throw new UpgradeError('STATE', `${layout.stateFile} is not valid JSON: ${(err as Error).message}`, {
      cause: err,
      hint: `move it aside (mv ${layout.stateFile} ${layout.stateFile}.broken); upgradectl rebuilds it from what is on disk`,
    });
  }
  if (!state) return initialState();
  if (state.schema !== 1 || typeof state.phase !== 'string') {
    throw new UpgradeError('STATE', `${layout.stateFile} has an unknown schema (${String(state.schema)})`, {
      hint: 'this state was written by a newer upgradectl; upgrade upgradectl or move the file aside',
    });
  }
  state.bad ??= {};
  state.history ??= [];
  return state;
}

export async function saveState(layout: Layout, state: State): Promise<void> {
  await mkdirPrivate(layout.stateDir);
  if (state.history.length > HISTORY_LIMIT) state.history = state.history.slice(-HISTORY_LIMIT);
  await writeFileDurable(layout.stateFile, `${JSON.stringify(state, null, 2)}\n`, PRIVATE_FILE_MODE);
}
