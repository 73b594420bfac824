import t from 'tap';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Layout } from '../../src/core/layout.js';
import { testModeFlag, testSwitch } from '../../src/core/test-switches.js';
import { crashPoint } from '../../src/operations/lifecycle.js';
import { loadConfig } from '../../src/operations/config.js';
import { captureLog } from '../helpers/log-capture.js';

/**
 * Test-only switches are honoured only on a test machine (HOST/.upgradectl-test-mode); a production
 * run with the variable set ignores it and says so. (The freeze switch is tested on a real mounted
 * filesystem in test/grub/host-fs.test.ts.)
 */

function machine(dir: string, testMode: boolean): Layout {
  mkdirSync(path.join(dir, 'etc/upgradectl'), { recursive: true });
  writeFileSync(path.join(dir, 'etc/upgradectl/upgradectl.conf'), '[boot]\nreboot_command = systemctl reboot\n');
  const layout = new Layout(dir);
  if (testMode) writeFileSync(testModeFlag(layout.host), '');
  return layout;
}

function withEnv(name: string, value: string): () => void {
  const before = process.env[name];
  process.env[name] = value;
  return () => {
    if (before === undefined) delete process.env[name];
    else process.env[name] = before;
  };
}

t.test('UPGRADECTL_CRASH_AT without the flag: crashPoint does nothing (and the process lives on)', async (t) => {
  t.teardown(withEnv('UPGRADECTL_CRASH_AT', 'commit:armed'));
  const layout = machine(t.testdir(), false);
  // Were the switch honoured, this would exit(137) and end the test run right here.
  const { lines } = await captureLog(() => crashPoint('commit:armed', layout));
  t.match(lines.join('\n'), /ignoring UPGRADECTL_CRASH_AT: it is a test-only switch, honoured only when .*\.upgradectl-test-mode exists/);
});

t.test('UPGRADECTL_REBOOT_COMMAND without the flag: the configured reboot command stays', async (t) => {
  t.teardown(withEnv('UPGRADECTL_REBOOT_COMMAND', 'true'));
  t.equal((await loadConfig(machine(t.testdir(), false))).boot.rebootCommand, 'systemctl reboot');
  t.equal((await loadConfig(machine(t.testdir(), true))).boot.rebootCommand, 'true', 'honoured on a test machine');
});

t.test('testSwitch: honoured with the flag, never on a host that is /, empty means unset', async (t) => {
  t.teardown(withEnv('UPGRADECTL_NO_FREEZE', '1'));
  const test = machine(t.testdir(), true);
  t.equal(testSwitch(test.host, 'UPGRADECTL_NO_FREEZE'), '1');
  t.equal(testSwitch(machine(t.testdir(), false).host, 'UPGRADECTL_NO_FREEZE'), undefined);
  t.equal(testSwitch('/', 'UPGRADECTL_NO_FREEZE'), undefined, 'the real root is never a test tree');
  process.env.UPGRADECTL_NO_FREEZE = '';
  t.equal(testSwitch(test.host, 'UPGRADECTL_NO_FREEZE'), undefined);
});
