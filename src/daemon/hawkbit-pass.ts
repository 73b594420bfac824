import type { Layout } from '../core/layout.js';
import { log } from '../core/log.js';
import { commit } from '../operations/commit.js';
import type { Config } from '../operations/config.js';
import type { PrepareResult } from '../operations/prepare.js';
import { loadState } from '../operations/state.js';
import {
  FeedbackOutbox,
  afterBoot,
  answerConfirmation,
  beforeCommit,
  commitFailed,
  handleCancel,
  machineAttributes,
  openDdiClient,
  prepareDeployment,
  readDeployment,
  type CheckinContext,
  type LocalWindow,
} from './checkin.js';

/**
 * One check-in with a hawkBit server (DDI): report how the last trial ended, poll, answer a cancel or
 * a configData request, and carry out a deployment — prepare through the artifact links (verified
 * with keys.d like any release), then commit when both the server (update, maintenance window) and
 * this machine's window allow. The server decides when; the signed manifest decides what.
 */
export interface CheckinResult {
  /** When to poll next: the server's polling sleep. */
  pollAgainMs: number;
  /** A commit the server allowed for later (our window): wake up then. */
  commitAt?: Date;
  summary: string;
}

export async function checkIn(layout: Layout, config: Config, opts: { signal: AbortSignal; window?: LocalWindow; activity: (text: string) => Promise<void> }): Promise<CheckinResult> {
  const client = await openDdiClient(layout, config);
  try {
    const ctx: CheckinContext = { layout, config, client, outbox: await FeedbackOutbox.open(layout) };
    // First what the server is owed from before the reboot: the trial's outcome.
    const settled = await afterBoot(ctx);
    if (settled) log.info(`hawkBit: reported the end of action ${ctx.outbox.action?.id ?? ''}: ${JSON.stringify(settled)}`);
    let answer = await client.poll();
    if (answer.configData) await client.putConfigData(await machineAttributes(layout));
    if (answer.cancelAction) {
      const d = await handleCancel(ctx, answer.cancelAction);
      return { pollAgainMs: answer.sleepMs, summary: `cancel of action ${d.stopId} ${d.accept ? 'accepted' : 'rejected'}: ${d.why}` };
    }
    if (answer.confirmationBase) {
      const c = await answerConfirmation(ctx, answer.confirmationBase);
      if (!c.confirmed) return { pollAgainMs: answer.sleepMs, summary: c.summary };
      // Confirmed: the server now offers the action as a deployment. Ask at once rather than after a
      // whole polling sleep (minutes, on a fleet's server).
      answer = await client.poll();
    }
    if (!answer.deploymentBase) return { pollAgainMs: answer.sleepMs, summary: 'the server has nothing for this machine' };
    const order = await readDeployment(ctx, answer.deploymentBase, new Date(), opts.window);
    if (!order) return { pollAgainMs: answer.sleepMs, summary: 'the deployment is not an upgradectl release; reported as failed' };
    const { release, plan } = order;
    const mine = ctx.outbox.action;
    if (mine?.id === release.actionId && (mine.step === 'finished' || mine.step === 'cancelled')) {
      // The server still lists an action this machine has ended: its result is queued (the outbox
      // re-sends it until the server has it), and it must not be carried out twice.
      return { pollAgainMs: answer.sleepMs, summary: `action ${release.actionId} is already ${mine.step} here; its result is reported` };
    }
    let prepared: PrepareResult | undefined;
    if (plan.prepare) {
      await opts.activity(`hawkBit action ${release.actionId}: preparing ${release.version} (${plan.why})`);
      prepared = await prepareDeployment(ctx, order, {
        policy: { allowDowngrade: config.prepare.allowDowngrade, allowUnsigned: config.prepare.allowUnsigned, allowExpired: false, force: false },
        signal: opts.signal,
      });
    }
    const state = await loadState(layout);
    const ready = state.phase === 'prepared' && state.next === release.version;
    if (ready && plan.commitAt && plan.commitAt.getTime() <= Date.now() && !opts.signal.aborted) {
      await opts.activity(`hawkBit action ${release.actionId}: committing ${release.version}; rebooting into its trial`);
      await beforeCommit(ctx);
      try {
        await commit(layout, config, { reboot: true });
      } catch (err) {
        // Once the trial is armed the action is not over, whatever failed after it (the reboot itself):
        // the next boot's reconciliation decides, and afterBoot reports that.
        if ((await loadState(layout)).phase !== 'committed') await commitFailed(ctx, err);
        throw err;
      }
      return { pollAgainMs: answer.sleepMs, summary: `committed ${release.version} (action ${release.actionId}); rebooting into its trial` };
    }
    const what = prepared?.action === 'prepared' ? `prepared ${release.version}` : ready ? `${release.version} is prepared` : `${release.version} not prepared yet`;
    return { pollAgainMs: answer.sleepMs, commitAt: ready ? plan.commitAt : undefined, summary: `action ${release.actionId}: ${what}; ${plan.why}` };
  } finally {
    await client.close();
  }
}
