import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';

/** A build older than this is treated as abandoned by a killed test run. */
const STALE_LOCK_MS = 15 * 60_000;

/**
 * Make `target` once per machine, however many test processes (or checkouts sharing the cache) ask at
 * the same time: the first takes a lock directory beside it and runs `build(lockDir)`, which must leave
 * the result in `target` by a rename; the others wait for it rather than repeat a minute of work on 2
 * cores. `build` may put its scratch files in `lockDir`: the lock and everything in it are removed after.
 */
export async function buildOnce(target: string, build: (lockDir: string) => Promise<void>): Promise<string> {
  if (existsSync(target)) return target;
  await fs.mkdir(path.dirname(target), { recursive: true });
  const lock = `${target}.building`;
  for (;;) {
    try {
      await fs.mkdir(lock);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const st = await fs.stat(lock).catch(() => undefined);
    if (st && Date.now() - st.mtimeMs > STALE_LOCK_MS) await fs.rm(lock, { recursive: true, force: true });
    if (existsSync(target)) return target;
    await new Promise((r) => setTimeout(r, 1000));
  }
  try {
    if (!existsSync(target)) await build(lock);
    if (!existsSync(target)) throw new Error(`building ${target} finished without it`);
    return target;
  } finally {
    await fs.rm(lock, { recursive: true, force: true });
  }
}
