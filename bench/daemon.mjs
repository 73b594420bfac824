// The resident service's costs, measured in one run:
//  1. idle: `upgradectl daemon` on a machine that is up to date, after its first check — resident memory
//     (VmRSS) and CPU time over 30 s (target: RSS <= 60 MB, no measurable CPU);
//  2. [prepare] max_rate: a prepare of a ~100 MiB incompressible payload from a loopback HTTP server,
//     at 20M, vs. the same download unthrottled (target: within 10 % of the limit).
// Run: npm run bench:daemon  (as root; needs mke2fs)
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bin = path.join(repo, 'bin/upgradectl.js');
const work = process.env.BENCH_DIR ?? '/var/tmp/upgradectl-bench-daemon';
const sh = (cmd, args) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] }).toString();
const RATE = 20 * 1048576;
mkdirSync(work, { recursive: true });

// A release whose payload does not compress: the bytes fetched are the bytes on the wire.
const releases = path.join(work, 'releases');
if (!existsSync(path.join(releases, 'channels/stable.json'))) {
  rmSync(releases, { recursive: true, force: true });
  const tree = path.join(work, 'tree');
  rmSync(tree, { recursive: true, force: true });
  mkdirSync(path.join(tree, 'usr/lib'), { recursive: true });
  mkdirSync(path.join(tree, 'host'));
  writeFileSync(path.join(tree, 'vmlinuz'), 'kernel\n');
  writeFileSync(path.join(tree, 'initrd.img'), 'initrd\n');
  for (let i = 0; i < 10; i++) writeFileSync(path.join(tree, `usr/lib/blob${i}`), randomBytes(10 << 20));
  const image = path.join(work, '1.img');
  rmSync(image, { force: true });
  sh('node', [bin, '-q', 'image', 'build', tree, image, '--size', '160M']);
  rmSync(path.join(work, 'key'), { force: true });
  rmSync(path.join(work, 'key.pub'), { force: true });
  sh('node', [bin, '-q', 'keygen', '--out', path.join(work, 'key')]);
  sh('node', [bin, '-q', 'publish', image, '--version', '1', '--to', `file://${releases}`, '--key', path.join(work, 'key'), '--channel', 'stable']);
  rmSync(tree, { recursive: true, force: true });
}
const manifest = JSON.parse(readFileSync(path.join(releases, 'releases/1/manifest.json'), 'utf8'));

const server = spawn(process.execPath, [path.join(repo, 'bench/static-server.mjs'), releases], { stdio: ['ignore', 'pipe', 'inherit'] });
const port = await new Promise((resolve) => server.stdout.once('data', (d) => resolve(Number(String(d).trim()))));

function machine(name, conf) {
  const root = path.join(work, name);
  rmSync(root, { recursive: true, force: true });
  mkdirSync(path.join(root, 'etc/upgradectl/keys.d'), { recursive: true });
  mkdirSync(path.join(root, 'images'), { recursive: true });
  writeFileSync(path.join(root, 'etc/upgradectl/keys.d/bench.pub'), readFileSync(path.join(work, 'key.pub')));
  writeFileSync(path.join(root, 'etc/upgradectl/upgradectl.conf'), `[source]\nurl = http://127.0.0.1:${port}\nchannel = stable\n${conf}`);
  return root;
}

const status = (pid) => readFileSync(`/proc/${pid}/status`, 'utf8');
const rssBytes = (pid) => Number(/VmRSS:\s+(\d+) kB/.exec(status(pid))[1]) * 1024;
/** utime + stime of a process, in clock ticks (1/100 s on Linux). */
const cpuTicks = (pid) => {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(fields[11]) + Number(fields[12]);
};

/** A prepare's wall time, and the payload's rate on the wire as the server saw it (first byte to last). */
async function prepareRun(root) {
  await fetch(`http://127.0.0.1:${port}/__stats`).then((r) => r.json());
  const t0 = process.hrtime.bigint();
  const code = await new Promise((resolve) => spawn(process.execPath, [bin, '--root', root, '-q', 'prepare', '1'], { stdio: ['ignore', 'ignore', 'inherit'] }).on('exit', resolve));
  if (code !== 0) throw new Error(`prepare exited ${code}`);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const wire = await fetch(`http://127.0.0.1:${port}/__stats`).then((r) => r.json());
  return { seconds, wireRate: wire.bytes / ((wire.last - wire.first) / 1000), wireBytes: wire.bytes };
}

try {
  // 1. Idle: the machine already runs 1, so the first check finds nothing to do; then it sleeps.
  const idleRoot = machine('idle', '[daemon]\nstartup_delay = 0\n[window]\ncommit = never\n[metrics]\ntextfile =\n');
  mkdirSync(path.join(idleRoot, 'proc'), { recursive: true });
  writeFileSync(path.join(idleRoot, 'proc/cmdline'), 'upgradectl.loop=/images/1.img\n');
  sh('cp', ['--sparse=always', path.join(work, '1.img'), path.join(idleRoot, 'images/1.img')]);
  const daemon = spawn(process.execPath, [bin, '--root', idleRoot, '-q', 'daemon'], { stdio: ['ignore', 'ignore', 'inherit'] });
  const service = path.join(idleRoot, 'images/.upgradectl/service.json');
  for (let i = 0; i < 300 && !existsSync(service); i++) await sleep(100);
  // The first pass runs in a child; once it has exited the supervisor is all that is left.
  await sleep(10_000);
  const rss0 = rssBytes(daemon.pid);
  const ticks0 = cpuTicks(daemon.pid);
  await sleep(30_000);
  const rss1 = rssBytes(daemon.pid);
  const idleTicks = cpuTicks(daemon.pid) - ticks0;
  const checked = JSON.parse(readFileSync(service, 'utf8')).lastCheck;
  daemon.kill('SIGTERM');

  // 2. max_rate: the same download throttled and not; the bytes fetched are the payload's.
  const free = await prepareRun(machine('free', ''));
  const limited = await prepareRun(machine('limited', `[prepare]\nmax_rate = ${RATE}\n`));
  const payload = manifest.payload.size;
  const achieved = limited.wireRate;

  const mb = (n) => (n / 1e6).toFixed(1);
  const mib = (n) => (n / 1048576).toFixed(1);
  console.log(`idle daemon after its first check (${checked?.result ?? 'no check recorded'}):`);
  console.log(`  RSS (the supervisor)     : ${mb(rss0)} MB after 10 s, ${mb(rss1)} MB after 40 s  (target <= 60 MB)`);
  console.log(`  CPU over 30 s idle       : ${idleTicks} ticks = ${(idleTicks * 10).toFixed(0)} ms  (target: none measurable)`);
  console.log(`max_rate ${mib(RATE)} MiB/s, payload ${mib(payload)} MiB (incompressible), loopback HTTP:`);
  console.log(`  unthrottled prepare      : ${free.seconds.toFixed(2)} s, payload on the wire at ${mib(free.wireRate)} MiB/s`);
  console.log(`  throttled prepare        : ${limited.seconds.toFixed(2)} s, payload on the wire at ${mib(achieved)} MiB/s (${mib(limited.wireBytes)} MiB, first byte to last)`);
  console.log(`  wire rate / limit        : ${(achieved / RATE).toFixed(3)}  (target 0.90–1.10)`);
} finally {
  server.kill();
}
