import notifyCli from 'systemd-notify';
import { messageOf } from '../core/errors.js';
import { run } from '../core/exec.js';
import { log } from '../core/log.js';

/**
 * sd_notify(3) for a Type=notify unit. The `systemd-notify` package sends READY=1 and STATUS= through
 * the systemd-notify CLI (with --pid, so NotifyAccess=all in the unit lets them through); it has no
 * watchdog call, so WATCHDOG=1 goes through the same CLI directly (FACTS.md). Outside systemd
 * (no NOTIFY_SOCKET) every call is a no-op. A failed notification is logged, never fatal: the service
 * works the same, only systemd's view of it is late.
 */
export class Notifier {
  private readonly enabled = Boolean(process.env.NOTIFY_SOCKET);
  private watchdogTimer: NodeJS.Timeout | undefined;
  private lastStatus = '';

  async ready(status: string): Promise<void> {
    if (!this.enabled) return;
    this.lastStatus = status;
    await notifyCli({ ready: true, status }).catch((err: unknown) => log.warn(`sd_notify READY=1 failed: ${messageOf(err)}`));
  }

  /** STATUS= line shown by systemctl status; repeated lines are not re-sent. */
  async status(text: string): Promise<void> {
    log.info(text);
    if (!this.enabled || text === this.lastStatus) return;
    this.lastStatus = text;
    await notifyCli({ status: text }).catch((err: unknown) => log.warn(`sd_notify STATUS failed: ${messageOf(err)}`));
  }

  /**
   * Pet systemd's watchdog at half the interval it asked for (WATCHDOG_USEC, set when the unit has
   * WatchdogSec=). The timer runs on the event loop, so a loop that hangs stops the pets and systemd
   * restarts the service: exactly what the watchdog is for.
   */
  startWatchdog(): void {
    const usec = Number(process.env.WATCHDOG_USEC);
    const forUs = !process.env.WATCHDOG_PID || Number(process.env.WATCHDOG_PID) === process.pid;
    if (!this.enabled || !Number.isFinite(usec) || usec <= 0 || !forUs) return;
    const pet = () => {
      run('systemd-notify', [`--pid=${process.pid}`, 'WATCHDOG=1']).catch((err: unknown) => log.warn(`sd_notify WATCHDOG=1 failed: ${messageOf(err)}`));
    };
    pet();
    this.watchdogTimer = setInterval(pet, Math.max(1000, Math.floor(usec / 2000)));
    this.watchdogTimer.unref();
  }

  async stopping(): Promise<void> {
    if (this.watchdogTimer) clearInterval(this.watchdogTimer);
    if (!this.enabled) return;
    await run('systemd-notify', [`--pid=${process.pid}`, 'STOPPING=1']).catch((err: unknown) => log.warn(`sd_notify STOPPING=1 failed: ${messageOf(err)}`));
  }
}
