import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { setLogLevel } from '../../../src/core/log.js';
import { openSource, type Source } from '../../../src/release/sources/index.js';
import { startHttpServer, type TestHttpServer } from '../../helpers/http-server.js';
import { failure, sha256 } from '../../helpers/assert.js';

/** The https/http transport against a real server on 127.0.0.1 that fails on demand. */

setLogLevel('error');

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

const PAYLOAD = randomBytes(2 * 1024 * 1024 + 3);
const KEY = 'releases/2.0/image.lz4';
const PATH = `/${KEY}`;
const RETRY = { retries: 3, baseDelayMs: 10, stallTimeoutMs: 300 };


async function readAll(src: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of src) parts.push(chunk);
  return Buffer.concat(parts);
}

async function serve(t: Tap, retry: Partial<typeof RETRY> = {}): Promise<{ server: TestHttpServer; source: Source; dir: string }> {
  const dir = t.testdir();
  await fs.mkdir(path.join(dir, 'releases/2.0'), { recursive: true });
  await fs.writeFile(path.join(dir, KEY), PAYLOAD);
  const server = await startHttpServer(dir);
  t.teardown(() => server.close());
  const source = openSource(server.url, { retry: { ...RETRY, ...retry } });
  t.teardown(() => source.close());
  return { server, source, dir };
}


t.test('503 twice, then success', async (t) => {
  const { server, source } = await serve(t);
  server.faults.add({ kind: 'status', status: 503, path: PATH, times: 2 });
  t.same(await source.get(KEY), PAYLOAD);
  t.equal(server.count(PATH), 3, 'two failures and one success');
  t.same(server.requests.map((r) => r.status), [503, 503, 200]);
});

t.test('429 with Retry-After is retried', async (t) => {
  const { server, source } = await serve(t);
  server.faults.add({ kind: 'status', status: 429, retryAfter: '0', path: PATH, times: 1 });
  t.same(await source.range(KEY, 10, 20), PAYLOAD.subarray(10, 20));
  t.equal(server.count(PATH), 2);
});

t.test('a stream that drops mid-way resumes from the byte it reached, pinned to its version', async (t) => {
  const { server, source } = await serve(t);
  const etag = await server.etagOf(KEY);
  server.faults.add({ kind: 'drop', afterBytes: 300_000, path: PATH, times: 2 });
  const got = await readAll(source.stream(KEY, 0));
  t.equal(sha256(got), sha256(PAYLOAD), 'bytes identical');
  const gets = server.requests.filter((r) => r.path === PATH);
  t.equal(gets.length, 3, 'two drops, two resumes');
  t.equal(gets[0]?.range, undefined, 'the first request reads from the start');
  t.equal(gets[1]?.range, 'bytes=300000-', 'the first resume starts where the drop happened');
  t.equal(gets[2]?.range, 'bytes=600000-');
  t.equal(gets[1]?.ifMatch, etag, 'resumes are pinned to the version first seen');
  t.equal(gets[2]?.status, 206);
});

t.test('a stream that keeps dropping but keeps progressing finishes', async (t) => {
  // Drops without progress in between use up the budget; drops after progress do not.
  const { server, source } = await serve(t, { retries: 1 });
  server.faults.add({ kind: 'drop', afterBytes: 400_000, path: PATH });
  const got = await readAll(source.stream(KEY, 1000));
  t.equal(sha256(got), sha256(PAYLOAD.subarray(1000)));
  t.equal(server.count(PATH), Math.ceil((PAYLOAD.length - 1000) / 400_000));
});

t.test('a range that drops is fetched again', async (t) => {
  const { server, source } = await serve(t);
  server.faults.add({ kind: 'drop', afterBytes: 1000, path: PATH, times: 1 });
  t.same(await source.range(KEY, 5000, 900_000), PAYLOAD.subarray(5000, 900_000));
  t.equal(server.count(PATH), 2);
});

t.test('a server that sends no headers is retried after the stall timeout', async (t) => {
  const { server, source } = await serve(t);
  server.faults.add({ kind: 'stall-headers', path: PATH, times: 1 });
  const started = Date.now();
  t.same(await source.range(KEY, 0, 100), PAYLOAD.subarray(0, 100));
  t.ok(Date.now() - started >= 250, 'waited for the stall timeout');
  t.equal(server.count(PATH), 2);
});

t.test('a body that stalls mid-way is resumed', async (t) => {
  const { server, source } = await serve(t);
  server.faults.add({ kind: 'stall', afterBytes: 500_000, path: PATH, times: 1 });
  const got = await readAll(source.stream(KEY, 0));
  t.equal(sha256(got), sha256(PAYLOAD));
  const gets = server.requests.filter((r) => r.path === PATH);
  t.equal(gets.length, 2);
  t.equal(gets[1]?.range, 'bytes=500000-');
});

t.test('404 is NOT_FOUND at once', async (t) => {
  const { server, source } = await serve(t);
  const started = Date.now();
  const err = await failure(source.get('releases/9.9/manifest.json'));
  t.equal(err.code, 'NOT_FOUND');
  t.match(err.message, `${server.url}releases/9.9/manifest.json`);
  t.equal(server.count('/releases/9.9/manifest.json'), 1, 'no retry');
  t.ok(Date.now() - started < 250, 'fast');
});

t.test('403 is NETWORK without retry, with a hint about credentials', async (t) => {
  const { server, source } = await serve(t);
  server.faults.add({ kind: 'status', status: 403, path: PATH });
  const err = await failure(source.head(KEY));
  t.equal(err.code, 'NETWORK');
  t.match(err.message, /HTTP 403/);
  t.match(err.hint ?? '', /credentials/);
  t.equal(server.count(PATH), 1);
});

t.test('when retries run out: NETWORK naming the URL, the attempts and the last cause', async (t) => {
  const { server, source } = await serve(t);
  server.faults.add({ kind: 'status', status: 503, path: PATH });
  const err = await failure(source.range(KEY, 0, 10));
  t.equal(err.code, 'NETWORK');
  t.match(err.message, `${server.url}${KEY}`);
  t.match(err.message, /4 attempts/);
  t.match(err.message, /HTTP 503/);
  t.ok(err.hint);
  t.equal(server.count(PATH), 4, 'one attempt and three retries');
});

t.test('a server that is down: NETWORK after the retries', async (t) => {
  const dead = await startHttpServer(t.testdir());
  const url = dead.url;
  await dead.close();
  const source = openSource(url, { retry: { retries: 2, baseDelayMs: 5, stallTimeoutMs: 300 } });
  t.teardown(() => source.close());
  const err = await failure(source.get('releases/channel.json'));
  t.equal(err.code, 'NETWORK');
  t.match(err.message, `${url}releases/channel.json`);
  t.match(err.message, /3 attempts.*ECONNREFUSED/);
});

t.test('a server that ignores Range: bytes are taken from the right place', async (t) => {
  const { server, source } = await serve(t);
  server.faults.add({ kind: 'ignore-range', path: PATH });
  t.same(await source.range(KEY, 123_456, 123_556), PAYLOAD.subarray(123_456, 123_556));
  t.equal(sha256(await readAll(source.stream(KEY, 1_000_000))), sha256(PAYLOAD.subarray(1_000_000)));
  t.ok(server.requests.every((r) => r.status === 200), 'the server answered 200 every time');
});

t.test('a server that ignores Range and drops: the resume still lands at the right byte', async (t) => {
  const { server, source } = await serve(t);
  server.faults.add({ kind: 'ignore-range', path: PATH });
  server.faults.add({ kind: 'drop', afterBytes: 700_000, path: PATH, times: 1 });
  t.equal(sha256(await readAll(source.stream(KEY, 0))), sha256(PAYLOAD));
});

t.test('a server that ignores If-Match: the ETag of the answer is compared', async (t) => {
  const { server, source, dir } = await serve(t);
  const old = (await source.head(KEY)).etag;
  await fs.writeFile(path.join(dir, `${KEY}.new`), randomBytes(PAYLOAD.length));
  await fs.rename(path.join(dir, `${KEY}.new`), path.join(dir, KEY));
  server.faults.add({ kind: 'ignore-if-match', path: PATH });
  const err = await failure(source.range(KEY, 0, 100, old));
  t.equal(err.code, 'CHANGED');
  t.match(err.message, KEY);
  const streamErr = await failure(readAll(source.stream(KEY, 0, old)));
  t.equal(streamErr.code, 'CHANGED');
  t.equal(server.count(PATH), 3, 'HEAD and two GETs, no retries of a change');
});

t.test('a version change during a resumed stream is CHANGED, never spliced', async (t) => {
  const { server, source, dir } = await serve(t);
  server.faults.add({ kind: 'drop', afterBytes: 200_000, path: PATH, times: 1 });
  const chunks: Buffer[] = [];
  const err = await failure(
    (async () => {
      for await (const chunk of source.stream(KEY, 0)) {
        chunks.push(chunk);
        if (chunks.length === 1) {
          await fs.writeFile(path.join(dir, `${KEY}.new`), randomBytes(PAYLOAD.length));
          await fs.rename(path.join(dir, `${KEY}.new`), path.join(dir, KEY));
        }
      }
    })(),
  );
  t.equal(err.code, 'CHANGED', err.message);
  t.equal(server.requests.at(-1)?.status, 412, 'the resume was refused by If-Match');
});

t.test('a range read into the caller\'s buffer (a frame worker\'s): the same checks as through the stream', async (t) => {
  const { server, source, dir } = await serve(t);
  const into = Buffer.alloc(1 << 20);
  const got = await source.range(KEY, 5000, 900_000, undefined, into);
  t.equal(got.buffer, into.buffer, 'the bytes are in the given buffer');
  t.same(got, PAYLOAD.subarray(5000, 900_000));

  await t.test('a drop mid-body is fetched again into the same buffer', async (t) => {
    server.faults.add({ kind: 'drop', afterBytes: 1000, path: PATH, times: 1 });
    const before = server.count(PATH);
    t.same(await source.range(KEY, 7, 800_007, undefined, into), PAYLOAD.subarray(7, 800_007));
    t.equal(server.count(PATH) - before, 2);
  });
  await t.test('a server that ignores Range: the window is cut out of the whole object', async (t) => {
    // Three whole-object answers: the first range's direct attempt (declined: a 200 is undici's to cut),
    // its repeat through undici, and the second range, which goes through undici from then on.
    server.faults.add({ kind: 'ignore-range', path: PATH, times: 3 });
    t.same(await source.range(KEY, 123_456, 923_456, undefined, into), PAYLOAD.subarray(123_456, 923_456));
    t.same(await source.range(KEY, 0, 100, undefined, into), PAYLOAD.subarray(0, 100));
    t.equal(server.requests.at(-1)?.status, 200);
  });
  await t.test('a range past the end of the object is CHANGED (it was truncated)', async (t) => {
    const err = await failure(source.range(KEY, PAYLOAD.length - 10, PAYLOAD.length + 10, undefined, into));
    t.equal(err.code, 'CHANGED', err.message);
  });
  await t.test('404 is NOT_FOUND, and the connection serves the next range', async (t) => {
    const err = await failure(source.range('releases/2.0/missing.lz4', 0, 10, undefined, into));
    t.equal(err.code, 'NOT_FOUND');
    t.same(await source.range(KEY, 0, 10, undefined, into), PAYLOAD.subarray(0, 10));
  });
  await t.test('a server that ignores If-Match: CHANGED, never the other version\'s bytes', async (t) => {
    const old = (await source.head(KEY)).etag;
    await fs.writeFile(path.join(dir, `${KEY}.new`), randomBytes(PAYLOAD.length));
    await fs.rename(path.join(dir, `${KEY}.new`), path.join(dir, KEY));
    server.faults.add({ kind: 'ignore-if-match', path: PATH, times: 1 });
    const err = await failure(source.range(KEY, 0, 100, old, into));
    t.equal(err.code, 'CHANGED', err.message);
    t.equal((await failure(source.range(KEY, 0, 100, old, into))).code, 'CHANGED', 'and with If-Match honoured (412)');
  });
});

t.test('keep-alive connections serve sequential requests', async (t) => {
  const { server, source } = await serve(t);
  for (let i = 0; i < 10; i++) await source.range(KEY, i * 10, i * 10 + 10);
  await source.head(KEY);
  // The ranges (no caller's buffer) go through undici, which may open a second socket while the first
  // is being released; the HEAD through range-socket.ts, on its own connection. Never one per request.
  t.ok(server.connections <= 3, `${server.connections} connections for 11 requests`);
});

t.test('credentials in the URL go in an Authorization header, never in messages', async (t) => {
  const { server } = await serve(t);
  const source = openSource(server.url.replace('http://', 'http://ops:s%40cret@'), { retry: RETRY });
  t.teardown(() => source.close());
  t.equal(source.url, server.url);
  await source.head(KEY);
  t.equal(server.requests[0]?.authorization, `Basic ${Buffer.from('ops:s@cret').toString('base64')}`);
  const err = await failure(source.get('missing'));
  t.notMatch(err.message, /cret/);
});
