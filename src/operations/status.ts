import { existsSync, promises as fs } from 'node:fs';
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
  /** Why the booted upgradectl image is not in the state, and what to do; null when it is (or none booted). */
  untracked: { reason: string; hint: string } | null;
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
    untracked: untrackedBoot(layout, state, booted),
  };
}

/**
 * The kernel command line names an upgradectl image that the state does not know. Reconciliation adopts
 * a booted image only when no current image is recorded and the file is on the host partition; say
 * which of the two failed, since upgradectl then refuses to change images.
 */
function untrackedBoot(layout: Layout, state: State, booted: string | undefined): MachineStatus['untracked'] {
  if (booted === undefined || [state.current, state.previous, state.next].includes(booted)) return null;
  const file = layout.imageFile(booted);
  if (!existsSync(file)) {
    const where = layout.host === layout.root
      ? `${path.join(layout.root, 'host/images')} does not exist, so the host partition was taken to be ${layout.root}`
      : `the host partition is ${layout.host}`;
    return {
      reason: `the booted image ${booted} has no record: ${file} is not on disk (${where})`,
      hint: layout.host === layout.root
        ? `check that the host partition is mounted at ${path.join(layout.root, 'host')} (findmnt ${path.join(layout.root, 'host')}), then run upgradectl status again`
        : `the image file was removed or renamed while booted; restore it, or reboot into ${state.current ?? 'an image on disk'}`,
    };
  }
  return {
    reason: `the booted image ${booted} has no record: the state's current image is ${state.current ?? 'unset'} (${booted} was picked by hand in the GRUB menu, or the state was replaced)`,
    hint: `reboot to return to ${state.current ?? 'the default image'}; upgradectl prepares, commits and rolls back only from an image it tracks`,
  };
}
