import { readFileSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Layout } from '../../core/layout.js';
import { bootedVersion } from '../../operations/boot.js';
import { loadState } from '../../operations/state.js';

/**
 * The controller attributes upgradectl reports (`PUT …/configData`): enough for a fleet operator to
 * see what a machine runs and whether it has room for the next image, without logging in. Values are
 * strings (hawkBit's attribute map); unknown ones are left out rather than sent empty.
 */
export async function machineAttributes(layout: Layout): Promise<Record<string, string>> {
  // Read-only: reporting must not take the operation lock or move the lifecycle.
  const [state, booted, machineId, free] = await Promise.all([
    loadState(layout),
    bootedVersion(layout).catch(() => undefined),
    fs.readFile(path.join(layout.root, 'etc/machine-id'), 'utf8').then((s) => s.trim(), () => ''),
    fs.statfs(layout.imagesDir).then((s) => s.bavail * s.bsize, () => undefined),
  ]);
  const attributes: Record<string, string | undefined> = {
    hostname: os.hostname(),
    machine_id: machineId || undefined,
    booted_version: booted,
    current_version: state.current,
    previous_version: state.previous,
    upgradectl_version: upgradectlVersion(),
    images_free_bytes: free === undefined ? undefined : String(free),
  };
  return Object.fromEntries(Object.entries(attributes).filter((e): e is [string, string] => e[1] !== undefined && e[1] !== ''));
}

let ownVersion: string | undefined;

/** This program's version, from the package.json two levels above this file in src/ and dist/ alike. */
export function upgradectlVersion(): string {
  if (ownVersion === undefined) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
      ownVersion = typeof pkg.version === 'string' ? pkg.version : 'unknown';
    } catch {
      ownVersion = 'unknown';
    }
  }
  return ownVersion;
}
