import t from 'tap';
import { runCli, type CommandTable } from '../../src/upgradectl/cli.js';

t.test('a command name is looked up among the commands only, never on Object.prototype', async (t) => {
  let ran = 0;
  const commands: CommandTable = {
    status: async () => ({ summary: 's', usage: 'status', run: async () => ({ data: {}, text: '', exitCode: ++ran && 0 }) }),
  };
  // Exit status 2 is a USAGE error ("unknown command"); an INTERNAL one (a TypeError from calling
  // Object.prototype.constructor as a command loader) would be 1.
  for (const name of ['constructor', 'toString', 'valueOf', 'hasOwnProperty', '__proto__']) {
    t.equal(await runCli([name], commands), 2, `${name}: unknown command`);
    t.equal(await runCli([name, 'x'], commands), 2, `${name} x: unknown command`);
  }
  t.equal(await runCli(['status'], commands), 0);
  t.equal(ran, 1, 'a real command still runs');
});
