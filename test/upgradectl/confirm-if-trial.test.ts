import t from 'tap';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { upgradectl } from '../helpers/cli.js';

// The boot unit runs `confirm --if-trial` on every boot: outside a trial it must succeed quietly,
// while a plain `confirm` there is an operator mistake and says so.
t.test('confirm --if-trial is a no-op outside a trial boot; plain confirm is an error', async (t) => {
  const root = t.testdir();
  mkdirSync(path.join(root, 'images/.upgradectl'), { recursive: true });
  mkdirSync(path.join(root, 'proc'), { recursive: true });
  writeFileSync(path.join(root, 'proc/cmdline'), 'root=UUID=x upgradectl.loop=/images/1.0.img ro\n');
  writeFileSync(path.join(root, 'images/.upgradectl/state.json'), JSON.stringify({ schema: 1, phase: 'idle', current: '1.0', bad: {}, history: [] }));
  const quiet = await upgradectl(['--root', root, '--json', 'confirm', '--if-trial', '--no-reboot']);
  t.equal(quiet.code, 0, quiet.stderr);
  t.match(quiet.json, { event: 'none', phase: 'idle' });
  const loud = await upgradectl(['--root', root, '--json', 'confirm', '--no-reboot']);
  t.not(loud.code, 0);
  t.equal(loud.json?.error?.code, 'STATE');
  t.ok(loud.json.error.hint, 'says what to do instead');
});
