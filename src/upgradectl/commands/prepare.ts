import { existsSync } from 'node:fs';
import type { Command, CommandContext, CommandResult } from '../cli.js';
import { loadConfig } from '../../operations/config.js';
import { FramePool } from '../../release/frame-pool.js';
import { terminalProgress, fmtBytes } from '../progress-view.js';
import { trustPolicy, TRUST_OPTIONS } from './trust.js';

export const prepareCommand: Command = {
  summary: "download, verify, stage into HOST/images/<VERSION>.img (default: channel's newest)",
  usage: 'prepare [VERSION] [--allow-downgrade] [--allow-unsigned] [--allow-expired] [--force]',
  options: { ...TRUST_OPTIONS },
  async run(ctx) {
    const version = ctx.positionals[0];
    // A named version that is not on disk yet is almost always a download: the frame workers start
    // now and load their modules while this thread loads the operation and fetches and checks the
    // manifest (a traced 1 GiB prepare opened its staging file ~0.1 s sooner: docs/performance.md).
    // Without a version (the channel's newest) most runs find nothing to do, and those must not pay
    // ~0.1 s of CPU per thread for nothing.
    const pool = version !== undefined && !existsSync(ctx.layout.imageFile(version)) ? new FramePool() : undefined;
    pool?.start();
    try {
      return await prepare(ctx, pool);
    } finally {
      await pool?.close();
    }
  },
};

async function prepare({ layout, options, positionals }: CommandContext, pool: FramePool | undefined): Promise<CommandResult> {
  // Loaded after the workers were started: it is most of this command's start-up.
  const { prepareRelease } = await import('../../operations/prepare.js');
  const config = await loadConfig(layout);
  const controller = new AbortController();
  const stop = () => controller.abort();
  // Interrupted downloads stop at a frame boundary and save their progress; the next run resumes.
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const r = await prepareRelease({
      layout,
      config,
      version: positionals[0],
      policy: trustPolicy(options, config),
      progress: (total) => terminalProgress('downloading', total),
      signal: controller.signal,
      pool,
    });
    let text: string;
    if (r.action === 'prepared') {
      const s = r.stage;
      text = `prepared ${r.version}: ${r.image}\n  fetched ${fmtBytes(s.fetched)} in ${s.seconds.toFixed(1)} s (${fmtBytes(s.localBytes)} reused from local images, ${s.reusedFrames} frames resumed, ${s.holeFrames} zero frames skipped)${r.signedBy ? `\n  signed by ${r.signedBy}` : ''}\n  next: upgradectl commit`;
    } else if (r.action === 'already-prepared') {
      text = `${r.version} is already prepared at ${r.image}`;
    } else if (r.action === 'needs-reflash') {
      text = `nothing prepared: ${r.version} is a whole host partition, not an image (nothing downloaded)\n  next: ${r.hint}`;
    } else {
      text = `nothing to prepare: ${r.reason}`;
    }
    return { data: r, text };
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}
