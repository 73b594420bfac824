import { promises as fs } from 'node:fs';
import path from 'node:path';
import { UpgradeError, messageOf } from '../core/errors.js';
import { readJsonIfExists, writeFileDurable } from '../core/durable.js';
import type { Layout } from '../core/layout.js';
import { log } from '../core/log.js';
import { failedBefore } from '../operations/offer.js';
import type { State } from '../operations/state.js';
import type { DdiClient } from './ddi/client.js';
import { isDdiError } from './ddi/errors.js';
import { feedback } from './ddi/feedback.js';
import type { DdiActionFeedback } from './ddi/types.js';

/**
 * The hawkBit action this machine is working on and the feedback the server has not acknowledged yet,
 * in one root-only file on the host partition (beside state.json, so it survives the switch to the
 * new image). The final `success`/`failure` is only known after the trial boot, i.e. after a reboot
 * that kills the daemon: so the action and every message are written down before they are sent, and
 * sent again, in order, until the server answers 2xx.
 */

/** How far the machine got with the action. `committed` is written before the commit reboots. */
export type ActionStep = 'received' | 'preparing' | 'prepared' | 'committed' | 'finished' | 'cancelled';

export interface ActionRecord {
  id: string;
  version: string;
  step: ActionStep;
  updatedAt: string;
}

export interface QueuedFeedback {
  /** Which feedback resource: the deployment's, or a cancel action's. */
  channel: 'deployment' | 'cancel';
  actionId: string;
  feedback: DdiActionFeedback;
  queuedAt: string;
}

interface OutboxFile {
  schema: 1;
  action?: ActionRecord;
  queue: QueuedFeedback[];
}

export interface FlushResult {
  sent: number;
  dropped: number;
  remaining: number;
  /** Set when something is left: try again after this long (backoff grows with each failed flush). */
  retryInMs?: number;
}

/** What became of a committed action, read from the lifecycle's state after the trial boot. */
export type ActionOutcome = { result: 'success' | 'failure'; reason: string } | undefined;

const FILE = 'ddi-feedback.json';

export class FeedbackOutbox {
  private doc: OutboxFile;
  private failures = 0;
  /** One change at a time: the loop, a cancel and a flush may overlap in the daemon. */
  private chain: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly file: string,
    doc: OutboxFile,
  ) {
    this.doc = doc;
  }

  static async open(layout: Layout): Promise<FeedbackOutbox> {
    const file = path.join(layout.stateDir, FILE);
    const doc = await readJsonIfExists<unknown>(file).catch((err: unknown) => {
      throw new UpgradeError('STATE', `${file} is unreadable: ${messageOf(err)}`, {
        cause: err,
        hint: `move it aside (mv ${file} ${file}.broken); the server then re-sends the action at the next poll`,
      });
    });
    return new FeedbackOutbox(file, validate(doc, file));
  }

  get action(): ActionRecord | undefined {
    return this.doc.action && { ...this.doc.action };
  }

  get queue(): readonly QueuedFeedback[] {
    return this.doc.queue;
  }

  /** Take on a new action (replacing a finished or cancelled one); queue its first feedback. */
  start(actionId: string, version: string, first?: DdiActionFeedback): Promise<void> {
    return this.change((doc) => {
      const open = doc.action;
      if (open && open.id !== actionId && !isDone(open.step)) {
        log.warn(`hawkBit: action ${open.id} (${open.version}) was left at step ${open.step}; action ${actionId} replaces it`);
      }
      doc.action = { id: actionId, version, step: 'received', updatedAt: now() };
      if (first) doc.queue.push(item('deployment', actionId, first));
    });
  }

  /** Record the step reached and queue its feedback in the same write: the file never says one without the other. */
  advance(step: ActionStep, message?: DdiActionFeedback): Promise<void> {
    return this.change((doc) => {
      const action = doc.action;
      if (!action) throw new UpgradeError('INTERNAL', 'no hawkBit action to advance', { hint: 'this is a bug in upgradectl; please report it' });
      action.step = step;
      action.updatedAt = now();
      if (message) doc.queue.push(item('deployment', action.id, message));
    });
  }

  /** Queue feedback on a cancel action (whose id is its own, not the deployment's). */
  queueCancelFeedback(cancelId: string, message: DdiActionFeedback): Promise<void> {
    return this.change((doc) => {
      doc.queue.push(item('cancel', cancelId, message));
    });
  }

  /**
   * After a boot: if the action was committed, read what the trial came to from the lifecycle's state
   * and queue the final feedback. Returns the outcome, or undefined while there is none yet.
   */
  async settle(state: State): Promise<ActionOutcome> {
    const action = this.doc.action;
    if (!action || action.step !== 'committed') return undefined;
    const outcome = actionOutcome(state, action.version);
    if (outcome) await this.advance('finished', feedback.closed(outcome.result, outcome.reason));
    return outcome;
  }

  /**
   * Send what is queued, oldest first, stopping at the first failure so that a `closed` never
   * overtakes the `proceeding` before it. A 410 (the action is gone) or another definitive 4xx drops
   * the message: sending the same bytes again cannot change the answer.
   */
  flush(client: DdiClient): Promise<FlushResult> {
    return this.serial(async () => {
      const result: FlushResult = { sent: 0, dropped: 0, remaining: 0 };
      while (this.doc.queue.length > 0) {
        const next = this.doc.queue[0]!;
        try {
          if (next.channel === 'cancel') await client.sendCancelFeedback(next.actionId, next.feedback);
          else await client.sendFeedback(next.actionId, next.feedback);
          result.sent += 1;
        } catch (err) {
          if (!isDdiError(err, 'gone') && !isDdiError(err, 'rejected')) {
            this.failures += 1;
            result.remaining = this.doc.queue.length;
            result.retryInMs = backoff(this.failures);
            log.warn(`hawkBit: feedback for action ${next.actionId} not delivered (${messageOf(err)}); ${result.remaining} queued, next try in ${Math.round(result.retryInMs / 1000)} s`);
            return result;
          }
          log.warn(`hawkBit: feedback for action ${next.actionId} dropped: ${messageOf(err)}`);
          result.dropped += 1;
        }
        this.doc.queue.shift();
        await this.save();
      }
      this.failures = 0;
      return result;
    });
  }

  private change(edit: (doc: OutboxFile) => void): Promise<void> {
    return this.serial(async () => {
      // Edit a copy: if the write fails, memory still matches the file.
      const copy = structuredClone(this.doc);
      edit(copy);
      await write(this.file, copy);
      this.doc = copy;
    });
  }

  private save(): Promise<void> {
    return write(this.file, this.doc);
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }
}

/** success: the trial became the default; failure: it was rolled back or marked bad (with the recorded reason). */
export function actionOutcome(state: State, version: string): ActionOutcome {
  const bad = failedBefore(state, version);
  if (bad) return { result: 'failure', reason: `${version} failed its trial boot: ${bad.reason}` };
  if (state.current === version && state.phase !== 'committed' && state.phase !== 'trying') {
    return { result: 'success', reason: `${version} booted, passed its health checks and is now the default image` };
  }
  return undefined;
}

function isDone(step: ActionStep): boolean {
  return step === 'finished' || step === 'cancelled';
}

function item(channel: QueuedFeedback['channel'], actionId: string, message: DdiActionFeedback): QueuedFeedback {
  return { channel, actionId, feedback: message, queuedAt: now() };
}

function now(): string {
  return new Date().toISOString();
}

/** 5 s doubling to 30 min, equal jitter: a server down for hours is not hammered, and is caught up soon after. */
function backoff(failures: number): number {
  const exp = Math.min(30 * 60_000, 5_000 * 2 ** Math.min(20, failures - 1));
  return Math.round(exp / 2 + Math.random() * (exp / 2));
}

async function write(file: string, doc: OutboxFile): Promise<void> {
  // 0700 directory, 0600 file: the messages name versions and failure reasons of this machine.
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  await writeFileDurable(file, `${JSON.stringify(doc, null, 1)}\n`, 0o600);
}

const STEPS: readonly ActionStep[] = ['received', 'preparing', 'prepared', 'committed', 'finished', 'cancelled'];

function validate(doc: unknown, file: string): OutboxFile {
  if (doc === undefined) return { schema: 1, queue: [] };
  const broken = (what: string) =>
    new UpgradeError('STATE', `${file}: ${what}`, { hint: `move it aside (mv ${file} ${file}.broken); the server then re-sends the action at the next poll` });
  const o = doc as Partial<OutboxFile> | null;
  if (o === null || typeof o !== 'object' || o.schema !== 1 || !Array.isArray(o.queue)) throw broken('not an upgradectl feedback outbox (schema 1)');
  const a = o.action;
  if (a !== undefined && (typeof a !== 'object' || a === null || typeof a.id !== 'string' || typeof a.version !== 'string' || !STEPS.includes(a.step))) throw broken('action is invalid');
  for (const q of o.queue) {
    if (!q || typeof q !== 'object' || (q.channel !== 'deployment' && q.channel !== 'cancel') || typeof q.actionId !== 'string' || typeof q.feedback !== 'object' || q.feedback === null) {
      throw broken('a queued message is invalid');
    }
  }
  return { schema: 1, action: a, queue: o.queue };
}
