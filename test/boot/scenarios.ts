import { IDENTITY } from './fleet.js';
import type { Vm } from './qemu.js';

/**
 * The scripts of the upgrade scenarios that both the boot tests (upgrade-flow.test.ts) and the demo
 * (demo/run.ts) run, so the demo shows exactly what CI proves. The image's test driver runs a script on
 * every boot with $BOOT (boots of this run that reached the driver) and $VERSION (the running image);
 * `save NAME CMD` keeps CMD's output and exit status on the host partition (debian-image.ts).
 *
 * Cases are keyed by boot AND version, so a boot of an unexpected image fails loudly instead of
 * running the next step on the wrong system.
 */

/** `save identity`: the identity v1 was given (hostname, SSH host key's mode, owner and hash, the operator account and its hash), as the running system has it. */
export const SAVE_IDENTITY = `save identity sh -c 'hostname; stat -c "%a %U" /etc/ssh/ssh_host_ed25519_key; sha256sum < /etc/ssh/ssh_host_ed25519_key; getent passwd ${IDENTITY.user}; getent shadow ${IDENTITY.user} | cut -d: -f2'`;

/**
 * Scenario 2. Boot 1 (v1): prepare the channel's newest and commit; the reboot is issued by the
 * script after `save` has recorded commit's result (commit's own reboot would race the recording).
 * Boot 2 (v2, trial; confirm-on-boot has run): record status and the migrated identity. Boot 3: v2
 * as the default.
 */
export const UPGRADE_SCRIPT = `
case $BOOT:$VERSION in
1:1)
	save prepare upgradectl prepare && save commit upgradectl commit --no-reboot && systemctl reboot
	;;
2:2)
	save trial-status upgradectl --json status &&
	${SAVE_IDENTITY} &&
	systemctl reboot
	;;
3:2)
	save after-status upgradectl --json status && systemctl poweroff
	;;
*)
	marker unexpected boot=$BOOT version=$VERSION
	exit 1
	;;
esac`;

/**
 * Scenario 3, started on v2 with v3 (an image whose init dies) on the channel. Boot 1: prepare and
 * commit, which reboots by itself. v3 panics; GRUB's one-shot is spent, so the reset lands on v2.
 * Boot 2 (v2 again): what upgradectl now says about v3, and whether it would fetch it again.
 */
export const PANIC_TRIAL_SCRIPT = `
case $BOOT:$VERSION in
1:2)
	save prepare upgradectl prepare && save commit upgradectl commit
	;;
2:2)
	save status upgradectl --json status && save prepare-again upgradectl prepare && systemctl poweroff
	;;
*)
	marker unexpected boot=$BOOT version=$VERSION
	exit 1
	;;
esac`;

/** The downtime an operator sees for an upgrade, split where the console shows the seams. */
export interface Downtime {
  /** From commit's result (just before the reboot) to the test driver starting on the new image, which is after confirm-on-boot confirmed it. */
  totalMs: number;
  /** Shutdown of the old image, firmware and GRUB: commit's result to the new kernel's first line. */
  toKernelMs: number;
  /** Kernel, initramfs (e2fsck, loop mount), systemd up to network-online, confirm-on-boot. */
  kernelToConfirmedMs: number;
}

/** Undefined when the run has no commit result followed by another boot's driver marker. */
export function bootToConfirm(vm: Vm): Downtime | undefined {
  const boots = vm.boots();
  const at = boots.findIndex((b) => b.markers.some((m) => m.kind === 'saved' && m.fields.name === 'commit'));
  const commit = boots[at]?.markers.find((m) => m.kind === 'saved' && m.fields.name === 'commit');
  const next = boots[at + 1];
  const driver = next?.markers.find((m) => m.kind === 'driver');
  if (!commit || !next || !driver) return undefined;
  return { totalMs: driver.atMs - commit.atMs, toKernelMs: next.startedMs - commit.atMs, kernelToConfirmedMs: driver.atMs - next.startedMs };
}
