import { statSync } from 'node:fs';
import path from 'node:path';
import { log } from './log.js';

/**
 * Test-only switches: environment variables that let tests and demos stop upgradectl from doing what
 * GRUB depends on (the freeze checkpoint), crash it at a named step, or reboot with a harmless command.
 * A variable left in a production environment (a copied shell profile, a unit's Environment=) must not
 * turn those off, so they are honoured only on a host partition that says it is a test machine: the
 * flag file `<host>/.upgradectl-test-mode`, which the test fixtures and the QEMU boot tests' disks
 * create. A machine whose host partition is `/` (installed without loop images) is never a test tree.
 * Ignored switches are logged once per process, so the operator sees why the variable had no effect.
 */
export type TestSwitchName = 'UPGRADECTL_NO_FREEZE' | 'UPGRADECTL_CRASH_AT' | 'UPGRADECTL_REBOOT_COMMAND';

export const TEST_MODE_FLAG = '.upgradectl-test-mode';

/** The flag file that enables the test switches on the host partition `hostDir` (Layout.host). */
export function testModeFlag(hostDir: string): string {
  return path.join(hostDir, TEST_MODE_FLAG);
}

export function testModeOn(hostDir: string): boolean {
  if (path.resolve(hostDir) === '/') return false;
  try {
    return statSync(testModeFlag(hostDir)).isFile();
  } catch {
    return false;
  }
}

const warned = new Set<string>();

/** The switch's value when it is set and honoured here, else undefined. */
export function testSwitch(hostDir: string, name: TestSwitchName): string | undefined {
  const value = process.env[name];
  if (value === undefined || value === '') return undefined;
  if (testModeOn(hostDir)) return value;
  if (!warned.has(name)) {
    warned.add(name);
    log.warn(`ignoring ${name}: it is a test-only switch, honoured only when ${testModeFlag(hostDir)} exists (docs/lifecycle.md)`);
  }
  return undefined;
}
