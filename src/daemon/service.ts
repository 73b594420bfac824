import { spawn, type ChildProcess } from 'node:child_process';
import { messageOf } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { log } from '../core/log.js';
import { loadConfig } from '../operations/config.js';
import { reconcile } from '../operations/reconcile/index.js';
import { readServiceStatus } from '../operations/service-status.js';
import { Notifier } from './notify.js';

/**
 * `upgradectl daemon`: keeps a machine current with nobody at the keyboard (docs/fleet.md).
 *
 * The resident process is a small supervisor: it reconciles what booted, tells systemd it is ready,
 * pets the watchdog, and runs each pass (pass.ts: check, prefetch, commit in the window, report) in a
 * short-lived child process of the same program. The child loads the HTTP client, the S3 SDK and the
 * frame workers and takes them away when it exits, so the service stays small while it waits — which is
 * nearly always (docs/performance.md: idle RSS). A pass that crashes is one failed pass, not a dead
 * service. SIGTERM is passed on to the pass, which stops a download at a frame boundary; SIGHUP checks
 * the config and runs a pass at once (every pass reads the config afresh).
 */
export interface DaemonOptions {
  /** One pass in this process, then exit (by hand, or a timer). It always checks. */
  once?: boolean;
  /** One pass as the supervisor's child: checks only when a check is due. */
  pass?: boolean;
}

/** Status lines of a running pass are relayed at this pace. */
const RELAY_MS = 5000;
/** A pass that never wrote when to wake: look again after this. */
const DEFAULT_SLEEP_MS = 15 * 60_000;

export async function runDaemon(layout: Layout, opts: DaemonOptions = {}): Promise<number> {
  if (opts.once || opts.pass) return runOnePass(layout, opts);
  const notify = new Notifier();
  const startedAt = new Date().toISOString();
  let stopping = false;
  let child: ChildProcess | undefined;
  let wake: (() => void) | undefined;
  const onTerm = () => {
    stopping = true;
    log.info('stopping: a download in progress stops at a frame boundary and resumes at the next start');
    child?.kill('SIGTERM');
    wake?.();
  };
  const onHup = () => {
    loadConfig(layout).then(
      () => log.info(`${layout.configFile} reads well; the next pass uses it`),
      (err: unknown) => log.error(`${messageOf(err)}; passes keep failing until it is fixed`),
    );
    wake?.();
  };
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onTerm);
  process.on('SIGHUP', onHup);
  try {
    await loadConfig(layout);
    // What booted decides everything after it: reconcile before telling systemd we are up.
    const state = await reconcile(layout);
    await notify.ready(`reconciled: ${state.phase}, current ${state.current ?? '-'}`);
    notify.startWatchdog();
    while (!stopping) {
      const code = await new Promise<number | null>((resolve) => {
        child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, '--root', layout.root, 'daemon', '--pass'], {
          // The pass must not speak to systemd itself: with --pid it would claim to be the main process.
          env: { ...process.env, NOTIFY_SOCKET: '', WATCHDOG_USEC: '', UPGRADECTL_SUPERVISOR: `${process.pid} ${startedAt}` },
          stdio: ['ignore', 'inherit', 'inherit'],
        });
        const relay = setInterval(() => void relayActivity(layout, notify), RELAY_MS);
        child.on('exit', (c) => {
          clearInterval(relay);
          resolve(c);
        });
        child.on('error', (err) => {
          clearInterval(relay);
          log.error(`could not start a pass: ${messageOf(err)}`);
          resolve(null);
        });
      });
      child = undefined;
      if (code !== 0 && !stopping) log.error(`a pass ended with exit status ${code}; the next one runs at its time`);
      const report = await relayActivity(layout, notify);
      if (stopping) break;
      const wakeAt = report?.wakeAt ? Date.parse(report.wakeAt) : Date.now() + DEFAULT_SLEEP_MS;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(1000, Math.min(wakeAt - Date.now(), DEFAULT_SLEEP_MS)));
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
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

async function relayActivity(layout: Layout, notify: Notifier) {
  const report = await readServiceStatus(layout);
  if (report?.activity) await notify.status(report.activity);
  return report;
}

async function runOnePass(layout: Layout, opts: DaemonOptions): Promise<number> {
  const stop = new AbortController();
  const onTerm = () => stop.abort();
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onTerm);
  try {
    const [pid, startedAt] = (process.env.UPGRADECTL_SUPERVISOR ?? '').split(' ');
    const { runPass } = await import('./pass.js');
    const report = await runPass(layout, {
      forceCheck: Boolean(opts.once),
      signal: stop.signal,
      supervisor: opts.pass && pid && startedAt ? { pid: Number(pid), startedAt } : undefined,
    });
    if (report.activity) log.info(report.activity);
    return 0;
  } finally {
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onTerm);
  }
}
