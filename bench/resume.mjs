// 3. Bytes sent again after kill -9 at random moments of a full prepare of a.img (loopback HTTP), as a
// multiple of the payload a fresh prepare fetches. Part of `npm run bench` (as root).
import path from 'node:path';
import { benchImages } from './images.mjs';
import { isZeroFrame, load, machine, median, mib, prepare, publishOnce, serve, work } from './common.mjs';

const kills = Number(process.env.BENCH_KILLS ?? 3);
// BENCH_REQUEST_SIZE=16M: several frames per ranged GET, as an S3 source does by default (s3rver
// does not count what it sends; this server does).
const requestSize = process.env.BENCH_REQUEST_SIZE;
const config = requestSize ? `[prepare]\nrequest_size = ${requestSize}\n` : '';
const rounds = Number(process.env.BENCH_RUNS ?? 3);
const { a } = benchImages(work);
const releases = path.join(work, 'releases');
const m = publishOnce(releases, 'a', a);
const needed = m.payload.frames.filter((f) => !isZeroFrame(f)).reduce((n, f) => n + f.length, 0);
const server = await serve(releases);
const rows = [];
let span = 0;
try {
  // Kill moments are spread over the span of one whole prepare, timed here first (a fixed window
  // outlived the download once prepare got faster: most kills then hit a finished run).
  span = (await prepare(machine('resume', server.url, {}, undefined, config), 'a')).seconds * 1000;
  for (let round = 0; round < rounds; round++) {
    const root = machine('resume', server.url, {}, undefined, config);
    const before = await server.sent();
    const at = [];
    let peak = 0;
    for (let k = 0; k < kills; k++) {
      // Random moments between 30 % and 90 % of a whole prepare (start-up is the first ~15 %).
      const ms = Math.round(span * (0.3 + Math.random() * 0.6));
      const r = await prepare(root, 'a', { killAfterMs: ms });
      peak = Math.max(peak, r.peak);
      // A run that finished before its kill is not a kill: the round ends there.
      if (!r.killed) break;
      at.push(ms);
    }
    const done = await prepare(root, 'a');
    rows.push({ at, sent: (await server.sent()) - before, peak: Math.max(peak, done.peak), load: load() });
  }
} finally {
  server.close();
}
console.log(`## 3. kill -9 and resume, payload without holes ${mib(needed)} MiB; one whole prepare ${Math.round(span)} ms${requestSize ? `; request_size = ${requestSize}` : ''}`);
console.log('| round | kills after (ms from start) | bytes sent in all | multiple of the payload | peak RSS | load avg |');
console.log('| --- | --- | --- | --- | --- | --- |');
rows.forEach((r, i) => console.log(`| ${i + 1} | ${r.at.join(', ')} | ${mib(r.sent)} MiB | ${(r.sent / needed).toFixed(3)}x (target ≤ 1.05) | ${mib(r.peak)} MiB | ${r.load} |`));
const multiples = rows.map((r) => r.sent / needed);
console.log(`| median | | | ${median(multiples).toFixed(3)}x, worst ${Math.max(...multiples).toFixed(3)}x | max ${mib(Math.max(...rows.map((r) => r.peak)))} MiB | |`);
