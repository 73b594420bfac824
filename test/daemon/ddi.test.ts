import t from 'tap';
import { randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { Writable } from 'node:stream';
import winston from 'winston';
import path from 'node:path';
import { Layout } from '../../src/core/layout.js';
import { log } from '../../src/core/log.js';
import { parseConfig, type Config } from '../../src/operations/config.js';
import { loadState, saveState } from '../../src/operations/state.js';
import type { OfferPolicy } from '../../src/operations/offer.js';
import { afterBoot, beforeCommit, handleCancel, prepareDeployment, readDeployment, type CheckinContext } from '../../src/daemon/checkin.js';
import { checkIn } from '../../src/daemon/hawkbit-pass.js';
import { openDdiClient } from '../../src/daemon/ddi/connect.js';
import { machineAttributes } from '../../src/daemon/ddi/config-data.js';
import { isDdiError } from '../../src/daemon/ddi/errors.js';
import { feedback } from '../../src/daemon/ddi/feedback.js';
import { planFromDeployment } from '../../src/daemon/ddi/plan.js';
import { PollTimer, parseSleep, sleepFrom } from '../../src/daemon/ddi/polling.js';
import { releaseOf } from '../../src/daemon/ddi/release.js';
import type { DdiDeploymentBase } from '../../src/daemon/ddi/types.js';
import { FeedbackOutbox } from '../../src/daemon/feedback-outbox.js';
import { startDdiServer, type TestDdiServer } from '../helpers/ddi-server.js';
import { upgradectl } from '../helpers/cli.js';
import { makeMachine, makePublisher, makeTree, manifestOf, sha256File, type Publisher } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';
import { makeTestCertificate } from '../helpers/tls.js';

const POLICY: OfferPolicy = { allowUnsigned: false, allowExpired: false, allowDowngrade: false, force: false };
const CONTROLLER = 'machine-0001';
const TOKEN = 's3cr3t-target-token';
const FAST = '[prepare]\nretries = 2\nstall_timeout = 5\n';

/** Log lines, to assert that refused instructions are logged. */
function captureLog(t: { teardown: (fn: () => void) => void }): string[] {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(chunk.toString());
      done();
    },
  });
  const transport = new winston.transports.Stream({ stream: sink });
  log.add(transport);
  t.teardown(() => void log.remove(transport));
  return lines;
}

/** A machine root trusting the publisher, configured for the DDI server, with a root-only token file. */
function machine(dir: string, name: string, server: { url: string }, pub: Publisher | undefined, extra = '', token = TOKEN) {
  const hawkbit = `[hawkbit]\nurl = ${server.url}\ntoken_file = /etc/upgradectl/hawkbit.token\n${extra}`;
  // [source] points nowhere: everything must come through the deployment's artifacts.
  const root = makeMachine(dir, name, 'file:///nonexistent', pub?.pub, `${FAST}${hawkbit}`);
  writeFileSync(path.join(root, 'etc/machine-id'), `${CONTROLLER}\n`);
  const tokenFile = path.join(root, 'etc/upgradectl/hawkbit.token');
  writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  chmodSync(tokenFile, 0o600);
  const layout = new Layout(root);
  const config = parseConfig(readFileSync(layout.configFile, 'utf8'), layout.configFile);
  return { root, layout, config };
}

async function context(layout: Layout, config: Config): Promise<CheckinContext> {
  const client = await openDdiClient(layout, config, { timeoutMs: 5_000 });
  const outbox = await FeedbackOutbox.open(layout);
  return { layout, config, client, outbox };
}

const executions = (server: TestDdiServer, resource = 'deploymentBase') =>
  server.feedback.filter((f) => f.resource === resource).map((f) => `${f.body.status.execution}/${f.body.status.result.finished}`);

t.test('sleep parsing, jitter and backoff', async (t) => {
  t.equal(parseSleep('00:05:00'), 300_000);
  t.equal(parseSleep('12:00:01'), 43_201_000);
  t.equal(parseSleep('36:00:00'), 129_600_000, 'hours may exceed a day');
  for (const bad of ['5:00', '00:60:00', 'soon', '', '-1:00:00', '00:00:00:00']) t.equal(parseSleep(bad), undefined, bad);
  t.equal(sleepFrom('00:00:00'), 1_000, 'never a busy loop');
  t.equal(sleepFrom(undefined), 300_000, 'hawkBit default');

  const lo = new PollTimer({ random: () => 0 });
  const hi = new PollTimer({ random: () => 0.999 });
  t.equal(lo.afterSuccess(60_000), 60_000);
  t.ok(hi.afterSuccess(60_000) <= 66_000 && hi.afterSuccess(60_000) > 65_000, 'jitter adds up to 10%');
  const timer = new PollTimer({ random: () => 0.5, backoffBaseMs: 1_000, backoffMaxMs: 8_000 });
  timer.afterSuccess(2_000);
  const waits = [1, 2, 3, 4, 5, 6].map(() => timer.afterFailure(new Error('ECONNREFUSED')));
  t.same(waits, [750, 1500, 3000, 6000, 6000, 6000], 'exponential, equal jitter, capped');
  t.equal(timer.afterSuccess(2_000), 2_100, 'success resets the backoff');
  t.equal(timer.consecutiveFailures, 0);
  // The daemon's passes are separate processes: the count of failures so far comes from service.json.
  const resumed = new PollTimer({ random: () => 0.5, backoffBaseMs: 1_000, backoffMaxMs: 8_000, failures: 3 });
  t.equal(resumed.afterFailure(new Error('ECONNREFUSED')), 6000, 'a timer told of 3 failures backs off as at the 4th');
});

t.test('planFromDeployment: download/update/maintenanceWindow to prepare and commit', async (t) => {
  const now = new Date('2026-12-01T10:00:00Z');
  const later = new Date('2026-12-02T02:00:00Z');
  const window = { earliest: (n: Date) => (n < later ? later : n) };
  const dep = (d: Partial<DdiDeploymentBase['deployment']>): DdiDeploymentBase => ({ id: '5', deployment: { chunks: [], ...d } });
  const cases: Array<[string, Partial<DdiDeploymentBase['deployment']>, { prepare: string | false; commitAt?: Date; downloadOnly: boolean }]> = [
    ['forced/forced: now, ignoring the local window', { download: 'forced', update: 'forced' }, { prepare: 'now', commitAt: now, downloadOnly: false }],
    ['attempt/attempt: background, commit in the local window', { download: 'attempt', update: 'attempt' }, { prepare: 'background', commitAt: later, downloadOnly: false }],
    ['forced/skip without a window: download only', { download: 'forced', update: 'skip' }, { prepare: 'now', commitAt: undefined, downloadOnly: true }],
    ['skip: nothing yet', { download: 'skip', update: 'skip' }, { prepare: false, commitAt: undefined, downloadOnly: false }],
    ['window unavailable holds even a forced update', { download: 'forced', update: 'forced', maintenanceWindow: 'unavailable' }, { prepare: 'now', commitAt: undefined, downloadOnly: false }],
    ['hawkBit sends update=skip while unavailable: not download-only', { download: 'attempt', update: 'skip', maintenanceWindow: 'unavailable' }, { prepare: 'background', commitAt: undefined, downloadOnly: false }],
    ['window available: commit', { download: 'forced', update: 'forced', maintenanceWindow: 'available' }, { prepare: 'now', commitAt: now, downloadOnly: false }],
  ];
  for (const [name, d, want] of cases) {
    const plan = planFromDeployment(dep(d), now, window);
    t.match({ prepare: plan.prepare, downloadOnly: plan.downloadOnly }, { prepare: want.prepare, downloadOnly: want.downloadOnly }, name);
    t.equal(plan.commitAt?.toISOString(), want.commitAt?.toISOString(), `${name}: commit time`);
    t.type(plan.why, 'string');
  }
  t.equal(planFromDeployment(dep({ download: 'attempt', update: 'attempt' }), now).commitAt?.getTime(), now.getTime(), 'no local window: commit once prepared');
});

t.test('credentials: a token file readable by others is refused; none at all is refused', async (t) => {
  const dir = t.testdir();
  const { layout, config, root } = machine(dir, 'm', { url: 'http://127.0.0.1:9' }, undefined);
  chmodSync(path.join(root, 'etc/upgradectl/hawkbit.token'), 0o640);
  await t.rejects(openDdiClient(layout, config), { code: 'CONFIG', message: /hawkbit\.token .*readable by others \(mode 0640/, hint: /chmod 600/ });
  const none = parseConfig(`[hawkbit]\nurl = https://hawkbit.example.com\n`);
  await t.rejects(openDdiClient(layout, none), { code: 'CONFIG', message: /names no credentials/ });
  const plain = parseConfig(`[hawkbit]\nurl = http://hawkbit.example.com\ntoken_file = /etc/upgradectl/hawkbit.token\n`);
  chmodSync(path.join(root, 'etc/upgradectl/hawkbit.token'), 0o600);
  await t.rejects(openDdiClient(layout, plain), { message: /refusing http:/ });
  t.throws(() => parseConfig('[hawkbit]\ntoken_kind = bearer\n'), { code: 'CONFIG', message: /token_kind = bearer is not valid/ });
});

t.test('against a DDI server with real releases', { skip: skipUnless({ commands: ['mke2fs', 'debugfs'] }) }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  const image = await pub.publish('2.0');
  const server = await startDdiServer({ controllerId: CONTROLLER, token: TOKEN, sleep: '00:00:02' });
  t.teardown(() => server.close());
  const reset = () => {
    server.action = undefined;
    server.cancel = undefined;
    server.switches = { gone: new Set() };
    server.feedback.splice(0);
    server.awaitingConfirmation.clear();
    server.confirmations.splice(0);
  };
  /** A fresh machine and its check-in context against the server, closed at the end of the subtest. */
  const fresh = async (t: { teardown: (fn: () => unknown) => void }, name: string, token = TOKEN) => {
    reset();
    const m = machine(dir, name, server, pub, '', token);
    const ctx = await context(m.layout, m.config);
    t.teardown(() => ctx.client.close());
    return { ...m, ctx };
  };

  await t.test('a deployment with the index and zstd files: a machine holding an earlier image fetches only what it lacks', async (t) => {
    const { root, ctx } = await fresh(t, 'delta');
    // 1.0 on the machine, 2.5 = the same tree after a package upgrade (one file rewritten, one added).
    const tree = makeTree(dir, 'ddi-delta', 12);
    const build = async (out: string) => {
      const b = await upgradectl(['image', 'build', tree, out, '--size', '48M']);
      if (b.code !== 0) throw new Error(b.stderr);
      return out;
    };
    const old = await build(path.join(dir, 'ddi-1.0.img'));
    writeFileSync(path.join(tree, 'etc/os-release'), 'VERSION=2.5\n');
    writeFileSync(path.join(tree, 'usr/lib/added.bin'), randomBytes(300 << 10));
    const next = await pub.publish('2.5', [], await build(path.join(dir, 'ddi-2.5.img')));
    copyFileSync(old, path.join(root, 'images/1.0.img'));
    mkdirSync(path.join(root, 'proc'), { recursive: true });
    writeFileSync(path.join(root, 'proc/cmdline'), 'root=UUID=0 upgradectl.loop=/images/1.0.img\n');

    server.action = { id: '15', version: '2.5', releases: pub.releases, download: 'forced', update: 'forced', deltaFiles: true };
    const order = await readDeployment(ctx, (await ctx.client.poll()).deploymentBase!, new Date());
    t.equal((await prepareDeployment(ctx, order!, { policy: POLICY })).action, 'prepared');
    t.equal(sha256File(path.join(root, 'images/2.5.img')), sha256File(next), 'the published image, byte for byte');
    t.ok(server.count('/artifacts/image.idx') === 1 && server.count('/artifacts/image.zidx') === 1, 'both indexes through their artifact links');
    t.ok(server.count('/artifacts/image.zst') >= 1, 'missing blocks from the zstd artifact');
    const payload = statSync(path.join(pub.releases, 'releases/2.5/image.lz4')).size;
    t.ok(server.count('/artifacts/image.lz4') < manifestOf(pub.releases, '2.5').payload.frames.length / 4, `few payload requests (${server.count('/artifacts/image.lz4')}; ${payload} bytes in all)`);
  });

  await t.test('poll → deployment → prepare through the DDI source → downloaded; configData', async (t) => {
    const { layout, config, root, ctx } = await fresh(t, 'happy');
    server.action = { id: '11', version: '2.0', releases: pub.releases, download: 'forced', update: 'forced' };
    server.wantConfigData = true;

    const answer = await ctx.client.poll();
    t.equal(answer.sleepMs, 2_000);
    t.ok(answer.deploymentBase && answer.configData);
    await ctx.client.putConfigData(await machineAttributes(layout));
    t.match(server.configData[0], { mode: 'merge', data: { machine_id: CONTROLLER, upgradectl_version: /^\d+\.\d+/, images_free_bytes: /^\d+$/ } });

    const order = await readDeployment(ctx, answer.deploymentBase!, new Date());
    t.ok(order);
    t.equal(order!.release.version, '2.0');
    t.match(order!.plan, { prepare: 'now', downloadOnly: false });
    const result = await prepareDeployment(ctx, order!, { policy: POLICY });
    t.equal(result.action, 'prepared');
    t.equal(sha256File(path.join(root, 'images/2.0.img')), sha256File(image), 'the published image, byte for byte');
    t.ok(server.count('/artifacts/image.lz4') >= 1, 'the payload came through the artifact link');
    t.equal(server.requests.filter((r) => r.path.includes('/artifacts/')).every((r) => r.authorization === `TargetToken ${TOKEN}`), true, 'downloads carry the token');
    const seen = executions(server);
    t.equal(seen[0], 'proceeding/none');
    t.equal(seen.at(-1), 'downloaded/none', 'downloaded is the last word before the commit');
    t.match(ctx.outbox.action, { id: '11', version: '2.0', step: 'prepared' });
    t.equal(ctx.outbox.queue.length, 0, 'everything was delivered');
    t.equal(statSync(ctx.outbox.file).mode & 0o777, 0o600, 'the outbox is root-only');

    // Polled again while waiting for the commit window: nothing is fetched or reported twice.
    const sent = server.feedback.length;
    const payloadGets = server.count('/artifacts/image.lz4');
    const again = await readDeployment(ctx, (await ctx.client.poll()).deploymentBase!, new Date());
    t.equal((await prepareDeployment(ctx, again!, { policy: POLICY })).action, 'already-prepared');
    t.equal(server.feedback.length, sent, 'no second downloaded');
    t.equal(server.count('/artifacts/image.lz4'), payloadGets, 'no payload fetched again');

    await t.test('the trial is confirmed after the reboot: a new daemon reports success from the outbox', async (t) => {
      await beforeCommit(ctx);
      t.equal(executions(server).at(-1), 'proceeding/none');
      // The reboot: the daemon dies; the trial boots and is confirmed (the lifecycle's state says so).
      await ctx.client.close();
      const state = await loadState(layout);
      await saveState(layout, { ...state, phase: 'idle', current: '2.0', next: undefined });
      const restarted = await context(layout, config);
      t.teardown(() => restarted.client.close());
      t.match(restarted.outbox.action, { id: '11', step: 'committed' });
      const outcome = await afterBoot(restarted);
      t.match(outcome, { result: 'success' });
      const last = server.feedback.at(-1)!;
      t.match(last, { resource: 'deploymentBase', actionId: '11', body: { status: { execution: 'closed', result: { finished: 'success' }, details: [/2\.0 booted/] } } });
      t.equal(await afterBoot(restarted), undefined, 'reported once');
    });
  });

  await t.test('the payload download survives a dropped connection and a 503: Range resumes it', async (t) => {
    const { root, ctx } = await fresh(t, 'resume');
    server.action = { id: '21', version: '2.0', releases: pub.releases };
    server.switches.artifactFaults = [
      { kind: 'drop', afterBytes: 5000, filename: 'image.lz4', times: 1 },
      { kind: 'status', status: 503, filename: 'image.lz4', times: 1 },
      { kind: 'ignore-range', filename: 'image.lz4', times: 1 },
    ];
    const order = await readDeployment(ctx, (await ctx.client.poll()).deploymentBase!, new Date());
    t.equal((await prepareDeployment(ctx, order!, { policy: POLICY })).action, 'prepared');
    t.equal(sha256File(path.join(root, 'images/2.0.img')), sha256File(image));
    const payload = server.requests.filter((r) => r.path.endsWith('/artifacts/image.lz4'));
    t.ok(payload.some((r) => r.status === 503), 'the 503 was seen');
    t.ok(payload.every((r) => r.range === undefined || /^bytes=\d+-\d*$/.test(r.range)), 'asked by Range');
    t.ok(payload.filter((r) => r.range !== undefined).length >= 2, 'ranges were requested');
  });

  await t.test('an artifact that is not what the server announced is refused as a transport error', async (t) => {
    const { ctx } = await fresh(t, 'mismatch');
    server.action = { id: '22', version: '2.0', releases: pub.releases };
    const order = await readDeployment(ctx, (await ctx.client.poll()).deploymentBase!, new Date());
    const ref = order!.release.artifacts.get('manifest.json')!;
    ref.sha256 = '0'.repeat(64);
    await t.rejects(prepareDeployment(ctx, order!, { policy: POLICY }), { code: 'CORRUPT', message: /manifest\.json .*SHA-256 is not the one the server announced/ });
    t.match(server.feedback.at(-1), { actionId: '22', body: { status: { execution: 'closed', result: { finished: 'failure' } } } });
  });

  await t.test('wrong token: refused, logged, nothing done', async (t) => {
    const lines = captureLog(t);
    const { root, ctx } = await fresh(t, 'wrong-token', 'not-the-token');
    server.action = { id: '12', version: '2.0', releases: pub.releases };
    const before = server.count('/deploymentBase');
    await t.rejects(ctx.client.poll(), { kind: 'unauthorized', message: /HTTP 401/ });
    t.equal(server.count('/deploymentBase'), before, 'no deployment fetched');
    t.equal(ctx.outbox.action, undefined);
    t.same(readdirImages(root), [], 'nothing prepared');
    t.ok(lines.some((l) => /credentials refused/.test(l)), 'logged');
  });

  await t.test('429 then success: Retry-After is honoured', async (t) => {
    const { ctx } = await fresh(t, 'busy');
    server.switches.tooMany = { times: 1, retryAfter: '3' };
    const timer = new PollTimer({ random: () => 0 });
    const err = await ctx.client.poll().catch((e: unknown) => e);
    t.ok(isDdiError(err, 'rate-limited'));
    t.equal((err as { retryAfterMs?: number }).retryAfterMs, 3_000);
    t.equal(timer.afterFailure(err), 3_000, 'waits as told');
    const ok = await ctx.client.poll();
    t.equal(timer.afterSuccess(ok.sleepMs), 2_000);
  });

  await t.test('410: a gone action is not prepared, and its queued feedback is dropped', async (t) => {
    const { ctx } = await fresh(t, 'gone');
    server.action = { id: '13', version: '2.0', releases: pub.releases };
    const answer = await ctx.client.poll();
    await ctx.outbox.start('13', '2.0', feedback.proceeding('received'));
    server.switches.gone.add('13');
    await t.rejects(ctx.client.deployment(answer.deploymentBase!), { name: 'DdiError', kind: 'gone' });
    const flushed = await ctx.outbox.flush(ctx.client);
    t.match(flushed, { sent: 0, dropped: 1, remaining: 0 });
    t.equal(ctx.outbox.queue.length, 0);
  });

  await t.test('outage and recovery: backoff, feedback kept and re-sent by a new process after a restart', async (t) => {
    reset();
    const { layout, config } = machine(dir, 'outage', server, pub);
    const ctx = await context(layout, config);
    server.switches.outage = true;
    const timer = new PollTimer({ random: () => 0, backoffBaseMs: 1_000 });
    const waits: number[] = [];
    for (let i = 0; i < 3; i++) {
      const err = await ctx.client.poll().catch((e: unknown) => e);
      t.ok(isDdiError(err, 'unavailable'), 'the server is down');
      waits.push(timer.afterFailure(err));
    }
    t.same(waits, [500, 1000, 2000], 'backs off');
    await ctx.outbox.start('14', '2.0', feedback.proceeding('received 2.0'));
    await ctx.outbox.advance('committed', feedback.proceeding('rebooting into the trial of 2.0'));
    const first = await ctx.outbox.flush(ctx.client);
    t.match(first, { sent: 0, remaining: 2 });
    t.ok(first.retryInMs! >= 2_500);
    await ctx.client.close();

    // Restart: a new client and outbox read the file; the trial was rolled back meanwhile.
    const state = await loadState(layout);
    await saveState(layout, { ...state, bad: Object.assign(Object.create(null), { '2.0': { reason: 'health check failed: sshd', at: new Date().toISOString() } }) });
    server.switches.outage = false;
    const restarted = await context(layout, config);
    t.teardown(() => restarted.client.close());
    t.equal(restarted.outbox.queue.length, 2);
    t.equal((await restarted.client.poll()).sleepMs, 2_000, 'recovered');
    t.match(await afterBoot(restarted), { result: 'failure', reason: /sshd/ });
    t.same(executions(server), ['proceeding/none', 'proceeding/none', 'closed/failure'], 'in order, none lost');
    t.match(server.feedback.at(-1)!.body.status.details, [/failed its trial boot: health check failed: sshd/]);
  });

  await t.test('links to another origin or another controller: refused, logged, nothing fetched', async (t) => {
    const lines = captureLog(t);
    const { root, ctx } = await fresh(t, 'foreign');
    server.action = { id: '15', version: '2.0', releases: pub.releases };

    server.switches.foreign = 'deployment-origin';
    t.equal((await ctx.client.poll()).deploymentBase, undefined, 'a deploymentBase on another origin is dropped');
    server.switches.foreign = 'deployment-controller';
    t.equal((await ctx.client.poll()).deploymentBase, undefined, 'an instruction for another controller id is dropped');
    await t.rejects(ctx.client.deployment(`${server.url}/DEFAULT/controller/v1/someone-else/deploymentBase/15`), { name: 'DdiError', kind: 'refused' });
    t.ok(lines.some((l) => /points to http:\/\/localhost/.test(l)));
    t.ok(lines.some((l) => /not a resource of controller machine-0001/.test(l)));

    server.switches.foreign = 'artifact-origin';
    const answer = await ctx.client.poll();
    const before = server.count('/artifacts/');
    await t.rejects(readDeployment(ctx, answer.deploymentBase!, new Date()), { name: 'DdiError', kind: 'refused' });
    server.switches.foreign = 'artifact-controller';
    const base = await ctx.client.deployment(answer.deploymentBase!);
    t.throws(() => releaseOf(base, ctx.client.scope), /does not name controller machine-0001/);
    t.equal(server.count('/artifacts/'), before, 'no artifact was requested');
    t.equal(ctx.outbox.action, undefined, 'no action taken on');
    t.same(readdirImages(root), []);
  });

  await t.test('maintenance window unavailable, then available; a payload missing ends the action as failed', async (t) => {
    const { ctx } = await fresh(t, 'window');
    server.action = { id: '16', version: '2.0', releases: pub.releases, download: 'forced', update: 'skip', maintenanceWindow: 'unavailable' };
    let order = await readDeployment(ctx, (await ctx.client.poll()).deploymentBase!, new Date());
    t.match(order!.plan, { prepare: 'now', commitAt: undefined, downloadOnly: false });
    server.action = { ...server.action, update: 'forced', maintenanceWindow: 'available' };
    order = await readDeployment(ctx, (await ctx.client.poll()).deploymentBase!, new Date());
    t.ok(order!.plan.commitAt, 'the window opened: commit');

    server.action = { id: '17', version: '2.0', releases: pub.releases, withoutPayload: true };
    order = await readDeployment(ctx, (await ctx.client.poll()).deploymentBase!, new Date());
    await t.rejects(prepareDeployment(ctx, order!, { policy: POLICY }), { code: 'NOT_FOUND' });
    t.match(server.feedback.at(-1), { actionId: '17', body: { status: { execution: 'closed', result: { finished: 'failure' }, details: [/image\.lz4/] } } });
    t.match(ctx.outbox.action, { id: '17', step: 'finished' });
  });

  await t.test('cancelAction cancels a prepared upgrade', { skip: skipUnless({ commands: ['grub-editenv'] }) }, async (t) => {
    const { layout, ctx } = await fresh(t, 'cancel');
    server.action = { id: '18', version: '2.0', releases: pub.releases };
    const order = await readDeployment(ctx, (await ctx.client.poll()).deploymentBase!, new Date());
    await prepareDeployment(ctx, order!, { policy: POLICY });
    t.equal((await loadState(layout)).phase, 'prepared');
    server.cancel = { id: '19', stopId: '18' };
    const answer = await ctx.client.poll();
    const done = await handleCancel(ctx, answer.cancelAction!);
    t.match(done, { accept: true, undo: true, stopId: '18' });
    const state = await loadState(layout);
    t.equal(state.phase, 'idle');
    t.equal(state.next, undefined);
    t.match(server.feedback.at(-1), { resource: 'cancelAction', actionId: '19', body: { status: { execution: 'closed', result: { finished: 'success' } } } });
    t.match(ctx.outbox.action, { id: '18', step: 'cancelled' });

    server.cancel = { id: '20', stopId: '18' };
    t.match(await handleCancel(ctx, (await ctx.client.poll()).cancelAction!), { accept: false });
    t.equal(executions(server, 'cancelAction').at(-1), 'rejected/none', 'a second cancel of a finished action is rejected');
  });

  await t.test('confirmation flow: confirm = auto consents and prepares in the same check-in; confirm = server waits', async (t) => {
    const auto = await fresh(t, 'confirm-auto');
    server.action = { id: '31', version: '2.0', releases: pub.releases, download: 'forced', update: 'skip' };
    server.awaitingConfirmation.add('31');
    t.equal(auto.config.hawkbit.confirm, 'auto', 'auto is the default');
    const result = await checkIn(auto.layout, auto.config, { signal: new AbortController().signal, activity: async () => undefined });
    t.match(server.confirmations, [{ actionId: '31', body: { confirmation: 'confirmed', details: [/upgradectl on machine-0001 confirms action 31/] } }], 'one confirmation, in hawkBit\'s DdiConfirmationFeedback shape');
    t.ok(server.requests.some((r) => r.method === 'GET' && r.path.endsWith('/deploymentBase/31')), 'polled again at once and read the deployment');
    t.match(result.summary, /action 31: prepared 2\.0/);
    t.equal(sha256File(path.join(auto.root, 'images/2.0.img')), sha256File(image), 'the release was prepared in the same check-in');

    const waiting = await fresh(t, 'confirm-server');
    waiting.config.hawkbit.confirm = 'server';
    server.action = { id: '32', version: '2.0', releases: pub.releases };
    server.awaitingConfirmation.add('32');
    const artifactGets = server.count('/artifacts/');
    const requestsBefore = server.requests.length;
    const held = await checkIn(waiting.layout, waiting.config, { signal: new AbortController().signal, activity: async () => undefined });
    t.match(held.summary, /action 32 \(2\.0\) waits for confirmation; \[hawkbit\] confirm = server/);
    t.same(server.confirmations, [], 'nothing sent');
    t.equal(server.count('/artifacts/'), artifactGets, 'nothing fetched');
    t.same(server.requests.slice(requestsBefore).map((r) => `${r.method} ${r.path.replace(/^.*\/machine-0001/, '')}`), ['GET ', 'GET /confirmationBase/32'], 'one poll and the confirmation resource: no deployment read');
    t.same(readdirImages(waiting.root), []);
  });

  await t.test('a hostile server answering 50 MB of JSON is refused quickly', async (t) => {
    const { ctx } = await fresh(t, 'hostile');
    for (const chunked of [true, false]) {
      server.switches.hugeJson = { bytes: 50 << 20, chunked };
      const started = Date.now();
      await t.rejects(ctx.client.poll(), { kind: 'refused', message: /more than 1048576 bytes/ });
      t.ok(Date.now() - started < 2_000, `refused in ${Date.now() - started} ms (${chunked ? 'chunked' : 'Content-Length'})`);
    }
    server.switches.hugeJson = undefined;
    t.ok(await ctx.client.poll(), 'the next poll works');
  });
});

t.test('TLS: CA file and client certificate (mTLS); an unknown server certificate is refused', { skip: skipUnless({ commands: ['openssl'] }) }, async (t) => {
  const dir = t.testdir();
  const serverCert = await makeTestCertificate(path.join(dir, 'server'), ['127.0.0.1']);
  const clientCert = await makeTestCertificate(path.join(dir, 'client'), ['machine-0001.example']);
  const server = await startDdiServer({ controllerId: CONTROLLER, token: 'unused', tls: { ...serverCert, ca: clientCert.cert } });
  t.teardown(() => server.close());
  const { root, layout } = machine(dir, 'tls', server, undefined);
  const etc = path.join(root, 'etc/upgradectl');
  writeFileSync(path.join(etc, 'server-ca.pem'), serverCert.cert);
  writeFileSync(path.join(etc, 'client.pem'), clientCert.cert);
  writeFileSync(path.join(etc, 'client.key'), clientCert.key, { mode: 0o600 });
  const mtls = parseConfig(`[hawkbit]\nurl = ${server.url}\nca_file = /etc/upgradectl/server-ca.pem\ncert_file = /etc/upgradectl/client.pem\nkey_file = /etc/upgradectl/client.key\n`);
  const client = await openDdiClient(layout, mtls);
  t.teardown(() => client.close());
  t.equal((await client.poll()).sleepMs, 300_000, 'authenticated by the client certificate alone');
  t.equal(server.requests.at(-1)!.authorization, undefined, 'no token was sent');

  const noCa = parseConfig(`[hawkbit]\nurl = ${server.url}\ncert_file = /etc/upgradectl/client.pem\nkey_file = /etc/upgradectl/client.key\n`);
  const unverified = await openDdiClient(layout, noCa);
  t.teardown(() => unverified.close());
  await t.rejects(unverified.poll(), { message: /certificate was not accepted/, hint: /ca_file/ });

  chmodSync(path.join(etc, 'client.key'), 0o644);
  await t.rejects(openDdiClient(layout, mtls), { code: 'CONFIG', message: /client\.key .*readable by others/ });
});

function readdirImages(root: string): string[] {
  return readdirSync(path.join(root, 'images')).filter((n) => n.endsWith('.img'));
}
