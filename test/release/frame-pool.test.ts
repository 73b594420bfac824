import t from 'tap';
import { openSync, closeSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Worker } from 'node:worker_threads';
import { FramePool } from '../../src/release/frame-pool.js';

/**
 * A frame worker thread that dies (killed, out of memory, a crash in native code) must fail the
 * frames it was working on, so that prepare stops with an error and the next run resumes, instead of
 * waiting for them forever; the pool's other threads keep taking work.
 */
t.test('a dead worker fails its tasks at once and takes no new ones', async (t) => {
  const file = path.join(t.testdir(), 'data');
  writeFileSync(file, Buffer.alloc(8 << 20, 7));
  const fd = openSync(file, 'r');
  const pool = new FramePool(2);
  t.teardown(async () => {
    await pool.close();
    closeSync(fd);
  });
  pool.start();
  const threads = (pool as unknown as { workers: Array<{ worker: Worker }> }).workers.map((w) => w.worker);

  // The first task goes to the first thread (both idle); that thread dies before it answers.
  const lost = pool.run({ op: 'hash-range', fd, start: 0, end: 8 << 20 });
  await threads[0]!.terminate();
  await t.rejects(lost, /frame worker exited/, 'its task fails instead of hanging');

  const after = await Promise.all([0, 1, 2, 3].map(() => pool.run({ op: 'hash-range', fd, start: 0, end: 4096 })));
  t.equal(new Set(after.map((r) => r.sha256)).size, 1, 'later tasks run on the live thread');

  await threads[1]!.terminate();
  await t.rejects(pool.run({ op: 'hash-range', fd, start: 0, end: 4096 }), /frame worker exited/, 'with no live thread left, a task fails at once');
});

t.test('a pool starts its threads on start() or its first task, not when it is made', async (t) => {
  const pool = new FramePool(2);
  t.teardown(() => pool.close());
  const threads = () => (pool as unknown as { workers: unknown[] }).workers.length;
  t.equal(threads(), 0, 'none yet: a prepare with nothing to download never pays for them');
  t.equal(pool.size, 2, 'its size is known before');
  const r = await pool.run({ op: 'hash-zero', length: 4096 });
  t.equal(r.op, 'hash-zero');
  t.equal(threads(), 2, 'the first task started them all');
  await pool.close();
});
