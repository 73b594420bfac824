import type { Config } from './config.js';
import { UpgradeError, messageOf } from '../core/errors.js';
import { ExecError, run } from '../core/exec.js';
import { log } from '../core/log.js';

/**
 * Reboot the machine: `systemctl reboot` by default, or `[boot] reboot_command` in the config. On a
 * test machine loadConfig puts UPGRADECTL_REBOOT_COMMAND there (tests and demos point it at a harmless
 * command so that nothing they run can reboot the machine they run on); see core/test-switches.ts.
 */
export async function rebootMachine(config: Config, why: string): Promise<string[]> {
  const spec = config.boot.rebootCommand;
  const argv = spec.split(/\s+/).filter(Boolean);
  const [cmd, ...args] = argv;
  if (!cmd) throw new UpgradeError('CONFIG', 'the reboot command is empty', { hint: 'set [boot] reboot_command = systemctl reboot' });
  log.info(`rebooting (${why}): ${argv.join(' ')}`);
  try {
    await run(cmd, args, { timeoutMs: 120_000 });
  } catch (err) {
    // The shutdown the command started stops the service it runs in, and with it the command itself
    // (SIGTERM to the whole unit): under systemd that is the reboot under way, not a failure.
    if (err instanceof ExecError && (err.signal === 'SIGTERM' || err.signal === 'SIGKILL')) {
      log.info(`${argv.join(' ')} was stopped by ${err.signal}: the shutdown is under way`);
      return argv;
    }
    throw new UpgradeError('EXEC', `could not reboot with ${argv.join(' ')}: ${messageOf(err)}`, {
      cause: err,
      hint: 'the boot files are written and durable: reboot the machine by hand to continue',
    });
  }
  return argv;
}
