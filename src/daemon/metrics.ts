import { promises as fs } from 'node:fs';
import path from 'node:path';
import { writeFileDurable } from '../core/durable.js';
import type { MachineStatus } from '../operations/status.js';
import type { HistoryEntry } from '../operations/state.js';
import { PHASES } from '../operations/state.js';
import type { ServiceStatus } from '../operations/service-status.js';

/**
 * Prometheus text format (exposition format 0.0.4) for node_exporter's textfile collector: the file
 * is replaced atomically (write, fsync, rename), as the collector's documentation asks, so a scrape
 * never reads half a file. Counts come from the recorded history, which keeps the last 100 events:
 * they are gauges over that history, not counters since install.
 */

function labels(l: Record<string, string>): string {
  const body = Object.entries(l)
    .map(([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`)
    .join(',');
  return body ? `{${body}}` : '';
}

class Exposition {
  private lines: string[] = [];
  metric(name: string, type: 'gauge' | 'counter', help: string, samples: Array<[Record<string, string>, number]>): void {
    this.lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [l, v] of samples) this.lines.push(`${name}${labels(l)} ${Number.isFinite(v) ? v : 'NaN'}`);
  }
  text(): string {
    return `${this.lines.join('\n')}\n`;
  }
}

const seconds = (iso: string | undefined) => (iso ? Date.parse(iso) / 1000 : NaN);

function lastOk(history: HistoryEntry[], events: string[]): number {
  const e = [...history].reverse().find((h) => h.ok && events.includes(h.event));
  return seconds(e?.at);
}

export function renderMetrics(status: MachineStatus, history: HistoryEntry[], daemon: ServiceStatus | undefined): string {
  const x = new Exposition();
  const v = (s: string | null) => s ?? '';
  x.metric('upgradectl_info', 'gauge', 'The images this machine runs and keeps (value is always 1).', [
    [{ booted: v(status.booted), current: v(status.current), previous: v(status.previous), next: v(status.next) }, 1],
  ]);
  x.metric('upgradectl_phase', 'gauge', 'The lifecycle phase: 1 for the current one.', PHASES.map((p) => [{ phase: p }, p === status.phase ? 1 : 0]));
  x.metric('upgradectl_bad_versions', 'gauge', 'Versions whose trial failed and that are never offered again.', [[{}, Object.keys(status.bad).length]]);
  const fetched = history.reduce((n, h) => n + (typeof h.detail?.fetched === 'number' ? h.detail.fetched : 0), 0);
  x.metric('upgradectl_fetched_bytes_recent', 'gauge', 'Payload bytes downloaded by the prepares in the recorded history.', [[{}, fetched]]);
  x.metric('upgradectl_last_success_timestamp_seconds', 'gauge', 'When each operation last succeeded.', [
    [{ operation: 'prepare' }, lastOk(history, ['prepare'])],
    [{ operation: 'commit' }, lastOk(history, ['commit'])],
    [{ operation: 'confirm' }, lastOk(history, ['confirm-ok'])],
  ]);
  const failures = new Map<string, number>();
  for (const h of history) if (!h.ok) failures.set(h.event, (failures.get(h.event) ?? 0) + 1);
  x.metric('upgradectl_failures_recent', 'gauge', 'Failed events in the recorded history, by event.', [...failures].map(([event, n]) => [{ event }, n]));
  const trials = { confirmed: 0, failed: 0 };
  for (const h of history) {
    if (h.event === 'confirm-ok') trials.confirmed++;
    if (h.event === 'confirm-failed' || h.event === 'boot-old') trials.failed++;
  }
  x.metric('upgradectl_trials_recent', 'gauge', 'Trial boots in the recorded history, by outcome.', [
    [{ outcome: 'confirmed' }, trials.confirmed],
    [{ outcome: 'failed' }, trials.failed],
  ]);
  if (daemon) {
    x.metric('upgradectl_last_check_timestamp_seconds', 'gauge', 'When the daemon last asked its source or server what is new.', [[{}, seconds(daemon.lastCheck?.at)]]);
    x.metric('upgradectl_last_check_success', 'gauge', '1 when the last check succeeded.', [[{}, daemon.lastCheck ? (daemon.lastCheck.ok ? 1 : 0) : NaN]]);
  }
  return x.text();
}

/** Replace the textfile atomically; a missing collector directory is created (0755: node_exporter reads it). */
export async function writeMetrics(file: string, text: string): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o755 });
  await writeFileDurable(file, text, 0o644);
}
