import t, { type Test } from 'tap';
import { skipUnless } from '../helpers/requirements.js';
import { startDdiServer } from '../helpers/ddi-server.js';
import { DDI_ADDR, Fleet, IDENTITY } from './fleet.js';
import { startHttpServer } from '../helpers/http-server.js';

/** Where the reflash scenario's flasher finds the releases over plain HTTP (busybox wget). */
const FLASH_ADDR = '10.0.2.102';
import path from 'node:path';
import { BOOT_REQUIREMENTS } from './requirements.js';
import { secs } from './machine.js';
import type { Vm } from './qemu.js';
import { PANIC_TRIAL_SCRIPT, SAVE_IDENTITY, UPGRADE_SCRIPT, bootToConfirm } from './scenarios.js';

/**
 * The real upgrade flow, inside VMs: a Debian + systemd + Node image with upgradectl installed, a
 * release server on the host's 127.0.0.1 reached through QEMU's restricted user network, and
 * upgradectl doing everything itself (prepare, commit, confirm-on-boot, rollback).
 *
 * Scenario 2 runs first and its end state (v2 confirmed, v1 kept as previous) is snapshotted; the
 * scenarios after it each start from that snapshot, so one failing does not fail the others, and v2
 * is downloaded and confirmed once, not four times.
 *
 * Every VM run hands the image's test driver a script (fleet.ts); what it saves is read from the disk
 * after the VM is off. Each run prints its wall time; docs/boot-tests.md lists typical figures.
 */

// Five VM runs of a systemd image: longer than the suite's per-file timeout (package.json), which
// stays short for everything else.
t.setTimeout(40 * 60_000);

const skip = skipUnless({ ...BOOT_REQUIREMENTS, commands: [...(BOOT_REQUIREMENTS.commands ?? []), 'openssl', 'debootstrap', 'depmod', 'modprobe'] });

/** A Debian boot under TCG takes ~25 s to the driver; prepare of a ~300 MB image ~60 s more. */
const RUN_TIMEOUT_MS = 12 * 60_000;

t.test('upgrade flow in a VM (scenarios 2, 3, 4, 5, 7, 8)', { skip }, async (t) => {
  const fleet = await Fleet.create(t.testdir());
  t.teardown(() => fleet.close());
  t.comment(`v1 installed, disk built in ${fleet.buildSeconds.toFixed(1)} s`);
  t.comment(`v2 built and published in ${(await fleet.release('2', { kind: 'debian' })).toFixed(1)} s`);

  const runVm = async (tt: Test, name: string, maxBoots: number, script: string): Promise<Vm> => {
    const vm = await fleet.start({ name, maxBoots, script });
    tt.teardown(() => vm.kill('test teardown'));
    const exit = await vm.waitForExit(RUN_TIMEOUT_MS);
    tt.equal(exit.killedBecause, undefined, `${name}: the machine powered itself off (no boot loop, no hang)`);
    tt.comment(`${name}: ${vm.boots().length} boots in ${secs(vm.elapsedMs())} s: ${vm.boots().map((b) => b.image).join(' -> ')}`);
    return vm;
  };

  await t.test('scenario 2: prepare and commit inside v1, trial boot of v2, confirm, v2 is the default', async (t) => {
    const vm = await runVm(t, 'flow-2-upgrade', 4, UPGRADE_SCRIPT);
    t.same(vm.boots().map((b) => b.image), ['/images/1.img', '/images/2.img', '/images/2.img'], 'v1, the trial of v2, then v2 as the default');

    const prepare = await fleet.saved('prepare');
    t.equal(prepare?.rc, 0, 'prepare succeeded inside v1');
    t.match(prepare?.out, /prepared 2/, 'prepare fetched the channel\'s newest, 2');
    t.equal((await fleet.saved('commit'))?.rc, 0, 'commit succeeded');
    const downtime = bootToConfirm(vm);
    t.ok(downtime, 'the trial boot reached the driver after confirm');
    if (downtime) {
      t.comment(`boot-to-confirm (the downtime of an upgrade): ${secs(downtime.totalMs)} s = shutdown, firmware and GRUB ${secs(downtime.toKernelMs)} s + kernel to confirmed ${secs(downtime.kernelToConfirmedMs)} s`);
    }

    const trial = await fleet.savedJson('trial-status');
    t.match(trial, { booted: '2', current: '2', previous: '1', phase: 'idle' }, 'confirm-on-boot made the trial the default before the driver ran');
    t.match(trial.last, { event: /^confirm/, ok: true }, 'the last step was the confirm');

    await identityKept(t, fleet, 'migrated');

    const after = await fleet.savedJson('after-status');
    t.match(after, { booted: '2', current: '2', phase: 'idle' }, 'v2 booted as the default');
    t.match(await fleet.grubEnv(), { saved_entry: 'upgradectl-2' }, 'GRUB\'s default is v2 on disk');
    t.notOk((await fleet.grubEnv()).next_entry, 'no one-shot left armed');
  });

  if (!t.passing()) {
    t.fail('scenario 2 failed: the scenarios that start from its end state were not run');
    return;
  }
  // Every scenario below starts here: v2 confirmed as the default, v1 kept as the previous image.
  const upgraded = await fleet.snapshot('after-scenario-2');

  await t.test('scenario 7: rollback from v2 goes to v1, and back to v2', async (t) => {
    await fleet.restore(upgraded);
    const vm = await runVm(t, 'flow-7-rollback', 4, `
case $BOOT:$VERSION in
1:2) save rollback upgradectl rollback --no-reboot && systemctl reboot ;;
2:1) save on-v1 upgradectl --json status && save rollback-back upgradectl rollback --no-reboot && systemctl reboot ;;
3:2) save back-on-v2 upgradectl --json status && systemctl poweroff ;;
*) marker unexpected boot=$BOOT version=$VERSION; exit 1 ;;
esac`);
    t.same(vm.boots().map((b) => b.image), ['/images/2.img', '/images/1.img', '/images/2.img'], 'v2, v1, v2');
    t.equal((await fleet.saved('rollback'))?.rc, 0, 'rollback on v2 succeeded');
    t.match(await fleet.savedJson('on-v1'), { booted: '1', current: '1', previous: '2', phase: 'idle' }, 'v1 confirmed as the default, v2 kept as previous');
    t.equal((await fleet.saved('rollback-back'))?.rc, 0, 'rollback on v1 succeeded');
    t.match(await fleet.savedJson('back-on-v2'), { booted: '2', current: '2', previous: '1', phase: 'idle' }, 'back on v2 as the default');
    t.match(await fleet.grubEnv(), { saved_entry: 'upgradectl-2' }, 'GRUB\'s default is v2 again');
  });

  await t.test('reflash: commit --reflash inside v2 rewrites the host partition from RAM; the reflashed Debian system restores the machine\'s files before its network starts and confirms its own trial', async (t) => {
    await fleet.restore(upgraded);
    t.comment(`reflash release 6 (a host partition holding Debian image 6) built and published in ${(await fleet.reflashRelease('6')).toFixed(1)} s`);
    await fleet.installFlasher();
    // The flasher's busybox wget fetches over plain HTTP ([flasher] url): the same releases, another address.
    const plain = await startHttpServer(path.join(fleet.workDir, 'www'));
    t.teardown(() => plain.close());
    const vm = await fleet.start({
      name: 'flow-r-reflash',
      maxBoots: 4,
      forward: [{ guestAddr: FLASH_ADDR, guestPort: 80, hostPort: plain.port }],
      script: `
case $VERSION in
2) printf '\\n[flasher]\\nurl = http://${FLASH_ADDR}/fleet/\\n' >> /etc/upgradectl/upgradectl.conf
   marker reflash-commit
   save reflash upgradectl commit --reflash 6 --no-reboot && systemctl reboot ;;
6) save status upgradectl --json status
   ${SAVE_IDENTITY}
   save kept-order sh -c 'systemctl show -P ExecMainExitTimestampMonotonic upgradectl-kept-files.service; systemctl show -P ExecMainStartTimestampMonotonic systemd-networkd.service; systemctl show -P Result upgradectl-kept-files.service; ls /host/boot/upgradectl/flasher'
   marker reflash-confirmed
   systemctl poweroff ;;
*) marker unexpected version=$VERSION; exit 1 ;;
esac`,
    });
    t.teardown(() => vm.kill('test teardown'));
    await vm.waitForLine(/UPGRADECTL-MARKER reflash-commit/, RUN_TIMEOUT_MS, 'v2 about to commit the reflash');
    const committing = performance.now();
    await vm.waitForLine(/upgradectl-flasher: \[written\]/, RUN_TIMEOUT_MS, 'the flasher wrote and verified the partition');
    const written = performance.now();
    await vm.waitForLine(/UPGRADECTL-MARKER reflash-confirmed/, RUN_TIMEOUT_MS, 'the reflashed system confirmed its trial');
    const confirmed = performance.now();
    const exit = await vm.waitForExit(RUN_TIMEOUT_MS);
    t.equal(exit.killedBecause, undefined, 'the machine powered itself off');
    t.comment(`flow-r-reflash: commit → flasher wrote the partition ${secs(written - committing)} s; commit → the new system confirmed ${secs(confirmed - committing)} s; boots: ${vm.boots().map((b) => b.image ?? 'flasher').join(' -> ')}`);
    t.comment(vm.serial.split('\n').filter((l) => l.includes('upgradectl-flasher:')).join('\n'));
    t.equal(vm.boots().length, 3, 'v2, the flasher, the reflashed system');
    t.match(vm.boots()[1]?.cmdline, /upgradectl\.flasher=[0-9a-f]{32}/, 'GRUB booted the flasher once, with the job\'s nonce');
    const status = await fleet.savedJson('status');
    t.match(status, { booted: '6', current: '6', phase: 'idle' }, 'the reflashed system confirmed its first boot and is the default');
    t.match(status.last, { event: /^confirm/, ok: true }, 'by its own confirm-on-boot');
    await identityKept(t, fleet, 'kept across the reflash');
    const [restoredAt, networkAt, result, ...left] = (await fleet.saved('kept-order'))?.out.split('\n') ?? [];
    t.equal(result, 'success', 'upgradectl-kept-files.service succeeded');
    t.ok(Number(restoredAt) > 0 && Number(restoredAt) <= Number(networkAt), `restored (${restoredAt} µs) before systemd-networkd started (${networkAt} µs)`);
    t.notMatch(left.join(' '), /machine-files|trial/, 'archive, hash file and trial marker gone once restored and confirmed');
    t.match(await fleet.grubEnv(), { saved_entry: 'upgradectl-6' }, 'GRUB\'s default is image 6');
  });

  await t.test('scenario 8: nobody typing — the daemon takes v5 from a hawkBit server, the trial confirms, the server hears success', async (t) => {
    await fleet.restore(upgraded);
    t.comment(`v5 built and published in ${(await fleet.release('5', { kind: 'debian' })).toFixed(1)} s`);
    const token = 'flow-vm-target-token';
    const ddi = await startDdiServer({ controllerId: 'flow-vm', token, sleep: '00:00:05', tls: fleet.tls, publicOrigin: `https://${DDI_ADDR}` });
    t.teardown(() => ddi.close());
    // The server decides when (update: forced); the machine's own window is never, so only the server can.
    ddi.action = { id: '8', version: '5', releases: path.join(fleet.workDir, 'www/fleet'), download: 'forced', update: 'forced' };
    const vm = await fleet.start({
      name: 'flow-8-daemon-hawkbit',
      maxBoots: 3,
      forward: [{ guestAddr: DDI_ADDR, hostPort: Number(new URL(ddi.url).port) }],
      script: `
case $BOOT:$VERSION in
1:2)
  mkdir -p /etc/upgradectl/credentials.d
  echo ${token} > /etc/upgradectl/credentials.d/hawkbit.token && chmod 600 /etc/upgradectl/credentials.d/hawkbit.token
  printf '%s\n' '[hawkbit]' 'url = https://${DDI_ADDR}' 'controller_id = flow-vm' 'token_file = /etc/upgradectl/credentials.d/hawkbit.token' \
    'ca_file = /usr/local/share/ca-certificates/upgradectl-test.crt' '[daemon]' 'startup_delay = 0' '[window]' 'commit = never' >> /etc/upgradectl/upgradectl.conf
  save start systemctl start upgradectl.service
  marker daemon-started
  sleep 900 ;;
2:5)
  save trial-status upgradectl --json status
  checked() { sed -n '/"lastCheck"/,/}/s/.*"at": *"\\([^"]*\\)".*/\\1/p' /host/images/.upgradectl/service.json 2>/dev/null; }
  before=$(checked)
  save start-again systemctl start upgradectl.service
  # Wait for this boot's first check-in (service.json still holds the one from before the reboot).
  for i in $(seq 120); do [ "$(checked)" != "$before" ] && break; sleep 1; done
  save unit systemctl show -p ActiveState -p SubState -p Type -p StatusText upgradectl.service
  save after upgradectl --json status
  systemctl poweroff ;;
*) marker unexpected boot=$BOOT version=$VERSION; exit 1 ;;
esac`,
    });
    t.teardown(() => vm.kill('test teardown'));
    const exit = await vm.waitForExit(RUN_TIMEOUT_MS);
    t.equal(exit.killedBecause, undefined, 'the machine powered itself off');
    t.comment(`flow-8-daemon-hawkbit: ${vm.boots().length} boots in ${secs(vm.elapsedMs())} s: ${vm.boots().map((b) => b.image).join(' -> ')}`);
    t.same(vm.boots().map((b) => b.image), ['/images/2.img', '/images/5.img'], 'v2, then the trial of v5 that the daemon committed');
    t.equal((await fleet.saved('start'))?.rc, 0, 'systemctl start returned: the Type=notify unit sent READY=1');
    t.ok(ddi.count('/artifacts/image.lz4') > 0, 'the payload came through the deployment\'s artifact links');
    t.match(await fleet.savedJson('trial-status'), { booted: '5', current: '5', previous: '2', phase: 'idle' }, 'confirm-on-boot confirmed the trial');
    t.match((await fleet.saved('unit'))?.out, /ActiveState=active/, 'the service runs on the new image');
    const after = await fleet.savedJson('after');
    t.match(after.service, { mode: 'hawkbit', lastCheck: { ok: true, result: /already finished here/ } }, 'the daemon checked in again after the reboot, and does not carry out the ended action twice');
    const executions = ddi.feedback.filter((f) => f.resource === 'deploymentBase' && f.actionId === '8').map((f) => `${f.body.status.execution}:${f.body.status.result.finished}`);
    t.equal(executions.at(-1), 'closed:success', `the server heard success last (${executions.join(', ')})`);
  });

  await t.test('scenario 3: v3 panics at boot; the machine is back on v2 by itself and v3 is never offered again', async (t) => {
    await fleet.restore(upgraded);
    t.comment(`v3 (init panics) built and published in ${(await fleet.release('3', { kind: 'panic' })).toFixed(1)} s`);
    const vm = await runVm(t, 'flow-3-panic', 4, PANIC_TRIAL_SCRIPT);
    const boots = vm.boots();
    t.same(boots.map((b) => b.image), ['/images/2.img', '/images/3.img', '/images/2.img'], 'v2, the trial of v3, v2');
    t.match(boots[1]?.text, /Kernel panic/, 'v3 panicked');
    t.match((await fleet.saved('prepare'))?.out, /prepared 3/, 'prepare fetched v3');
    const env = await fleet.grubEnv();
    t.notOk(env.next_entry, 'GRUB consumed the one-shot before v3 booted (next_entry cleared on disk by save_env)');
    t.equal(env.saved_entry, 'upgradectl-2', 'GRUB\'s default is v2');
    const status = await fleet.savedJson('status');
    t.match(status, { booted: '2', current: '2' }, 'v2 is running and the default');
    t.ok(status.bad?.['3'], 'v3 is recorded as failed');
    t.comment(`v3 failed: ${status.bad?.['3']?.reason}`);
    const again = await fleet.saved('prepare-again');
    t.equal(again?.rc, 0, 'prepare on v2 is not an error');
    t.match(again?.out, /nothing to prepare: 3 failed its trial before/, 'v3 is not offered again');
  });

  await t.test('scenarios 5 and 4: power cut right after commit, then v4 fails its health check and rolls back', async (t) => {
    await fleet.restore(upgraded);
    const health = '#!/bin/sh\necho "app: cannot reach its database" >&2\nexit 1\n';
    t.comment(`v4 (failing health check) built and published in ${(await fleet.release('4', { kind: 'debian', files: { '/etc/upgradectl/health.d/50-app': { content: health, mode: 0o755 } } })).toFixed(1)} s`);

    // Scenario 5: commit returns, and the power goes before any reboot or shutdown could flush anything.
    const cut = await fleet.start({
      name: 'flow-5-power-cut',
      maxBoots: 1,
      script: `
case $BOOT:$VERSION in
1:2) save prepare upgradectl prepare && UPGRADECTL_REBOOT_COMMAND=true upgradectl commit && marker commit-returned && sleep 3600 ;;
*) marker unexpected boot=$BOOT version=$VERSION; exit 1 ;;
esac`,
    });
    t.teardown(() => cut.kill('test teardown'));
    await cut.waitForLine(/UPGRADECTL-MARKER commit-returned/, RUN_TIMEOUT_MS, 'commit returning');
    await cut.kill('power cut right after commit returned');
    t.comment(`flow-5-power-cut: power cut ${secs(cut.elapsedMs())} s after power-on`);
    const env = await fleet.grubEnv();
    t.match(env, { saved_entry: 'upgradectl-2', next_entry: 'upgradectl-4' }, 'GRUB sees the armed trial on disk (no journal replay needed)');
    t.match((await fleet.hostFile('/boot/grub/grub.cfg'))?.toString(), /loopback \S+ \/images\/4\.img/, 'and the grub.cfg with v4\'s entry');

    // Scenario 4: the next power-on boots the trial; its health check fails; it rolls back by itself.
    const vm = await runVm(t, 'flow-4-health-fails', 3, `
case $BOOT:$VERSION in
*:4) marker trial-still-running ;;
*:2) save status upgradectl --json status && save prepare-again upgradectl prepare && systemctl poweroff ;;
*) marker unexpected boot=$BOOT version=$VERSION; exit 1 ;;
esac`);
    const boots = vm.boots();
    t.same(boots.map((b) => b.image), ['/images/4.img', '/images/2.img'], 'the trial of v4, then v2');
    const status = await fleet.savedJson('status');
    t.match(status, { booted: '2', current: '2' }, 'back on v2 as the default');
    t.match(status.bad?.['4']?.reason, /health\.d\/50-app .*app: cannot reach its database/, 'v4 is recorded as failed by its health check, in the check\'s own words');
    t.match((await fleet.saved('prepare-again'))?.out, /nothing to prepare: 4 failed its trial before/, 'v4 is not offered again');
  });
});

/** What SAVE_IDENTITY recorded on the last run: v1's identity, byte for byte. */
async function identityKept(t: Test, fleet: Fleet, how: string): Promise<void> {
  const identity = (await fleet.saved('identity'))?.out.split('\n') ?? [];
  t.equal(identity[0], IDENTITY.hostname, `hostname ${how}`);
  t.equal(identity[1], '600 root', `SSH host key ${how} with its mode and owner`);
  t.equal(identity[2]?.split(' ')[0], fleet.identity.sshKeySha256, `SSH host key ${how} byte for byte`);
  t.match(identity[3], new RegExp(`^${IDENTITY.user}:x:${IDENTITY.uid}:${IDENTITY.uid}:`), 'the operator account is there');
  t.equal(identity[4], IDENTITY.passwordHash, 'with its password hash');
}
