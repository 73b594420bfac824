import t from 'tap';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, statfsSync, statSync, truncateSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { upgradectl } from '../helpers/cli.js';
import { startHttpServer } from '../helpers/http-server.js';
import { makeMachine, makePublisher, resign, servedRelease, sha256File } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';

const imagesOf = (root: string) => readdirSync(path.join(root, 'images')).filter((n) => n.endsWith('.img')).sort();

t.test('publish to a directory, prepare from the channel: the image arrives byte-identical, sparse', { skip: skipUnless({ commands: ['mke2fs', 'debugfs', 'lz4'] }) }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  const image = await pub.publish('1.0', ['--channel', 'stable']);
  // The payload stays a standard LZ4 stream.
  t.equal(execFileSync('sh', ['-c', `lz4 -d -c "$1" | sha256sum`, 'sh', path.join(pub.releases, 'releases/1.0/image.lz4')]).toString().split(' ')[0], sha256File(image));
  const root = makeMachine(dir, 'm', `file://${pub.releases}`, pub.pub);

  const check = await upgradectl(['--root', root, '--json', 'check']);
  t.equal(check.code, 0, check.stderr);
  t.match(check.json, { available: true, version: '1.0' });

  const debug = { env: { UPGRADECTL_LOG_LEVEL: 'debug' } };
  const r = await upgradectl(['--root', root, '--json', 'prepare'], debug);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.json.action, 'prepared');
  t.match(r.stderr, /started \d+ frame worker threads/, 'a download starts the frame workers');
  const staged = path.join(root, 'images/1.0.img');
  t.equal(sha256File(staged), sha256File(image), 'same bytes as the published image');
  t.ok(statSync(staged).blocks * 512 < statSync(staged).size * 0.6, 'zero blocks are holes');
  t.ok(r.json.stage.holeFrames > 0, 'all-zero frames were not fetched');
  t.same(readdirSync(path.join(root, 'images/.staging')), [], 'staging is empty afterwards');

  const status = await upgradectl(['--root', root, '--json', 'status']);
  t.match(status.json, { phase: 'prepared', next: '1.0' });
  const again = await upgradectl(['--root', root, '--json', 'prepare'], debug);
  t.equal(again.code, 0);
  t.equal(again.json.action, 'already-prepared', 'a second prepare fetches nothing');
  t.notMatch(again.stderr, /frame worker/, 'and starts no frame workers (the daemon\'s usual pass)');
  const named = await upgradectl(['--root', root, '--json', 'prepare', '1.0'], debug);
  t.equal(named.json.action, 'already-prepared');
  t.notMatch(named.stderr, /frame worker/, 'nor does a named version that is on disk already');
  // A named version not on disk starts the workers before its manifest is even fetched (they load
  // while the manifest is checked); when there is no such release they are stopped and the command ends.
  const missing = await upgradectl(['--root', root, '--json', 'prepare', '9.9'], debug);
  t.not(missing.code, 0);
  t.match(missing.stderr, /9\.9.*does not exist/);
  t.match(missing.stderr, /started \d+ frame worker threads/, 'a named version not on disk starts the workers up front');
});

t.test('over HTTP: retries 503s and dropped connections, resumes after a kill, restarts when the object changed', { skip: skipUnless({ commands: ['mke2fs', 'debugfs'] }) }, async (t) => {
  const dir = t.testdir();
  const { pub, image, server, payloadPath } = await servedRelease(t, dir, '2.0');
  const fast = '[prepare]\nretries = 4\nstall_timeout = 2\nparallel = 3\n';

  await t.test('transient 503s and a dropped connection are retried', async (t) => {
    const root = makeMachine(dir, 'http-retry', server.url.replace(/\/$/, ''), pub.pub, fast);
    server.faults.add({ kind: 'status', status: 503, path: payloadPath, times: 2 });
    server.faults.add({ kind: 'drop', afterBytes: 1000, path: payloadPath, times: 1 });
    const before = server.count(payloadPath);
    const r = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
    t.equal(r.code, 0, r.stderr);
    t.equal(sha256File(path.join(root, 'images/2.0.img')), sha256File(image));
    const frames = JSON.parse(readFileSync(path.join(pub.releases, 'releases/2.0/manifest.json'), 'utf8')).payload.frames.length;
    t.ok(server.count(payloadPath) - before > 3, 'the failed requests were made again');
    t.ok(server.count(payloadPath) - before <= frames + 1 + 4, 'but not every frame twice');
    server.faults.clear();
  });

  await t.test('killed mid-download, the next prepare resumes without fetching verified frames again', async (t) => {
    const root = makeMachine(dir, 'http-kill', server.url.replace(/\/$/, ''), pub.pub, '[prepare]\nparallel = 2\nstall_timeout = 600\n');
    // One frame request hangs; the others complete and are checkpointed while it hangs.
    server.faults.add({ kind: 'stall', afterBytes: 100, path: payloadPath, times: 1 });
    const progressFile = path.join(root, 'images/.staging/2.0.progress.json');
    let child: import('node:child_process').ChildProcess | undefined;
    const run = upgradectl(['--root', root, '--json', 'prepare', '2.0'], { onSpawn: (c) => (child = c) });
    const deadline = Date.now() + 60_000;
    let done = 0;
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
      if (existsSync(progressFile)) {
        try {
          done = JSON.parse(readFileSync(progressFile, 'utf8')).done?.length ?? 0;
        } catch {
          continue;
        }
        if (done >= 10) break;
      }
    }
    t.ok(done >= 10, `progress was checkpointed (${done} frames)`);
    child!.kill('SIGKILL');
    const killed = await run;
    t.not(killed.code, 0, 'the first run was killed');
    t.notOk(existsSync(path.join(root, 'images/2.0.img')), 'nothing under the bootable name');
    server.faults.clear();
    const r = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
    t.equal(r.code, 0, r.stderr);
    // Holes were never fetched; every other frame the first run recorded is kept after its check.
    t.ok(r.json.stage.reusedFrames + r.json.stage.holeFrames >= done, `resumed ${r.json.stage.reusedFrames} frames`);
    t.equal(sha256File(path.join(root, 'images/2.0.img')), sha256File(image));
  });

  await t.test('a payload replaced under the same name (new ETag) restarts the download cleanly', async (t) => {
    const root = makeMachine(dir, 'http-etag', server.url.replace(/\/$/, ''), pub.pub, '[prepare]\nretries = 0\nparallel = 1\n');
    server.faults.add({ kind: 'drop', afterBytes: 10, path: payloadPath });
    const first = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
    t.not(first.code, 0);
    t.equal(first.json.error.code, 'NETWORK');
    t.match(first.json.error.message, /127\.0\.0\.1/, 'names the URL');
    server.faults.clear();
    // Same bytes, re-uploaded: the ETag changes with the mtime.
    const payload = path.join(pub.releases, 'releases/2.0/image.lz4');
    utimesSync(payload, new Date(), new Date(Date.now() + 5000));
    const r = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stderr, /changed since the download began/);
    t.equal(sha256File(path.join(root, 'images/2.0.img')), sha256File(image));
  });
});

t.test('bad input installs nothing and says what is wrong', { skip: skipUnless({ commands: ['mke2fs', 'debugfs'] }) }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  const image = await pub.publish('corrupt');
  for (const v of ['truncated', 'tampered', 'unsigned', 'expired', 'malformed']) await pub.publish(v, [], image);
  const rel = (v: string, f: string) => path.join(pub.releases, 'releases', v, f);

  // A flipped byte inside a compressed frame.
  const m = JSON.parse(readFileSync(rel('corrupt', 'manifest.json'), 'utf8'));
  const frame = m.payload.frames.find((f: { length: number }) => f.length > 100_000);
  const fd = openSync(rel('corrupt', 'image.lz4'), 'r+');
  writeSync(fd, Buffer.from([0x5a, 0xa5, 0x5a]), 0, 3, frame.offset + Math.floor(frame.length / 2));
  closeSync(fd);
  truncateSync(rel('truncated', 'image.lz4'), statSync(rel('truncated', 'image.lz4')).size - 1000);
  writeFileSync(rel('tampered', 'manifest.json'), readFileSync(rel('tampered', 'manifest.json'), 'utf8').replace('"reflash": false', '"reflash": true'));
  execFileSync('rm', [rel('unsigned', 'manifest.json.sig')]);
  await resign(pub.releases, 'expired', pub.key, (x) => (x.expires = '2020-01-01T00:00:00.000Z'));
  await resign(pub.releases, 'malformed', pub.key, (x) => x.payload.frames.pop());
  // Signed by a key the machine does not trust.
  const other = await makePublisher(path.join(dir, 'other'), `file://${pub.releases}`);
  await other.publish('otherkey', [], image);

  const root = makeMachine(dir, 'm', `file://${pub.releases}`, pub.pub);
  const cases: Array<[string, string, RegExp]> = [
    ['corrupt', 'CORRUPT', /frame \d+ of .*corrupt/],
    ['truncated', 'CORRUPT', /is \d+ bytes, the manifest says/],
    ['tampered', 'SIGNATURE', /bad signature/],
    ['unsigned', 'SIGNATURE', /not signed/],
    ['expired', 'EXPIRED', /expired on 2020/],
    ['malformed', 'MANIFEST', /payload\.frames/],
    ['nonexistent', 'NOT_FOUND', /release nonexistent does not exist/],
    ['../etc', 'USAGE', /not a valid version/],
  ];
  for (const [version, code, message] of cases) {
    const r = await upgradectl(['--root', root, '--json', 'prepare', version]);
    t.not(r.code, 0, `${version}: fails`);
    t.equal(r.json?.error?.code, code, `${version}: ${code}`);
    t.match(r.json?.error?.message, message, `${version}: names the problem`);
    t.ok(r.json?.error?.hint, `${version}: says what to do`);
    t.same(imagesOf(root), [], `${version}: nothing installed`);
  }

  // Signed by a key this machine does not trust, then a machine without any trusted key.
  const r1 = await upgradectl(['--root', root, '--json', 'prepare', 'otherkey']);
  t.equal(r1.json?.error?.code, 'SIGNATURE');
  t.match(r1.json.error.message, /unknown key/);
  const keyless = makeMachine(dir, 'keyless', `file://${pub.releases}`, undefined);
  const r2 = await upgradectl(['--root', keyless, '--json', 'prepare', 'otherkey']);
  t.match(r2.json?.error?.message, /no trusted keys/);

  // Explicitly allowed: unsigned and expired releases go through, with a warning.
  const r3 = await upgradectl(['--root', root, '--json', 'prepare', 'unsigned', '--allow-unsigned']);
  t.equal(r3.code, 0, r3.stderr);
  t.match(r3.stderr, /not signed; accepted/);
  const r4 = await upgradectl(['--root', root, '--json', 'prepare', 'expired', '--allow-expired']);
  t.equal(r4.code, 0, r4.stderr);
});

t.test('no downgrade below the current image unless allowed; failed versions are not offered again', { skip: skipUnless({ commands: ['mke2fs', 'debugfs'] }) }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  await pub.publish('2.0', ['--channel', 'stable']);
  const root = makeMachine(dir, 'm', `file://${pub.releases}`, pub.pub);
  mkdirSync(path.join(root, 'images/.upgradectl'), { recursive: true });
  const state = { schema: 1, phase: 'idle', current: '3.0', bad: {}, history: [] };
  writeFileSync(path.join(root, 'images/.upgradectl/state.json'), JSON.stringify(state));
  const r = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
  t.equal(r.json?.error?.code, 'DOWNGRADE');
  t.match(r.json.error.hint, /--allow-downgrade/);
  const viaChannel = await upgradectl(['--root', root, '--json', 'prepare']);
  t.equal(viaChannel.code, 0);
  t.equal(viaChannel.json.action, 'nothing-to-do', 'the channel offers nothing older');
  const ok = await upgradectl(['--root', root, '--json', 'prepare', '2.0', '--allow-downgrade']);
  t.equal(ok.code, 0, ok.stderr);

  writeFileSync(path.join(root, 'images/.upgradectl/state.json'), JSON.stringify({ ...state, current: '1.0', bad: { '2.0': { reason: 'panicked', at: 'x' } } }));
  const bad = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
  t.equal(bad.json?.error?.code, 'BAD_VERSION');
  const chan = await upgradectl(['--root', root, '--json', 'check']);
  t.match(chan.json, { available: false, reason: /failed its trial/ });
});

t.test('one operation at a time: a second one says which holds the lock', { skip: skipUnless({ commands: ['mke2fs', 'debugfs'] }) }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  await pub.publish('1.0');
  const root = makeMachine(dir, 'm', `file://${pub.releases}`, pub.pub);
  mkdirSync(path.join(root, 'images/.upgradectl'), { recursive: true });
  const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  writeFileSync(path.join(root, 'images/.upgradectl/lock'), JSON.stringify({ pid: process.pid, operation: 'commit', since: 'now', bootId }));
  const r = await upgradectl(['--root', root, '--json', 'prepare', '1.0']);
  t.equal(r.json?.error?.code, 'LOCKED');
  t.match(r.json.error.message, new RegExp(`commit \\(pid ${process.pid}`));
  // A holder that is gone is taken over.
  writeFileSync(path.join(root, 'images/.upgradectl/lock'), JSON.stringify({ pid: 999999, operation: 'commit', since: 'then', bootId }));
  const ok = await upgradectl(['--root', root, '--json', 'prepare', '1.0']);
  t.equal(ok.code, 0, ok.stderr);
  t.notOk(existsSync(path.join(root, 'images/.upgradectl/lock')), 'the lock is released');
});

t.test('a full host partition: old images make room, else a clear error; ENOSPC mid-write loses nothing', { skip: skipUnless({ root: true, commands: ['mke2fs', 'debugfs', 'mount'] }) }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  await pub.publish('2.0');
  await pub.publish('3.0');
  const root = makeMachine(dir, 'm', `file://${pub.releases}`, pub.pub);
  const host = path.join(root, 'images');
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'upgradectl-test', host]);
  try {
    mkdirSync(path.join(host, '.upgradectl'), { recursive: true });
    writeFileSync(path.join(host, '.upgradectl/state.json'), JSON.stringify({ schema: 1, phase: 'idle', current: '1.0', bad: {}, history: [] }));
    writeFileSync(path.join(host, '1.0.img'), Buffer.alloc(6 << 20, 1)); // current: must survive
    writeFileSync(path.join(host, '0.9.img'), Buffer.alloc(8 << 20, 1)); // neither current nor previous

    const r = await upgradectl(['--root', root, '--json', 'prepare', '2.0']);
    t.equal(r.code, 0, r.stderr);
    t.same(imagesOf(root), ['1.0.img', '2.0.img'], 'the unreferenced image made room; current kept');

    const small = await upgradectl(['--root', root, '--json', 'prepare', '3.0']);
    t.equal(small.json?.error?.code, 'NO_SPACE', 'an honest manifest is refused before any download');
    t.match(small.json.error.message, /not enough space in .*images: the image needs \d+ MiB/);

    // A manifest that understates its size gets past the check and hits ENOSPC while writing.
    const free = (() => {
      const s = statfsSync(host);
      return s.bavail * s.bsize;
    })();
    writeFileSync(path.join(host, 'filler'), Buffer.alloc(Math.max(0, free - (5 << 20)), 1));
    await resign(pub.releases, '3.0', pub.key, (m) => (m.image.allocated = 0));
    const full = await upgradectl(['--root', root, '--json', 'prepare', '3.0']);
    t.equal(full.json?.error?.code, 'NO_SPACE');
    t.match(full.json.error.message, /no space left on the host partition while writing/);
    t.same(imagesOf(root), ['1.0.img', '2.0.img'], 'nothing lost, nothing half-written under a bootable name');
    t.equal(readFileSync(path.join(host, '1.0.img'))[0], 1, 'current image intact');
    const status = await upgradectl(['--root', root, '--json', 'status']);
    t.match(status.json, { phase: 'prepared', next: '2.0' }, 'state still tells the truth');
  } finally {
    execFileSync('umount', [host]);
  }
});

t.test('from S3 (s3rver): publish multipart, prepare by ranges', { skip: skipUnless({ commands: ['mke2fs', 'debugfs'] }) }, async (t) => {
  const { s3Fleet, refusingPresignedProxy } = await import('../helpers/s3-server.js');
  const dir = t.testdir();
  const { s3, pub, url, publishArgs, sourceConfig } = await s3Fleet(t, dir);
  const image = await pub.publish('5.0', [...publishArgs, '--channel', 'stable']);
  const root = makeMachine(dir, 'm', url, pub.pub, sourceConfig);
  const from = s3.served.length;
  const r = await upgradectl(['--root', root, '--json', 'prepare']);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.json.version, '5.0');
  t.equal(sha256File(path.join(root, 'images/5.0.img')), sha256File(image));

  // Nothing went through the SDK (signature in the Authorization header): the channel, manifest and
  // signature were read through URLs signed by upgradectl itself (s3-direct.ts), and the frames by the
  // workers over pre-signed URLs: every payload GET is a ranged, query-signed one, and together they
  // are exactly what prepare says it fetched. No 2-byte probe of the workers' URL: the manifest's
  // signed GET from the same store already showed such URLs work.
  t.same(s3.served.slice(from).filter((q) => q.signed !== 'query'), [], 'every request signed in its query, none by the SDK');
  const payloadGets = s3.served.slice(from).filter((q) => q.method === 'GET' && q.path.endsWith('/5.0/image.lz4'));
  t.ok(payloadGets.length > 1, `${payloadGets.length} payload requests`);
  t.same(payloadGets.filter((q) => !q.range), [], 'every payload GET is a range');
  const ranged = payloadGets.reduce((n, q) => n + rangeLength(q.range), 0);
  t.equal(ranged, r.json.stage.fetched, 'the ranges served add up to the payload fetched');
  t.equal(payloadGets.length, r.json.stage.requests);
  t.notMatch(r.stderr + r.stdout, /X-Amz-Signature|X-Amz-Credential/, 'no signed URL is printed');

  // An endpoint that refuses pre-signed URLs (a bucket in another region redirects them; a proxy or
  // policy may refuse them): the frames come through the SDK instead, and the image is the same.
  const proxied = await refusingPresignedProxy(t, s3, 403);
  const root2 = makeMachine(dir, 'refused', `s3://${s3.bucket}/fleet`, pub.pub, `endpoint = ${proxied}\nforce_path_style = true\nregion = us-east-1\n`);
  const from2 = s3.served.length;
  const r2 = await upgradectl(['--root', root2, '--json', 'prepare']);
  t.equal(r2.code, 0, r2.stderr);
  t.equal(sha256File(path.join(root2, 'images/5.0.img')), sha256File(image), 'the same image through the SDK');
  t.match(r2.stderr, /cannot be read through a pre-signed URL .*reading its frames through the S3 SDK/);
  const viaSdk = s3.served.slice(from2).filter((q) => q.method === 'GET' && q.path.endsWith('/5.0/image.lz4'));
  t.ok(viaSdk.length > 1 && viaSdk.every((q) => q.signed === 'header' && q.range), 'every payload range came through the SDK');
  t.notMatch(r2.stderr + r2.stdout, /X-Amz-Signature|X-Amz-Credential/, 'the warning names the object, not its signed URL');
});

const rangeLength = (range: string | undefined) => {
  const m = /^bytes=(\d+)-(\d+)$/.exec(range ?? '');
  return m ? Number(m[2]) - Number(m[1]) + 1 : 0;
};

t.test("a plain `lz4 image.img` payload (s3-flash-bootloader's format) is accepted", { skip: skipUnless({ commands: ['mke2fs', 'debugfs', 'lz4'] }) }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  const image = await pub.publish('0.1'); // for the tree
  execFileSync('lz4', ['-q', '-f', image, `${image}.lz4`]);
  const p = await upgradectl(['--json', 'publish', `${image}.lz4`, '--version', '1.1', '--to', `file://${pub.releases}`, '--key', pub.key]);
  t.equal(p.code, 0, p.stderr);
  t.equal(p.json.manifest.payload.compression, 'lz4');
  t.equal(p.json.manifest.image.sha256, sha256File(image), 'indexed by decoding it');
  const server = await startHttpServer(pub.releases);
  t.teardown(() => server.close());
  // A connection dropped mid-stream is resumed by range.
  server.faults.add({ kind: 'drop', afterBytes: 300_000, path: '/releases/1.1/image.lz4', times: 1 });
  const root = makeMachine(dir, 'm', server.url.replace(/\/$/, ''), pub.pub, '[prepare]\nretries = 3\n');
  const r = await upgradectl(['--root', root, '--json', 'prepare', '1.1']);
  t.equal(r.code, 0, r.stderr);
  t.equal(sha256File(path.join(root, 'images/1.1.img')), sha256File(image));
});
