import { promises as fs } from 'node:fs';
import { UpgradeError } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { mkdirPrivate } from '../core/private-files.js';
import { distroConfigFile, keepDistroConfig } from '../grub/distro-config.js';
import { adoptionFindings, type AdoptFinding } from './adopt-checks.js';
import { bootedVersion, writeBootFiles } from './boot.js';
import type { Config } from './config.js';
import { runEvent } from './lifecycle.js';
import { reconcile } from './reconcile/index.js';
import { loadState } from './state.js';

/**
 * `upgradectl adopt`: take over a running, traditionally installed machine without repartitioning
 * (docs/operators-guide.md, "Adopt"). Its root filesystem becomes the host partition. Adopting writes
 * two things only: a copy of the distribution's boot menu (the last fallback entry from the first commit
 * on) and `adopted` in the state. GRUB's own files are not touched until the first commit, so a machine
 * that is adopted and never committed boots the distribution exactly as before.
 */

export interface AdoptResult {
  dryRun: boolean;
  findings: AdoptFinding[];
  blocked: boolean;
  /** What adopt does (dry run) or did, in order. */
  actions: string[];
}

export async function adopt(layout: Layout, config: Config, opts: { dryRun: boolean; uid: number | undefined }): Promise<AdoptResult> {
  const before = await loadState(layout);
  const findings = await adoptionFindings(layout, config, before, opts.uid);
  const blocked = findings.some((f) => f.level === 'blocker');
  const actions = [
    `keep the distribution's boot menu ${layout.grubCfg} as ${distroConfigFile(layout)}`,
    `record the machine as adopted in ${layout.stateFile}`,
    `then: upgradectl prepare puts the first image in ${layout.imagesDir}; upgradectl commit migrates this system's files into it, writes upgradectl's grub.cfg with the distribution's menu as its last fallback entry, and trial-boots the image`,
  ];
  if (opts.dryRun || blocked) return { dryRun: opts.dryRun, findings, blocked, actions };
  await mkdirPrivate(layout.stateDir);
  await runEvent(layout, 'adopt-distro', async () => {
    // The copy first: a state that says "adopted" always has a menu to fall back to.
    const kept = await keepDistroConfig(layout);
    if (kept === 'missing') {
      throw new UpgradeError('GRUB', `${layout.grubCfg} could not be kept as the distribution's menu`, { hint: 'run update-grub, then upgradectl adopt again' });
    }
    return {
      reason: 'a traditional install taken over; its GRUB menu is the last fallback',
      detail: { distroConfig: distroConfigFile(layout), kept },
      update: (s) => void (s.adopted = { at: s.adopted?.at ?? new Date().toISOString(), distroConfig: distroConfigFile(layout) }),
    };
  });
  return { dryRun: false, findings, blocked, actions };
}

/**
 * `upgradectl adopt --finish`: the operator is done with the old system. Only from a confirmed image
 * that runs now: grub.cfg is rewritten without the distribution's entry, then the kept menu is removed.
 * The old system's files stay on the host partition (docs/operators-guide.md says which may go).
 */
export async function finishAdoption(layout: Layout, config: Config): Promise<{ removed: string; current: string }> {
  await reconcile(layout);
  let current = '';
  await runEvent(layout, 'finish-adoption', async (state) => {
    if (!state.adopted) throw new UpgradeError('STATE', 'this machine was not adopted: there is no distribution entry to remove', { hint: 'upgradectl status shows the machine' });
    const booted = await bootedVersion(layout);
    if (!state.current || booted !== state.current) {
      throw new UpgradeError('STATE', `the distribution entry is the only fallback until an image is confirmed and running (current: ${state.current ?? 'none'}, running: ${booted ?? "the distribution's system"})`, {
        hint: 'commit an image, let its trial boot confirm it, then run upgradectl adopt --finish on it',
      });
    }
    current = state.current;
    // grub.cfg without the entry first: removing the kept menu before would leave an entry that fails.
    await writeBootFiles(layout, config, { ...state, adopted: undefined });
    await fs.rm(distroConfigFile(layout), { force: true });
    return { version: state.current, reason: "the distribution's fallback entry was removed", update: (s) => void (s.adopted = undefined) };
  });
  return { removed: distroConfigFile(layout), current };
}
