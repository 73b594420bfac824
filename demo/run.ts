import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Fleet, IDENTITY } from '../test/boot/fleet.js';
import { secs } from '../test/boot/machine.js';
import type { Vm } from '../test/boot/qemu.js';
import { PANIC_TRIAL_SCRIPT, UPGRADE_SCRIPT, bootToConfirm } from '../test/boot/scenarios.js';
import { cacheDir } from '../test/helpers/debian-root.js';

/**
 * The demo: one machine and its release server, as in test/boot/upgrade-flow.test.ts, with the VM's
 * serial console on this terminal.
 *
 *   scenario 2  v1 (Debian 12 + systemd + Node + upgradectl, with its own hostname, SSH host key and
 *               user) prepares v2 over HTTPS, commits, boots v2 once as a trial, confirm-on-boot
 *               makes it the default; v2 boots again as the default.
 *   scenario 3  v3, whose init dies, is published. v2 prepares and commits it; v3 panics on its trial
 *               boot; the reset lands on v2 by itself; upgradectl on v2 records v3 as failed and does
 *               not fetch it again.
 *
 * It checks what it shows: the exit status is 1 when a step did not happen as described.
 */

const started = performance.now();
/** systemd's animated "Job … running" lines redraw one terminal line; as a log they are noise. */
const SPINNER = /Job .+ running \(/;
const problems: string[] = [];

function say(text: string): void {
  process.stdout.write(`\n== ${text}\n`);
}

function expect(ok: unknown, what: string): void {
  if (!ok) problems.push(what);
}

async function runScenario(fleet: Fleet, name: string, script: string): Promise<Vm> {
  const vm = await fleet.start({ name, script, maxBoots: 4, echo: (line) => SPINNER.test(line) || process.stdout.write(`  vm | ${line}\n`) });
  const stop = () => void vm.kill('interrupted').then(() => process.exit(130));
  process.once('SIGINT', stop);
  try {
    const exit = await vm.waitForExit(15 * 60_000);
    if (exit.killedBecause) problems.push(`${name}: the VM was stopped: ${exit.killedBecause}`);
  } finally {
    process.off('SIGINT', stop);
    await vm.kill('demo finished');
  }
  return vm;
}

const boots = (vm: Vm) => vm.boots().map((b) => b.image?.replace(/^\/images\/(.*)\.img$/, 'v$1') ?? '?');

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write('demo: run as root (it builds disks with mke2fs and debootstrap and an initramfs with mkinitramfs)\n');
    return 2;
  }
  const work = await fs.mkdtemp(path.join('/var/tmp', 'upgradectl-demo-'));
  let fleet: Fleet | undefined;
  try {
    say('building the release server (HTTPS on 127.0.0.1) and the machine: v1 = Debian 12 + systemd + Node + upgradectl');
    process.stdout.write('   (the first run downloads Debian with debootstrap: about a minute)\n');
    fleet = await Fleet.create(work);
    process.stdout.write(`   v1 installed on the VM's disk in ${fleet.buildSeconds.toFixed(0)} s\n`);
    process.stdout.write(`   v2 built and published in ${(await fleet.release('2', { kind: 'debian' })).toFixed(0)} s\n`);

    say('scenario 2: v1 prepares v2, commits, boots it once as a trial; confirm-on-boot makes it the default');
    const up = await runScenario(fleet, 'demo-2-upgrade', UPGRADE_SCRIPT);
    const prepared = /fetched .*/.exec((await fleet.saved('prepare'))?.out ?? '')?.[0] ?? 'prepare failed';
    const trial = await fleet.savedJson('trial-status').catch(() => undefined);
    const identity = (await fleet.saved('identity'))?.out.split('\n') ?? [];
    const after = await fleet.savedJson('after-status').catch(() => undefined);
    const downtime = bootToConfirm(up);
    expect(boots(up).join(' ') === 'v1 v2 v2', `scenario 2 booted ${boots(up).join(' -> ')}, not v1 -> v2 -> v2`);
    expect(trial?.current === '2' && trial?.booted === '2', 'the trial of v2 was not confirmed');
    expect(identity[0] === IDENTITY.hostname, `hostname on v2 is ${identity[0]}, not ${IDENTITY.hostname}`);
    expect(identity[2]?.startsWith(fleet.identity.sshKeySha256), 'the SSH host key did not arrive byte for byte');
    expect(identity[4] === IDENTITY.passwordHash, `${IDENTITY.user}'s password hash did not arrive`);
    expect(after?.current === '2', 'v2 is not the default after the confirm');

    process.stdout.write(`   v3 (its init dies at once) built and published in ${(await fleet.release('3', { kind: 'panic' })).toFixed(0)} s\n`);
    say('scenario 3: v2 prepares and commits v3; v3 panics on its trial boot');
    const panic = await runScenario(fleet, 'demo-3-panic', PANIC_TRIAL_SCRIPT);
    const status = await fleet.savedJson('status').catch(() => undefined);
    const again = (await fleet.saved('prepare-again'))?.out.trim() ?? '';
    const panicBoots = panic.boots();
    const backMs = panicBoots.length >= 3 ? panicBoots[2]!.startedMs - panicBoots[1]!.startedMs : undefined;
    expect(boots(panic).join(' ') === 'v2 v3 v2', `scenario 3 booted ${boots(panic).join(' -> ')}, not v2 -> v3 -> v2`);
    expect(/Kernel panic/.test(panicBoots[1]?.text ?? ''), 'v3 did not panic');
    expect(status?.current === '2' && status?.bad?.['3'], 'upgradectl on v2 did not record v3 as failed');
    expect(/not offered again/.test(again), `prepare on v2 said "${again}" instead of refusing v3`);

    say('summary');
    const lines = [
      `v1 -> v2   upgraded. ${prepared}; boots ${boots(up).join(' -> ')}`,
      `           downtime (commit -> v2 confirmed by confirm-on-boot): ${downtime ? `${secs(downtime.totalMs)} s (shutdown + GRUB ${secs(downtime.toKernelMs)} s, kernel to confirmed ${secs(downtime.kernelToConfirmedMs)} s; under TCG emulation)` : 'not measured'}`,
      `           carried over: hostname ${identity[0]}, SSH host key (same SHA-256), user ${IDENTITY.user} and its password hash`,
      `v2 -> v3   ROLLED BACK by itself. boots ${boots(panic).join(' -> ')}`,
      `           why: v3's kernel panicked on its trial boot; GRUB's one-shot was already spent, so the reset booted v2${backMs ? ` (${secs(backMs)} s later)` : ''}`,
      `           upgradectl on v2: ${status?.bad?.['3'] ? `3 failed: ${status.bad['3'].reason}` : 'v3 not recorded as failed'}`,
      `           prepare on v2 now: ${again}`,
      `serial logs: ${path.join(cacheDir(), 'boot/logs')}/demo-*.serial.log; wall time ${secs(performance.now() - started)} s`,
    ];
    process.stdout.write(lines.map((l) => `   ${l}\n`).join(''));
    if (problems.length) {
      process.stdout.write(`\nNOT as described:\n${problems.map((p) => `   - ${p}\n`).join('')}`);
      return 1;
    }
    process.stdout.write('\nall as described.\n');
    return 0;
  } finally {
    await fleet?.close();
    await fs.rm(work, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`demo failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
