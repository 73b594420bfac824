import { runCli, type Command } from './cli.js';
import { keygenCommand } from './commands/keygen.js';
import { imageBuildCommand } from './commands/image-build.js';
import { publishCommand } from './commands/publish.js';
import { prepareCommand } from './commands/prepare.js';
import { checkCommand } from './commands/check.js';
import { statusCommand } from './commands/status.js';

/** The command table (DESIGN.md §11): add, don't rename. */
export const COMMANDS: Record<string, Command> = {
  status: statusCommand,
  check: checkCommand,
  prepare: prepareCommand,
  keygen: keygenCommand,
  publish: publishCommand,
  'image build': imageBuildCommand,
};

export function main(argv: string[]): Promise<number> {
  return runCli(argv, COMMANDS);
}
