import { promises as fs } from 'node:fs';
import path from 'node:path';
import { listImages, type ImageFile } from '../core/images.js';
import type { Layout } from '../core/layout.js';
import { readStagingProgress } from '../release/stage.js';
import { bootedVersion } from './boot.js';
import { reconcile } from './reconcile/index.js';
import { readServiceStatus, type ServiceStatus } from './service-status.js';
import type { HistoryEntry, State } from './state.js';

export interface Download {
  version: string;
  bytesDone: number;
  total: number;
  updatedAt: string;
}

export interface MachineStatus {
  phase: State['phase'];
  booted: string | null;
  current: string | null;
  previous: string | null;
  next: string | null;
  bad: State['bad'];
  downloads: Download[];
  images: Array<Omit<ImageFile, 'file'>>;
  last: HistoryEntry | null;
  host: string;
  /** What the resident service last did and will do next (absent when no daemon ran). */
  service: ServiceStatus | null;
}

/** Downloads in progress or interrupted, from their progress files under .staging. */
async function downloads(layout: Layout): Promise<Download[]> {
  const out: Download[] = [];
  for (const name of await fs.readdir(layout.stagingDir).catch(() => [] as string[])) {
    if (!name.endsWith('.progress.json')) continue;
    // Unreadable (being replaced right now): the next status shows it.
    const p = await readStagingProgress(path.join(layout.stagingDir, name));
    if (p) out.push({ version: name.slice(0, -'.progress.json'.length), bytesDone: p.bytesDone, total: p.imageSize, updatedAt: p.updatedAt });
  }
  return out;
}

/** The machine as it is: reconciled first, since what actually booted may have moved the lifecycle on. */
export async function machineStatus(layout: Layout): Promise<MachineStatus> {
  const state = await reconcile(layout);
  const booted = await bootedVersion(layout);
  const [dl, imgs, service] = await Promise.all([downloads(layout), listImages(layout), readServiceStatus(layout)]);
  return {
    phase: state.phase,
    booted: booted ?? null,
    current: state.current ?? null,
    previous: state.previous ?? null,
    next: state.next ?? null,
    bad: state.bad,
    downloads: dl,
    images: imgs.map(({ version, bytes, allocated }) => ({ version, bytes, allocated })),
    last: state.history.at(-1) ?? null,
    host: layout.host,
    service: service ?? null,
  };
}
