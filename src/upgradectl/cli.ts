import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UpgradeError, messageOf } from '../core/errors.js';
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
} as const satisfies ParseArgsConfig['options'];

export async function runCli(argv: string[], commands: CommandTable): Promise<number> {
  let json = argv.includes('--json');
  try {
    const { globals, name, rest } = splitGlobals(argv);
    json = Boolean(globals.json);
    if (globals.verbose) setLogLevel('debug');
    if (globals.quiet) setLogLevel('warn');
    if (globals.help || !name || name === 'help') {
      process.stdout.write(await usage(commands));
      return name || globals.help ? 0 : 2;
    }
    // `image build` is a two-word command.
    // Own properties only: the name is input, and `constructor` or `toString` is in every object.
    const has = (k: string) => Object.hasOwn(commands, k);
    let key = name;
    let args = rest;
    if (!has(key) && rest[0] && has(`${name} ${rest[0]}`)) {
      key = `${name} ${rest[0]}`;
      args = rest.slice(1);
    }
    const load = has(key) ? commands[key] : undefined;
    if (!load) {
      throw new UpgradeError('USAGE', `unknown command '${name}'`, { hint: 'run upgradectl --help for the list of commands' });
    }
    const command = await load();
    const parsed = parseCommandArgs(key, command, args);
    if (parsed.options.help) {
      process.stdout.write(`usage: upgradectl [--root DIR] [--json] ${command.usage}\n  ${command.summary}\n`);
      return 0;
    }
    const layout = new Layout(typeof globals.root === 'string' ? globals.root : '/');
    const result = await command.run({ layout, json, options: parsed.options, positionals: parsed.positionals });
    if (json) process.stdout.write(`${JSON.stringify(result.data, null, 2)}\n`);
    else if (result.text) process.stdout.write(result.text.endsWith('\n') ? result.text : `${result.text}\n`);
    return result.exitCode ?? 0;
  } catch (err) {
    return reportError(err, json);
  }
}

function splitGlobals(argv: string[]): { globals: Record<string, unknown>; name: string | undefined; rest: string[] } {
  // Global options come before the command name; everything after it belongs to the command.
  const firstPositional = argv.findIndex((a, i) => !a.startsWith('-') && argv[i - 1] !== '--root');
  const head = firstPositional < 0 ? argv : argv.slice(0, firstPositional);
  const tail = firstPositional < 0 ? [] : argv.slice(firstPositional);
  const { values } = parseArgs({ args: head, options: GLOBAL_OPTIONS, strict: true, allowPositionals: false });
  // --json, --verbose and --quiet may also follow the command.
  for (const flag of ['json', 'verbose', 'quiet'] as const) {
    if (tail.includes(`--${flag}`)) (values as Record<string, unknown>)[flag] = true;
  }
  const rest = tail.slice(1).filter((a) => !['--json', '--verbose', '--quiet'].includes(a));
  return { globals: values, name: tail[0], rest };
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
  const e = err instanceof UpgradeError ? err : undefined;
  const code = e?.code ?? 'INTERNAL';
  if (json) {
    process.stdout.write(`${JSON.stringify({ error: { code, message: messageOf(err), hint: e?.hint } }, null, 2)}\n`);
  }
  log.error(messageOf(err));
  if (e?.hint) log.error(`hint: ${e.hint}`);
  if (!e) log.debug(err instanceof Error && err.stack ? err.stack : String(err));
  return code === 'USAGE' ? 2 : 1;
}

async function usage(commands: CommandTable): Promise<string> {
  const lines = (await Promise.all(Object.values(commands).map((load) => load()))).map((c) => `  ${c.usage.padEnd(52)} ${c.summary}`);
  return [
    'usage: upgradectl [--root DIR] [--json] [--verbose|--quiet] COMMAND ...',
    '',
    ...lines,
    '',
    '--root DIR   operate on the image root DIR (default /); the host partition is DIR/host when it holds images/',
    '',
  ].join('\n');
}
