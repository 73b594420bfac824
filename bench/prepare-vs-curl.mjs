// 1. Full prepare vs. `curl -s URL | lz4 -d > file && sync`, on a ~1 GiB image of real files
// (bench/images.mjs: a.img) served from loopback HTTP, measured alternately in the same run. Prints wall
// times, the ratio, upgradectl's peak RSS and the load average. Part of `npm run bench` (as root).
import { createHash } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { benchImages } from './images.mjs';
import { load, machine, median, mib, prepare, publishOnce, serve, sh, work } from './common.mjs';

const runs = Number(process.env.BENCH_RUNS ?? 3);
const { a } = benchImages(work);
const releases = path.join(work, 'releases');
const manifest = publishOnce(releases, 'a', a);
const imageSha = createHash('sha256').update(readFileSync(a)).digest('hex');
const server = await serve(releases);

const refTimes = [];
const ourTimes = [];
const peaks = [];
const loads = [];
try {
  for (let i = 0; i < runs; i++) {
    const out = path.join(work, 'ref.img');
    rmSync(out, { force: true });
    const t0 = process.hrtime.bigint();
    sh('sh', ['-c', 'curl -s "$1" | lz4 -d > "$2" && sync', 'sh', `${server.url}/releases/a/image.lz4`, out]);
    refTimes.push(Number(process.hrtime.bigint() - t0) / 1e9);
    rmSync(out, { force: true });
    const root = machine('full', server.url);
    const r = await prepare(root, 'a');
    ourTimes.push(r.seconds);
    peaks.push(r.peak);
    loads.push(load());
    // Checked byte for byte, outside the timing.
    if (createHash('sha256').update(readFileSync(path.join(root, 'images/a.img'))).digest('hex') !== imageSha) throw new Error('prepared image differs');
    rmSync(root, { recursive: true, force: true });
  }
} finally {
  server.close();
}
console.log(`## 1. full prepare, image ${mib(manifest.image.size)} MiB (${mib(manifest.image.allocated)} MiB allocated), payload ${mib(manifest.payload.size)} MiB, ${manifest.payload.frames.length} frames`);
console.log(`| run | curl \\| lz4 -d > file && sync | upgradectl prepare (+ sync) | ratio | peak RSS | load avg (1/5/15 min) |`);
console.log(`| --- | --- | --- | --- | --- | --- |`);
for (let i = 0; i < runs; i++) {
  console.log(`| ${i + 1} | ${refTimes[i].toFixed(2)} s | ${ourTimes[i].toFixed(2)} s | ${(ourTimes[i] / refTimes[i]).toFixed(2)} | ${mib(peaks[i])} MiB | ${loads[i]} |`);
}
console.log(`| median | ${median(refTimes).toFixed(2)} s | ${median(ourTimes).toFixed(2)} s | ${(median(ourTimes) / median(refTimes)).toFixed(2)} (target ≤ 1.0) | max ${mib(Math.max(...peaks))} MiB (target ≤ 250 MB) | |`);
