import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { isUpgradeError, messageOf, type UpgradeError } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { log } from '../core/log.js';
import { commit } from '../operations/commit.js';
import { loadConfig, type Config } from '../operations/config.js';
import { prepareRelease, type PrepareResult } from '../operations/prepare.js';
import { reconcile } from '../operations/reconcile/index.js';
import { readServiceStatus, writeServiceStatus, type ServiceStatus } from '../operations/service-status.js';
import { loadState } from '../operations/state.js';
import { machineStatus } from '../operations/status.js';
import { Progress } from '../release/progress.js';
import { PollTimer } from './ddi/polling.js';
import { checkIn } from './hawkbit-pass.js';
import { renderMetrics, writeMetrics } from './metrics.js';
import { parseWindow, windowAt, type CommitWindow } from '../core/commit-window.js';

/**
 * One pass of the resident service: reconcile, check the source when a check is due (prefetching what
 * it offers), commit when a release is prepared and this machine's turn in the window has come, and
 * write down what it did and when the next pass is due (service.json, metrics). It reaches the machine
 * only through the operations the CLI uses, under the same lock. Runs in a short-lived child of the
 * supervisor (service.ts), so the HTTP client, the S3 SDK and the frame workers never stay resident.
 */
export interface PassOptions {
  /** Check now even if the last pass said a check is not due (`daemon --once` by hand). */
  forceCheck: boolean;
  signal: AbortSignal;
  /** The supervisor's pid and start, carried into service.json. */
  supervisor?: { pid: number; startedAt: string };
}

/** A lock held by a person's command, or a server that is down: try again after this. */
const RETRY_AFTER_MS = 60_000;
/** The longest the supervisor sleeps between passes: the window and the config may change meanwhile. */
const MAX_SLEEP_MS = 15 * 60_000;

export async function runPass(layout: Layout, opts: PassOptions): Promise<ServiceStatus> {
  const previous = await readServiceStatus(layout);
  const report: ServiceStatus = {
    pid: opts.supervisor?.pid ?? process.pid,
    startedAt: opts.supervisor?.startedAt ?? new Date().toISOString(),
    mode: 'channel',
    lastCheck: previous?.lastCheck,
    nextCheckAt: previous?.nextCheckAt,
    failures: previous?.failures ?? 0,
    lastError: previous?.lastError,
  };
  const activity = async (text: string) => {
    log.info(text);
    report.activity = text;
    await writeServiceStatus(layout, report).catch(() => undefined);
  };
  let config: Config | undefined;
  let wakeAt = Date.now() + MAX_SLEEP_MS;
  try {
    config = await loadConfig(layout);
    const machineId = (await readFile(path.join(layout.root, 'etc/machine-id'), 'utf8').catch(() => '')).trim();
    const window = commitWindow(config, layout);
    const state = await reconcile(layout);
    const checkDue = opts.forceCheck || !report.nextCheckAt || Date.now() >= Date.parse(report.nextCheckAt);
    if (config.hawkbit.url) {
      // The server decides when: check in whatever the phase (it may cancel, or wait for our report).
      report.mode = 'hawkbit';
      if (checkDue) {
        await activity(`checking in with ${config.hawkbit.url}`);
        // `update: attempt` waits for this machine's turn in the window; `never` leaves it to a forced update or a person.
        const localWindow = window
          ? { earliest: (at: Date) => { const w = windowAt(window, at, machineId); return w.open ? at : w.next; } }
          : { earliest: () => new Date(8.64e15) };
        const r = await checkIn(layout, config, { signal: opts.signal, window: localWindow, activity });
        report.lastCheck = { at: new Date().toISOString(), ok: true, result: r.summary };
        report.failures = 0;
        report.nextCheckAt = new Date(Date.now() + new PollTimer().afterSuccess(r.pollAgainMs)).toISOString();
        if (r.commitAt) wakeAt = Math.min(wakeAt, r.commitAt.getTime());
      }
    } else if ((state.phase === 'idle' || state.phase === 'rolled-back' || state.phase === 'prepared') && checkDue) {
      await activity(`checking ${config.source.url ?? '(no source)'} channel ${config.source.channel}`);
      const result = await prefetch(layout, config, opts.signal, report, activity);
      report.lastCheck = { at: new Date().toISOString(), ok: true, result: describe(result) };
      report.failures = 0;
      report.nextCheckAt = new Date(Date.now() + jittered(config.daemon.checkInterval * 1000)).toISOString();
    }
    const now = await loadState(layout);
    if (window) {
      const w = windowAt(window, new Date(), machineId);
      report.window = { text: window.text, open: w.open, next: w.next.toISOString(), closes: w.closes.toISOString() };
    }
    if (report.mode === 'hawkbit') {
      // Commits follow the server's deployment (checkIn); between check-ins there is only waiting.
      report.next = { action: 'check in', at: report.nextCheckAt ?? new Date().toISOString() };
      report.activity = `${now.phase}: current ${now.current ?? '-'}; ${report.lastCheck?.result ?? ''}; next check-in at ${report.next.at}`;
    } else if (now.phase === 'prepared' && window && !opts.signal.aborted) {
      const w = windowAt(window, new Date(), machineId);
      if (w.open) {
        report.next = { action: `commit ${now.next} and reboot`, at: new Date().toISOString() };
        await activity(`committing ${now.next} inside the window ${window.text}; rebooting into its trial`);
        await commit(layout, config, { reboot: true });
      } else {
        wakeAt = Math.min(wakeAt, w.next.getTime());
        report.next = { action: `commit ${now.next}`, at: w.next.toISOString() };
        report.activity = `${now.next} is prepared; commit at ${w.next.toISOString()} (window ${window.text})`;
      }
    } else if (now.phase === 'prepared') {
      report.next = { action: `${now.next} is prepared; automatic commits are off ([window] commit = never): run upgradectl commit`, at: report.nextCheckAt ?? new Date().toISOString() };
      report.activity = `${now.next} is prepared; waiting for a person to commit it`;
    } else {
      report.next = { action: 'check for a new release', at: report.nextCheckAt ?? new Date().toISOString() };
      report.activity = `${now.phase}: current ${now.current ?? '-'}; next check at ${report.next.at}`;
    }
  } catch (err) {
    if (!(opts.signal.aborted && isUpgradeError(err, 'INTERRUPTED'))) {
      report.failures = (report.failures ?? 0) + 1;
      const interval = (config?.daemon.checkInterval ?? 3600) * 1000;
      // hawkBit's 429 Retry-After and its backoff come from the DDI poll timer, jitter included.
      const retryMs = isUpgradeError(err, 'LOCKED')
        ? jittered(RETRY_AFTER_MS)
        : config?.hawkbit.url
          ? new PollTimer({ failures: report.failures - 1 }).afterFailure(err)
          : jittered(Math.min(interval, RETRY_AFTER_MS * 2 ** Math.min(report.failures - 1, 6)));
      report.lastError = { at: new Date().toISOString(), message: messageOf(err), hint: (err as UpgradeError).hint };
      report.lastCheck = { at: new Date().toISOString(), ok: false, result: messageOf(err), hint: (err as UpgradeError).hint };
      report.nextCheckAt = new Date(Date.now() + retryMs).toISOString();
      report.next = { action: 'retry', at: report.nextCheckAt };
      report.activity = `${messageOf(err)}; retrying at ${report.nextCheckAt}`;
      log.error(`${messageOf(err)}${(err as UpgradeError).hint ? ` (${(err as UpgradeError).hint})` : ''}`);
    }
  }
  if (report.nextCheckAt) wakeAt = Math.min(wakeAt, Date.parse(report.nextCheckAt));
  report.wakeAt = new Date(wakeAt).toISOString();
  report.download = undefined;
  await saveReport(layout, config, report);
  return report;
}

async function prefetch(layout: Layout, config: Config, signal: AbortSignal, report: ServiceStatus, activity: (text: string) => Promise<void>): Promise<PrepareResult> {
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
        void activity(`downloading: ${(p.fraction * 100).toFixed(0)}% of ${(p.total / 1048576).toFixed(0)} MiB at ${(p.rate / 1048576).toFixed(1)} MiB/s`);
      });
      return progress;
    },
  });
}

function describe(r: PrepareResult): string {
  if (r.action === 'prepared') return `prepared ${r.version} (${r.stage.fetched} bytes fetched)`;
  if (r.action === 'already-prepared') return `${r.version} is already prepared`;
  if (r.action === 'needs-reflash') return `${r.version} needs a full reflash, which the daemon never starts on its own: ${r.hint}`;
  return `nothing to do: ${r.reason}`;
}

function commitWindow(config: Config, layout: Layout): CommitWindow | undefined {
  const text = config.window.commit;
  if (text === 'never') return undefined;
  return parseWindow(text, `${layout.configFile} [window] commit`);
}

async function saveReport(layout: Layout, config: Config | undefined, report: ServiceStatus): Promise<void> {
  try {
    await writeServiceStatus(layout, report);
    if (config?.metrics.textfile) {
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
