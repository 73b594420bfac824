import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { isUpgradeError } from '../../src/core/errors.js';
import { setLogLevel } from '../../src/core/log.js';
import { openSource, openTarget, type Source, type SourceOptions } from '../../src/release/sources/index.js';
import { startHttpServer } from '../helpers/http-server.js';
import { startS3Server, useS3rverCredentials } from '../helpers/s3-server.js';

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

/**
 * The Source contract, the same assertions for every scheme against a real server: file://, http://
 * (node:http on 127.0.0.1) and s3:// (s3rver on 127.0.0.1).
 */

setLogLevel('error');
useS3rverCredentials();

const FAST: SourceOptions['retry'] = { retries: 2, baseDelayMs: 10, stallTimeoutMs: 1000 };
const MANIFEST = Buffer.from('{"version":"1.0"}\n');
const PAYLOAD = randomBytes(700 * 1024 + 17);
const KEYS = { manifest: 'releases/1.0/manifest.json', payload: 'releases/1.0/image.lz4' };

interface Fixture {
  url: string;
  opts: SourceOptions;
  /** Replace an object by a new version, the way each publisher would. */
  republish(key: string, body: Buffer): Promise<void>;
}

async function writeTree(dir: string, key: string, body: Buffer): Promise<void> {
  const file = path.join(dir, ...key.split('/'));
  await fs.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.new`;
  await fs.writeFile(tmp, body);
  await fs.rename(tmp, file);
}

const schemes: Record<string, (t: Tap, dir: string) => Promise<Fixture>> = {
  file: async (_t, dir) => {
    await writeTree(dir, KEYS.manifest, MANIFEST);
    await writeTree(dir, KEYS.payload, PAYLOAD);
    return { url: pathToFileURL(dir).href, opts: {}, republish: (key, body) => writeTree(dir, key, body) };
  },
  http: async (t, dir) => {
    await writeTree(path.join(dir, 'pub'), KEYS.manifest, MANIFEST);
    await writeTree(path.join(dir, 'pub'), KEYS.payload, PAYLOAD);
    const server = await startHttpServer(dir);
    t.teardown(() => server.close());
    return {
      url: `${server.url}pub`,
      opts: { retry: FAST },
      republish: (key, body) => writeTree(path.join(dir, 'pub'), key, body),
    };
  },
  s3: async (t) => {
    const server = await startS3Server();
    t.teardown(() => server.close());
    const url = `s3://${server.bucket}/channel-a`;
    const opts: SourceOptions = { endpoint: server.endpoint, forcePathStyle: true, region: 'us-east-1', retry: FAST };
    const target = openTarget(url, opts);
    t.teardown(() => target.close());
    await target.putBytes(KEYS.manifest, MANIFEST);
    await target.putBytes(KEYS.payload, PAYLOAD);
    return { url, opts, republish: (key, body) => target.putBytes(key, body) };
  },
};

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function readStream(src: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of src) parts.push(chunk);
  return Buffer.concat(parts);
}

async function rejectsWithCode(t: Tap, p: Promise<unknown>, code: string, mentions?: string): Promise<void> {
  try {
    await p;
    t.fail(`expected an UpgradeError ${code}`);
  } catch (err) {
    t.ok(isUpgradeError(err), 'an UpgradeError');
    t.equal((err as { code?: string }).code, code, `code ${code}: ${(err as Error).message}`);
    if (mentions !== undefined) t.match((err as Error).message, mentions, 'message names the object');
    t.ok((err as { hint?: string }).hint, 'with a hint');
  }
}

for (const [scheme, setup] of Object.entries(schemes)) {
  t.test(`${scheme} source`, async (t) => {
    const fixture = await setup(t, t.testdir());
    const source: Source = openSource(fixture.url, fixture.opts);
    t.teardown(() => source.close());

    t.test('get and head', async (t) => {
      t.same(await source.get(KEYS.manifest), MANIFEST);
      const info = await source.head(KEYS.payload);
      t.equal(info.size, PAYLOAD.length);
      t.type(info.etag, 'string');
      t.equal((await source.head(KEYS.payload)).etag, info.etag, 'the etag is stable');
    });

    t.test('range', async (t) => {
      const { etag } = await source.head(KEYS.payload);
      t.same(await source.range(KEYS.payload, 100, 5000), PAYLOAD.subarray(100, 5000));
      t.same(await source.range(KEYS.payload, 0, PAYLOAD.length, etag), PAYLOAD, 'the whole object, pinned');
      t.same(await source.range(KEYS.payload, PAYLOAD.length - 1, PAYLOAD.length, etag), PAYLOAD.subarray(-1), 'the last byte');
      t.equal((await source.range(KEYS.payload, 7, 7)).length, 0, 'an empty range');
      await rejectsWithCode(t, source.range(KEYS.payload, PAYLOAD.length - 10, PAYLOAD.length + 10), 'CHANGED', 'image.lz4');
    });

    t.test('stream', async (t) => {
      const { etag } = await source.head(KEYS.payload);
      t.equal(sha256(await readStream(source.stream(KEYS.payload, 0))), sha256(PAYLOAD), 'from the start');
      t.equal(sha256(await readStream(source.stream(KEYS.payload, 12345, etag))), sha256(PAYLOAD.subarray(12345)), 'from an offset');
      t.equal((await readStream(source.stream(KEYS.payload, PAYLOAD.length, etag))).length, 0, 'from the very end');
      let first: Buffer | undefined;
      for await (const chunk of source.stream(KEYS.payload, 0)) {
        first = chunk;
        break;
      }
      t.ok(first && first.length > 0, 'a consumer may stop early');
    });

    t.test('missing objects', async (t) => {
      await rejectsWithCode(t, source.get('releases/9.9/manifest.json'), 'NOT_FOUND', 'releases/9.9/manifest.json');
      await rejectsWithCode(t, source.head('releases/9.9/image.lz4'), 'NOT_FOUND', 'releases/9.9/image.lz4');
      await rejectsWithCode(t, source.range('releases/9.9/image.lz4', 0, 10), 'NOT_FOUND');
      await rejectsWithCode(t, readStream(source.stream('releases/9.9/image.lz4', 0)), 'NOT_FOUND');
    });

    t.test('keys may not leave the prefix', async (t) => {
      await rejectsWithCode(t, source.get('../secret'), 'USAGE', '../secret');
      await rejectsWithCode(t, source.get('/etc/passwd'), 'USAGE');
    });

    t.test('a re-published object is detected by its etag', async (t) => {
      const key = 'releases/1.0/replaced.bin';
      const v1 = randomBytes(50_000);
      const v2 = randomBytes(50_000);
      await fixture.republish(key, v1);
      const old = await source.head(key);
      await fixture.republish(key, v2);
      const now = await source.head(key);
      t.not(now.etag, old.etag, 'a new version has a new etag');
      await rejectsWithCode(t, source.range(key, 0, 1000, old.etag), 'CHANGED', 'replaced.bin');
      await rejectsWithCode(t, readStream(source.stream(key, 10, old.etag)), 'CHANGED', 'replaced.bin');
      t.same(await source.range(key, 0, 1000, now.etag), v2.subarray(0, 1000), 'the current version still reads');
    });
  });
}

t.test('openSource and openTarget', async (t) => {
  const usage = (fn: () => unknown, mentions: RegExp) => {
    try {
      fn();
      t.fail('expected USAGE');
    } catch (err) {
      t.equal((err as { code?: string }).code, 'USAGE', (err as Error).message);
      t.match((err as Error).message, mentions);
      t.match((err as { hint?: string }).hint ?? '', /s3:\/\/BUCKET\/PREFIX/, 'the hint lists the accepted forms');
    }
  };
  usage(() => openSource('ftp://mirror.example/releases'), /ftp:/);
  usage(() => openSource('/srv/releases'), /\/srv\/releases/);
  usage(() => openSource(''), /is not a URL/);
  usage(() => openTarget('gopher://x/y'), /gopher:/);
  usage(() => openTarget('https://mirror.example/releases'), /read-only/);

  // Refused when opened, before any connection could be made: no request ever leaves this machine.
  for (const url of ['http://mirror.example/releases', 'http://10.0.0.1/r', 'http://[fe80::1]/r', 'http://user:pw@192.0.2.1/r']) {
    try {
      openSource(url);
      t.fail(`${url} should be refused`);
    } catch (err) {
      t.equal((err as { code?: string }).code, 'USAGE', (err as Error).message);
      t.match((err as { hint?: string }).hint ?? '', /https:\/\//, 'the hint says to use https');
      t.notMatch((err as Error).message, /pw/, 'no password in the message');
    }
  }
  for (const url of ['http://127.0.0.1:9/r', 'http://127.1.2.3/r', 'http://localhost/r', 'http://[::1]:9/r']) {
    const source = openSource(url);
    t.equal(source.url.startsWith('http://'), true, `${url} is loopback: allowed`);
    await source.close();
  }
  const withAuth = openSource('https://user:secret@mirror.example/base');
  t.equal(withAuth.url, 'https://mirror.example/base/', 'credentials never appear in the printable URL');
  await withAuth.close();
  const s3 = openSource('s3://bucket/some/prefix/', { region: 'eu-west-1' });
  t.equal(s3.url, 's3://bucket/some/prefix');
  await s3.close();
});
