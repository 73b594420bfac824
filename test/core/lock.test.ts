import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Layout } from '../../src/core/layout.js';
import { acquireLock } from '../../src/core/lock.js';
import { readBootId } from '../../src/core/boot-id.js';
import { skipUnless } from '../helpers/requirements.js';

/**
 * The operation lock between real processes: never two holders, a lock file that is never seen empty
 * or half-written, and a stale lock taken over by exactly one of the processes racing for it.
 */

const worker = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures/lock-worker.ts');
const skip = skipUnless({ commands: ['flock'] });

/** Start a worker with the same TypeScript loader as this test; resolves when it exits with status 0. */
function runWorker(...args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, worker, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`worker ${args.join(' ')} exited ${code}: ${stderr}`))));
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function machine(dir: string): Layout {
  mkdirSync(dir, { recursive: true });
  return new Layout(dir);
}

/** A process id that is certainly not running. */
async function deadPid(): Promise<number> {
  const child = spawn('true');
  await new Promise((r) => child.on('close', r));
  return child.pid!;
}

t.test('8 processes taking the lock 15 times each: exactly one holds it at any time', { skip }, async (t) => {
  const layout = machine(t.testdir());
  const logFile = path.join(layout.root, 'intervals.log');
  writeFileSync(logFile, '');
  await Promise.all(Array.from({ length: 8 }, () => runWorker('hold', layout.root, logFile, '15', '2')));
  const events = readFileSync(logFile, 'utf8').trim().split('\n').map((l) => {
    const [kind, pid, at] = l.split(' ');
    return { kind: kind!, pid: Number(pid), at: BigInt(at!) };
  });
  t.equal(events.filter((e) => e.kind === 'enter').length, 8 * 15, 'every round held the lock once');
  // In the order of the log (each line is appended under the lock), and by the clock: enter, leave, enter, leave…
  let holder: number | undefined;
  let lastLeave = 0n;
  let overlaps = 0;
  for (const e of [...events].sort((x, y) => (x.at < y.at ? -1 : x.at > y.at ? 1 : 0))) {
    if (e.kind === 'enter') {
      if (holder !== undefined || e.at < lastLeave) overlaps++;
      holder = e.pid;
    } else {
      if (holder !== e.pid) overlaps++;
      holder = undefined;
      lastLeave = e.at;
    }
  }
  t.equal(overlaps, 0, 'no two holders overlap in time');
});

t.test('a lock file observed while processes create and remove it is never empty or partial', { skip }, async (t) => {
  const layout = machine(t.testdir());
  const logFile = path.join(layout.root, 'holders.log');
  const watchFile = path.join(layout.root, 'watch.log');
  writeFileSync(logFile, '');
  writeFileSync(watchFile, '');
  await Promise.all([
    runWorker('watch', layout.root, watchFile, '4000'),
    ...Array.from({ length: 3 }, () => runWorker('hold', layout.root, logFile, '40', '0')),
  ]);
  const seen = JSON.parse(readFileSync(watchFile, 'utf8')) as { reads: number; bad: string[] };
  t.ok(seen.reads > 100, `the watcher read the lock file ${seen.reads} times while it came and went`);
  t.same(seen.bad, [], 'every read found a whole owner record');
});

t.test('a stale lock raced for by 6 processes at once: exactly one takes it over', { skip }, async (t) => {
  for (let round = 0; round < 3; round++) {
    const layout = machine(path.join(t.testdir(), `round-${round}`));
    mkdirSync(layout.stateDir, { recursive: true });
    const stale = { pid: await deadPid(), operation: 'commit', since: 'an hour ago', bootId: readBootId(layout) };
    writeFileSync(layout.lockFile, JSON.stringify(stale));
    const logFile = path.join(layout.root, 'race.log');
    writeFileSync(logFile, '');
    const workers = Array.from({ length: 6 }, () => runWorker('once', layout.root, logFile, '6'));
    // All go at once, after every one has loaded; the winner holds until all six have tried.
    while (!existsSync(`${logFile}.ready`) || readFileSync(`${logFile}.ready`, 'utf8').trim().split('\n').length < 6) await sleep(10);
    writeFileSync(`${logFile}.go`, '');
    await Promise.all(workers);
    const lines = readFileSync(logFile, 'utf8').trim().split('\n');
    t.equal(lines.filter((l) => l.startsWith('won')).length, 1, `round ${round}: one winner`);
    t.ok(
      lines.filter((l) => l.startsWith('locked')).every((l) => /another upgradectl operation is running: worker \d+ \(pid \d+/.test(l)),
      `round ${round}: the others are told who holds it`,
    );
  }
});

t.test('in one process: the holder is named to a second caller; the file is root-only; release removes it', async (t) => {
  const layout = machine(t.testdir());
  const lock = await acquireLock(layout, 'commit');
  await t.rejects(acquireLock(layout, 'prepare'), { code: 'LOCKED', message: new RegExp(`commit \\(pid ${process.pid}`) });
  t.equal(statSync(layout.lockFile).mode & 0o777, 0o600);
  t.equal(statSync(layout.stateDir).mode & 0o777, 0o700);
  await lock.release();
  t.throws(() => statSync(layout.lockFile), { code: 'ENOENT' });
});
