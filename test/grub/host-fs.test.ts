import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { checkpointHost } from '../../src/grub/host-fs.js';
import { run } from '../../src/core/exec.js';
import { testModeFlag } from '../../src/core/test-switches.js';
import { mountLoopFs, startWriter, type LoopFs } from '../helpers/loop-fs.js';
import { skipUnless } from '../helpers/requirements.js';

/**
 * checkpointHost on a real ext4 filesystem mounted from a loop device, under write load: whatever
 * happens to the freeze, the filesystem is never left frozen.
 */

const skip = skipUnless({ root: true, commands: ['mkfs.ext4', 'losetup', 'mount', 'fsfreeze'] });

/**
 * A mounted filesystem for one test, outside t.testdir() (whose own cleanup would run into the mount).
 * `before` runs first at teardown (stop the writer), then: thaw, unmount, detach, remove.
 */
async function loopFs(t: Test, sizeMiB: number, before?: () => Promise<void>): Promise<LoopFs> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'upgradectl-freeze-'));
  const fsys = await mountLoopFs(dir, sizeMiB);
  t.teardown(async () => {
    try {
      await run('fsfreeze', ['--unfreeze', fsys.mnt]).catch(() => undefined);
      await before?.();
    } finally {
      await fsys.cleanup();
      rmSync(dir, { recursive: true, force: true });
    }
  });
  return fsys;
}

/** Whether a write to `dir` completes within `ms` (it blocks while the filesystem is frozen). */
async function writable(dir: string, ms = 1000): Promise<boolean> {
  const child = spawn('sh', ['-c', 'echo probe > "$1/probe"', 'sh', dir], { stdio: 'ignore' });
  const done = new Promise<boolean>((resolve) => child.on('close', (code) => resolve(code === 0)));
  const timer = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), ms));
  const r = await Promise.race([done, timer]);
  if (r !== 'timeout') return r;
  // Frozen: thaw so the probe (stuck in the kernel, unkillable) can finish, then report it.
  await run('fsfreeze', ['--unfreeze', dir]).catch(() => undefined);
  await done;
  return false;
}

t.test('a freeze whose fsfreeze times out is always thawed, under write load', { skip }, async (t) => {
  let writer: ReturnType<typeof startWriter> | undefined;
  const fsys = await loopFs(t, 128, () => writer?.stop() ?? Promise.resolve());
  writer = startWriter(fsys.mnt);
  await new Promise((r) => setTimeout(r, 500)); // dirty pages pile up for the freeze to flush

  // The timeouts straddle how long the freeze takes under this load (tens of ms): some kill fsfreeze
  // before its ioctl, some while the kernel is freezing (it dies only once frozen), some let it finish.
  let frozeAfterTimeout = 0;
  for (const timeoutMs of [1, 5, 10, 15, 20, 30, 40, 60, 80, 120, 5, 10, 20, 30, 40, 60]) {
    let outcome: string;
    try {
      const r = await checkpointHost(fsys.mnt, { freezeTimeoutMs: timeoutMs });
      outcome = r.note ?? r.method;
      if (/it had frozen and was thawed/.test(outcome)) frozeAfterTimeout++;
    } catch (err) {
      outcome = `threw: ${(err as Error).message}`;
    }
    t.ok(await writable(fsys.mnt), `timeout ${timeoutMs} ms: not frozen afterwards (${outcome.slice(0, 120)})`);
  }
  t.comment(`${frozeAfterTimeout} freezes took effect after their fsfreeze was killed, and were thawed`);
  t.ok(await writable(fsys.mnt), 'the writer still writes');
  t.equal((await checkpointHost(fsys.mnt)).method, 'freeze', 'with time enough, a full freeze checkpoint');
});

t.test('UPGRADECTL_NO_FREEZE without the test-mode flag: checkpointHost still freezes', { skip }, async (t) => {
  const fsys = await loopFs(t, 32);
  const before = process.env.UPGRADECTL_NO_FREEZE;
  process.env.UPGRADECTL_NO_FREEZE = '1';
  t.teardown(() => (before === undefined ? delete process.env.UPGRADECTL_NO_FREEZE : (process.env.UPGRADECTL_NO_FREEZE = before)));
  t.equal((await checkpointHost(fsys.mnt)).method, 'freeze', 'no flag: the switch is ignored');
  writeFileSync(testModeFlag(fsys.mnt), '');
  t.match(await checkpointHost(fsys.mnt), { method: 'syncfs', note: /UPGRADECTL_NO_FREEZE/ }, 'on a test machine it is honoured');
  t.ok(path.isAbsolute(fsys.mnt));
});
