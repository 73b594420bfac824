import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { setLogLevel } from '../../../src/core/log.js';
import { openSource } from '../../../src/release/sources/index.js';
import { startHttpServer } from '../../helpers/http-server.js';
import { makeTestCertificate } from '../../helpers/tls.js';
import { failure } from '../../helpers/assert.js';

/**
 * A frame worker's ranged GET read straight into its buffer (range-socket.ts) against servers that
 * misbehave on purpose: raw TCP servers on 127.0.0.1 that answer with exactly the bytes a test
 * writes, so heads, lengths and framings no real server library would send can be tried.
 */

setLogLevel('error');

const RETRY = { retries: 1, baseDelayMs: 5, stallTimeoutMs: 300 };
const BODY = randomBytes(64 * 1024);
const KEY = 'releases/2.0/image.lz4';

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

/** A TCP server that answers each request (its head read in full) through `answer(head, n, socket)`; ended with the test. */
async function rawServer(t: Tap, answer: (head: string, n: number, socket: net.Socket) => void) {
  const heads: string[] = [];
  let connections = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let pending = '';
    socket.on('data', (d) => {
      pending += d.toString('latin1');
      for (let end = pending.indexOf('\r\n\r\n'); end >= 0; end = pending.indexOf('\r\n\r\n')) {
        const head = pending.slice(0, end);
        pending = pending.slice(end + 4);
        heads.push(head);
        answer(head, heads.length, socket);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  const source = openSource(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`, { retry: RETRY });
  t.teardown(() => source.close());
  return { source, heads, get connections() { return connections; } };
}

/** The [start, end) asked for by a request head. */
function rangeOf(head: string): [number, number] {
  const m = /\r\nrange: bytes=(\d+)-(\d+)/i.exec(head);
  if (!m) throw new Error(`no range in ${head}`);
  return [Number(m[1]), Number(m[2]) + 1];
}

/** A correct 206 for the range in `head`, with `extra` headers. */
function partial(head: string, extra = ''): Buffer {
  const [start, end] = rangeOf(head);
  return Buffer.concat([
    Buffer.from(`HTTP/1.1 206 Partial Content\r\ncontent-length: ${end - start}\r\ncontent-range: bytes ${start}-${end - 1}/${BODY.length}\r\n${extra}\r\n`, 'latin1'),
    BODY.subarray(start, end),
  ]);
}

t.test('ranges land in the caller\'s buffer over one kept connection', async (t) => {
  const s = await rawServer(t, (head, _n, socket) => socket.write(partial(head, 'etag: "v1"\r\n')));
  const into = Buffer.alloc(20_000);
  for (let i = 0; i < 10; i++) {
    const got = await s.source.range(KEY, i * 1000, i * 1000 + 15_000, '"v1"', into);
    t.equal(got.buffer, into.buffer, 'in the given buffer');
    t.same(got, BODY.subarray(i * 1000, i * 1000 + 15_000));
  }
  t.equal(s.connections, 1, 'one keep-alive connection for ten ranges');
  t.match(s.heads[0], /^GET \/releases\/2\.0\/image\.lz4 HTTP\/1\.1\r\nhost: 127\.0\.0\.1:\d+\r\nrange: bytes=0-14999\r\nif-match: "v1"$/);
});

t.test('a head split over many small reads, and a body that starts in the head\'s read', async (t) => {
  const s = await rawServer(t, (head, _n, socket) => {
    const bytes = partial(head);
    // Byte by byte through the head and a little of the body, then the rest at once.
    let i = 0;
    const drip = () => {
      if (socket.destroyed) return;
      if (i < 160) {
        socket.write(bytes.subarray(i, i + 1));
        i++;
        setImmediate(drip);
      } else socket.write(bytes.subarray(i));
    };
    drip();
  });
  const into = Buffer.alloc(8192);
  t.same(await s.source.range(KEY, 100, 8000, undefined, into), BODY.subarray(100, 8000));
});

t.test('a server that closes kept connections while idle: the request goes again on a fresh one', async (t) => {
  const s = await rawServer(t, (head, _n, socket) => {
    socket.write(partial(head));
    // Closed right after answering (no "connection: close"), the way an idle timeout does it.
    setTimeout(() => socket.destroy(), 5);
  });
  const into = Buffer.alloc(4096);
  t.same(await s.source.range(KEY, 0, 4096, undefined, into), BODY.subarray(0, 4096));
  await new Promise((r) => setTimeout(r, 50));
  t.same(await s.source.range(KEY, 4096, 8192, undefined, into), BODY.subarray(4096, 8192));
  t.equal(s.heads.length, 2, 'no request was answered twice');
});

t.test('hostile answers fail the range and never write past its end', async (t) => {
  const cases: Array<{ name: string; answer: (head: string) => Buffer | string; message: RegExp }> = [
    {
      name: 'a head larger than 16 KiB',
      answer: () => `HTTP/1.1 206 Partial Content\r\nx-padding: ${'a'.repeat(20_000)}\r\n\r\n`,
      message: /head is larger than 16384 bytes/,
    },
    {
      name: 'more body than Content-Length, in the head\'s read',
      answer: (head) => Buffer.concat([partial(head), Buffer.from('HTTP/1.1 200 OK\r\n\r\nsmuggled')]),
      message: /data no request asked for|more than the body/,
    },
    {
      name: 'a Content-Length other than the range\'s',
      answer: (head) => {
        const [start, end] = rangeOf(head);
        return `HTTP/1.1 206 Partial Content\r\ncontent-length: ${end - start + 10}\r\ncontent-range: bytes ${start}-${end - 1}/${BODY.length}\r\n\r\n`;
      },
      message: /announced \d+ bytes for a range of \d+/,
    },
    {
      name: 'two different Content-Lengths',
      answer: (head) => {
        const [start, end] = rangeOf(head);
        return `HTTP/1.1 206 Partial Content\r\ncontent-length: ${end - start}\r\ncontent-length: 5\r\ncontent-range: bytes ${start}-${end - 1}/${BODY.length}\r\n\r\n`;
      },
      message: /bad Content-Length/,
    },
    { name: 'not HTTP at all', answer: () => 'SSH-2.0-OpenSSH_9.2\r\n\r\n', message: /not an HTTP\/1\.x status line/ },
    { name: 'a folded header line', answer: () => 'HTTP/1.1 206 Partial Content\r\ncontent-length: 10\r\n  folded\r\n\r\n', message: /malformed response header line/ },
    {
      name: 'a body cut short by the server',
      answer: (head) => {
        const bytes = partial(head);
        return bytes.subarray(0, bytes.length - 100);
      },
      message: /closed the connection/,
    },
  ];
  for (const c of cases) {
    await t.test(c.name, async (t) => {
      const s = await rawServer(t, (head, _n, socket) => {
        const answer = c.answer(head);
        socket.end(answer);
      });
      // A guard zone after the range: nothing may land there.
      const into = Buffer.alloc(8192 + 64, 0xee);
      const err = await failure(s.source.range(KEY, 0, 8192, undefined, into));
      t.equal(err.code, 'NETWORK', err.message);
      t.match(err.message, c.message);
      t.ok(into.subarray(8192).every((b) => b === 0xee), 'nothing written past the range');
    });
  }
});

t.test('a stalled body times out and is retried', async (t) => {
  const s = await rawServer(t, (head, n, socket) => {
    const bytes = partial(head);
    // The first answer stops half-way and keeps the connection open; the second is whole.
    socket.write(n === 1 ? bytes.subarray(0, bytes.length / 2) : bytes);
  });
  const into = Buffer.alloc(8192);
  const started = Date.now();
  t.same(await s.source.range(KEY, 0, 8192, undefined, into), BODY.subarray(0, 8192));
  t.ok(Date.now() - started >= 250, 'waited for the stall timeout');
  t.equal(s.heads.length, 2);
});

t.test('chunked answers and whole objects go to the general client, with the same result', async (t) => {
  const s = await rawServer(t, (head, n, socket) => {
    const [start, end] = rangeOf(head);
    const chunk = BODY.subarray(start, end);
    // Chunked the first time; from then on the source no longer tries the direct path.
    socket.write(`HTTP/1.1 206 Partial Content\r\ntransfer-encoding: chunked\r\ncontent-range: bytes ${start}-${end - 1}/${BODY.length}\r\n\r\n`);
    socket.write(`${chunk.length.toString(16)}\r\n`);
    socket.write(chunk);
    socket.write('\r\n0\r\n\r\n');
    void n;
  });
  const into = Buffer.alloc(8192);
  t.same(await s.source.range(KEY, 10, 5010, undefined, into), BODY.subarray(10, 5010));
  t.same(await s.source.range(KEY, 20, 5020, undefined, into), BODY.subarray(20, 5020));
  t.equal(s.heads.length, 3, 'the declined answer, its repeat through undici, then undici only');
});

t.test('a header value that could split the request is never sent', async (t) => {
  const s = await rawServer(t, (head, _n, socket) => socket.write(partial(head)));
  const into = Buffer.alloc(100);
  const err = await failure(s.source.range(KEY, 0, 100, '"v1"\r\nx-injected: 1', into));
  t.match(err.message, /not a plain HTTP field|invalid/i, err.message);
  t.notOk(s.heads.some((h) => /x-injected/i.test(h)), 'no injected header reached the server');
});

t.test('https: the server certificate is verified (untrusted: NETWORK with the fix), trusted: the range arrives', async (t) => {
  const dir = t.testdir();
  const cert = await makeTestCertificate(path.join(dir, 'tls'), ['127.0.0.1']);
  await fs.mkdir(path.join(dir, 'www/releases/2.0'), { recursive: true });
  await fs.writeFile(path.join(dir, 'www', KEY), BODY);
  const server = await startHttpServer(path.join(dir, 'www'), { tls: cert });
  t.teardown(() => server.close());

  const source = openSource(server.url, { retry: RETRY });
  t.teardown(() => source.close());
  const err = await failure(source.range(KEY, 0, 100, undefined, Buffer.alloc(100)));
  t.equal(err.code, 'NETWORK');
  t.match(err.message, /certificate is not trusted/);
  t.match(err.hint, /\[source\] ca_file/);

  // Trusted through NODE_EXTRA_CA_CERTS, which node reads at start-up: a child process does the range.
  await fs.writeFile(path.join(dir, 'ca.pem'), cert.cert);
  const script = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../helpers/range-into.ts');
  const child = spawn(process.execPath, [...process.execArgv, script, server.url, KEY, '1000', '60000'], {
    env: { ...process.env, NODE_EXTRA_CA_CERTS: path.join(dir, 'ca.pem') },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  const code = await new Promise((resolve) => child.on('exit', resolve));
  t.equal(code, 0);
  t.equal(out.trim(), (await import('node:crypto')).createHash('sha256').update(BODY.subarray(1000, 60000)).digest('hex'));
  t.ok(server.requests.some((r) => r.range === 'bytes=1000-59999' && r.status === 206), 'over TLS, as a range');
});

t.test('the main thread\'s reads go the same way: GET of a manifest, HEAD of the payload, and their limits', async (t) => {
  const manifest = Buffer.from('{"version":"2.0"}');
  const s = await rawServer(t, (head, _n, socket) => {
    if (head.startsWith('HEAD ')) socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${BODY.length}\r\netag: "v7"\r\n\r\n`);
    else if (head.includes('manifest.json ')) socket.write(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\ncontent-length: ${manifest.length}\r\n\r\n`), manifest]));
    // A signature announced far beyond what a signature can be: refused on its head, body never read.
    else socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${10 << 20}\r\n\r\n`);
  });
  t.same(await s.source.get('releases/2.0/manifest.json'), manifest);
  t.same(await s.source.head(KEY), { size: BODY.length, etag: '"v7"' });
  t.match(s.heads[1], /^HEAD \/releases\/2\.0\/image\.lz4 HTTP\/1\.1\r\n/);
  const err = await failure(s.source.get('releases/2.0/manifest.json.sig'));
  t.equal(err.code, 'CORRUPT');
  t.match(err.message, /larger than 65536 bytes/);
  t.equal(s.connections, 1, 'one kept connection for all three (closed after the refused head, whose body is never read)');
});

/** Bounds of consecutive pieces of BODY: `sizes` from `start`. */
function boundsOf(start: number, sizes: number[]): number[] {
  const bounds = [start];
  for (const s of sizes) bounds.push(bounds.at(-1)! + s);
  return bounds;
}

t.test('several frames in one request: each piece handed over as soon as it is in, in order', async (t) => {
  const s = await rawServer(t, (head, _n, socket) => {
    const bytes = partial(head, 'etag: "v1"\r\n');
    // Head and the first pieces in one write (they arrive with the head), the rest in odd-sized writes.
    let at = 0;
    const next = () => {
      if (socket.destroyed || at >= bytes.length) return;
      const n = at === 0 ? bytes.indexOf('\r\n\r\n') + 4 + 700 : 3001;
      socket.write(bytes.subarray(at, at + n));
      at += n;
      setImmediate(next);
    };
    next();
  });
  const sizes = [100, 250, 4000, 1, 9000, 2048];
  const bounds = boundsOf(500, sizes);
  const into = Buffer.alloc(9000);
  const got: Array<[number, Buffer]> = [];
  let slow = 0;
  await s.source.rangePieces!(KEY, bounds, '"v1"', into, (i, bytes) => {
    t.equal(bytes.buffer, into.buffer, `piece ${i} is in the given buffer`);
    got.push([i, Buffer.from(bytes)]);
    // Every other piece is taken asynchronously: nothing is read into the buffer until it settles.
    if (i % 2) return new Promise<void>((resolve) => setTimeout(() => (slow++, resolve()), 20));
  });
  t.same(got.map(([i]) => i), [0, 1, 2, 3, 4, 5], 'every piece once, in order');
  for (const [i, bytes] of got) t.same(bytes, BODY.subarray(bounds[i], bounds[i + 1]), `piece ${i}`);
  t.equal(slow, 3);
  t.equal(s.heads.length, 1, 'one request');
  t.same(rangeOf(s.heads[0]!), [500, bounds.at(-1)]);
  // The connection is kept and reads again after a body whose last piece was taken asynchronously.
  t.same(await s.source.range(KEY, 0, 10, undefined, Buffer.alloc(10)), BODY.subarray(0, 10));
  t.equal(s.connections, 1, 'still one connection');
});

t.test('a request of several frames that breaks off resumes from the first piece not taken', async (t) => {
  const s = await rawServer(t, (head, n, socket) => {
    const bytes = partial(head);
    if (n === 1) {
      // The head and 2.5 of the 4 pieces, then the connection dies.
      socket.end(bytes.subarray(0, bytes.indexOf('\r\n\r\n') + 4 + 2500));
    } else socket.write(bytes);
  });
  const bounds = boundsOf(0, [1000, 1000, 1000, 1000]);
  const taken: number[] = [];
  await s.source.rangePieces!(KEY, bounds, undefined, Buffer.alloc(1000), (i, bytes) => {
    t.same(bytes, BODY.subarray(bounds[i], bounds[i + 1]), `piece ${i}`);
    taken.push(i);
  });
  t.same(taken, [0, 1, 2, 3], 'each piece once');
  t.same(s.heads.map(rangeOf), [[0, 4000], [2000, 4000]], 'the second request asks only for what was not taken');
});

t.test('a piece its taker refuses ends the request with that error, not retried as a network failure', async (t) => {
  const s = await rawServer(t, (head, _n, socket) => socket.write(partial(head)));
  const bounds = boundsOf(0, [1000, 1000, 1000]);
  const refused = Object.assign(new Error('disk full'), { code: 'ENOSPC' });
  for (const async of [false, true]) {
    const before = s.heads.length;
    const err = await failure(
      s.source.rangePieces!(KEY, bounds, undefined, Buffer.alloc(1000), (i) => {
        if (i !== 1) return;
        if (async) return Promise.reject(refused);
        throw refused;
      }),
    );
    t.equal(err, refused, `${async ? 'a rejected' : 'a thrown'} error comes back as it is`);
    t.equal(s.heads.length - before, 1, 'and the request is not made again');
  }
});

t.test('pieces that do not add up to the answer, or more bytes than announced, fail the request', async (t) => {
  const extra = await rawServer(t, (head, _n, socket) => socket.write(Buffer.concat([partial(head), Buffer.from('garbage')])));
  const bounds = boundsOf(0, [1000, 1000]);
  const err = await failure(extra.source.rangePieces!(KEY, bounds, undefined, Buffer.alloc(1000), () => undefined));
  t.match(err.message, /more than the body|no request asked for/);
  const tooSmall = await rawServer(t, (head, _n, socket) => socket.write(partial(head)));
  const small = await failure(tooSmall.source.rangePieces!(KEY, bounds, undefined, Buffer.alloc(500), () => undefined));
  t.match(small.message, /1000\+1000 bytes in a 500-byte buffer/, 'a buffer shorter than a piece is a caller\'s bug, named');
});
