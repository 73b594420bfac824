import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, copyFileSync, mkdirSync, openSync, readFileSync, rmSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { upgradectl } from '../helpers/cli.js';
import { startHttpServer, type TestHttpServer } from '../helpers/http-server.js';
import { makeMachine, makePublisher, makeTree, manifestOf, sha256File } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';
import { loadPrivateKey, signBytes } from '../../src/release/signing.js';
import { decodeIndex, encodeIndex } from '../../src/release/release-index.js';
import { encodeZstdChunks } from '../../src/release/zstd-chunks.js';
import { validateManifest } from '../../src/release/manifest-check.js';

/**
 * Delta prepare: a machine that holds an earlier image fetches only the LZ4 blocks it lacks, checks
 * everything it copies, and falls back to whole frames by itself. Bytes are counted at a real HTTP
 * server on 127.0.0.1 from the ranges it answered.
 */

const payloadBytes = (server: TestHttpServer, version: string, from = 0) => server.rangeBytes(`/releases/${version}/image.lz4`, from);
const sideBytes = (server: TestHttpServer, version: string, from = 0) => server.rangeBytes(`/releases/${version}/image.zst`, from);


/** A machine root that runs `current` (the kernel command line names its image) and holds `image` as it. */
function machineWith(dir: string, name: string, url: string, pub: string, current: string, image: string, extra = ''): string {
  const root = makeMachine(dir, name, url, pub, extra);
  copyFileSync(image, path.join(root, `images/${current}.img`));
  mkdirSync(path.join(root, 'proc'), { recursive: true });
  writeFileSync(path.join(root, 'proc/cmdline'), `root=UUID=0 upgradectl.loop=/images/${current}.img\n`);
  return root;
}

t.test('delta prepare', { skip: skipUnless({ commands: ['mke2fs', 'debugfs'] }) }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  // 1.0, and 2.0 = the same tree upgraded: one file rewritten, one added (like a package upgrade).
  const tree = makeTree(dir, 'base', 12);
  const build = async (out: string) => {
    const b = await upgradectl(['image', 'build', tree, out, '--size', '48M']);
    if (b.code !== 0) throw new Error(b.stderr);
    return out;
  };
  const image1 = await pub.publish('1.0', [], await build(path.join(dir, '1.0.img')));
  writeFileSync(path.join(tree, 'etc/os-release'), 'VERSION=2.0\n');
  writeFileSync(path.join(tree, 'usr/lib/added.bin'), randomBytes(300 << 10));
  const image2 = await pub.publish('2.0', [], await build(path.join(dir, '2.0.img')));
  const server = await startHttpServer(pub.releases);
  t.teardown(() => server.close());
  const url = server.url.replace(/\/$/, '');
  const m2 = manifestOf(pub.releases, '2.0');
  t.equal(m2.format, 'upgradectl-release/2');
  t.ok(m2.payload.index, 'the release has a block index');

  let clean = 0;
  await t.test('from the previous image: only the missing blocks are fetched, the image is byte-identical', async (t) => {
    const root = machineWith(dir, 'delta', url, pub.pub, '1.0', image1);
    const before = server.requests.length;
    const r = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
    t.equal(r.code, 0, r.stderr);
    t.equal(sha256File(path.join(root, 'images/2.0.img')), sha256File(image2), 'byte-identical');
    clean = payloadBytes(server, '2.0', before) + sideBytes(server, '2.0', before);
    t.ok(r.json.stage.localBytes > 8 << 20, `${r.json.stage.localBytes} bytes reused from 1.0`);
    t.ok(clean < m2.payload.size / 4, `fetched ${clean} of ${m2.payload.size} payload bytes`);
    t.ok(server.requests.slice(before).some((q) => q.path === '/releases/2.0/image.idx'), 'the index was fetched');
    t.ok(server.requests.slice(before).some((q) => q.path === '/releases/2.0/image.zidx'), 'and the zstd index');
    t.ok(server.requests.slice(before).some((q) => q.path === '/releases/2.0/image.zst'), 'missing blocks came from the zstd side file');
    t.equal(m2.payload.zstdBlocks.chunkSize, 16384, 'in 16 KiB units');
    t.notOk(m2.payload.zstdChunks, 'no 64 KiB side file for machines that predate zstdBlocks: they fetch LZ4 blocks');
  });

  const flipBlob = (file: string, keepTimes: boolean) => {
    // Flip bytes all over the random blob's blocks in the local image.
    const data = readFileSync(file);
    const blob = data.indexOf(readFileSync(path.join(tree, 'usr/lib/blob.bin')).subarray(0, 4096));
    t.ok(blob > 0, 'found the blob in the image');
    const fd = openSync(file, 'r+');
    for (let k = 0; k < 8; k++) writeSync(fd, Buffer.from([data[blob + k * 1234567]! ^ 0xff]), 0, 1, blob + k * 1234567);
    closeSync(fd);
    // The time the test set before (a whole second: restored exactly, unlike a float of milliseconds).
    if (keepTimes) utimesSync(file, 1_700_000_000, 1_700_000_000);
  };

  await t.test('a corrupted local image is detected and those parts are fetched', async (t) => {
    const root = machineWith(dir, 'corrupt', url, pub.pub, '1.0', image1);
    flipBlob(path.join(root, 'images/1.0.img'), false);
    const before = server.requests.length;
    const r = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
    t.equal(r.code, 0, r.stderr);
    t.equal(sha256File(path.join(root, 'images/2.0.img')), sha256File(image2), 'byte-identical all the same');
    const fetched = payloadBytes(server, '2.0', before) + sideBytes(server, '2.0', before);
    t.ok(fetched > clean, `the damaged blocks were fetched (${fetched} > ${clean} bytes)`);
  });

  await t.test('damage the block-hash cache does not know of is caught when the blocks are copied', async (t) => {
    const root = machineWith(dir, 'stale', url, pub.pub, '1.0', image1);
    utimesSync(path.join(root, 'images/1.0.img'), 1_700_000_000, 1_700_000_000);
    const first = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
    t.equal(first.code, 0, first.stderr);
    // Same inode, size and mtime: the cached hashes of 1.0 now lie about its blob.
    flipBlob(path.join(root, 'images/1.0.img'), true);
    writeFileSync(path.join(tree, 'etc/os-release'), 'VERSION=3.0\n');
    const image3 = await pub.publish('3.0', [], await build(path.join(dir, '3.0.img')));
    rmSync(path.join(root, 'images/2.0.img'));
    const r = await upgradectl(['--root', root, '--json', 'prepare', '3.0']);
    t.equal(r.code, 0, r.stderr);
    t.equal(sha256File(path.join(root, 'images/3.0.img')), sha256File(image3), 'byte-identical');
    t.match(r.stderr, /do not match the release/, 'the bad copies were found and fetched instead');
    t.notMatch(r.stderr, /fetching it whole/, 'only their blocks, not whole frames');
  });

  await t.test('no local image: whole frames, no index, holes never fetched', async (t) => {
    const root = makeMachine(dir, 'fresh', url, pub.pub);
    const before = server.requests.length;
    const r = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
    t.equal(r.code, 0, r.stderr);
    t.equal(sha256File(path.join(root, 'images/2.0.img')), sha256File(image2));
    const requests = server.requests.slice(before);
    t.notOk(requests.some((q) => q.path === '/releases/2.0/image.idx'), 'no index fetched');
    const zero = manifestOf(pub.releases, '2.0').payload.frames.filter((f: { sha256: string; rawLength: number }) => f.sha256 === zeroSha(f));
    t.ok(zero.length > 0, 'the image has all-zero frames');
    for (const q of requests.filter((q) => q.path === '/releases/2.0/image.lz4' && q.range)) {
      const [a, b] = /^bytes=(\d+)-(\d+)$/.exec(q.range!)!.slice(1).map(Number) as [number, number];
      t.notOk(zero.some((f: { offset: number; length: number }) => a < f.offset + f.length && b >= f.offset), `range ${q.range} holds no zero frame`);
    }
    const nonZero = m2.payload.frames.filter((f: { sha256: string; rawLength: number }) => f.sha256 !== zeroSha(f)).reduce((n: number, f: { length: number }) => n + f.length, 0);
    t.equal(payloadBytes(server, '2.0', before), nonZero, 'every other frame exactly once');
  });

  await t.test('a major upgrade (little in common with the local image) falls back to the full payload', async (t) => {
    const other = makeTree(dir, 'unrelated', 12);
    const b = await upgradectl(['image', 'build', other, path.join(dir, 'other.img'), '--size', '48M']);
    t.equal(b.code, 0, b.stderr);
    const root = machineWith(dir, 'major', url, pub.pub, '0.9', path.join(dir, 'other.img'));
    const before = server.requests.length;
    const r = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
    t.equal(r.code, 0, r.stderr);
    t.equal(sha256File(path.join(root, 'images/2.0.img')), sha256File(image2));
    t.match(r.stderr, /fetching the full payload/);
    t.equal(r.json.stage.localBytes, 0, 'nothing copied');
    t.equal(sideBytes(server, '2.0', before), 0, 'whole LZ4 frames, not the zstd side file');
  });

  /**
   * Release 2.0 as another publisher would have written it: the manifest edited and signed again,
   * files added or replaced, served by a server of its own that counts what it sends.
   */
  const republish = async (name: string, edit: (m: ReturnType<typeof manifestOf>) => void, files: Record<string, Buffer> = {}) => {
    const key = await loadPrivateKey(pub.key);
    const m = manifestOf(pub.releases, '2.0');
    const at = path.join(dir, name, 'releases/2.0');
    mkdirSync(at, { recursive: true });
    for (const f of ['image.lz4', 'image.idx', 'image.zst', 'image.zidx']) copyFileSync(path.join(pub.releases, 'releases/2.0', f), path.join(at, f));
    for (const [f, bytes] of Object.entries(files)) writeFileSync(path.join(at, f), bytes);
    edit(m);
    const bytes = Buffer.from(JSON.stringify(m));
    writeFileSync(path.join(at, 'manifest.json'), bytes);
    writeFileSync(path.join(at, 'manifest.json.sig'), signBytes(bytes, key));
    const served = await startHttpServer(path.join(dir, name));
    t.teardown(() => served.close());
    return served;
  };
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

  await t.test('what a machine from before zstdBlocks reads: image.idx in its layout, LZ4 blocks from the payload', async (t) => {
    // Such a machine ignores the field it does not know; here it is left out.
    const served = await republish('no-zstd-blocks', (m) => void delete m.payload.zstdBlocks);
    const root = machineWith(dir, 'predates', served.url.replace(/\/$/, ''), pub.pub, '1.0', image1);
    const r = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
    t.equal(r.code, 0, r.stderr);
    t.equal(sha256File(path.join(root, 'images/2.0.img')), sha256File(image2), 'byte-identical');
    t.ok(r.json.stage.localBytes > 8 << 20, 'a delta all the same');
    t.ok(payloadBytes(served, '2.0') > 0 && payloadBytes(served, '2.0') < m2.payload.size / 4, 'its missing blocks as LZ4 from the payload');
    t.notOk(served.requests.some((q) => q.path.includes('image.z')), 'no zstd file asked for');
  });

  await t.test('a release published before zstdBlocks (64 KiB zstd blocks, lengths in image.idx) still deltas from its side file', async (t) => {
    const m = manifestOf(pub.releases, '2.0');
    const idx = readFileSync(path.join(pub.releases, 'releases/2.0/image.idx'));
    const index = decodeIndex(idx, m, 'image.idx');
    const raw = readFileSync(image2);
    const zstdLengths: number[][] = [];
    const parts: Buffer[] = [];
    m.payload.frames.forEach((f: { rawLength: number }, i: number) => {
      const blocks = encodeZstdChunks(raw.subarray(i * m.payload.frameSize, i * m.payload.frameSize + f.rawLength), m.payload.chunkSize, 3);
      parts.push(...blocks);
      zstdLengths.push(blocks.map((b) => b.length));
    });
    const side = Buffer.concat(parts);
    const oldIdx = encodeIndex(index.chunkOffsets.map((o) => o.slice(1).map((end, k) => end - o[k]!)), zstdLengths, [index.blockHashes]);
    const served = await republish('zstd-chunks', (m) => {
      delete m.payload.zstdBlocks;
      m.payload.index = { ...m.payload.index, size: oldIdx.length, sha256: sha(oldIdx) };
      m.payload.zstdChunks = { path: 'image.zst-chunks', size: side.length, sha256: sha(side) };
    }, { 'image.idx': oldIdx, 'image.zst-chunks': side });
    const root = machineWith(dir, 'zstd-chunks', served.url.replace(/\/$/, ''), pub.pub, '1.0', image1);
    const r = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
    t.equal(r.code, 0, r.stderr);
    t.equal(sha256File(path.join(root, 'images/2.0.img')), sha256File(image2), 'byte-identical');
    t.ok(served.rangeBytes('/releases/2.0/image.zst-chunks') > 0, 'missing blocks from the 64 KiB side file');
    t.equal(payloadBytes(served, '2.0'), 0, 'none from the payload');
  });

  await t.test('a zstd index that does not match its manifest: the delta fetches LZ4 blocks instead', async (t) => {
    const zidx = readFileSync(path.join(pub.releases, 'releases/2.0/image.zidx'));
    zidx[20] = zidx[20]! ^ 1;
    const served = await republish('bad-zidx', () => undefined, { 'image.zidx': zidx });
    const root = machineWith(dir, 'bad-zidx', served.url.replace(/\/$/, ''), pub.pub, '1.0', image1);
    const r = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
    t.equal(r.code, 0, r.stderr);
    t.equal(sha256File(path.join(root, 'images/2.0.img')), sha256File(image2), 'byte-identical');
    t.match(r.stderr, /the zstd index \S+image\.zidx does not match its manifest; the delta fetches LZ4 blocks from the payload instead/);
    t.equal(sideBytes(served, '2.0'), 0, 'nothing from the zstd side file');
    t.ok(r.json.stage.localBytes > 8 << 20, 'still a delta');
  });

  await t.test('an odd frame size (20 KiB) gets zstd units that tile its frames', async (t) => {
    await pub.publish('2.1', ['--frame-size', '20K'], image2);
    const m = manifestOf(pub.releases, '2.1');
    t.equal(m.payload.chunkSize, 20480);
    t.equal(m.payload.zstdBlocks.chunkSize, 4096, 'the largest unit up to 16 KiB that divides 20 KiB');
    const root = machineWith(dir, 'odd-frames', url, pub.pub, '1.0', image1);
    const r = await upgradectl(['--root', root, '--json', 'prepare', '2.1']);
    t.equal(r.code, 0, r.stderr);
    t.equal(sha256File(path.join(root, 'images/2.1.img')), sha256File(image2), 'byte-identical');
    t.ok(r.json.stage.localBytes > 8 << 20, 'a delta');
  });

  await t.test('payload.zstdBlocks is checked like the rest of the manifest', async (t) => {
    const bad = (edit: (z: Record<string, unknown>) => void) => {
      const m = manifestOf(pub.releases, '2.0');
      edit(m.payload.zstdBlocks);
      try {
        validateManifest(m, 'manifest.json');
        return 'accepted';
      } catch (err) {
        return (err as Error).message;
      }
    };
    t.equal(bad(() => undefined), 'accepted');
    t.match(bad((z) => void (z.chunkSize = 5000)), /payload\.zstdBlocks\.chunkSize/);
    t.match(bad((z) => void (z.chunkSize = 8 << 20)), /payload\.zstdBlocks\.chunkSize/, 'larger than a frame');
    t.match(bad((z) => void delete z.index), /payload\.zstdBlocks\.index/);
    t.match(bad((z) => void (z.path = '../image.zst')), /payload\.zstdBlocks\.path/);
    t.match(bad((z) => void ((z.index as { sha256: string }).sha256 = 'nothex')), /payload\.zstdBlocks\.index\.sha256/);
  });

  await t.test('an old-format (/1) manifest still prepares, over a local image too', async (t) => {
    const key = await loadPrivateKey(pub.key);
    const m = manifestOf(pub.releases, '2.0');
    // What an old publisher wrote: no frame-hash root, no chunk size, no index, no zstd side file.
    const old = { ...m, format: 'upgradectl-release/1', image: { size: m.image.size, sha256: m.image.sha256, allocated: m.image.allocated }, payload: { ...m.payload } };
    delete old.payload.chunkSize;
    delete old.payload.index;
    delete old.payload.zstdBlocks;
    const v1 = path.join(dir, 'v1');
    mkdirSync(path.join(v1, 'releases/2.0'), { recursive: true });
    const bytes = Buffer.from(JSON.stringify(old));
    writeFileSync(path.join(v1, 'releases/2.0/manifest.json'), bytes);
    writeFileSync(path.join(v1, 'releases/2.0/manifest.json.sig'), signBytes(bytes, key));
    copyFileSync(path.join(pub.releases, 'releases/2.0/image.lz4'), path.join(v1, 'releases/2.0/image.lz4'));
    const root = machineWith(dir, 'old-format', `file://${v1}`, pub.pub, '1.0', image1);
    const r = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
    t.equal(r.code, 0, r.stderr);
    t.equal(sha256File(path.join(root, 'images/2.0.img')), sha256File(image2));
    t.equal(r.json.stage.localBytes, 0, 'no index: whole frames');
  });
});

const zeroShas = new Map<number, string>();
function zeroSha(f: { rawLength: number }): string {
  let z = zeroShas.get(f.rawLength);
  if (!z) zeroShas.set(f.rawLength, (z = createHash('sha256').update(Buffer.alloc(f.rawLength)).digest('hex')));
  return z;
}
