// Shared by the prepare benchmarks: a published release set, a loopback server in its own process
// that counts the bytes it sends, machine roots, and a timed prepare with its peak RSS.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const bin = path.join(repo, 'bin/upgradectl.js');
export const work = process.env.BENCH_DIR ?? '/var/tmp/upgradectl-bench';
export const sh = (cmd, args, opts = {}) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 26, ...opts }).toString();
export const mib = (n) => (n / 1048576).toFixed(1);
export const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
export const isZeroFrame = (f) => f.sha256 === createHash('sha256').update(Buffer.alloc(f.rawLength)).digest('hex');
export const load = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

/** Publish `image` as `version` under `releases` once (throwaway key shared by all benchmarks). */
export function publishOnce(releases, version, image, extra = []) {
  const key = path.join(work, 'key');
  if (!existsSync(key)) sh('node', [bin, '-q', 'keygen', '--out', key]);
  if (!existsSync(path.join(releases, `releases/${version}/manifest.json`))) {
    sh('node', [bin, '-q', 'publish', image, '--version', version, '--to', `file://${releases}`, '--key', key, ...extra]);
  }
  return JSON.parse(readFileSync(path.join(releases, `releases/${version}/manifest.json`), 'utf8'));
}

/** The loopback server (bench/static-server.mjs) in its own process; `sent()` = body bytes sent so far. */
export async function serve(dir) {
  const server = spawn(process.execPath, [path.join(repo, 'bench/static-server.mjs'), dir], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  const port = await new Promise((resolve) => server.stdout.once('data', (d) => resolve(Number(String(d).trim()))));
  const sent = () =>
    new Promise((resolve) => {
      server.once('message', (m) => resolve(m));
      server.send('sent?');
    });
  return { url: `http://127.0.0.1:${port}`, sent, close: () => server.kill() };
}

/**
 * s3rver in its own process (bench/s3-server.mjs), bucket `releases`, holding under `prefix` the
 * objects a full prepare of `version` reads, copied once from the file:// release set through
 * upgradectl's own S3 target. `sourceConfig` is what a machine adds to its [source] section; the
 * SDK finds s3rver's fixed keys in the environment.
 */
export async function serveS3(releases, version, prefix = 'bench') {
  Object.assign(process.env, {
    AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1',
    AWS_EC2_METADATA_DISABLED: 'true', AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
  });
  const directory = path.join(work, 's3');
  mkdirSync(directory, { recursive: true });
  const server = spawn(process.execPath, [path.join(repo, 'bench/s3-server.mjs'), directory, 'releases'], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  const port = await new Promise((resolve) => server.stdout.once('data', (d) => resolve(Number(String(d).trim()))));
  const endpoint = `http://127.0.0.1:${port}`;
  const url = `s3://releases/${prefix}`;
  const marker = path.join(directory, `.uploaded-${prefix}-${version}`);
  if (!existsSync(marker)) {
    const { openTarget } = await import(path.join(repo, 'dist/release/sources/index.js'));
    const target = openTarget(url, { endpoint, forcePathStyle: true, region: 'us-east-1' });
    for (const name of ['image.lz4', 'manifest.json.sig', 'manifest.json']) {
      await target.putFile(`releases/${version}/${name}`, path.join(releases, `releases/${version}/${name}`));
    }
    await target.close();
    writeFileSync(marker, '');
  }
  return {
    url,
    payloadUrl: `${endpoint}/releases/${prefix}/releases/${version}/image.lz4`,
    sourceConfig: `endpoint = ${endpoint}\nforce_path_style = true\nregion = us-east-1\n`,
    close: () => server.kill(),
  };
}

/** A machine root trusting the bench key, reading from `url`, holding `images` (version → file, copied sparse). */
export function machine(name, url, images = {}, current, sourceConfig = '') {
  const root = path.join(work, name);
  rmSync(root, { recursive: true, force: true });
  mkdirSync(path.join(root, 'etc/upgradectl/keys.d'), { recursive: true });
  mkdirSync(path.join(root, 'images/.upgradectl'), { recursive: true });
  // Root-only, as upgradectl makes them on a real machine (else every prepare first repairs and warns).
  for (const dir of ['images', 'images/.upgradectl']) chmodSync(path.join(root, dir), 0o700);
  writeFileSync(path.join(root, 'etc/upgradectl/keys.d/bench.pub'), readFileSync(path.join(work, 'key.pub')));
  writeFileSync(path.join(root, 'etc/upgradectl/upgradectl.conf'), `[source]\nurl = ${url}\n${sourceConfig}`);
  for (const [v, file] of Object.entries(images)) sh('cp', ['--sparse=always', file, path.join(root, `images/${v}.img`)]);
  if (current) {
    // A machine that runs `current` (as the boot loader says) and has nothing pending.
    mkdirSync(path.join(root, 'proc'), { recursive: true });
    writeFileSync(path.join(root, 'proc/cmdline'), `root=UUID=x upgradectl.loop=/images/${current}.img\n`);
  }
  return root;
}

/**
 * The reference pipeline `curl -s URL | lz4 -d > out && sync`, timed; `cpu` is the user + system
 * time of curl and lz4 together (from /usr/bin/time).
 */
export function reference(url, out) {
  rmSync(out, { force: true });
  const t0 = process.hrtime.bigint();
  const r = spawnSync('/usr/bin/time', ['-f', '%U %S', 'sh', '-c', 'curl -s "$1" | lz4 -d > "$2" && sync', 'sh', url, out], { stdio: ['ignore', 'ignore', 'pipe'] });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`reference pipeline failed: ${r.stderr}`);
  const [user, sys] = r.stderr.toString().trim().split('\n').pop().split(' ').map(Number);
  return { seconds, cpu: user + sys };
}

/** `upgradectl prepare VERSION` as its own process (+ sync, as the reference pipeline syncs); peak RSS polled. */
export async function prepare(root, version, { killAfterMs } = {}) {
  const t0 = process.hrtime.bigint();
  const child = spawn(process.execPath, [bin, '--root', root, '--json', 'prepare', version], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  let peak = 0;
  let cpu = 0;
  const poll = setInterval(() => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) peak = Math.max(peak, Number(m[1]) * 1024);
      // utime + stime of all its threads, in clock ticks (100/s); the last 20 ms before exit are missed.
      const f = readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1].split(' ');
      cpu = Math.max(cpu, (Number(f[11]) + Number(f[12])) / 100);
    } catch {}
  }, 20);
  const killer = killAfterMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), killAfterMs);
  const code = await new Promise((resolve) => child.on('exit', (c, sig) => resolve(sig ?? c)));
  clearInterval(poll);
  clearTimeout(killer);
  if (code === 'SIGKILL') return { killed: true, peak };
  if (code !== 0) throw new Error(`prepare exited ${code}`);
  sh('sync', []);
  return { seconds: Number(process.hrtime.bigint() - t0) / 1e9, peak, cpu, result: JSON.parse(out) };
}
