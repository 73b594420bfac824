import { runCli, type Command } from './cli.js';
import { keygenCommand } from './commands/keygen.js';
import { imageBuildCommand } from './commands/image-build.js';
import { publishCommand } from './commands/publish.js';
import { prepareCommand } from './commands/prepare.js';
import { checkCommand } from './commands/check.js';
import { statusCommand } from './commands/status.js';
import { commitCommand } from './commands/commit.js';
import { confirmCommand } from './commands/confirm.js';
import { rollbackCommand } from './commands/rollback.js';
import { grubConfigCommand } from './commands/grub-config.js';
import { doctorCommand } from './commands/doctor.js';

/** The command table (DESIGN.md §11): add, don't rename. */
export const COMMANDS: Record<string, Command> = {
  status: statusCommand,
  check: checkCommand,
  prepare: prepareCommand,
  commit: commitCommand,
  confirm: confirmCommand,
  rollback: rollbackCommand,
  'grub-config': grubConfigCommand,
  doctor: doctorCommand,
  keygen: keygenCommand,
  publish: publishCommand,
  'image build': imageBuildCommand,
};

export function main(argv: string[]): Promise<number> {
  return runCli(argv, COMMANDS);
}
