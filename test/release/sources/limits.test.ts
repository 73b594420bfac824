import t from 'tap';
import { mkdirSync, truncateSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { setLogLevel } from '../../../src/core/log.js';
import { openSource, openTarget, type SourceOptions } from '../../../src/release/sources/index.js';
import { startHttpServer } from '../../helpers/http-server.js';
import { startS3Server, useS3rverCredentials } from '../../helpers/s3-server.js';
import { failure } from '../../helpers/assert.js';

/**
 * Metadata is read whole, so it is capped (channel 1 MiB, manifest 64 MiB, .sig and .pub 64 KiB),
 * refused while it streams in; a range answer longer than asked is cut off; S3 endpoints take plain
 * http:// only to this machine.
 */

setLogLevel('error');
useS3rverCredentials();

const MiB = 1024 * 1024;
const fast = { retry: { retries: 1, baseDelayMs: 10, stallTimeoutMs: 5000 } };

/** A release tree with a 300 MB (sparse) channel file and manifest: what a broken mirror might serve. */
function oversizeTree(dir: string): string {
  const root = path.join(dir, 'www');
  mkdirSync(path.join(root, 'channels'), { recursive: true });
  mkdirSync(path.join(root, 'releases/9'), { recursive: true });
  for (const f of ['channels/stable.json', 'releases/9/manifest.json', 'releases/9/manifest.json.sig']) {
    writeFileSync(path.join(root, f), '');
    truncateSync(path.join(root, f), 300 * MiB);
  }
  return root;
}

/** Peak RSS growth (sampled every 10 ms) while `fn` runs. */
async function rssGrowth<T>(fn: () => Promise<T>): Promise<{ result: T; growthMiB: number }> {
  global.gc?.();
  const base = process.memoryUsage().rss;
  let peak = base;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 10);
  try {
    const result = await fn();
    peak = Math.max(peak, process.memoryUsage().rss);
    return { result, growthMiB: (peak - base) / MiB };
  } finally {
    clearInterval(timer);
  }
}

t.test('http(s): a 300 MB channel, manifest and signature are refused while streaming, memory stays low', async (t) => {
  const server = await startHttpServer(oversizeTree(t.testdir()));
  t.teardown(() => server.close());
  const source = openSource(server.url, fast);
  t.teardown(() => source.close());
  for (const [key, cap] of [['releases/9/manifest.json.sig', 64 * 1024], ['channels/stable.json', MiB], ['releases/9/manifest.json', 64 * MiB]] as const) {
    const { result: err, growthMiB } = await rssGrowth(() => failure(source.get(key)));
    t.match(err, { code: 'CORRUPT', message: `${server.url}${key} is larger than ${cap} bytes` }, `${key}: refused, naming the URL and the cap`);
    t.ok(growthMiB < 200, `${key}: RSS grew ${growthMiB.toFixed(0)} MiB serving 300 MB (cap ${cap} bytes)`);
    t.comment(`${key}: RSS growth ${growthMiB.toFixed(1)} MiB`);
  }
});

t.test('file://: oversize metadata is refused without reading it', async (t) => {
  const root = oversizeTree(t.testdir());
  const source = openSource(`file://${root}`);
  t.teardown(() => source.close());
  const { result: err, growthMiB } = await rssGrowth(() => failure(source.get('releases/9/manifest.json')));
  t.match(err, { code: 'CORRUPT', message: `${path.join(root, 'releases/9/manifest.json')} is larger than ${64 * MiB} bytes, the most upgradectl reads for a manifest` });
  t.ok(growthMiB < 50, `RSS grew ${growthMiB.toFixed(0)} MiB`);
  writeFileSync(path.join(root, 'channels/ok.json'), '{"version":"1"}');
  t.equal((await source.get('channels/ok.json')).toString(), '{"version":"1"}', 'a normal channel still reads');
});

t.test('s3 (s3rver): an oversize channel is refused naming the object and the cap', async (t) => {
  const server = await startS3Server('upgrades');
  t.teardown(() => server.close());
  const opts: SourceOptions = { endpoint: server.endpoint, forcePathStyle: true, region: 'us-east-1', ...fast };
  const url = `s3://${server.bucket}/fleet`;
  const target = openTarget(url, opts);
  await target.putBytes('channels/stable.json', Buffer.alloc(MiB + 1, 0x20));
  await target.putBytes('channels/ok.json', Buffer.from('{}'));
  await target.close();
  const source = openSource(url, opts);
  t.teardown(() => source.close());
  t.match(await failure(source.get('channels/stable.json')), { code: 'CORRUPT', message: `s3://${server.bucket}/fleet/channels/stable.json is larger than ${MiB} bytes` });
  t.equal((await source.get('channels/ok.json')).toString(), '{}');
});

t.test('a range answer longer than the range asked is cut off with an error', async (t) => {
  // A hostile server: 206 with the right Content-Range, then 8 MiB more than that (chunked, no length).
  let sent = 0;
  const server = http.createServer((req, res) => {
    res.writeHead(206, { 'content-range': 'bytes 0-9/100000000', etag: '"x"' });
    const chunk = Buffer.alloc(64 * 1024, 1);
    const pump = () => {
      while (sent < 8 * MiB) {
        sent += chunk.length;
        if (!res.write(chunk)) return void res.once('drain', pump);
      }
      res.end();
    };
    res.on('close', () => res.destroy());
    pump();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise((r) => { server.closeAllConnections(); server.close(() => r(undefined)); }));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  const source = openSource(base, fast);
  t.teardown(() => source.close());
  t.match(await failure(source.range('releases/9/image.lz4', 0, 10)), {
    code: 'NETWORK',
    message: `${base}releases/9/image.lz4 answered bytes 0-9 with more than the 10 bytes asked; cut off`,
  });
});

t.test('s3 endpoint: plain http:// only to 127.0.0.0/8, ::1 and localhost', async (t) => {
  // Opening may be lazy: the refusal comes from openSource or from the first request.
  const attempt = (endpoint: string) =>
    failure(
      (async () => {
        const source = openSource('s3://b/p', { endpoint, region: 'us-east-1', retry: { retries: 0, baseDelayMs: 1, stallTimeoutMs: 2000 } });
        try {
          await source.get('channels/stable.json');
        } finally {
          await source.close();
        }
      })(),
    );
  for (const endpoint of ['http://s3.example.com', 'http://10.0.0.5:9000', 'http://[fe80::1]:9000']) {
    t.match(await attempt(endpoint), { code: 'USAGE', message: /refusing plain http:\/\/ to .* in the S3 endpoint/, hint: /127\.0\.0\.0\/8, ::1 and localhost/ }, endpoint);
  }
  for (const endpoint of ['http://127.0.0.1:1', 'http://localhost:1', 'http://[::1]:1']) {
    const err = await attempt(endpoint);
    t.not(err.code, 'USAGE', `${endpoint} is allowed (then fails to connect: ${err.message.slice(0, 80)})`);
  }
});
