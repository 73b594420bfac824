import { promises as fs } from 'node:fs';
import path from 'node:path';
import { UpgradeError, errnoOf, explainSystemError, messageOf } from '../core/errors.js';
import type { Layout } from '../core/layout.js';

/**
 * Prove that a download can end the way it must, before any byte is fetched: a file created under
 * HOST/images/.staging and renamed into HOST/images. A read-only host, an immutable images/ or a
 * .staging on another filesystem (rename fails with EXDEV) would otherwise fail only after the whole
 * image was downloaded and verified.
 */
export async function checkImagesWritable(layout: Layout): Promise<void> {
  const probe = `.write-probe-${process.pid}`;
  const staged = path.join(layout.stagingDir, probe);
  const renamed = path.join(layout.imagesDir, probe);
  try {
    await fs.mkdir(layout.stagingDir, { recursive: true });
    await fs.writeFile(staged, '', { mode: 0o600 });
    await fs.rename(staged, renamed);
  } catch (err) {
    const explained = explainSystemError(err);
    throw new UpgradeError(explained?.code ?? 'IO', `cannot stage images under ${layout.imagesDir}: ${explained?.message ?? messageOf(err)}; nothing was downloaded`, {
      cause: err,
      hint: errnoOf(err) === 'EXDEV'
        ? `${layout.stagingDir} must be on the same filesystem as ${layout.imagesDir}: remove the separate mount there`
        : explained?.hint ?? `check that ${layout.imagesDir} is a writable directory on the host partition`,
    });
  } finally {
    await Promise.all([fs.rm(staged, { force: true }), fs.rm(renamed, { force: true })]).catch(() => undefined);
  }
}
