import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { upgradectl } from '../helpers/cli.js';
import { makeMachine, servedRelease, sha256File } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';

/**
 * kill -9 at random moments of a download: the next run keeps every frame that is on disk and
 * verifies, recorded in the progress file or not, so what is sent again is only the frames that were
 * in flight at each kill. Counted from the ranges a real HTTP server answered.
 */
t.test('resume after kill -9 keeps every verified frame on disk, recorded or not', { skip: skipUnless({ commands: ['mke2fs', 'debugfs'] }) }, async (t) => {
  const dir = t.testdir();
  const { pub, image, server, url, payloadPath: payload, manifest } = await servedRelease(t, dir, '1.0');
  const zero = (f: { rawLength: number; sha256: string }) => f.sha256 === createHash('sha256').update(Buffer.alloc(f.rawLength)).digest('hex');
  const needed = manifest.payload.frames.filter((f: { rawLength: number; sha256: string }) => !zero(f)).reduce((n: number, f: { length: number }) => n + f.length, 0);
  const biggest = Math.max(...manifest.payload.frames.map((f: { length: number }) => f.length));
  // Slow enough (2 MB/s) that a kill lands mid-download.
  const root = makeMachine(dir, 'm', url, pub.pub, '[prepare]\nparallel = 2\nmax_rate = 2M\n');
  const kills = 2;
  for (let k = 0; k < kills; k++) {
    let child: ChildProcess | undefined;
    const from = server.requests.length;
    const run = upgradectl(['--root', root, '--json', 'prepare', '1.0'], { onSpawn: (c) => (child = c) });
    // A random moment once 1–2 MB of this run's payload were asked for (a kill must land mid-download).
    const at = 1_000_000 + Math.random() * 1_000_000;
    while (server.rangeBytes(payload, from) < at) await new Promise((r) => setTimeout(r, 20));
    child!.kill('SIGKILL');
    const killed = await run;
    t.not(killed.code, 0, `run ${k + 1} was killed`);
  }
  // Exactly what is on disk and verifies now must be kept by the next run: it fetches all the rest, once.
  const staged = readFileSync(path.join(root, 'images/.staging/1.0.img'));
  const frameSize = manifest.payload.frameSize;
  type F = { offset: number; length: number; rawLength: number; sha256: string };
  const onDisk = (manifest.payload.frames as F[]).filter(
    (f, i) => !zero(f) && createHash('sha256').update(staged.subarray(i * frameSize, i * frameSize + f.rawLength)).digest('hex') === f.sha256,
  );
  t.ok(onDisk.length > 0, `${onDisk.length} frames were on disk and verified after the last kill`);
  const from = server.requests.length;
  const r = await upgradectl(['--root', root, '--json', 'prepare', '1.0']);
  t.equal(r.code, 0, r.stderr);
  t.equal(sha256File(path.join(root, 'images/1.0.img')), sha256File(image), 'byte-identical');
  t.equal(server.rangeBytes(payload, from), needed - onDisk.reduce((n, f) => n + f.length, 0), 'the last run fetched exactly the frames not on disk');
  t.comment(`payload (without holes) ${needed} bytes; asked for ${server.rangeBytes(payload)} over ${kills} kills: ${(server.rangeBytes(payload) / needed).toFixed(3)}x (tiny payload, ${biggest}-byte frames; bench/resume.mjs measures 1 GiB)`);
});
