import path from 'node:path';
import { readJsonIfExists, writeFileDurable } from '../core/durable.js';
import type { Layout } from '../core/layout.js';

/**
 * What the resident service last decided and what it will do next, for `status` and metrics:
 * `HOST/images/.upgradectl/service.json`, written by the daemon (root-only: check errors may quote a
 * server's words), read by anyone who runs `status` as root. Its own file, not the lifecycle's state:
 * the daemon rewrites it often, and a person's operation must never wait on it.
 */
export interface ServiceStatus {
  /** The service's main process (the supervisor; each pass runs in a short-lived child of it). */
  pid: number;
  startedAt: string;
  /** One line of what it is doing now: the supervisor relays it to systemd as STATUS=. */
  activity?: string;
  /** When the next check of the source or server is due (passes before it only commit or wait). */
  nextCheckAt?: string;
  /** Failed checks in a row: the retry backs off with it. */
  failures?: number;
  /** When the supervisor should run the next pass. */
  wakeAt?: string;
  /** Where the daemon learns of releases: the channel of [source], or a hawkBit server. */
  mode: 'channel' | 'hawkbit';
  /** The last time it asked what is new, and what it learned. */
  lastCheck?: { at: string; ok: boolean; result: string; hint?: string };
  /** The commit window and whether this machine is inside its part of it. */
  window?: { text: string; open: boolean; next: string; closes: string };
  /** What it will do next and when. */
  next?: { action: string; at: string };
  /** A download in progress: bytes, rate and the estimated end. */
  download?: { bytesDone: number; total: number; bytesPerSecond: number; etaSeconds: number | null; at: string };
  /** The last error, with the operator's next step. */
  lastError?: { at: string; message: string; hint?: string };
}

export function serviceStatusFile(layout: Layout): string {
  return path.join(layout.stateDir, 'service.json');
}

export async function writeServiceStatus(layout: Layout, status: ServiceStatus): Promise<void> {
  await writeFileDurable(serviceStatusFile(layout), `${JSON.stringify(status, null, 2)}\n`, 0o600);
}

/** The service's report, or undefined when no daemon ran (or it is unreadable: status still works). */
export async function readServiceStatus(layout: Layout): Promise<ServiceStatus | undefined> {
  return readJsonIfExists<ServiceStatus>(serviceStatusFile(layout)).catch(() => undefined);
}
