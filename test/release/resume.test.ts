import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { upgradectl } from '../helpers/cli.js';
import { startHttpServer } from '../helpers/http-server.js';
import { makeMachine, makePublisher, sha256File } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';

/**
 * kill -9 at random moments of a download: the next run keeps every frame that is on disk and
 * verifies, recorded in the progress file or not, so what is sent again is at most the frames that
 * were in flight at each kill. Counted from the ranges a real HTTP server answered.
 */
t.test('resume after kill -9 re-sends at most the frames in flight', { skip: skipUnless({ commands: ['mke2fs', 'debugfs'] }) }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  const image = await pub.publish('1.0');
  const server = await startHttpServer(pub.releases);
  t.teardown(() => server.close());
  const payload = '/releases/1.0/image.lz4';
  const manifest = JSON.parse(readFileSync(path.join(pub.releases, 'releases/1.0/manifest.json'), 'utf8'));
  const zero = (f: { rawLength: number; length: number }) => f.length < f.rawLength / 50;
  const needed = manifest.payload.frames.filter((f: { rawLength: number; length: number }) => !zero(f)).reduce((n: number, f: { length: number }) => n + f.length, 0);
  const biggest = Math.max(...manifest.payload.frames.map((f: { length: number }) => f.length));
  const parallel = 2;
  // Slow enough (2 MB/s) that a kill lands mid-download.
  const root = makeMachine(dir, 'm', server.url.replace(/\/$/, ''), pub.pub, `[prepare]\nparallel = ${parallel}\nmax_rate = 2M\n`);

  const kills = 3;
  for (let k = 0; k < kills; k++) {
    let child: ChildProcess | undefined;
    const run = upgradectl(['--root', root, '--json', 'prepare', '1.0'], { onSpawn: (c) => (child = c) });
    // A random moment once bytes flow (process start-up takes ~0.5 s).
    await new Promise((r) => setTimeout(r, 900 + Math.random() * 1500));
    child!.kill('SIGKILL');
    const killed = await run;
    t.not(killed.code, 0, `run ${k + 1} was killed`);
  }
  const r = await upgradectl(['--root', root, '--json', 'prepare', '1.0']);
  t.equal(r.code, 0, r.stderr);
  t.equal(sha256File(path.join(root, 'images/1.0.img')), sha256File(image), 'byte-identical');

  const sent = server.requests
    .filter((q) => q.path === payload && q.status === 206)
    .reduce((n, q) => {
      const m = /^bytes=(\d+)-(\d+)$/.exec(q.range ?? '')!;
      return n + Number(m[2]) - Number(m[1]) + 1;
    }, 0);
  const extra = sent - needed;
  t.comment(`payload (without holes) ${needed} bytes; asked for ${sent} over ${kills} kills: ${(sent / needed).toFixed(3)}x`);
  t.ok(extra <= kills * parallel * biggest, `re-sent ${extra} bytes: at most the ${parallel} frames in flight per kill (${kills * parallel * biggest})`);
});
