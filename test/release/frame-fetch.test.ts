import t from 'tap';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { upgradectl } from '../helpers/cli.js';
import { makeMachine, makePublisher, servedRelease, sha256File } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';

/**
 * Whole frames are fetched by the frame workers themselves (src/release/frame-worker.ts, fetch-frame):
 * what a worker receives is decoded and checked there, and what fails is handled as it was when the
 * main thread fetched — a frame mangled on the wire is fetched again, a download that breaks off keeps
 * every frame that was verified. Counted from the ranges a real HTTP server answered.
 */
type F = { offset: number; length: number; rawLength: number; sha256: string };
const isZero = (f: F) => f.sha256 === createHash('sha256').update(Buffer.alloc(f.rawLength)).digest('hex');
const rangeLength = (range: string | undefined) => {
  const m = /^bytes=(\d+)-(\d+)$/.exec(range ?? '');
  return m ? Number(m[2]) - Number(m[1]) + 1 : 0;
};

t.test('frames fetched by the workers: corruption on the wire, a download that breaks off', { skip: skipUnless({ commands: ['mke2fs', 'debugfs'] }) }, async (t) => {
  const dir = t.testdir();
  const { pub, image, server, url, payloadPath: payload, manifest } = await servedRelease(t, dir, '1.0');
  const frames = manifest.payload.frames as F[];
  const needed = frames.filter((f, i) => i === 0 || !isZero(f)).reduce((n, f) => n + f.length, 0);

  await t.test('a frame corrupted on the wire is fetched again, and only that frame', async (t) => {
    const root = makeMachine(dir, 'once', url, pub.pub, '[prepare]\nparallel = 2\n');
    const from = server.requests.length;
    server.faults.add({ kind: 'corrupt', path: payload, times: 1 });
    const r = await upgradectl(['--root', root, '--json', 'prepare', '1.0']);
    server.faults.clear();
    t.equal(r.code, 0, r.stderr);
    t.match(r.stderr, /frame \d+ of .* failed its check \(.*\); fetching it again/);
    t.equal(sha256File(path.join(root, 'images/1.0.img')), sha256File(image), 'byte-identical');
    const first = server.requests.slice(from).find((q) => q.path === payload && q.method === 'GET');
    t.equal(server.rangeBytes(payload, from), needed + rangeLength(first?.range), 'the whole payload once, plus the corrupted frame once more');
  });

  await t.test('a frame that arrives corrupt twice is refused: the release does not match its manifest', async (t) => {
    const root = makeMachine(dir, 'always', url, pub.pub, '[prepare]\nparallel = 2\n');
    server.faults.add({ kind: 'corrupt', path: payload });
    const r = await upgradectl(['--root', root, '--json', 'prepare', '1.0']);
    server.faults.clear();
    t.not(r.code, 0);
    t.equal(r.json?.error?.code, 'CORRUPT');
    t.match(r.json?.error?.message, /frame \d+ of http:\/\/127\.0\.0\.1:\d+\/releases\/1\.0\/image\.lz4 \(bytes \d+–\d+\) is corrupt/);
    t.match(r.json?.error?.hint, /re-publish/);
    t.notOk(existsSync(path.join(root, 'images/1.0.img')), 'nothing installed');
  });

  await t.test('a download that breaks off names the URL, keeps the verified frames, and the next run fetches only the rest', async (t) => {
    const root = makeMachine(dir, 'broken', url, pub.pub, '[prepare]\nparallel = 2\nretries = 0\n');
    // The first four frame requests are answered; every later one is cut after 100 bytes.
    server.faults.add({ kind: 'drop', afterBytes: 100, path: payload, skip: 4 });
    const first = await upgradectl(['--root', root, '--json', 'prepare', '1.0']);
    server.faults.clear();
    t.not(first.code, 0, 'the first run fails');
    t.equal(first.json?.error?.code, 'NETWORK');
    t.match(first.json?.error?.message, /127\.0\.0\.1/, 'names the server');
    t.ok(first.json?.error?.hint, 'says what to do');
    t.notOk(existsSync(path.join(root, 'images/1.0.img')), 'nothing under the bootable name');

    const staged = readFileSync(path.join(root, 'images/.staging/1.0.img'));
    const frameSize = manifest.payload.frameSize as number;
    const onDisk = frames.filter((f, i) => !isZero(f) && createHash('sha256').update(staged.subarray(i * frameSize, i * frameSize + f.rawLength)).digest('hex') === f.sha256);
    t.ok(onDisk.length >= 1, `${onDisk.length} frames were verified and written before the break`);
    const from = server.requests.length;
    const r = await upgradectl(['--root', root, '--json', 'prepare', '1.0']);
    t.equal(r.code, 0, r.stderr);
    t.equal(sha256File(path.join(root, 'images/1.0.img')), sha256File(image), 'byte-identical');
    t.equal(server.rangeBytes(payload, from), needed - onDisk.reduce((n, f) => n + f.length, 0), 'the second run fetched exactly the frames not on disk');
    t.equal(r.json.stage.reusedFrames, onDisk.length, 'and says how many it kept');
  });
});

t.test('frames go to disk around the page cache (O_DIRECT): nothing of the new image is left to write back', { skip: skipUnless({ commands: ['mke2fs', 'debugfs', 'fincore'] }) }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  const image = await pub.publish('1.0');
  const root = makeMachine(dir, 'm', `file://${pub.releases}`, pub.pub);
  const r = await upgradectl(['--root', root, '--json', 'prepare', '1.0']);
  t.equal(r.code, 0, r.stderr);
  const file = path.join(root, 'images/1.0.img');
  // Before anything reads the file back: written through the page cache, all of it would be resident.
  const resident = Number(execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', file]).toString().trim());
  const allocated = statSync(file).blocks * 512;
  t.ok(resident < allocated / 10, `${resident} of ${allocated} bytes of the image are in the page cache`);
  t.equal(sha256File(file), sha256File(image), 'byte-identical');
});
