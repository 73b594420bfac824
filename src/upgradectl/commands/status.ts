import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Command } from '../cli.js';
import { reconcile } from '../../operations/reconcile.js';
import type { Layout } from '../../core/layout.js';
import { bootedVersion } from '../../grub/boot-control.js';
import { fmtBytes } from '../progress-view.js';
import { readStagingProgress } from '../../release/stage.js';

interface Download {
  version: string;
  bytesDone: number;
  total: number;
  updatedAt: string;
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

async function images(layout: Layout): Promise<Array<{ version: string; bytes: number; allocated: number }>> {
  const out = [];
  for (const name of (await fs.readdir(layout.imagesDir).catch(() => [] as string[])).sort()) {
    if (!name.endsWith('.img')) continue;
    const st = await fs.stat(path.join(layout.imagesDir, name));
    out.push({ version: name.slice(0, -4), bytes: st.size, allocated: st.blocks * 512 });
  }
  return out;
}

export const statusCommand: Command = {
  summary: 'phase, booted/current/previous/next, progress, last result and its reason',
  usage: 'status',
  async run({ layout }) {
    // What actually booted may have moved the lifecycle on (trial came up, or GRUB fell back).
    const state = await reconcile(layout);
    const booted = await bootedVersion(layout);
    const [dl, imgs] = await Promise.all([downloads(layout), images(layout)]);
    const last = state.history.at(-1);
    const data = {
      phase: state.phase,
      booted: booted ?? null,
      current: state.current ?? null,
      previous: state.previous ?? null,
      next: state.next ?? null,
      bad: state.bad,
      downloads: dl,
      images: imgs,
      last: last ?? null,
      host: layout.host,
    };
    const lines = [
      `phase:    ${state.phase}`,
      `booted:   ${booted ?? '(not booted from an image)'}`,
      `current:  ${state.current ?? '-'}`,
      `previous: ${state.previous ?? '-'}`,
      `next:     ${state.next ?? '-'}`,
    ];
    for (const d of dl) {
      lines.push(`download: ${d.version} ${fmtBytes(d.bytesDone)} of ${fmtBytes(d.total)} (${d.total ? ((d.bytesDone / d.total) * 100).toFixed(0) : 0}%), last progress ${d.updatedAt}`);
    }
    if (imgs.length) lines.push(`images:   ${imgs.map((i) => `${i.version} (${fmtBytes(i.allocated)})`).join(', ')}`);
    const bad = Object.entries(state.bad);
    if (bad.length) lines.push(`failed:   ${bad.map(([v, b]) => `${v}: ${b.reason}`).join('; ')}`);
    if (last) lines.push(`last:     ${last.at} ${last.event} ${last.ok ? 'ok' : 'FAILED'}${last.version ? ` (${last.version})` : ''}${last.reason ? `: ${last.reason}` : ''}`);
    return { data, text: lines.join('\n') };
  },
};
