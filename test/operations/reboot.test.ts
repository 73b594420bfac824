import t from 'tap';
import { chmodSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseConfig } from '../../src/operations/config.js';
import { rebootMachine } from '../../src/operations/reboot.js';

// Found in the VM (boot scenario 8): `systemctl reboot` run by the daemon is stopped by the very
// shutdown it started (SIGTERM to the service's cgroup). That is the reboot under way, not a failure —
// reporting it as one told the fleet server the upgrade had failed while the trial booted fine.
function command(dir: string, name: string, body: string): string {
  const file = path.join(dir, name);
  writeFileSync(file, `#!/bin/sh\n${body}\n`);
  chmodSync(file, 0o755);
  return file;
}

t.test('a reboot command stopped by SIGTERM or SIGKILL is a reboot under way', async (t) => {
  const dir = t.testdir();
  for (const sig of ['TERM', 'KILL']) {
    const config = parseConfig(`[boot]\nreboot_command = ${command(dir, `stopped-${sig}`, `kill -${sig} $$`)}\n`);
    t.resolves(rebootMachine(config, 'test'), `SIG${sig}`);
  }
});

t.test('a reboot command that fails on its own is an error that says what to do', async (t) => {
  const dir = t.testdir();
  const config = parseConfig(`[boot]\nreboot_command = ${command(dir, 'fails', 'echo "Failed to connect to bus" >&2; exit 1')}\n`);
  await t.rejects(rebootMachine(config, 'test'), { code: 'EXEC', message: /could not reboot .*Failed to connect to bus/, hint: /reboot the machine by hand/ });
});
