import { migrateIntoImage, type MigrationReport } from '../migrate/index.js';
import type { Layout } from '../core/layout.js';

/**
 * The one place commit calls migration (src/migrate, DESIGN.md §7). It writes only into the new image;
 * its errors (MigrationError, code 'MIGRATE') stop the commit before any boot file changes, with the
 * running system untouched.
 */
export function migrateForCommit(layout: Layout, imageFile: string, dryRun = false): Promise<MigrationReport> {
  return migrateIntoImage({ layout, imageFile, dryRun });
}
