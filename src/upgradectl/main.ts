import { runCli, type CommandTable } from './cli.js';

/**
 * The command table (DESIGN.md §11): add, don't rename. Each command is loaded when it runs: the
 * confirm-on-boot unit sits between power-on and "boot complete", and loading every command's
 * dependencies (HTTP client, S3 SDK shims, LZ4) for it costs ~0.15 s natively and seconds on a slow
 * CPU.
 */
export const COMMANDS: CommandTable = {
  status: async () => (await import('./commands/status.js')).statusCommand,
  check: async () => (await import('./commands/check.js')).checkCommand,
  prepare: async () => (await import('./commands/prepare.js')).prepareCommand,
  commit: async () => (await import('./commands/commit.js')).commitCommand,
  confirm: async () => (await import('./commands/confirm.js')).confirmCommand,
  rollback: async () => (await import('./commands/rollback.js')).rollbackCommand,
  daemon: async () => (await import('./commands/daemon.js')).daemonCommand,
  'grub-config': async () => (await import('./commands/grub-config.js')).grubConfigCommand,
  doctor: async () => (await import('./commands/doctor.js')).doctorCommand,
  adopt: async () => (await import('./commands/adopt.js')).adoptCommand,
  keygen: async () => (await import('./commands/keygen.js')).keygenCommand,
  'channel set': async () => (await import('./commands/channel.js')).channelSetCommand,
  publish: async () => (await import('./commands/publish.js')).publishCommand,
  'flasher install': async () => (await import('./commands/flasher.js')).flasherInstallCommand,
  'flasher add-key': async () => (await import('./commands/flasher.js')).flasherAddKeyCommand,
  'flasher restore': async () => (await import('./commands/flasher.js')).flasherRestoreCommand,
  'image build': async () => (await import('./commands/image-build.js')).imageBuildCommand,
};

export function main(argv: string[]): Promise<number> {
  return runCli(argv, COMMANDS);
}
