import { promises as fs, constants as C } from 'node:fs';
import path from 'node:path';
import { UpgradeError, errnoOf, messageOf } from '../core/errors.js';
import { ExecError, run } from '../core/exec.js';
import { log } from '../core/log.js';
import type { Layout } from '../core/layout.js';

/** The versions a hook or health check sees in its environment. */
export interface HookContext {
  event: string;
  from?: string;
  to?: string;
}

export interface HookRun {
  name: string;
  ok: boolean;
  reason?: string;
  output?: string;
  ms: number;
}

/**
 * The executables of DIR/etc/upgradectl/<name>.d/, in name order, skipping what run-parts skips
 * (dotfiles, backups, package leftovers). A non-executable file is reported, not silently ignored.
 */
export async function listHooks(layout: Layout, name: string): Promise<string[]> {
  const dir = layout.hookDir(name);
  let names: string[];
  try {
    names = (await fs.readdir(dir)).sort();
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return [];
    throw new UpgradeError('HOOK', `cannot read ${dir}: ${messageOf(err)}`, { cause: err });
  }
  const out: string[] = [];
  for (const n of names) {
    if (n.startsWith('.') || n.endsWith('~') || /\.(dpkg-[a-z]+|rpm[a-z]+|bak|disabled)$/.test(n)) continue;
    const file = path.join(dir, n);
    const st = await fs.stat(file);
    if (!st.isFile()) continue;
    try {
      await fs.access(file, C.X_OK);
    } catch {
      log.warn(`${file} is not executable and is skipped (chmod +x ${file} to run it)`);
      continue;
    }
    out.push(file);
  }
  return out;
}

/**
 * Run every hook of one kind with a deadline each; output goes to the log. Returns one result per
 * hook; the caller decides whether a failure stops the operation.
 */
export async function runHooks(layout: Layout, name: string, ctx: HookContext, timeoutSec: number): Promise<HookRun[]> {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    UPGRADECTL_EVENT: ctx.event,
    UPGRADECTL_FROM: ctx.from ?? '',
    UPGRADECTL_TO: ctx.to ?? '',
    UPGRADECTL_ROOT: layout.root,
    UPGRADECTL_HOST: layout.host,
  };
  const results: HookRun[] = [];
  for (const file of await listHooks(layout, name)) {
    const hook = `${name}.d/${path.basename(file)}`;
    const started = Date.now();
    try {
      const { stdout, stderr } = await run(file, [], { env, timeoutMs: timeoutSec * 1000, cwd: layout.root });
      const output = (stdout + stderr).trim();
      if (output) log.info(`${hook}: ${output}`);
      results.push({ name: hook, ok: true, output: output || undefined, ms: Date.now() - started });
    } catch (err) {
      const output = err instanceof ExecError ? (err.stdout + err.stderr).trim() : '';
      const reason =
        err instanceof ExecError && err.exitCode === null && /killed after/.test(err.message)
          ? `did not finish within ${timeoutSec} s`
          : err instanceof ExecError && err.exitCode !== null
            ? `exit status ${err.exitCode}${output ? `: ${lastLine(output)}` : ''}`
            : messageOf(err);
      log.warn(`${hook} failed: ${reason}`);
      results.push({ name: hook, ok: false, reason, output: output || undefined, ms: Date.now() - started });
    }
  }
  return results;
}

/** Hooks whose failure stops the operation (pre-commit, manual pre-rollback). */
export async function runBlockingHooks(layout: Layout, name: string, ctx: HookContext, timeoutSec: number): Promise<HookRun[]> {
  const results = await runHooks(layout, name, ctx, timeoutSec);
  const failed = results.find((r) => !r.ok);
  if (failed) {
    throw new UpgradeError('HOOK', `${ctx.event} stopped by ${layout.hookDir(name)}/${path.basename(failed.name)}: ${failed.reason}`, {
      hint: `fix what the hook reports (or remove it from ${layout.hookDir(name)}), then run upgradectl ${ctx.event} again`,
    });
  }
  return results;
}

function lastLine(text: string): string {
  const lines = text.split('\n').filter((l) => l.trim());
  return (lines[lines.length - 1] ?? '').slice(0, 300);
}
