// A probe for a delta format not built yet (docs/release-format.md, "Pre-computed deltas"): how small
// would a patch be that a publisher computes against the previous image and a machine applies to its
// own copy of it? For each 4 MiB frame of the new image, the 4 KiB blocks the old image does not hold
// are compressed together with zstd, against a raw-content dictionary of the old blocks that follow
// the old copy of the block before each run (where a file that moved or grew keeps its old version).
// Prints the patches' size next to the same blocks compressed without a dictionary. No server, no
// machine: `node bench/delta-probe.mjs [b|c]` after `npm run bench` built the images (BENCH_DIR).
// ZSTD_LEVEL (default 3), FOLLOWING (old blocks taken after each anchor, default 2).
import { openSync, readSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { Compressor } from 'zstd-napi';
import { benchImages } from './images.mjs';
import { mib, work } from './common.mjs';

const images = benchImages(work);
const target = process.argv[2] ?? 'b';
const level = Number(process.env.ZSTD_LEVEL ?? 3);
const following = Number(process.env.FOLLOWING ?? 2);
const FRAME = 4 << 20;
const BLOCK = 4096;
const digest = (b) => createHash('sha256').update(b).digest('hex');
const ZERO = digest(Buffer.alloc(BLOCK));

/** Every frame of `file`, one reused buffer. */
function* framesOf(file) {
  const fd = openSync(file, 'r');
  const buf = Buffer.alloc(FRAME);
  for (let at = 0; ; at += FRAME) {
    const n = readSync(fd, buf, 0, FRAME, at);
    if (n === 0) return;
    yield { at, bytes: buf.subarray(0, n) };
  }
}

// Where each non-zero block of the old image is (its first copy).
const oldBlock = new Map();
for (const { at, bytes } of framesOf(images.a)) {
  for (let k = 0; k < bytes.length; k += BLOCK) {
    const h = digest(bytes.subarray(k, k + BLOCK));
    if (h !== ZERO && !oldBlock.has(h)) oldBlock.set(h, (at + k) / BLOCK);
  }
}

const oldFd = openSync(images.a, 'r');
const readOld = (block) => {
  const b = Buffer.alloc(BLOCK);
  readSync(oldFd, b, 0, BLOCK, block * BLOCK);
  return b;
};
// hashLog/chainLog cover the dictionary: at a level's defaults zstd indexes only its last ~1 MiB.
const guided = new Compressor();
guided.setParameters({ compressionLevel: level, windowLog: 25, hashLog: 22, chainLog: 22 });
const plain = new Compressor();
plain.setParameters({ compressionLevel: level });

const t0 = Date.now();
let missingBytes = 0;
let patchBytes = 0;
let plainBytes = 0;
let dictBlocks = 0;
for (const { bytes } of framesOf(images[target])) {
  const missing = [];
  const reference = new Set();
  let anchor = -1;
  for (let k = 0; k < bytes.length; k += BLOCK) {
    const block = bytes.subarray(k, k + BLOCK);
    const h = digest(block);
    if (h === ZERO) {
      anchor = -1;
      continue;
    }
    const old = oldBlock.get(h);
    if (old !== undefined) {
      anchor = old;
      continue;
    }
    missing.push(block);
    if (anchor >= 0) for (let e = 1; e <= following; e++) reference.add(anchor + e);
    if (anchor >= 0) anchor++;
  }
  if (!missing.length) continue;
  const data = Buffer.concat(missing);
  missingBytes += data.length;
  dictBlocks += reference.size;
  guided.loadDictionary(Buffer.concat([...reference].sort((x, y) => x - y).map(readOld)));
  patchBytes += guided.compress(data).length;
  plainBytes += plain.compress(data).length;
}
console.log(
  `a → ${target}, zstd -${level}, ${following} old blocks after each anchor: ${mib(missingBytes)} MiB of blocks a does not hold; ` +
    `patches ${mib(patchBytes)} MiB (dictionaries ${mib(dictBlocks * BLOCK)} MiB of a in all); the same blocks without a dictionary ${mib(plainBytes)} MiB; ` +
    `${((Date.now() - t0) / 1000).toFixed(1)} s`,
);
