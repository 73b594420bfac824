import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { isUpgradeError, messageOf, type UpgradeError } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { log } from '../core/log.js';
import { commit } from '../operations/commit.js';
import { loadConfig, type Config } from '../operations/config.js';
import { prepareRelease, type PrepareResult } from '../operations/prepare.js';
import { Progress } from '../release/progress.js';
import { reconcile } from '../operations/reconcile/index.js';
import { writeServiceStatus, type ServiceStatus } from '../operations/service-status.js';
import { loadState } from '../operations/state.js';
import { machineStatus } from '../operations/status.js';
import { renderMetrics, writeMetrics } from './metrics.js';
import { Notifier } from './notify.js';
import { parseWindow, windowAt, type CommitWindow } from './window.js';

/**
 * `upgradectl daemon`: keeps a machine current with nobody at the keyboard. It learns of releases from
 * the channel of [source] (a signed pointer with rollout rules), prefetches at low priority (the unit's
 * idle I/O class and nice, plus [prepare] max_rate), commits only inside this machine's part of the
 * operator's window, and lets the boot's confirm unit judge the trial. It reaches the machine only
 * through the same operations as the CLI, under the same lock: a person's command and the daemon never
 * run at once, and each says who holds the lock.
 *
 * One pass (tick) reads the state and does at most one thing; between passes it sleeps until the next
 * thing is due, woken early by SIGHUP (reload the config) or SIGTERM (stop at a resumable point).
 */
export interface DaemonOptions {
  /** One pass, then exit (timers, tests, `--once` by hand). */
  once?: boolean;
}

/** A lock held by a person's command, or a server that is down: try again after this. */
const RETRY_AFTER_MS = 60_000;
/** The longest single sleep: the window and the config may change under a sleeping daemon. */
const MAX_SLEEP_MS = 15 * 60_000;

export async function runDaemon(layout: Layout, opts: DaemonOptions = {}): Promise<number> {
  const notify = new Notifier();
  const stop = new AbortController();
  let wake: (() => void) | undefined;
  let reload = false;
  const onTerm = () => {
    log.info('stopping: a download in progress stops at a frame boundary and resumes at the next start');
    stop.abort();
    wake?.();
  };
  const onHup = () => {
    reload = true;
    wake?.();
  };
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onTerm);
  process.on('SIGHUP', onHup);
  try {
    let config = await loadConfig(layout);
    const machineId = await readMachineId(layout);
    // What booted decides everything after it: reconcile before telling systemd we are up.
    await reconcile(layout);
    const report: ServiceStatus = { pid: process.pid, startedAt: new Date().toISOString(), mode: 'channel' };
    let nextCheck = Date.now() + (opts.once ? 0 : startupDelay(config));
    let failures = 0;
    await notify.ready('reconciled; idle');
    notify.startWatchdog();

    while (!stop.signal.aborted) {
      if (reload) {
        reload = false;
        try {
          config = await loadConfig(layout);
          log.info(`reloaded ${layout.configFile}`);
        } catch (err) {
          // Keep running on the config that worked: a typo must not stop a fleet's upgrades.
          noteError(report, err);
          log.error(`${messageOf(err)}; keeping the configuration loaded before`);
        }
      }
      const window = commitWindow(config, layout);
      let wakeAt = Date.now() + MAX_SLEEP_MS;
      try {
        const state = await reconcile(layout);
        if (window) {
          const w = windowAt(window, new Date(), machineId);
          report.window = { text: window.text, open: w.open, next: w.next.toISOString(), closes: w.closes.toISOString() };
        }
        if ((state.phase === 'idle' || state.phase === 'rolled-back' || state.phase === 'prepared') && Date.now() >= nextCheck) {
          await notify.status(`checking ${config.source.url ?? '(no source)'} channel ${config.source.channel}`);
          const result = await prefetch(layout, config, stop.signal, report, notify);
          report.lastCheck = { at: new Date().toISOString(), ok: true, result: describe(result) };
          failures = 0;
          nextCheck = Date.now() + jittered(config.daemon.checkInterval * 1000);
        }
        const now = await loadState(layout);
        if (now.phase === 'prepared' && window && !stop.signal.aborted) {
          const w = windowAt(window, new Date(), machineId);
          if (w.open) {
            await notify.status(`committing ${now.next} inside the window ${window.text}; rebooting into its trial`);
            report.next = { action: `commit ${now.next} and reboot`, at: new Date().toISOString() };
            await saveReport(layout, config, report);
            await commit(layout, config, { reboot: true });
            // systemd stops us for the reboot; until then there is nothing left to do.
            wakeAt = Date.now() + MAX_SLEEP_MS;
          } else {
            wakeAt = Math.min(wakeAt, w.next.getTime());
            report.next = { action: `commit ${now.next}`, at: w.next.toISOString() };
            await notify.status(`${now.next} is prepared; commit at ${w.next.toISOString()} (window ${window.text})`);
          }
        } else if (now.phase === 'prepared') {
          report.next = { action: `${now.next} is prepared; automatic commits are off ([window] commit = never): run upgradectl commit`, at: new Date(nextCheck).toISOString() };
        } else {
          report.next = { action: 'check for a new release', at: new Date(nextCheck).toISOString() };
          await notify.status(`${now.phase}: current ${now.current ?? '-'}; next check at ${new Date(nextCheck).toISOString()}`);
        }
      } catch (err) {
        if (stop.signal.aborted && isUpgradeError(err, 'INTERRUPTED')) break;
        failures++;
        noteError(report, err);
        const retryMs = isUpgradeError(err, 'LOCKED') ? RETRY_AFTER_MS : Math.min(config.daemon.checkInterval * 1000, RETRY_AFTER_MS * 2 ** Math.min(failures - 1, 6));
        report.lastCheck = { at: new Date().toISOString(), ok: false, result: messageOf(err), hint: (err as UpgradeError).hint };
        nextCheck = Date.now() + jittered(retryMs);
        report.next = { action: 'retry', at: new Date(nextCheck).toISOString() };
        await notify.status(`${messageOf(err)}; retrying at ${new Date(nextCheck).toISOString()}`);
      }
      wakeAt = Math.min(wakeAt, nextCheck);
      report.download = undefined;
      await saveReport(layout, config, report);
      if (opts.once || stop.signal.aborted) break;
      await sleepUntil(wakeAt, stop.signal, (w) => (wake = w));
      wake = undefined;
    }
    await notify.stopping();
    return 0;
  } finally {
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onTerm);
    process.off('SIGHUP', onHup);
  }
}

async function prefetch(layout: Layout, config: Config, signal: AbortSignal, report: ServiceStatus, notify: Notifier): Promise<PrepareResult> {
  return prepareRelease({
    layout,
    config,
    policy: { allowDowngrade: config.prepare.allowDowngrade, allowUnsigned: config.prepare.allowUnsigned, allowExpired: false, force: false },
    signal,
    progress: (total) => {
      const progress = new Progress('downloading', total);
      let lastReport = 0;
      progress.onChange((p) => {
        const now = Date.now();
        if (now - lastReport < 5000 && p.done < p.total) return;
        lastReport = now;
        const eta = p.etaSeconds;
        report.download = { bytesDone: p.done, total: p.total, bytesPerSecond: Math.round(p.rate), etaSeconds: eta === undefined ? null : Math.round(eta), at: new Date().toISOString() };
        void notify.status(`downloading: ${(p.fraction * 100).toFixed(0)}% of ${(p.total / 1048576).toFixed(0)} MiB at ${(p.rate / 1048576).toFixed(1)} MiB/s`);
        void writeServiceStatus(layout, report).catch(() => undefined);
      });
      return progress;
    },
  });
}

function describe(r: PrepareResult): string {
  if (r.action === 'prepared') return `prepared ${r.version} (${r.stage.fetched} bytes fetched)`;
  if (r.action === 'already-prepared') return `${r.version} is already prepared`;
  return `nothing to do: ${r.reason}`;
}

function commitWindow(config: Config, layout: Layout): CommitWindow | undefined {
  const text = config.window.commit;
  if (text === 'never') return undefined;
  return parseWindow(text, `${layout.configFile} [window] commit`);
}

function noteError(report: ServiceStatus, err: unknown): void {
  report.lastError = { at: new Date().toISOString(), message: messageOf(err), hint: (err as UpgradeError).hint };
  log.error(`${messageOf(err)}${(err as UpgradeError).hint ? ` (${(err as UpgradeError).hint})` : ''}`);
}

async function saveReport(layout: Layout, config: Config, report: ServiceStatus): Promise<void> {
  try {
    await writeServiceStatus(layout, report);
    if (config.metrics.textfile) {
      const status = await machineStatus(layout);
      const { history } = await loadState(layout);
      await writeMetrics(path.join(layout.root, config.metrics.textfile), renderMetrics(status, history, report));
    }
  } catch (err) {
    log.warn(`could not write the service status or metrics: ${messageOf(err)}`);
  }
}

/** ±20 % so that a fleet started together does not ask the server together ever after. */
function jittered(ms: number): number {
  return Math.round(ms * (0.8 + Math.random() * 0.4));
}

/** The first check waits a random part of [daemon] startup_delay: a fleet powered on together spreads out. */
function startupDelay(config: Config): number {
  return Math.round(Math.random() * config.daemon.startupDelay * 1000);
}

async function readMachineId(layout: Layout): Promise<string> {
  return (await readFile(path.join(layout.root, 'etc/machine-id'), 'utf8').catch(() => '')).trim();
}

function sleepUntil(at: number, signal: AbortSignal, setWake: (wake: () => void) => void): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(resolve, Math.max(0, Math.min(at - Date.now(), MAX_SLEEP_MS)));
    setWake(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
