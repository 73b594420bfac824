import { AsyncLocalStorage } from 'node:async_hooks';
import { UpgradeError } from '../core/errors.js';
import { readBootId } from '../core/boot-id.js';
import { acquireLock } from '../core/lock.js';
import { log } from '../core/log.js';
import type { Layout } from '../core/layout.js';
import { testSwitch } from '../core/test-switches.js';
import { loadState, saveState, type HistoryEntry, type Phase, type State } from './state.js';

/**
 * The whole lifecycle of DESIGN.md §4 in one table: which event may move which phase where.
 * Operations (prepare.ts, commit.ts, confirm.ts, rollback.ts) and the boot-time reconciliation
 * (reconcile/) end in one of these events; the CLI and the daemon reach the machine only through them.
 *
 *   idle --prepare--> prepared --commit--> committed --boot-trial--> trying --confirm-ok--> idle
 *     |                  |                    |                        |
 *     |                  +------cancel--------+--boot-old--> rolled-back <--confirm-failed / rollback--+
 *     +--rollback (boot previous once)--> committed
 *     +--default-failed (GRUB gave up on the default, the previous image runs)--> rolled-back
 *     +--flash-trial (a reflashed system's first boot, armed by the RAM flasher)--> committed
 */
export type LifecycleEvent =
  | 'prepare'
  | 'commit'
  | 'boot-trial'
  | 'boot-old'
  | 'commit-interrupted'
  | 'adopt'
  | 'adopt-distro'
  | 'flash-trial'
  | 'finish-adoption'
  | 'confirm-ok'
  | 'confirm-failed'
  | 'default-failed'
  | 'rollback'
  | 'cancel';

/** What a caller asks for; the step decides which event of OUTCOMES it ends in. */
export type Operation = LifecycleEvent | 'confirm' | 'reconcile';

const TRANSITIONS: ReadonlyArray<readonly [from: readonly Phase[], event: LifecycleEvent, to: Phase]> = [
  // Preparing again replaces a prepared image that was never committed (a newer release came out).
  [['idle', 'prepared', 'rolled-back'], 'prepare', 'prepared'],
  // Committing again (same boot, after a crash or a --no-reboot) re-arms the same trial.
  [['prepared', 'committed'], 'commit', 'committed'],
  // Reconciliation: what actually booted after the commit's reboot.
  [['committed', 'prepared'], 'boot-trial', 'trying'],
  [['committed', 'trying'], 'boot-old', 'rolled-back'],
  [['prepared'], 'commit-interrupted', 'prepared'],
  // Reconciliation on a reflashed system's first boot: the RAM flasher armed it as a trial (its
  // marker); recorded as commit would have, then boot-trial follows (reconcile/flash-trial.ts).
  [['idle', 'rolled-back'], 'flash-trial', 'committed'],
  // Reconciliation: no default is recorded and an upgradectl image runs (a new machine). A machine that
  // prepared before anything was recorded keeps its prepared image.
  [['idle', 'rolled-back'], 'adopt', 'idle'],
  [['prepared'], 'adopt', 'prepared'],
  // `upgradectl adopt`: a traditional install is taken over as it runs (operations/adopt.ts); the phase
  // does not change. `adopt --finish` drops the distribution's fallback entry once an image is current.
  [['idle', 'rolled-back'], 'adopt-distro', 'idle'],
  [['prepared'], 'adopt-distro', 'prepared'],
  [['idle'], 'finish-adoption', 'idle'],
  [['trying'], 'confirm-ok', 'idle'],
  [['trying'], 'confirm-failed', 'rolled-back'],
  // Reconciliation: the default was started [boot] default_attempts times without coming up, so GRUB
  // booted the previous image; that one becomes the default. A prepared upgrade stays prepared. A
  // committed or trying machine first ends its trial (boot-old), then this applies from rolled-back.
  [['idle', 'rolled-back'], 'default-failed', 'rolled-back'],
  [['prepared'], 'default-failed', 'prepared'],
  // Manual rollback: from a settled machine, boot the previous image once (then confirm it);
  // during a trial, abandon it.
  [['idle', 'rolled-back'], 'rollback', 'committed'],
  [['trying'], 'rollback', 'rolled-back'],
  [['prepared', 'committed'], 'cancel', 'idle'],
];

const OUTCOMES: Partial<Record<Operation, readonly LifecycleEvent[]>> = {
  confirm: ['confirm-ok', 'confirm-failed'],
  rollback: ['rollback', 'cancel'],
};

/** Times an interrupted operation is re-entered before it is given up (Mender's loop breaker). */
export const MAX_REENTRIES = 3;

export function allowed(from: Phase, event: LifecycleEvent): boolean {
  return TRANSITIONS.some(([froms, ev]) => ev === event && froms.includes(from));
}

export function targetPhase(from: Phase, event: LifecycleEvent): Phase {
  const row = TRANSITIONS.find(([froms, ev]) => ev === event && froms.includes(from));
  if (!row) throw new UpgradeError('STATE', `cannot ${event} while the machine is ${from}`, { hint: hintFor(from, event) });
  return row[2];
}

function hintFor(from: Phase, op: Operation): string {
  if (op === 'commit') {
    if (from === 'trying') return 'a trial boot is in progress: run upgradectl confirm (or upgradectl rollback)';
    return 'nothing is prepared: run upgradectl prepare first (upgradectl status shows the phase)';
  }
  if (op === 'confirm' || op === 'confirm-ok' || op === 'confirm-failed') {
    if (from === 'committed') return 'the upgrade is committed but this is not its trial boot yet: reboot to start it';
    if (from === 'prepared') return 'nothing was committed: run upgradectl commit to start a trial boot';
    return 'this is not a trial boot, so there is nothing to confirm; upgradectl status shows what booted';
  }
  switch (from) {
    case 'committed':
      return 'an upgrade is committed and waits for its reboot: reboot, or cancel it with upgradectl rollback';
    case 'trying':
      return 'a trial boot is in progress: run upgradectl confirm (or rollback) first';
    default:
      return `run upgradectl status to see what the machine is doing before ${op}`;
  }
}

export interface StepOutcome {
  /** The event the operation ended in, when it has several (confirm → confirm-ok | confirm-failed). */
  event?: LifecycleEvent;
  version?: string;
  ok?: boolean;
  reason?: string;
  detail?: Record<string, unknown>;
  /** Changes to the state beyond the phase (current/previous/next/bad), applied with it. */
  update?: (state: State) => void;
}

export interface EventControl {
  /**
   * Persist "about to do `step`" before doing it. A crash after this leaves the intent on disk for the
   * re-run and for the boot-time reconciliation.
   */
  mark(step: string, version?: string): Promise<void>;
  /** Persist the state as the step has changed it so far. */
  save(): Promise<void>;
  /** How many times this operation was already entered without finishing. */
  readonly reentries: number;
  /** The step the interrupted previous run had reached, if any. */
  readonly resumedAt: string | undefined;
}

/**
 * Run one operation under the operation lock: check the transition is allowed, run the step, and persist
 * the new phase together with a history entry. A failed step leaves the phase where the step left it
 * and records why.
 */
export async function runEvent(
  layout: Layout,
  op: Operation,
  step: (state: State, ctl: EventControl) => Promise<StepOutcome>,
): Promise<{ state: State; outcome: StepOutcome; event: LifecycleEvent }> {
  const lock = await acquireLock(layout, op);
  try {
    const state = await loadState(layout);
    return await runLocked(layout, state, op, step);
  } finally {
    await lock.release();
  }
}

/** runEvent for a caller that already holds the lock and has loaded the state. */
export async function runLocked(
  layout: Layout,
  state: State,
  op: Operation,
  step: (state: State, ctl: EventControl) => Promise<StepOutcome>,
): Promise<{ state: State; outcome: StepOutcome; event: LifecycleEvent }> {
  const from = state.phase;
  const events = OUTCOMES[op] ?? [op as LifecycleEvent];
  if (!events.some((ev) => allowed(from, ev))) {
    throw new UpgradeError('STATE', `cannot ${op} while the machine is ${from}`, { hint: hintFor(from, op) });
  }
  const resumedAt = state.pending?.event === op ? state.pending.step : undefined;
  if (resumedAt !== undefined) {
    const count = (state.reentries?.event === op ? state.reentries.count : 0) + 1;
    state.reentries = { event: op, count };
    log.warn(`${op} was interrupted at step '${resumedAt}' (${count} time${count > 1 ? 's' : ''}); resuming`);
  } else {
    state.reentries = undefined;
  }
  const since = new Date().toISOString();
  const ctl: EventControl = {
    mark: async (stepName, version) => {
      state.pending = { event: op, step: stepName, version: version ?? state.pending?.version, since, bootId: readBootId(layout) };
      await saveState(layout, state);
      crashPoint(`${op}:${stepName}`);
    },
    save: () => saveState(layout, state),
    reentries: state.reentries?.count ?? 0,
    resumedAt,
  };
  let outcome: StepOutcome;
  try {
    outcome = await operationLayout.run(layout, () => step(state, ctl));
  } catch (err) {
    state.pending = undefined;
    state.reentries = undefined;
    record(state, { event: op, from, to: state.phase, ok: false, version: state.next, reason: (err as Error).message });
    await saveState(layout, state).catch((e: unknown) => log.warn(`could not record the failure: ${(e as Error).message}`));
    throw err;
  }
  const event = outcome.event ?? events[0]!;
  applyEvent(state, event, outcome);
  await saveState(layout, state);
  crashPoint(`${op}:done`, layout);
  return { state, outcome, event };
}

/**
 * Apply one event to a state in memory (the caller holds the lock and saves): for reconciliation,
 * which observes what happened rather than doing it.
 */
export function applyEvent(state: State, event: LifecycleEvent, outcome: Omit<StepOutcome, 'event'> = {}): void {
  const from = state.phase;
  const to = targetPhase(from, event);
  outcome.update?.(state);
  state.phase = to;
  state.pending = undefined;
  state.reentries = undefined;
  record(state, { event, from, to, ok: outcome.ok ?? true, version: outcome.version, reason: outcome.reason, detail: outcome.detail });
}

export function record(state: State, entry: Omit<HistoryEntry, 'at'>): void {
  const clean = Object.fromEntries(Object.entries(entry).filter(([, v]) => v !== undefined)) as Omit<HistoryEntry, 'at'>;
  state.history.push({ at: new Date().toISOString(), ...clean });
}

/** The machine of the operation whose step is running: crash points inside steps (transitions.ts) need it. */
const operationLayout = new AsyncLocalStorage<Layout>();

/**
 * Crash injection for the crash table (test/upgradectl/crash.test.ts): UPGRADECTL_CRASH_AT=<op>:<step>
 * ends the process at once, as a power cut would, with no cleanup and no finally blocks. A test-only
 * switch (core/test-switches.ts): outside a test machine it does nothing.
 */
export function crashPoint(name: string, layout: Layout | undefined = operationLayout.getStore()): void {
  if (layout && testSwitch(layout.host, 'UPGRADECTL_CRASH_AT') === name) {
    process.stderr.write(`upgradectl: simulated crash at ${name}\n`);
    process.exit(137);
  }
}
