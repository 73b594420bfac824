// 1. Full prepare vs. `curl -s URL | lz4 -d > file && sync`, on a ~1 GiB image of real files
// (bench/images.mjs: a.img) served from loopback HTTP and from s3rver, measured alternately in the
// same run (reference, upgradectl, reference, upgradectl, …). Prints wall times, the ratio, the CPU
// time each side used (user + system: on a machine shared with other jobs this is what decides),
// how long after its start upgradectl asked for its first frame (HTTP: the server stamps it), its peak
// RSS and the load average. Part of `npm run bench` (as root).
import { createHash } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { benchImages } from './images.mjs';
import { load, machine, median, mib, prepare, publishOnce, reference, serve, serveS3, work } from './common.mjs';

const runs = Number(process.env.BENCH_RUNS ?? 3);
const { a } = benchImages(work);
const releases = path.join(work, 'releases');
const manifest = publishOnce(releases, 'a', a);
const imageSha = createHash('sha256').update(readFileSync(a)).digest('hex');
const http = await serve(releases);
const s3 = await serveS3(releases, 'a');
const sources = [
  { name: 'loopback HTTP', url: http.url, payloadUrl: `${http.url}/releases/a/image.lz4`, config: '', stats: `${http.url}/__stats` },
  { name: 's3rver', url: s3.url, payloadUrl: s3.payloadUrl, config: s3.sourceConfig },
];
const rows = new Map(sources.map((s) => [s.name, []]));
try {
  for (let i = 0; i < runs; i++) {
    for (const s of sources) {
      const ref = reference(s.payloadUrl, path.join(work, 'ref.img'));
      rmSync(path.join(work, 'ref.img'), { force: true });
      const root = machine('full', s.url, {}, undefined, s.config);
      // The static server stamps its first payload request: how long start-up kept the download waiting.
      if (s.stats) await fetch(s.stats);
      const started = Date.now();
      const ours = await prepare(root, 'a');
      const firstAsked = s.stats ? (await (await fetch(s.stats)).json()).first - started : undefined;
      rows.get(s.name).push({ ref, ours, firstAsked, load: load() });
      // Checked byte for byte, outside the timing.
      if (createHash('sha256').update(readFileSync(path.join(root, 'images/a.img'))).digest('hex') !== imageSha) throw new Error('prepared image differs');
      rmSync(root, { recursive: true, force: true });
    }
  }
} finally {
  http.close();
  s3.close();
}
console.log(`## 1. full prepare, image ${mib(manifest.image.size)} MiB (${mib(manifest.image.allocated)} MiB allocated), payload ${mib(manifest.payload.size)} MiB, ${manifest.payload.frames.length} frames`);
for (const [name, rs] of rows) {
  console.log(`\n### from ${name}\n`);
  console.log(`| run | curl \\| lz4 -d > file && sync | upgradectl prepare (+ sync) | ratio | CPU: reference / upgradectl | first frame asked for | peak RSS | load avg (1/5/15 min) |`);
  console.log(`| --- | --- | --- | --- | --- | --- | --- | --- |`);
  const asked = (r) => (r.firstAsked === undefined ? '–' : `${r.firstAsked} ms`);
  rs.forEach((r, i) => console.log(`| ${i + 1} | ${r.ref.seconds.toFixed(2)} s | ${r.ours.seconds.toFixed(2)} s | ${(r.ours.seconds / r.ref.seconds).toFixed(2)} | ${r.ref.cpu.toFixed(2)} s / ${r.ours.cpu.toFixed(2)} s | ${asked(r)} | ${mib(r.ours.peak)} MiB | ${r.load} |`));
  const ref = median(rs.map((r) => r.ref.seconds));
  const ours = median(rs.map((r) => r.ours.seconds));
  console.log(`| median | ${ref.toFixed(2)} s | ${ours.toFixed(2)} s | ${(ours / ref).toFixed(2)} (target ≤ 1.0) | ${median(rs.map((r) => r.ref.cpu)).toFixed(2)} s / ${median(rs.map((r) => r.ours.cpu)).toFixed(2)} s | ${rs[0].firstAsked === undefined ? '–' : `${median(rs.map((r) => r.firstAsked))} ms`} | max ${mib(Math.max(...rs.map((r) => r.ours.peak)))} MiB (target ≤ 250 MB) | |`);
}
