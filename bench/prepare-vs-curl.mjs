// prepare vs. `curl -s URL | lz4 -d > file && sync`, on a ~1 GiB realistic image (mke2fs -d of parts
// of /usr) served from loopback HTTP, measured in the same run. Prints wall times, the ratio and
// upgradectl's peak RSS. Run: npm run bench  (as root; needs lz4, curl, mke2fs)
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bin = path.join(repo, 'bin/upgradectl.js');
const work = process.env.BENCH_DIR ?? '/var/tmp/upgradectl-bench';
const runs = Number(process.env.BENCH_RUNS ?? 3);
const sh = (cmd, args, opts = {}) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 26, ...opts }).toString();
mkdirSync(work, { recursive: true });

// 1. A ~1 GiB image of real files (binaries, libraries, text), built once and cached.
const image = path.join(work, 'usr.img');
if (!existsSync(image)) {
  const tree = path.join(work, 'tree');
  rmSync(tree, { recursive: true, force: true });
  mkdirSync(path.join(tree, 'usr'), { recursive: true });
  let budget = 700 << 20;
  for (const d of ['bin', 'sbin', 'lib/x86_64-linux-gnu', 'share/doc', 'share/locale', 'share/perl', 'lib/python3', 'share', 'lib']) {
    const src = path.join('/usr', d);
    if (!existsSync(src) || budget <= 0) continue;
    const size = Number(sh('du', ['-sb', src]).split('\t')[0]);
    if (size > budget || existsSync(path.join(tree, 'usr', d))) continue;
    mkdirSync(path.dirname(path.join(tree, 'usr', d)), { recursive: true });
    sh('cp', ['-a', src, path.join(tree, 'usr', d)]);
    budget -= size;
  }
  sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, image, '1G']);
  rmSync(tree, { recursive: true, force: true });
}
const imageSha = createHash('sha256').update(readFileSync(image)).digest('hex');

// 2. Published once with a throwaway key.
const releases = path.join(work, 'releases');
if (!existsSync(path.join(releases, 'releases/1/manifest.json'))) {
  rmSync(releases, { recursive: true, force: true });
  rmSync(path.join(work, 'key'), { force: true });
  rmSync(path.join(work, 'key.pub'), { force: true });
  sh('node', [bin, '-q', 'keygen', '--out', path.join(work, 'key')]);
  sh('node', [bin, '-q', 'publish', image, '--version', '1', '--to', `file://${releases}`, '--key', path.join(work, 'key')]);
}
const manifest = JSON.parse(readFileSync(path.join(releases, 'releases/1/manifest.json'), 'utf8'));

// 3. One loopback server for both.
const server = spawn(process.execPath, [path.join(repo, 'bench/static-server.mjs'), releases], { stdio: ['ignore', 'pipe', 'inherit'] });
const port = await new Promise((resolve) => server.stdout.once('data', (d) => resolve(Number(String(d).trim()))));
const url = `http://127.0.0.1:${port}`;

const timeIt = async (fn) => {
  const t0 = process.hrtime.bigint();
  const extra = await fn();
  return { seconds: Number(process.hrtime.bigint() - t0) / 1e9, ...extra };
};

function reference() {
  const out = path.join(work, 'ref.img');
  rmSync(out, { force: true });
  sh('sh', ['-c', 'curl -s "$1" | lz4 -d > "$2" && sync', 'sh', `${url}/releases/1/image.lz4`, out]);
  rmSync(out, { force: true });
  return {};
}

function freshRoot() {
  const root = path.join(work, 'root');
  rmSync(root, { recursive: true, force: true });
  mkdirSync(path.join(root, 'etc/upgradectl/keys.d'), { recursive: true });
  mkdirSync(path.join(root, 'images'), { recursive: true });
  writeFileSync(path.join(root, 'etc/upgradectl/keys.d/bench.pub'), readFileSync(path.join(work, 'key.pub')));
  writeFileSync(path.join(root, 'etc/upgradectl/upgradectl.conf'), `[source]\nurl = ${url}\n`);
  return root;
}

/** Timed: the prepare process and a sync, as for the reference. Not timed: setting up and checking. */
async function ours(root) {
  const child = spawn(process.execPath, [bin, '--root', root, '-q', 'prepare', '1'], { stdio: ['ignore', 'ignore', 'inherit'] });
  let peak = 0;
  const poll = setInterval(() => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) peak = Math.max(peak, Number(m[1]) * 1024);
    } catch {}
  }, 20);
  const code = await new Promise((resolve) => child.on('exit', resolve));
  clearInterval(poll);
  if (code !== 0) throw new Error(`prepare exited ${code}`);
  sh('sync', []);
  return { peak };
}

function verify(root) {
  const got = createHash('sha256').update(readFileSync(path.join(root, 'images/1.img'))).digest('hex');
  if (got !== imageSha) throw new Error('prepared image differs from the source image');
  rmSync(root, { recursive: true, force: true });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const refTimes = [];
const ourTimes = [];
const peaks = [];
try {
  for (let i = 0; i < runs; i++) {
    refTimes.push((await timeIt(reference)).seconds);
    const root = freshRoot();
    const r = await timeIt(() => ours(root));
    verify(root);
    ourTimes.push(r.seconds);
    peaks.push(r.peak);
  }
} finally {
  server.kill();
}
const mib = (n) => (n / 1048576).toFixed(0);
console.log(`image ${mib(manifest.image.size)} MiB (${mib(manifest.image.allocated)} MiB allocated), payload ${mib(manifest.payload.size)} MiB, ${manifest.payload.frames.length} frames`);
console.log(`curl | lz4 -d > file && sync : ${refTimes.map((s) => s.toFixed(2)).join(' ')} s (median ${median(refTimes).toFixed(2)})`);
console.log(`upgradectl prepare (+sync)   : ${ourTimes.map((s) => s.toFixed(2)).join(' ')} s (median ${median(ourTimes).toFixed(2)})`);
console.log(`ratio prepare / reference    : ${(median(ourTimes) / median(refTimes)).toFixed(2)}  (target <= 1.0)`);
console.log(`prepare peak RSS             : ${mib(Math.max(...peaks))} MiB  (target <= 250)`);
console.log(`load average during the run  : ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')} (2 cores; other work on the machine skews both sides)`);
