import t, { type Test } from 'tap';
import { randomUUID } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { upgradectl } from '../helpers/cli.js';
import { startDdiServer } from '../helpers/ddi-server.js';
import { makePublisher, makeTree, makeMachine as makeReleaseMachine } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';
import { writeAccounts } from '../operations/fixtures/machine.js';
import { startDaemon, until } from './fixtures/daemon-process.js';

/**
 * The daemon against a hawkBit DDI server on loopback, with nobody typing: it learns of version 2
 * from a deployment, prepares it through the artifact links, commits, "reboots" (its reboot command),
 * the trial boot is confirmed by the boot unit's command, and the next daemon start reports success —
 * the feedback the server receives, in order, is the proof.
 */
const skip = skipUnless({ root: true, commands: ['mke2fs', 'debugfs', 'e2fsck', 'losetup', 'grub-editenv', 'grub-script-check'] });
const HOST_UUID = '0c6d2a3e-6f3b-4a5e-9a41-2b7c1d9e8f10';
const CONTROLLER = 'machine-0002';
const TOKEN = 'target-token-for-the-daemon';

t.test('unattended over hawkBit: deployment → prepare → commit → trial confirmed → success reported', { skip }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(path.join(dir, 'pub'));
  const images: Record<string, string> = {};
  for (const v of ['1', '2']) {
    const tree = makeTree(path.join(dir, 'pub'), v, 8);
    writeAccounts(path.join(tree, 'etc'));
    const image = path.join(dir, 'pub', `${v}.img`);
    const b = await upgradectl(['image', 'build', tree, image, '--size', '48M']);
    if (b.code !== 0) throw new Error(b.stderr);
    images[v] = await pub.publish(v, [], image);
  }
  const server = await startDdiServer({ controllerId: CONTROLLER, token: TOKEN, sleep: '00:00:02' });
  t.teardown(() => server.close());
  const root = makeReleaseMachine(dir, 'm', 'file:///nonexistent', pub.pub,
    `[daemon]\nstartup_delay = 0\n[window]\ncommit = never\n[metrics]\ntextfile =\n` +
    `[boot]\nhost_uuid = ${HOST_UUID}\nreboot_command = touch ${path.join(dir, 'm', 'rebooted')}\n` +
    `[hawkbit]\nurl = ${server.url}\ntoken_file = /etc/upgradectl/hawkbit.token\n`);
  writeAccounts(path.join(root, 'etc'));
  writeFileSync(path.join(root, 'etc/machine-id'), `${CONTROLLER}\n`);
  writeFileSync(path.join(root, 'etc/upgradectl/hawkbit.token'), `${TOKEN}\n`, { mode: 0o600 });
  chmodSync(path.join(root, 'etc/upgradectl/hawkbit.token'), 0o600);
  copyFileSync(images['1']!, path.join(root, 'images/1.img'));
  const bootInto = (v: string) => {
    mkdirSync(path.join(root, 'proc/sys/kernel/random'), { recursive: true });
    writeFileSync(path.join(root, 'proc/cmdline'), `root=UUID=${HOST_UUID} upgradectl.loop=/images/${v}.img ro\n`);
    writeFileSync(path.join(root, 'proc/sys/kernel/random/boot_id'), `${randomUUID()}\n`);
  };
  bootInto('1');
  // The server's word decides when: update=forced commits without waiting for a local window
  // (which is 'never' here, so only the server can make this machine commit).
  server.action = { id: '41', version: '2', releases: pub.releases, download: 'forced', update: 'forced' };

  const first = startDaemon(t, root);
  await until('the reboot into the trial', () => existsSync(path.join(root, 'rebooted')));
  first.child.kill('SIGTERM');
  t.equal(await first.exited, 0, first.stderr());
  const state = JSON.parse(readFileSync(path.join(root, 'images/.upgradectl/state.json'), 'utf8'));
  t.match(state, { phase: 'committed', current: '1', next: '2' });
  t.ok(server.count('/artifacts/image.lz4') > 0, 'the payload came through the artifact links');

  // The reboot: GRUB's one-shot boots 2; the boot unit confirms it.
  bootInto('2');
  const c = await upgradectl(['--root', root, '--json', 'confirm', '--if-trial', '--no-reboot']);
  t.equal(c.code, 0, c.stderr);
  t.match(c.json, { event: 'confirm-ok', version: '2' });
  server.action = undefined;

  const second = startDaemon(t, root, {}, ['--once']);
  t.equal(await second.exited, 0, second.stderr());
  const executions = server.feedback.filter((f) => f.resource === 'deploymentBase' && f.actionId === '41').map((f) => `${f.body.status.execution}:${f.body.status.result.finished}`);
  t.equal(executions.at(-1), 'closed:success', `the server heard success last: ${executions.join(', ')}`);
  t.ok(executions.includes('proceeding:none') && executions.some((e) => e.startsWith('downloaded')), 'progress and downloaded came before');
  const service = JSON.parse(readFileSync(path.join(root, 'images/.upgradectl/service.json'), 'utf8'));
  t.match(service, { mode: 'hawkbit', lastCheck: { ok: true } });

  // A server that still lists the ended action (its view lags, or it lost our feedback) gets the
  // result again from the outbox if need be, but the action is not carried out twice.
  server.action = { id: '41', version: '2', releases: pub.releases, download: 'forced', update: 'forced' };
  const sent = server.feedback.length;
  const third = startDaemon(t, root, {}, ['--once']);
  t.equal(await third.exited, 0, third.stderr());
  t.match(JSON.parse(readFileSync(path.join(root, 'images/.upgradectl/service.json'), 'utf8')).lastCheck, { ok: true, result: /action 41 is already finished here/ });
  t.equal(server.feedback.length, sent, 'no new feedback for an action already closed');
  t.notOk(existsSync(path.join(root, 'images/.staging/2.img')), 'nothing downloaded again');
});
