// 2. Delta: a machine holding a.img prepares b.img (a package upgrade) and c.img (a large addition),
// against casync (its store served by the same loopback server, a.img as seed), zstd --patch-from
// (the patch fetched with curl and applied) and a full download. Bytes are what the server sent; times
// include a final sync. Part of `npm run bench` (as root; needs casync, zstd, curl, mke2fs).
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { benchImages } from './images.mjs';
import { isZeroFrame, load, machine, mib, prepare, publishOnce, serve, sh, work } from './common.mjs';

const images = benchImages(work);
const releases = path.join(work, 'releases');
publishOnce(releases, 'a', images.a);
const pairs = [
  ['b', 'package upgrade: 160 binaries rebuilt, +30 MiB libraries, -5 MiB docs'],
  ['c', 'large addition: +140 MiB (a compiler, perl)'],
];
const timed = (fn) => {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
};

// Reference artefacts, made once: casync stores and blob indexes, zstd patches (-3: -19 takes minutes).
const casync = path.join(releases, 'casync');
mkdirSync(casync, { recursive: true });
for (const [v] of pairs) {
  publishOnce(releases, v, images[v]);
  const caibx = path.join(casync, `${v}.caibx`);
  if (!existsSync(caibx)) sh('casync', ['make', `--store=${path.join(casync, 'default.castr')}`, caibx, images[v]]);
  const patch = path.join(releases, `${v}.from-a.zst`);
  if (!existsSync(patch)) sh('zstd', ['-q', '-3', '--long=31', `--patch-from=${images.a}`, images[v], '-o', patch]);
}

const server = await serve(releases);
const rows = [];
try {
  for (const [v, what] of pairs) {
    const m = JSON.parse(readFileSync(path.join(releases, `releases/${v}/manifest.json`), 'utf8'));
    const fullBytes = m.payload.frames.filter((f) => !isZeroFrame(f)).reduce((n, f) => n + f.length, 0);
    const out = path.join(work, 'out.img');
    const row = { v, what, load: load() };

    // upgradectl, block hashes of a.img not cached yet (the first delta a machine makes).
    let before = await server.sent();
    const root = machine(`delta-${v}`, server.url, { a: images.a }, 'a');
    const r = await prepare(root, v);
    row.ours = { bytes: (await server.sent()) - before, seconds: r.seconds, peak: r.peak, requests: r.result.stage.requests };
    if (sh('cmp', [path.join(root, `images/${v}.img`), images[v]]).length) throw new Error('delta image differs');
    rmSync(root, { recursive: true, force: true });

    // casync extract --seed a.img, store over the same HTTP server.
    rmSync(out, { force: true });
    before = await server.sent();
    const seconds = timed(() => {
      sh('casync', ['extract', '--seed-output=no', `--store=${server.url}/casync/default.castr`, `--seed=${images.a}`, `${server.url}/casync/${v}.caibx`, out]);
      sh('sync', []);
    });
    row.casync = { bytes: (await server.sent()) - before, seconds };
    if (sh('cmp', [out, images[v]]).length) throw new Error('casync image differs');

    // zstd --patch-from: fetch the patch, apply it to a.img.
    rmSync(out, { force: true });
    before = await server.sent();
    row.zstd = {
      seconds: timed(() => sh('sh', ['-c', 'curl -s "$1" | zstd -q -d --long=31 --patch-from="$2" -o "$3" && sync', 'sh', `${server.url}/${v}.from-a.zst`, images.a, out])),
    };
    row.zstd.bytes = (await server.sent()) - before;
    rmSync(out, { force: true });

    // Full download by upgradectl (no local image).
    before = await server.sent();
    const fresh = machine(`full-${v}`, server.url);
    const f = await prepare(fresh, v);
    row.full = { bytes: (await server.sent()) - before, seconds: f.seconds, peak: f.peak, expected: fullBytes };
    rmSync(fresh, { recursive: true, force: true });
    rows.push(row);
  }
} finally {
  server.close();
}

console.log('## 2. delta from a.img');
console.log('| pair | upgradectl delta | casync extract --seed | zstd -3 --patch-from | upgradectl full | bytes vs casync | time vs casync | peak RSS | load avg |');
console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
for (const r of rows) {
  const cell = (x) => `${mib(x.bytes)} MiB, ${x.seconds.toFixed(2)} s`;
  console.log(
    `| a → ${r.v} (${r.what}) | ${cell(r.ours)} (${r.ours.requests} requests) | ${cell(r.casync)} | ${cell(r.zstd)} | ${cell(r.full)} | ${(r.ours.bytes / r.casync.bytes).toFixed(2)} | ${(r.ours.seconds / r.casync.seconds).toFixed(2)} | ${mib(Math.max(r.ours.peak, r.full.peak))} MiB | ${r.load} |`,
  );
}
