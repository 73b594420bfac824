import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { upgradectl } from '../helpers/cli.js';
import { makePublisher, makeTree, makeMachine as makeReleaseMachine } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';
import { writeAccounts } from '../operations/fixtures/machine.js';
import { startDaemon, until } from './fixtures/daemon-process.js';

/**
 * The daemon as a real process (`upgradectl daemon`) against a temporary root, releases from a file://
 * channel, and systemd's notify protocol checked with a real NOTIFY_SOCKET listener (an AF_UNIX datagram
 * socket, as the service manager has). The reboot is the config's own reboot_command, pointed at a file.
 */
const skip = skipUnless({ root: true, commands: ['mke2fs', 'debugfs', 'e2fsck', 'losetup', 'grub-editenv', 'grub-script-check', 'systemd-notify', 'python3'] });
const HOST_UUID = '0c6d2a3e-6f3b-4a5e-9a41-2b7c1d9e8f10';
const LISTENER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'notify-listener.py');

/** `HH:MM-HH:MM` from `from` to `to` minutes after now (local time): an open or a closed window. */
function windowAround(from: number, to: number): string {
  const at = (m: number) => {
    const d = new Date(Date.now() + m * 60_000);
    return `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
  };
  return `${at(from)}-${at(to)}`;
}

interface Fleet {
  root: string;
  stateFile: string;
}

/** A machine running image 1 with a channel that offers 2; both images carry account databases. */
async function machine(t: Test, config: string): Promise<Fleet> {
  const dir = t.testdir();
  const pub = await makePublisher(path.join(dir, 'pub'));
  const images: Record<string, string> = {};
  for (const v of ['1', '2']) {
    const tree = makeTree(path.join(dir, 'pub'), v, 24);
    writeAccounts(path.join(tree, 'etc'));
    const image = path.join(dir, 'pub', `${v}.img`);
    const b = await upgradectl(['image', 'build', tree, image, '--size', '64M']);
    if (b.code !== 0) throw new Error(b.stderr);
    images[v] = await pub.publish(v, v === '2' ? ['--channel', 'stable'] : [], image);
  }
  const root = makeReleaseMachine(dir, 'm', `file://${pub.releases}`, pub.pub, config.replace(/@ROOT@/g, path.join(dir, 'm')));
  writeAccounts(path.join(root, 'etc'));
  writeFileSync(path.join(root, 'etc/machine-id'), '5f2b1c0e9d8a4b7c8e6f5a4b3c2d1e0f\n');
  copyFileSync(images['1']!, path.join(root, 'images/1.img'));
  mkdirSync(path.join(root, 'proc'), { recursive: true });
  writeFileSync(path.join(root, 'proc/cmdline'), `root=UUID=${HOST_UUID} upgradectl.loop=/images/1.img ro\n`);
  return { root, stateFile: path.join(root, 'images/.upgradectl/state.json') };
}

const baseConfig = (window: string, extra = '') =>
  `[daemon]\nstartup_delay = 0\ncheck_interval = 3600\n[window]\ncommit = ${window}\n[metrics]\ntextfile = /metrics/upgradectl.prom\n` +
  `[boot]\nhost_uuid = ${HOST_UUID}\nreboot_command = touch @ROOT@/rebooted\n${extra}`;

function listen(t: Test): { socket: string; messages: () => string[] } {
  // A socket path must fit sun_path (108 bytes): not under the long fixture directory.
  const dir = mkdtempSync(path.join(os.tmpdir(), 'uctl-notify-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socket = path.join(dir, 'notify.sock');
  const log = path.join(dir, 'notify.log');
  const child = spawn('python3', [LISTENER, socket, log], { stdio: 'ignore' });
  t.teardown(() => void child.kill('SIGKILL'));
  return { socket, messages: () => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n').slice(1) : []) };
}

const phase = (f: Fleet) => (existsSync(f.stateFile) ? (JSON.parse(readFileSync(f.stateFile, 'utf8')) as { phase: string }).phase : undefined);

t.test('unattended: READY after reconciling, prefetch, commit inside the window, reboot; SIGTERM stops it', { skip }, async (t) => {
  const f = await machine(t, baseConfig(windowAround(-1, 2)));
  const notify = listen(t);
  await until('the notify listener', () => existsSync(notify.socket), 10);
  const d = startDaemon(t, f.root, { NOTIFY_SOCKET: notify.socket, WATCHDOG_USEC: '2000000', UPGRADECTL_LOG_LEVEL: 'info' });
  await until('the reboot into the trial', () => existsSync(path.join(f.root, 'rebooted')));
  t.equal(phase(f), 'committed', 'prepared, then committed inside the window');
  const state = JSON.parse(readFileSync(f.stateFile, 'utf8'));
  t.match(state, { current: '1', next: '2' });
  t.same(state.history.map((h: { event: string }) => h.event), ['adopt', 'prepare', 'commit']);

  await until('a watchdog pet', () => notify.messages().some((m) => m.includes('WATCHDOG=1')), 10);
  // STATUS= is relayed from the pass's service.json when the pass ends (and every 5 s while it runs).
  await until('the commit in a STATUS line', () => notify.messages().some((m) => /STATUS=committing 2 inside the window/.test(m)), 20);
  const messages = notify.messages();
  t.match(messages[0], /READY=1/, 'the first notification is READY=1 (sent after reconciliation)');
  t.ok(messages.some((m) => /STATUS=committing 2 inside the window/.test(m)), 'STATUS says what it does');
  // systemd-notify (252) follows each message with BARRIER=1 (it waits for the manager to take it).
  t.ok(messages.every((m) => /^(READY=1|STATUS=|MAINPID=\d+|WATCHDOG=1|BARRIER=1)/.test(m)), messages.join(' / '));

  await until('the metrics textfile', () => existsSync(path.join(f.root, 'metrics/upgradectl.prom')), 10);
  const metrics = readFileSync(path.join(f.root, 'metrics/upgradectl.prom'), 'utf8');
  t.match(metrics, /# TYPE upgradectl_phase gauge/);
  t.match(metrics, /upgradectl_info\{booted="1",current="1",previous="",next="2"\} 1/);
  const service = JSON.parse(readFileSync(path.join(f.root, 'images/.upgradectl/service.json'), 'utf8'));
  t.match(service, { mode: 'channel', lastCheck: { ok: true, result: /prepared 2/ } });

  const stopAt = Date.now();
  d.child.kill('SIGTERM');
  t.equal(await d.exited, 0, d.stderr());
  t.ok(Date.now() - stopAt < 5000, `stopped in ${Date.now() - stopAt} ms`);
});

t.test('outside its window it prefetches and waits; status says when it will commit', { skip }, async (t) => {
  const f = await machine(t, baseConfig(windowAround(180, 240)));
  const d = startDaemon(t, f.root, {}, ['--once']);
  t.equal(await d.exited, 0, d.stderr());
  t.equal(phase(f), 'prepared');
  t.notOk(existsSync(path.join(f.root, 'rebooted')));
  const s = await upgradectl(['--root', f.root, '--json', 'status']);
  t.equal(s.code, 0, s.stderr);
  t.match(s.json.service, { window: { open: false }, next: { action: 'commit 2' } });
  t.ok(Date.parse(s.json.service.next.at) > Date.now() + 170 * 60_000, 'the commit waits for the window');
});

t.test('SIGTERM during a download stops within seconds; the next start resumes what was verified', { skip }, async (t) => {
  const f = await machine(t, baseConfig('never', '[prepare]\nmax_rate = 4M\nparallel = 2\n'));
  const d = startDaemon(t, f.root);
  const progress = path.join(f.root, 'images/.staging/2.progress.json');
  await until('saved download progress', () => existsSync(progress) && JSON.parse(readFileSync(progress, 'utf8')).bytesDone > 0, 60);
  const stopAt = Date.now();
  d.child.kill('SIGTERM');
  t.equal(await d.exited, 0, d.stderr());
  t.ok(Date.now() - stopAt < 5000, `stopped in ${Date.now() - stopAt} ms`);
  t.not(phase(f), 'prepared', 'the download was not finished');
  const again = startDaemon(t, f.root, {}, ['--once']);
  t.equal(await again.exited, 0, again.stderr());
  const state = JSON.parse(readFileSync(f.stateFile, 'utf8'));
  t.equal(state.phase, 'prepared');
  const prepared = state.history.findLast((h: { event: string }) => h.event === 'prepare');
  t.ok(prepared.detail.reusedFrames > 0, `resumed ${prepared.detail.reusedFrames} verified frames`);
});

t.test("a person's command holds the lock: the daemon says who, and tries again later", { skip }, async (t) => {
  const f = await machine(t, baseConfig('never'));
  const holder = spawn('sleep', ['60'], { stdio: 'ignore' });
  t.teardown(() => void holder.kill('SIGKILL'));
  const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  mkdirSync(path.join(f.root, 'images/.upgradectl'), { recursive: true });
  writeFileSync(path.join(f.root, 'images/.upgradectl/lock'), JSON.stringify({ pid: holder.pid, operation: 'prepare', since: new Date().toISOString(), bootId }));
  const d = startDaemon(t, f.root, {}, ['--once']);
  t.equal(await d.exited, 0, d.stderr());
  const service = JSON.parse(readFileSync(path.join(f.root, 'images/.upgradectl/service.json'), 'utf8'));
  t.match(service.lastCheck, { ok: false, result: new RegExp(`another upgradectl operation is running: prepare \\(pid ${holder.pid}`) });
  t.ok(Date.parse(service.next.at) - Date.now() < 90_000, 'retries within about a minute');
});
