import { parseArgs, type ParseArgsConfig } from 'node:util';
import { readFileSync, statSync } from 'node:fs';
import { UpgradeError, explainSystemError, messageOf } from '../core/errors.js';
import { log, setLogLevel } from '../core/log.js';
import { Layout } from '../core/layout.js';

/** What a command gets: the layout of its root, its own parsed options and positionals. */
export interface CommandContext {
  layout: Layout;
  json: boolean;
  options: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

/** A command validates, runs a transition or a step, and returns a result; only this layer prints. */
export interface Command {
  summary: string;
  usage: string;
  options?: ParseArgsConfig['options'];
  run(ctx: CommandContext): Promise<CommandResult>;
}

/** Command name -> loader of its module (loaded only when that command runs). */
export type CommandTable = Record<string, () => Promise<Command>>;

export interface CommandResult {
  /** The --json document. */
  data: unknown;
  /** The text for a terminal. */
  text: string;
  exitCode?: number;
}

const GLOBAL_OPTIONS = {
  root: { type: 'string' },
  json: { type: 'boolean' },
  verbose: { type: 'boolean', short: 'v' },
  quiet: { type: 'boolean', short: 'q' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
} as const satisfies ParseArgsConfig['options'];

/** Global options that may also follow the command (`status --root R`), as scripts write them. */
const GLOBAL_ANYWHERE = new Set(['--json', '--verbose', '-v', '--quiet', '-q']);

export async function runCli(argv: string[], commands: CommandTable): Promise<number> {
  let json = argv.includes('--json');
  try {
    const { globals, name, rest } = splitGlobals(argv);
    json = Boolean(globals.json);
    if (globals.verbose) setLogLevel('debug');
    if (globals.quiet) setLogLevel('warn');
    if (globals.version) return print(json, { version: packageVersion() }, `upgradectl ${packageVersion()}`, 0);
    if (!name && !globals.help) {
      if (!json) process.stderr.write(await usage(commands));
      throw new UpgradeError('USAGE', 'no command given', { hint: 'run upgradectl --help for the list of commands' });
    }
    if (globals.help || name === 'help') return print(json, { commands: await commandList(commands) }, await usage(commands), 0);
    const resolved = await resolveCommand(name!, rest, commands);
    if ('group' in resolved) return print(json, { commands: resolved.group }, resolved.group.map((c) => `usage: upgradectl ${c.usage}\n  ${c.summary}`).join('\n'), 0);
    const { key, args } = resolved;
    const command = await commands[key]!();
    const parsed = parseCommandArgs(key, command, args);
    if (parsed.options.help) {
      return print(json, { usage: `upgradectl ${command.usage}`, summary: command.summary }, `usage: upgradectl [--root DIR] [--json] ${command.usage}\n  ${command.summary}`, 0);
    }
    const layout = new Layout(checkedRoot(globals.root));
    const result = await command.run({ layout, json, options: parsed.options, positionals: parsed.positionals });
    return print(json, result.data, result.text, result.exitCode ?? 0);
  } catch (err) {
    return reportError(err, json);
  }
}

function print(json: boolean, data: unknown, text: string, exitCode: number): number {
  if (json) process.stdout.write(`${JSON.stringify(data, null, 2)}\n`);
  else if (text) process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
  return exitCode;
}

function splitGlobals(argv: string[]): { globals: Record<string, unknown>; name: string | undefined; rest: string[] } {
  // Options before the command are global; --root, --json, --verbose and --quiet may also follow it.
  // Anything after `--` is the command's, untouched.
  const head: string[] = [];
  const words: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      words.push(...argv.slice(i));
      break;
    }
    if (a === '--root') {
      head.push(a);
      if (i + 1 < argv.length) head.push(argv[++i]!);
    } else if (a.startsWith('--root=') || GLOBAL_ANYWHERE.has(a) || (words.length === 0 && a.startsWith('-'))) head.push(a);
    else words.push(a);
  }
  try {
    const { values } = parseArgs({ args: head, options: GLOBAL_OPTIONS, strict: true, allowPositionals: false });
    return { globals: values, name: words[0], rest: words.slice(1) };
  } catch (err) {
    throw new UpgradeError('USAGE', messageOf(err), { hint: 'run upgradectl --help for the global options and the commands' });
  }
}

/** `--root DIR` must name an existing directory: a typo would otherwise show an empty, idle machine. */
function checkedRoot(root: unknown): string {
  if (root === undefined) return '/';
  if (typeof root !== 'string' || root === '') {
    throw new UpgradeError('USAGE', '--root needs a directory', { hint: 'give the image root, e.g. --root / (the default) or --root /mnt/image' });
  }
  let isDir = false;
  try {
    isDir = statSync(root).isDirectory();
  } catch {
    isDir = false;
  }
  if (!isDir) throw new UpgradeError('USAGE', `--root ${root}: no such directory`, { hint: 'give the directory holding the image root (etc/upgradectl, and images/ or host/images)' });
  return root;
}

/**
 * One-word commands, and two-word ones (`image build`): the first word alone with --help lists the
 * second words, so that `image --help` answers like every other command.
 */
async function resolveCommand(name: string, rest: string[], commands: CommandTable): Promise<{ key: string; args: string[] } | { group: CommandInfo[] }> {
  // Own properties only: the name is input, and `constructor` or `toString` is in every object.
  if (Object.hasOwn(commands, name)) return { key: name, args: rest };
  const pair = rest[0] === undefined ? '' : `${name} ${rest[0]}`;
  if (pair && Object.hasOwn(commands, pair)) return { key: pair, args: rest.slice(1) };
  const group = (await commandList(commands)).filter((c) => c.name.startsWith(`${name} `));
  if (group.length === 0) {
    throw new UpgradeError('USAGE', `unknown command '${name}'`, { hint: 'run upgradectl --help for the list of commands' });
  }
  if (rest[0] === '--help' || rest[0] === '-h') return { group };
  throw new UpgradeError('USAGE', rest[0] === undefined ? `'${name}' needs a subcommand` : `unknown command '${name} ${rest[0]}'`, {
    hint: group.map((c) => `usage: upgradectl ${c.usage}`).join('; '),
  });
}

interface CommandInfo {
  name: string;
  usage: string;
  summary: string;
}

async function commandList(commands: CommandTable): Promise<CommandInfo[]> {
  return Promise.all(Object.entries(commands).map(async ([name, load]) => {
    const c = await load();
    return { name, usage: c.usage, summary: c.summary };
  }));
}

/** The version of this package, read where npm installed it (dist/ and src/ are both two levels down). */
function packageVersion(): string {
  return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
}

function parseCommandArgs(name: string, command: Command, args: string[]) {
  try {
    const { values, positionals } = parseArgs({
      args,
      options: { ...(command.options ?? {}), help: { type: 'boolean', short: 'h' } },
      strict: true,
      allowPositionals: true,
    });
    return { options: values as CommandContext['options'], positionals };
  } catch (err) {
    throw new UpgradeError('USAGE', `${name}: ${messageOf(err)}`, { hint: `usage: upgradectl ${command.usage}` });
  }
}

function reportError(err: unknown, json: boolean): number {
  // A raw EROFS or ENOSPC from deep inside gets the file it concerns and a way out.
  const e = err instanceof UpgradeError ? err : explainSystemError(err);
  const code = e?.code ?? 'INTERNAL';
  if (json) {
    process.stdout.write(`${JSON.stringify({ error: { code, message: messageOf(e ?? err), hint: e?.hint } }, null, 2)}\n`);
  }
  log.error(messageOf(e ?? err));
  if (e?.hint) log.error(`hint: ${e.hint}`);
  if (!(err instanceof UpgradeError)) log.debug(err instanceof Error && err.stack ? err.stack : String(err));
  return code === 'USAGE' ? 2 : 1;
}

async function usage(commands: CommandTable): Promise<string> {
  const lines = (await commandList(commands)).map((c) => `  ${c.usage.padEnd(52)} ${c.summary}`);
  return [
    'usage: upgradectl [--root DIR] [--json] [--verbose|--quiet] COMMAND ...',
    '       upgradectl --version',
    '',
    ...lines,
    '',
    '--root DIR   operate on the image root DIR (default /); the host partition is DIR/host when it holds images/',
    '             (--root, --json, --verbose and --quiet may also follow the command)',
    '',
  ].join('\n');
}
