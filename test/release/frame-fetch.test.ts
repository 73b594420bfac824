import t from 'tap';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, openSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { upgradectl } from '../helpers/cli.js';
import { makeMachine, makePublisher, resign, servedRelease, sha256File } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';
import { FramePool } from '../../src/release/frame-pool.js';
import type { FrameOutcome } from '../../src/release/frame-worker.js';

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

// One frame per request (HTTP's default), and several consecutive frames per request (S3's default,
// here through [prepare] request_size): a frame is checked and kept or fetched again on its own either way.
for (const [mode, extra] of [['one frame per request', ''], ['several frames per request', 'request_size = 3M\n']] as const) {
t.test(`frames fetched by the workers, ${mode}: corruption on the wire, a download that breaks off`, { skip: skipUnless({ commands: ['mke2fs', 'debugfs'] }) }, async (t) => {
  const dir = t.testdir();
  const { pub, image, server, url, payloadPath: payload, manifest } = await servedRelease(t, dir, '1.0');
  const frames = manifest.payload.frames as F[];
  const needed = frames.filter((f, i) => i === 0 || !isZero(f)).reduce((n, f) => n + f.length, 0);
  const requests = () => server.requests.filter((q) => q.path === payload && q.method === 'GET').length;

  await t.test('a frame corrupted on the wire is fetched again, and only that frame', async (t) => {
    const root = makeMachine(dir, 'once', url, pub.pub, `[prepare]\nparallel = 2\n${extra}`);
    const from = server.requests.length;
    const before = requests();
    server.faults.add({ kind: 'corrupt', path: payload, times: 1 });
    const r = await upgradectl(['--root', root, '--json', 'prepare', '1.0']);
    server.faults.clear();
    t.equal(r.code, 0, r.stderr);
    const bad = /frame (\d+) of .* failed its check \(.*\); fetching it again/.exec(r.stderr);
    t.ok(bad, 'the corrupted frame is named');
    t.equal(sha256File(path.join(root, 'images/1.0.img')), sha256File(image), 'byte-identical');
    t.equal(server.rangeBytes(payload, from), needed + frames[Number(bad?.[1])]!.length, 'the whole payload once, plus the corrupted frame once more');
    const fetched = frames.filter((f, i) => i === 0 || !isZero(f)).length + 1;
    if (extra) t.ok(requests() - before < fetched * 0.75, `${requests() - before} requests carried ${fetched} frames`);
    else t.equal(requests() - before, fetched, 'one request per frame');
  });

  await t.test('a frame that arrives corrupt twice is refused: the release does not match its manifest', async (t) => {
    const root = makeMachine(dir, 'always', url, pub.pub, `[prepare]\nparallel = 2\n${extra}`);
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
    const root = makeMachine(dir, 'broken', url, pub.pub, `[prepare]\nparallel = 2\nretries = 0\n${extra}`);
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
}

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

t.test('a request of several frames stops at the next frame when the download is stopped (SIGTERM)', { skip: skipUnless({ commands: ['mke2fs', 'debugfs'] }) }, async (t) => {
  const dir = t.testdir();
  const { server, manifest, payloadPath } = await servedRelease(t, dir, '1.0');
  const frames = manifest.payload.frames as F[];
  const frameSize = manifest.payload.frameSize as number;
  // The longest run of consecutive non-zero frames: one request carries all of them.
  let best: number[] = [];
  for (let i = 0, run: number[] = []; i < frames.length; i++) {
    run = isZero(frames[i]!) ? [] : [...run, i];
    if (run.length > best.length) best = run;
  }
  t.ok(best.length >= 4, `${best.length} consecutive frames`);
  const out = path.join(dir, 'staged.img');
  const fd = openSync(out, 'w+');
  t.teardown(() => closeSync(fd));
  // Full size first, as prepare makes its staging file: zero blocks are left as holes.
  ftruncateSync(fd, manifest.image.size);
  const pool = new FramePool(1);
  t.teardown(() => pool.close());
  // The answer stalls after the first two frames: the stop arrives while the request waits, and the
  // retry after the stall finds it at its next frame (timing-independent).
  const two = frames[best[0]!]!.length + frames[best[1]!]!.length;
  server.faults.add({ kind: 'stall', afterBytes: two + 100, path: payloadPath, times: 1 });
  const stop = new AbortController();
  const outcomes: FrameOutcome[] = [];
  const task = best.map((i) => ({ start: frames[i]!.offset, end: frames[i]!.offset + frames[i]!.length, rawLength: frames[i]!.rawLength, sha256: frames[i]!.sha256, position: i * frameSize }));
  const source = { url: server.url, opts: { retry: { retries: 2, baseDelayMs: 5, stallTimeoutMs: 300 } } };
  const run = pool.run({ op: 'fetch-frames', source, key: 'releases/1.0/image.lz4', etag: undefined, frames: task, fd }, [], (o) => {
    outcomes.push(o);
    stop.abort();
  }, stop.signal);
  const err = await run.then(() => undefined, (e: { code?: string }) => e);
  t.equal(err?.code, 'INTERRUPTED', 'the task ends as interrupted');
  // The stop reaches the worker between frames 0 and 1 or while the answer stalls after frame 1.
  const finished = outcomes.length;
  t.ok(finished === 1 || finished === 2, `${finished} frames finished before the stop`);
  t.same(outcomes.map((o) => o.index), [0, 1].slice(0, finished), 'the first ones, in order; the rest is not');
  const staged = readFileSync(out);
  for (const o of outcomes) {
    const i = best[o.index]!;
    t.ok(o.ok, `frame ${i} reported written`);
    t.equal(createHash('sha256').update(staged.subarray(i * frameSize, i * frameSize + frames[i]!.rawLength)).digest('hex'), frames[i]!.sha256, `frame ${i} is on disk`);
  }
  const gets = server.requests.filter((q) => q.method === 'GET' && q.path === payloadPath);
  t.ok(gets.length <= 2, 'one request for all of them (asked again once after the stall)');
  if (gets.length === 2) t.equal(gets[1]?.range, `bytes=${frames[best[finished]!]!.offset}-${frames[best.at(-1)!]!.offset + frames[best.at(-1)!]!.length - 1}`, 'from the first frame not taken');
});

/**
 * Publish records the SHA-256 of each frame's stored (compressed) bytes, and a machine checks those
 * before it decodes (zchunk checks its compressed chunks the same way): the decoder never runs on bytes
 * that are not the signed ones, and a full download hashes ~half as many bytes. Releases from before
 * the field are still checked by their decoded bytes.
 */
t.test("a frame's stored bytes are checked against the manifest before they are decoded", { skip: skipUnless({ commands: ['mke2fs', 'debugfs'] }) }, async (t) => {
  const dir = t.testdir();
  const { pub, image, url, manifest } = await servedRelease(t, dir, '1.0');
  const payload = readFileSync(path.join(pub.releases, 'releases/1.0/image.lz4'));
  const frames = manifest.payload.frames as Array<F & { payloadSha256: string }>;
  const stored = (f: F) => payload.subarray(f.offset, f.offset + f.length);
  t.ok(
    frames.every((f) => f.payloadSha256 === createHash('sha256').update(stored(f)).digest('hex')),
    `each of the ${frames.length} frames carries the SHA-256 of its bytes in the payload`,
  );
  const k = frames.findIndex((f, i) => i > 0 && !isZero(f));
  await pub.publish('2.0', [], image);
  await pub.publish('3.0', [], image);
  // 2.0: the payload is intact but the manifest signs other bytes for frame k.
  await resign(pub.releases, '2.0', pub.key, (m) => (m.payload.frames[k].payloadSha256 = createHash('sha256').update('other bytes').digest('hex')));
  // 3.0: as a publisher from before the field wrote it.
  await resign(pub.releases, '3.0', pub.key, (m) => m.payload.frames.forEach((f: { payloadSha256?: string }) => delete f.payloadSha256));

  await t.test('bytes other than the signed ones are refused, even when they decode to the right image', async (t) => {
    const root = makeMachine(dir, 'signed-other', url, pub.pub, '[prepare]\nparallel = 2\n');
    const r = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
    t.not(r.code, 0);
    t.equal(r.json?.error?.code, 'CORRUPT');
    t.match(r.json?.error?.message, new RegExp(`frame ${k} of .* is corrupt: SHA-256 of its stored bytes mismatch`));
    t.match(r.stderr, new RegExp(`frame ${k} of .* failed its check .*; fetching it again`), 'fetched once more before it is refused');
    t.notOk(existsSync(path.join(root, 'images/2.0.img')), 'nothing installed');
  });

  await t.test('a release without stored-byte hashes is checked by its decoded bytes', async (t) => {
    const root = makeMachine(dir, 'older', url, pub.pub, '[prepare]\nparallel = 2\n');
    const r = await upgradectl(['--root', root, '--json', 'prepare', '3.0']);
    t.equal(r.code, 0, r.stderr);
    t.equal(sha256File(path.join(root, 'images/3.0.img')), sha256File(image), 'byte-identical');
  });

  await t.test('the same check where a frame is fetched on the main thread and handed to a worker (decode-write)', async (t) => {
    const out = path.join(dir, 'decoded.img');
    const fd = openSync(out, 'w+');
    ftruncateSync(fd, manifest.image.size);
    const pool = new FramePool(1);
    t.teardown(async () => {
      await pool.close();
      closeSync(fd);
    });
    const f = frames[k]!;
    const frameSize = manifest.payload.frameSize as number;
    const task = (check: { sha256: string; payloadSha256?: string }) => pool.run({ op: 'decode-write', frame: Buffer.from(stored(f)), rawLength: f.rawLength, ...check, fd, position: k * frameSize, keepRaw: false });
    const refused = await task({ sha256: f.sha256, payloadSha256: createHash('sha256').update('other bytes').digest('hex') });
    t.notOk(refused.ok, 'refused');
    t.match(!refused.ok && refused.reason, /stored bytes/);
    t.ok(readFileSync(out).subarray(k * frameSize, (k + 1) * frameSize).every((b) => b === 0), 'nothing written');
    // The stored bytes are what is checked when the manifest has their hash: the decoded ones are not
    // hashed a second time (that pass is what the field saves).
    const trusted = await task({ sha256: '0'.repeat(64), payloadSha256: f.payloadSha256 });
    t.ok(trusted.ok, 'matching stored bytes are decoded and written');
    t.equal(createHash('sha256').update(readFileSync(out).subarray(k * frameSize, k * frameSize + f.rawLength)).digest('hex'), f.sha256, 'the image bytes the frame stands for');
  });
});
