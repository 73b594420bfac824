import t, { type Test } from 'tap';
import { spawnSync, execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { skipUnless } from '../helpers/requirements.js';
import { commit } from '../../src/operations/commit.js';
import { reconcile } from '../../src/operations/reconcile/index.js';
import { loadConfig } from '../../src/operations/config.js';
import type { Layout } from '../../src/core/layout.js';
import type { State } from '../../src/operations/state.js';
import { addHook, envList, grubBoot, makeMachine, readState, type MachineOptions } from '../operations/fixtures/machine.js';

/**
 * The crash table (STYLE.md, after Mender's Killed_in_* cases): the CLI process is ended at each named
 * step of commit, confirm and rollback (UPGRADECTL_CRASH_AT makes it exit(137) there, with no cleanup),
 * then either the same command runs again, or the power goes and the machine boots whatever GRUB picks.
 * Either way the machine must have a bootable default and the state must tell the truth.
 */

const skip = skipUnless({ root: true, commands: ['grub-editenv', 'grub-script-check', 'mke2fs', 'e2fsck', 'losetup'] });
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const cli = path.join(repo, 'test/upgradectl/fixtures/cli.mjs');

/** The crash table runs the compiled CLI: rebuild dist/ when a source file is newer than it. */
function ensureBuilt(): void {
  const built = path.join(repo, 'dist/upgradectl/commands/commit.js');
  const newest = (dir: string): number =>
    Math.max(0, ...readdirSync(dir, { withFileTypes: true }).map((d) => (d.isDirectory() ? newest(path.join(dir, d.name)) : statSync(path.join(dir, d.name)).mtimeMs)));
  if (existsSync(built) && statSync(built).mtimeMs >= Math.max(newest(path.join(repo, 'src/grub')), newest(path.join(repo, 'src/upgradectl')))) return;
  // Others' files may not type-check at this moment; tsc still emits, and ours are checked separately.
  spawnSync(path.join(repo, 'node_modules/.bin/tsc'), ['-p', 'tsconfig.json'], { cwd: repo, stdio: 'ignore' });
  if (!existsSync(built)) throw new Error('npx tsc -p tsconfig.json did not produce dist/upgradectl/commands/commit.js');
}

function upgradectl(layout: Layout, args: string[], crashAt?: string): { status: number | null; stderr: string } {
  const env = { ...process.env, UPGRADECTL_REBOOT_COMMAND: 'true', UPGRADECTL_CRASH_AT: crashAt ?? '' };
  const r = spawnSync(process.execPath, [cli, '--root', layout.root, ...args], { env, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stderr: r.stderr };
}

type Setup = 'prepared' | 'committed' | 'trying-healthy' | 'trying-sick' | 'idle-with-previous';

async function setUp(dir: string, setup: Setup): Promise<Layout> {
  // Two trial attempts: the extra-attempt flag must be cleared on every path too.
  const base: MachineOptions = { images: ['0.9', '1.0', '2.0'], current: '1.0', previous: '0.9', next: '2.0', trialAttempts: 2 };
  if (setup === 'idle-with-previous') return makeMachine(dir, { images: ['1.0', '2.0'], current: '2.0', previous: '1.0', trialAttempts: 2 });
  const layout = makeMachine(dir, base);
  if (setup === 'prepared') return layout;
  process.env.UPGRADECTL_REBOOT_COMMAND = 'true';
  await commit(layout, await loadConfig(layout), { reboot: false });
  if (setup === 'committed') return layout;
  grubBoot(layout);
  await reconcile(layout);
  addHook(layout, 'health', '10-check', setup === 'trying-sick' ? 'echo "db down" >&2; exit 1' : 'exit 0');
  return layout;
}

/** Always, even right after a crash: GRUB's default names an image that exists, and so does any one-shot. */
function assertBootable(t: Test, layout: Layout, when: string): void {
  const env = envList(layout);
  t.ok(env.saved_entry, `${when}: grubenv has a default`);
  const def = env.saved_entry?.replace(/^upgradectl-/, '') ?? '';
  t.ok(existsSync(layout.imageFile(def)), `${when}: the default ${def} exists`);
  for (const k of ['next_entry', 'upgradectl_trial'] as const) {
    if (env[k]) t.ok(existsSync(layout.imageFile(env[k].replace(/^upgradectl-/, ''))), `${when}: ${k} ${env[k]} exists`);
  }
  t.ok(existsSync(layout.grubCfg), `${when}: grub.cfg exists`);
}

/** The state tells the truth about grubenv and about what runs (after recovery). */
function assertTruthful(t: Test, layout: Layout, s: State, booted: string | undefined, when: string): void {
  const env = envList(layout);
  t.equal(env.saved_entry, `upgradectl-${s.current}`, `${when}: GRUB's default is the recorded current image`);
  if (s.phase === 'committed') t.equal(env.next_entry, `upgradectl-${s.next}`, `${when}: committed means the one-shot is armed`);
  else t.notOk(env.next_entry, `${when}: no one-shot outside committed (phase ${s.phase})`);
  if (s.phase === 'trying') t.equal(booted, s.next, `${when}: trying means the trial image runs`);
  if (booted === s.next && s.next) t.equal(s.phase, 'trying', `${when}: the trial image runs, so the phase is trying`);
  if (s.phase !== 'trying') t.notOk(env.upgradectl_tries && s.phase !== 'committed', `${when}: no trial attempts left over`);
}


interface Case {
  setup: Setup;
  args: string[];
  point: string;
  /** After the same command runs again. */
  rerun: Partial<State> | 'done';
}

const commitTo: Partial<State> = { phase: 'committed', current: '1.0', next: '2.0' };
const confirmed: Partial<State> = { phase: 'idle', current: '2.0', previous: '1.0' };
const failed: Partial<State> = { phase: 'rolled-back', current: '1.0' };
const rolledTo: Partial<State> = { phase: 'committed', current: '2.0', next: '1.0' };
const cancelled: Partial<State> = { phase: 'idle', current: '1.0' };

const cases: Case[] = [
  ...['pre-commit', 'migrate', 'boot-files', 'arm', 'armed', 'done'].map((p): Case => ({ setup: 'prepared', args: ['commit', '--no-reboot'], point: `commit:${p}`, rerun: p === 'done' ? 'done' : commitTo })),
  ...['health', 'set-default', 'default-set', 'done'].map((p): Case => ({ setup: 'trying-healthy', args: ['confirm', '--no-reboot'], point: `confirm:${p}`, rerun: p === 'done' ? 'done' : confirmed })),
  ...['health', 'disarm', 'disarmed', 'done'].map((p): Case => ({ setup: 'trying-sick', args: ['confirm', '--no-reboot'], point: `confirm:${p}`, rerun: p === 'done' ? 'done' : failed })),
  ...['pre-rollback', 'boot-files', 'arm', 'armed', 'done'].map((p): Case => ({ setup: 'idle-with-previous', args: ['rollback', '--no-reboot'], point: `rollback:${p}`, rerun: p === 'done' ? 'done' : rolledTo })),
  ...['cancel', 'cancelled', 'done'].map((p): Case => ({ setup: 'committed', args: ['rollback', '--no-reboot'], point: `rollback:${p}`, rerun: p === 'done' ? 'done' : cancelled })),
];

t.test('crash table', { skip }, async (t) => {
  ensureBuilt();
  for (const c of cases) {
    t.test(`${c.setup}: ${c.args[0]} killed at ${c.point}`, async (t) => {
      const dir = t.testdir();
      // 1. Killed, then run again.
      let layout = await setUp(path.join(dir, 'rerun'), c.setup);
      const crashed = upgradectl(layout, c.args, c.point);
      t.equal(crashed.status, 137, `the process died at ${c.point}: ${crashed.stderr.trim().split('\n').pop()}`);
      assertBootable(t, layout, 'after the crash');
      if (c.rerun !== 'done') {
        const again = upgradectl(layout, c.args);
        t.equal(again.status, c.setup === 'trying-sick' ? 1 : 0, `the re-run finishes: ${again.stderr.trim().split('\n').pop()}`);
        const s = readState(layout);
        t.match(s, { ...c.rerun, pending: undefined });
        assertBootable(t, layout, 'after the re-run');
        assertTruthful(t, layout, s, readState(layout) && bootedNow(layout), 'after the re-run');
        t.notOk(existsSync(layout.lockFile), 'the dead process\'s lock was taken over and released');
      } else {
        t.match(readState(layout), { ...(c.setup === 'prepared' ? commitTo : c.setup === 'trying-healthy' ? confirmed : c.setup === 'trying-sick' ? failed : c.setup === 'committed' ? cancelled : rolledTo), pending: undefined });
      }

      // 2. Killed, then the power goes: GRUB boots what grubenv says, and the boot reconciles.
      layout = await setUp(path.join(dir, 'reset'), c.setup);
      t.equal(upgradectl(layout, c.args, c.point).status, 137);
      const booted = grubBoot(layout);
      const s = await reconcile(layout);
      assertBootable(t, layout, 'after the reset');
      assertTruthful(t, layout, s, booted[booted.length - 1], 'after the reset');
    });
  }
});

function bootedNow(layout: Layout): string | undefined {
  const line = execFileSync('cat', [layout.cmdlineFile], { encoding: 'utf8' });
  return /upgradectl\.loop=\/images\/(\S+)\.img/.exec(line)?.[1];
}
