import { messageOf, isUpgradeError, type ErrorCode } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { log } from '../core/log.js';
import type { Config } from '../operations/config.js';
import type { OfferPolicy } from '../operations/offer.js';
import { prepareRelease, type PrepareResult } from '../operations/prepare.js';
import { loadState } from '../operations/state.js';
import { rollback } from '../operations/rollback.js';
import { Progress } from '../release/progress.js';
import type { DdiClient } from './ddi/client.js';
import { feedback } from './ddi/feedback.js';
import { planFromDeployment, type DeploymentPlan, type LocalWindow } from './ddi/plan.js';
import { releaseOf, type DdiRelease } from './ddi/release.js';
import { DdiSource } from './ddi/source.js';
import type { DdiDeploymentBase } from './ddi/types.js';
import type { ActionOutcome, ActionRecord, FeedbackOutbox } from './feedback-outbox.js';

/**
 * The check-in steps the daemon's loop calls, each a small story over the DDI client, the outbox and
 * the same operations the CLI runs: poll (client) → `readDeployment` → `prepareDeployment` →
 * (window) `beforeCommit` + commit → reboot → `afterBoot`. Feedback is always queued in the outbox
 * first and then flushed, so nothing the server should hear is lost to a crash or a reboot.
 */
// The rest of the narrow API the loop needs, in one place.
export { openDdiClient } from './ddi/connect.js';
export type { DdiClient, PollAnswer } from './ddi/client.js';
export { DdiError, isDdiError, type DdiFailure } from './ddi/errors.js';
export { PollTimer } from './ddi/polling.js';
export { planFromDeployment, type DeploymentPlan, type LocalWindow } from './ddi/plan.js';
export { machineAttributes } from './ddi/config-data.js';
export { FeedbackOutbox, actionOutcome, type ActionOutcome, type ActionRecord } from './feedback-outbox.js';

export interface CheckinContext {
  layout: Layout;
  config: Config;
  client: DdiClient;
  outbox: FeedbackOutbox;
}

export interface DeploymentOrder {
  base: DdiDeploymentBase;
  release: DdiRelease;
  plan: DeploymentPlan;
}

/**
 * Fetch and read a deploymentBase link from a poll. A deployment that is not one upgradectl release
 * is answered with a final `failure` (the server would otherwise wait forever); a foreign link or a
 * server error throws (logged, nothing done, the next poll tries again).
 */
export async function readDeployment(ctx: CheckinContext, href: URL, now: Date, localWindow?: LocalWindow): Promise<DeploymentOrder | undefined> {
  const base = await ctx.client.deployment(href);
  let release: DdiRelease;
  try {
    release = releaseOf(base, ctx.client.scope);
  } catch (err) {
    if (!isUpgradeError(err, 'MANIFEST')) throw err;
    log.warn(`hawkBit: action ${base.id}: ${err.message}`);
    await ctx.outbox.start(base.id, 'unknown');
    await ctx.outbox.advance('finished', feedback.closed('failure', err.message));
    await ctx.outbox.flush(ctx.client);
    return undefined;
  }
  return { base, release, plan: planFromDeployment(base, now, localWindow) };
}

/** Failures worth another try at the next poll, with the action kept open; any other ends it as failed. */
const RETRYABLE: ReadonlySet<ErrorCode> = new Set(['NETWORK', 'INTERRUPTED', 'LOCKED']);

/**
 * Prepare the deployment's release through its artifact links, verified against keys.d exactly as
 * from S3, reporting progress (`proceeding`, in quarters) and `downloaded`. Idempotent like prepare:
 * a release already staged is not fetched again.
 */
export async function prepareDeployment(ctx: CheckinContext, order: DeploymentOrder, opts: { policy: OfferPolicy; signal?: AbortSignal }): Promise<PrepareResult> {
  const { release } = order;
  const { outbox, client, config } = ctx;
  // Polled again while waiting for the window: prepare finds the image in place; the server heard `downloaded` already.
  const reported = outbox.action?.id === release.actionId && outbox.action.step === 'prepared';
  if (outbox.action?.id !== release.actionId) await outbox.start(release.actionId, release.version, feedback.proceeding(`upgradectl received ${release.version}`));
  if (!reported) await outbox.advance('preparing');
  const source = new DdiSource(client, release, { retries: config.prepare.retries, stallTimeoutMs: config.prepare.stallTimeout * 1000 });
  let quarters = 0;
  const progress = (total: number) => {
    const p = new Progress(`prepare ${release.version}`, total);
    p.onChange(() => {
      const quarter = Math.floor(p.fraction * 4);
      if (quarter > quarters && quarter < 4) {
        quarters = quarter;
        // Not awaited: the download must not wait for the server. The outbox keeps the order.
        outbox
          .advance('preparing', feedback.proceeding(`downloading ${release.version}: ${quarter * 25}%`, { cnt: quarter, of: 4 }))
          .then(() => outbox.flush(client))
          .catch((err: unknown) => log.warn(`hawkBit: progress of ${release.version} not recorded: ${messageOf(err)}`));
      }
    });
    return p;
  };
  try {
    const result = await prepareRelease({ layout: ctx.layout, config, version: release.version, policy: opts.policy, source, progress, signal: opts.signal });
    if (result.action === 'nothing-to-do') await outbox.advance('finished', feedback.closed('success', result.reason));
    else if (!reported) await outbox.advance('prepared', feedback.downloaded(`${release.version} is staged and verified`));
    return result;
  } catch (err) {
    const code = isUpgradeError(err) ? err.code : 'INTERNAL';
    if (RETRYABLE.has(code)) {
      await outbox.advance('received', feedback.proceeding(`download of ${release.version} interrupted, will retry: ${messageOf(err)}`));
    } else {
      await outbox.advance('finished', feedback.closed('failure', `prepare of ${release.version} failed: ${messageOf(err)}`));
    }
    throw err;
  } finally {
    await outbox.flush(client);
  }
}

/**
 * Call right before `commit()`: the commit reboots, and the daemon that wakes up on the trial image
 * must find the action, marked committed, to report how the trial went.
 */
export async function beforeCommit(ctx: CheckinContext): Promise<void> {
  const action = ctx.outbox.action;
  if (!action) return;
  await ctx.outbox.advance('committed', feedback.proceeding(`rebooting into the trial of ${action.version}`));
  await ctx.outbox.flush(ctx.client).catch(() => undefined);
}

/** Call when `commit()` failed before rebooting: the action ends as failed, with the reason. */
export async function commitFailed(ctx: CheckinContext, err: unknown): Promise<void> {
  if (!ctx.outbox.action) return;
  await ctx.outbox.advance('finished', feedback.closed('failure', `commit failed: ${messageOf(err)}`));
  await ctx.outbox.flush(ctx.client);
}

/**
 * Call after each boot's reconciliation (and after `confirm`): a committed action whose trial was
 * confirmed or rolled back gets its final `success`/`failure`, and everything queued is sent.
 */
export async function afterBoot(ctx: CheckinContext): Promise<ActionOutcome> {
  const outcome = await ctx.outbox.settle(await loadState(ctx.layout));
  await ctx.outbox.flush(ctx.client);
  return outcome;
}

export type CancelDecision = { accept: true; undo: boolean; why: string } | { accept: false; why: string };

/**
 * Whether to honour a cancel of action `stopId`: a prepared or committed upgrade is cancelled (undone
 * by the rollback operation); a trial that is already running, or an action already finished, is not
 * (its real outcome will be reported instead).
 */
export function cancelDecision(stopId: string, action: ActionRecord | undefined, state: { phase: string; next?: string }): CancelDecision {
  if (!action || action.id !== stopId) return { accept: true, undo: false, why: `action ${stopId} was not started on this machine; nothing to undo` };
  if (action.step === 'finished' || action.step === 'cancelled') return { accept: false, why: `action ${stopId} is already ${action.step} here` };
  if (state.next === action.version && state.phase === 'trying') {
    return { accept: false, why: `${action.version} is in its trial boot; its outcome will be reported` };
  }
  if (state.next === action.version && (state.phase === 'prepared' || state.phase === 'committed')) {
    return { accept: true, undo: true, why: `the ${state.phase} upgrade to ${action.version} was cancelled` };
  }
  return { accept: true, undo: false, why: `the upgrade to ${action.version} was cancelled before it was prepared` };
}

/**
 * Handle a poll's cancelAction link. The caller aborts a prepare in progress first (its AbortSignal).
 * Queues and sends the cancel feedback; returns the decision.
 */
export async function handleCancel(ctx: CheckinContext, href: URL): Promise<CancelDecision & { stopId: string }> {
  const cancel = await ctx.client.cancel(href);
  const stopId = cancel.cancelAction.stopId;
  const action = ctx.outbox.action;
  const decision = cancelDecision(stopId, action, await loadState(ctx.layout));
  log.info(`hawkBit: cancel of action ${stopId}: ${decision.accept ? 'accepted' : 'rejected'}: ${decision.why}`);
  if (decision.accept) {
    if (decision.undo) await rollback(ctx.layout, ctx.config, { reboot: false });
    // The cancel feedback closes the action on the server; no deployment feedback follows it.
    if (action?.id === stopId) await ctx.outbox.advance('cancelled');
    await ctx.outbox.queueCancelFeedback(cancel.id, feedback.closed('success', decision.why));
  } else {
    await ctx.outbox.queueCancelFeedback(cancel.id, feedback.rejected(decision.why));
  }
  await ctx.outbox.flush(ctx.client);
  return { ...decision, stopId };
}

export interface ConfirmationAnswer {
  actionId: string;
  confirmed: boolean;
  summary: string;
}

/**
 * Answer a poll's confirmationBase link (hawkBit's confirmation flow: the action waits for this
 * machine's consent before it is offered as a deployment). With `[hawkbit] confirm = auto` it is
 * confirmed; a deployment that then turns out not to be one upgradectl release is closed as failed
 * with the reason by readDeployment, as without the flow (a denial would leave it pending, and asked
 * again at every poll). With `server` nothing is sent: the action waits until it is confirmed on the
 * server's side. Consent is not trust: the signed manifest and keys.d still decide what is installed.
 */
export async function answerConfirmation(ctx: CheckinContext, href: URL): Promise<ConfirmationAnswer> {
  const base = await ctx.client.confirmation(href);
  const version = base.deployment.chunks.map((c) => c.version).join(', ');
  if (ctx.config.hawkbit.confirm === 'server') {
    const summary = `action ${base.id} (${version}) waits for confirmation; [hawkbit] confirm = server leaves it to the server (Management API: confirm it, or turn on the target's auto-confirm)`;
    log.info(`hawkBit: ${summary}`);
    return { actionId: base.id, confirmed: false, summary };
  }
  await ctx.client.sendConfirmation(base.id, {
    confirmation: 'confirmed',
    details: [`upgradectl on ${ctx.client.controllerId} confirms action ${base.id} ([hawkbit] confirm = auto); the signed manifest decides what is installed`],
  });
  log.info(`hawkBit: confirmed action ${base.id} (${version})`);
  return { actionId: base.id, confirmed: true, summary: `action ${base.id} (${version}) confirmed` };
}
