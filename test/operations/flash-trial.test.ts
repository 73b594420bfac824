import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Layout } from '../../src/core/layout.js';
import { setLogLevel } from '../../src/core/log.js';
import { FLASHER_SCRIPTS } from '../../src/flasher/initrd.js';
import { writeBootFiles } from '../../src/operations/boot.js';
import { loadConfig } from '../../src/operations/config.js';
import { reconcile } from '../../src/operations/reconcile/index.js';
import { loadState } from '../../src/operations/state.js';
import { upgradectl } from '../helpers/cli.js';
import { skipUnless } from '../helpers/requirements.js';
import { addHook, boot, envList, grubBoot, makeMachine, readState } from './fixtures/machine.js';

/**
 * The first boot after a flash (docs/flasher.md): the published host partition as upgradectl renders
 * it, armed by the flasher's own shell function (flasher/flasher.sh, arm_on_new_host, run by busybox
 * against the tree), booted by the fixture's GRUB, reconciled and confirmed by upgradectl. The same
 * path in QEMU, with the real GRUB and flasher: test/boot/flasher.test.ts.
 */

const skip = skipUnless({ root: true, commands: ['busybox', 'grub-editenv', 'grub-script-check', 'mke2fs'] });

/** A published reflash partition: image 2.0 the default, its boot files written by upgradectl; no flasher in it. */
async function publishedHost(dir: string): Promise<Layout> {
  setLogLevel('error');
  const layout = makeMachine(dir, { images: ['2.0'], current: '2.0' });
  await writeBootFiles(layout, await loadConfig(layout), readState(layout));
  process.env.UPGRADECTL_REBOOT_COMMAND = `touch ${path.join(layout.root, 'reboot-requested')}`;
  return layout;
}

/** What the flasher kept in RAM before writing: its kernel, initrd and the operator's keys. */
function keptFiles(dir: string): string {
  const keep = path.join(dir, 'keep');
  mkdirSync(keep);
  for (const f of ['vmlinuz', 'initrd.img', 'authorized_keys']) writeFileSync(path.join(keep, f), `kept ${f}\n`);
  return keep;
}

/** The flasher's arm_on_new_host on the mounted new partition (here: the tree), after writing release 2.0. */
function flasherArms(layout: Layout, keep: string): { code: number | null; out: string } {
  const script = `. ${FLASHER_SCRIPTS}/flasher.sh; HOST_MNT=${layout.host} KEEP=${keep} job_version=2.0 job_net=static job_net_mac=any job_net_addr=192.0.2.10/24 job_net_gw=192.0.2.1 job_net_dns=none; arm_on_new_host`;
  const flasherDir = path.join(path.dirname(keep), 'run');
  mkdirSync(flasherDir, { recursive: true });
  const r = spawnSync('busybox', ['sh', '-c', script], { env: { ...process.env, FLASHER_DIR: flasherDir }, encoding: 'utf8' });
  return { code: r.status, out: `${r.stdout.trim()}${r.stderr.trim() ? `\n${r.stderr.trim()}` : ''}` };
}

t.test('the flasher arms the new system as a trial; its upgradectl records and confirms it; GRUB then boots it by default', { skip }, async (t) => {
  const dir = t.testdir();
  const layout = await publishedHost(dir);
  t.match(readFileSync(layout.grubCfg, 'utf8'), /upgradectl\.hold=1/, 'the published grub.cfg has the hold branch');
  const armed = flasherArms(layout, keptFiles(dir));
  t.equal(armed.code, 0, armed.out);
  t.match(armed.out, /the first boot of image 2\.0 is a trial/);
  t.same(envList(layout), { saved_entry: 'upgradectl-reboot', next_entry: 'upgradectl-2.0', upgradectl_trial: 'upgradectl-2.0' }, 'the one-shot; unconfirmed, GRUB goes to the reboot entry (hold)');
  t.equal(readFileSync(layout.flashTrialFile, 'utf8'), 'upgradectl-flash-trial 1\nversion 2.0\nrelease 2.0\nnetwork static any 192.0.2.10/24 192.0.2.1 none\n', 'with the job\'s network, for hold mode');
  t.equal(readFileSync(layout.flasherKernel, 'utf8'), 'kept vmlinuz\n', 'the flasher put its kernel on the new partition');
  t.equal(readFileSync(path.join(layout.flasherDir, 'authorized_keys'), 'utf8'), 'kept authorized_keys\n');

  t.same(grubBoot(layout), ['2.0'], 'GRUB boots the one-shot');
  t.same(envList(layout).next_entry, undefined, 'and consumes it');
  const s = await reconcile(layout);
  t.match(s, { phase: 'trying', next: '2.0', current: undefined, trialKind: 'upgrade' });
  t.same(s.history.map((h) => h.event), ['flash-trial', 'boot-trial'], 'recorded as commit would have, then its trial boot');
  // What the boot unit runs on every boot.
  const r = await upgradectl(['--root', layout.root, '--json', 'confirm', '--if-trial', '--no-reboot']);
  t.equal(r.code, 0, r.stderr);
  t.match(r.json, { event: 'confirm-ok', version: '2.0', phase: 'idle' });
  t.match(readState(layout), { phase: 'idle', current: '2.0', next: undefined });
  t.same(envList(layout), { saved_entry: 'upgradectl-2.0' }, 'the new image is the default');
  t.notOk(existsSync(layout.flashTrialFile), 'the reboot entry no longer holds in the flasher');
  t.equal((await reconcile(layout)).phase, 'idle', 'a later boot is an ordinary boot of the default');
  t.same(grubBoot(layout), ['2.0']);
  t.equal((await reconcile(layout)).history.filter((h) => h.event === 'flash-trial').length, 1, 'no second trial');
});

t.test('a reflashed system that fails its health checks is not retried: GRUB stays on the hold entry', { skip }, async (t) => {
  const dir = t.testdir();
  const layout = await publishedHost(dir);
  t.equal((flasherArms(layout, keptFiles(dir))).code, 0);
  addHook(layout, 'health', '10-web', 'echo "nginx is not listening" >&2; exit 3');
  grubBoot(layout);
  const r = await upgradectl(['--root', layout.root, '--json', 'confirm', '--if-trial', '--no-reboot']);
  t.equal(r.json?.event, 'confirm-failed', r.stderr);
  t.equal((await upgradectl(['--root', layout.root, 'status'])).code, 0, 'status works on a machine with no current image');
  const s = await loadState(layout);
  t.match(s, { phase: 'rolled-back', next: undefined });
  t.match(s.bad['2.0']?.reason, /nginx is not listening/);
  t.same(envList(layout), { saved_entry: 'upgradectl-reboot' }, 'the next boot reaches the reboot entry, which holds in the flasher');
  t.ok(existsSync(layout.flashTrialFile), 'the marker stays: the hold branch needs it');
  boot(layout, '2.0');
  const again = await reconcile(layout);
  t.equal(again.next, undefined, 'booted by hand from the menu: no second trial of a bad image');
  t.equal(again.history.filter((h) => h.event === 'flash-trial').length, 1);
});

t.test('a published partition whose grub.cfg has no hold branch is not armed: its first boot is a plain boot, as before', { skip }, async (t) => {
  const dir = t.testdir();
  const layout = await publishedHost(dir);
  writeFileSync(layout.grubCfg, readFileSync(layout.grubCfg, 'utf8').replaceAll('upgradectl.hold=1', ''));
  const before = envList(layout);
  const armed = flasherArms(layout, keptFiles(dir));
  t.not(armed.code, 0);
  t.match(armed.out, /grub\.cfg has no hold mode/);
  t.same(envList(layout), before, 'grubenv untouched');
  t.notOk(existsSync(layout.flashTrialFile), 'no marker');
});

t.test("hold mode's network comes from the trial marker: the job's static set-up as written, DHCP when absent or malformed", { skip: skipUnless({ commands: ['busybox'] }) }, (t) => {
  const dir = t.testdir();
  const marker = path.join(dir, 'trial');
  const hold = (text: string | undefined) => {
    if (text === undefined) rmSync(marker, { force: true });
    else writeFileSync(marker, text);
    const script = `. ${FLASHER_SCRIPTS}/flasher.sh; trial_network ${marker}; echo "$job_net|$job_net_mac|$job_net_addr|$job_net_gw|$job_net_dns"`;
    return spawnSync('busybox', ['sh', '-c', script], { env: { ...process.env, FLASHER_DIR: path.join(dir, 'run') }, encoding: 'utf8' }).stdout.trim();
  };
  const head = 'upgradectl-flash-trial 1\nversion 2\nrelease 2\n';
  t.equal(hold(`${head}network static 52:54:00:12:34:56 192.0.2.10/24 192.0.2.1 192.0.2.53\n`), 'static|52:54:00:12:34:56|192.0.2.10/24|192.0.2.1|192.0.2.53');
  t.equal(hold(`${head}network dhcp\n`), 'dhcp||||');
  t.equal(hold(head), 'dhcp||||', 'a marker written before the line existed');
  t.equal(hold(`${head}network static any 192.0.2.999/24 none none\n`), 'dhcp||||', 'malformed: DHCP rather than a bad address');
  t.equal(hold(undefined), 'dhcp||||', 'no marker');
  t.end();
});
