import { promises as fs, constants } from 'node:fs';
import path from 'node:path';
import { errnoOf, messageOf } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { log } from '../core/log.js';
import { parseTrialBoot } from '../grub/boot-control.js';

/**
 * The end of a trial's deadline (docs/initramfs.md, "Trial deadline"). On a trial boot the initramfs
 * loads softdog with the deadline as its margin and closes the device without the magic character, so
 * the kernel counts down and resets the machine unless someone stops it. Confirm stops it: open the
 * device, write 'V', close. Nothing pets it in between, so a trial that hangs anywhere is reset and GRUB
 * boots the previous image.
 *
 * Only the device the initramfs named is touched: opening a watchdog device STARTS it, and a hardware
 * watchdog (possibly one that can never be stopped) may sit at /dev/watchdog.
 */

export interface DeadlineEnd {
  /** The countdown was stopped by this call. */
  ended: boolean;
  /** The watchdog device the initramfs armed, as the booted OS names it. */
  device?: string;
  /** Why nothing was stopped, or what was. */
  why: string;
}

/** A deadline as an operator wrote it: `15 min`, `1 h`, `20 s`. */
export function formatDeadline(seconds: number): string {
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}

/**
 * What a failed trial's reason adds when trials have a deadline: a hang ends in a reset too, so the
 * operator reading "did not come up" knows a stuck boot is among the causes. Nothing survives the reset
 * to tell which cause it was (softdog leaves no trace), so it is named as one of them.
 */
export function deadlineCause(seconds: number, cameUp: boolean): string {
  if (!seconds) return '';
  const deadline = `the ${formatDeadline(seconds)} trial deadline`;
  return cameUp
    ? ` (${deadline} resets a trial that is not confirmed in time; a crash or a power cut ends it too)`
    : ` (a panic, an image GRUB could not load, or a hang that ${deadline} ended)`;
}

const DEVICE_RE = /^\/dev\/watchdog\d*$/;

/** The deadline this boot runs under: trial arguments on the command line and the device the initramfs armed. */
export async function armedDeadline(layout: Layout): Promise<{ trial: boolean; deadline?: number; device?: string }> {
  const cmdline = await fs.readFile(layout.cmdlineFile, 'utf8').catch(() => '');
  const { trial, deadline } = parseTrialBoot(cmdline);
  if (!trial) return { trial };
  const env = await fs.readFile(layout.initramfsEnv, 'utf8').catch(() => '');
  const device = /^UPGRADECTL_TRIAL_WATCHDOG=(.*)$/m.exec(env)?.[1]?.trim();
  return { trial, deadline, device: device && DEVICE_RE.test(device) ? device : undefined };
}

/**
 * Stop the trial's countdown with the watchdog's magic close. Never throws: it runs after the upgrade
 * is confirmed, and a countdown left running only costs one reboot, into the image now the default.
 */
export async function endTrialDeadline(layout: Layout): Promise<DeadlineEnd> {
  const armed = await armedDeadline(layout);
  if (!armed.trial) return { ended: false, why: 'not a trial boot: no deadline runs' };
  if (!armed.device) return { ended: false, why: 'the initramfs armed no deadline on this trial boot (see its console lines)' };
  const file = path.join(layout.root, armed.device);
  try {
    // O_WRONLY without O_CREAT: a missing device is reported, never created as a file.
    const handle = await fs.open(file, constants.O_WRONLY);
    try {
      await handle.write('V');
    } finally {
      await handle.close();
    }
  } catch (err) {
    const code = errnoOf(err);
    const why =
      code === 'EBUSY'
        ? `${armed.device} is held open by another program (systemd's RuntimeWatchdogSec= or a watchdog daemon), which now decides when the machine resets`
        : code === 'ENOENT'
          ? `${armed.device} is gone (softdog unloaded?)`
          : `cannot stop ${armed.device}: ${messageOf(err)}`;
    log.warn(`trial deadline: ${why}; if it still runs, the machine reboots once at the deadline, into the confirmed image`);
    return { ended: false, device: armed.device, why };
  }
  const why = `magic close on ${armed.device}${armed.deadline ? ` (deadline ${formatDeadline(armed.deadline)})` : ''}`;
  log.info(`trial deadline ended: ${why}`);
  return { ended: true, device: armed.device, why };
}
