import { createHash } from 'node:crypto';
import { existsSync, promises as fs, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../../src/core/exec.js';
import { buildOnce } from './build-once.js';
import { cacheDir } from './debian-root.js';

/**
 * The .deb that `npm run package` makes of this checkout, built once per content and cached, so the boot
 * tests' images install upgradectl the way an operator does (dpkg) and the package test checks the
 * same file. ~55 s to build on 2 cores; the key covers every input of packaging/build.mjs, so an edit
 * to the program, its dependencies, the units, hooks or the Node running the tests builds a new one.
 */

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** What packaging/build.mjs reads from the checkout (node_modules is covered by the lock file). */
const INPUTS = ['package.json', 'package-lock.json', 'bin', 'dist', 'packaging', 'systemd', 'initramfs-hooks', 'grub.d'];
/** Builds of other contents are dropped once this old: checkouts sharing the cache keep theirs meanwhile. */
const KEEP_MS = 24 * 3600_000;

export interface PackagedDeb {
  deb: string;
  tarball: string;
  /** Seconds the build took, or undefined when an earlier run's build was reused. */
  buildSeconds?: number;
}

export async function packagedDeb(): Promise<PackagedDeb> {
  if (!existsSync(path.join(repoRoot, 'dist/upgradectl/main.js'))) {
    throw new Error(`${repoRoot}/dist is not built: run npm run build (npm test does it first)`);
  }
  const version = (JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version;
  const dir = path.join(cacheDir(), `package-${await inputsKey()}`);
  const name = `upgradectl_${version}_amd64`;
  let buildSeconds: number | undefined;
  await buildOnce(dir, async (work) => {
    const started = performance.now();
    const out = path.join(work, 'out');
    await run(process.execPath, [path.join(repoRoot, 'packaging/build.mjs'), '--out', out], { timeoutMs: 10 * 60_000 });
    await fs.rename(out, dir);
    buildSeconds = (performance.now() - started) / 1000;
    await dropOldBuilds(dir);
  });
  return { deb: path.join(dir, `${name}.deb`), tarball: path.join(dir, `${name}.tar.gz`), buildSeconds };
}

async function inputsKey(): Promise<string> {
  const hash = createHash('sha256');
  const node = statSync(process.execPath);
  hash.update(`node ${process.version} ${node.size} ${node.mtimeMs}\n`);
  for (const input of INPUTS) {
    for (const file of await filesUnder(path.join(repoRoot, input))) {
      hash.update(`${path.relative(repoRoot, file)}\0`).update(await fs.readFile(file)).update('\0');
    }
  }
  return hash.digest('hex').slice(0, 16);
}

/** Every path below `p` that is not a directory (symlinks not followed), sorted: `p` itself when it is a file. */
export async function filesUnder(p: string): Promise<string[]> {
  const st = await fs.lstat(p).catch(() => undefined);
  if (!st) return [];
  if (!st.isDirectory()) return [p];
  const entries = (await fs.readdir(p)).sort();
  return (await Promise.all(entries.map((e) => filesUnder(path.join(p, e))))).flat();
}

async function dropOldBuilds(keep: string): Promise<void> {
  const dir = path.dirname(keep);
  for (const entry of await fs.readdir(dir)) {
    const full = path.join(dir, entry);
    if (!/^package-[0-9a-f]{16}$/.test(entry) || full === keep) continue;
    const st = await fs.stat(full).catch(() => undefined);
    if (st && Date.now() - st.mtimeMs > KEEP_MS) await fs.rm(full, { recursive: true, force: true });
  }
}
