import { createHash, createHmac, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { setLogLevel } from '../../../src/core/log.js';
import { openSource, openSpec, openTarget, type SourceOptions } from '../../../src/release/sources/index.js';
import { startS3Server, useS3rverCredentials, type TestS3Server } from '../../helpers/s3-server.js';
import { failure, sha256 } from '../../helpers/assert.js';

/** The s3:// transport against s3rver on 127.0.0.1. */

setLogLevel('error');
useS3rverCredentials();

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];


async function readAll(src: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of src) parts.push(chunk);
  return Buffer.concat(parts);
}


async function s3(t: Tap): Promise<{ server: TestS3Server; opts: SourceOptions; url: string }> {
  const server = await startS3Server('upgrades');
  t.teardown(() => server.close());
  const opts: SourceOptions = {
    endpoint: server.endpoint,
    forcePathStyle: true,
    region: 'us-east-1',
    retry: { retries: 2, baseDelayMs: 10, stallTimeoutMs: 2000 },
  };
  return { server, opts, url: `s3://${server.bucket}/fleet/stable` };
}

t.test('putFile of a 40 MB file goes multipart and reads back byte-identical', async (t) => {
  const { server, opts, url } = await s3(t);
  const file = path.join(t.testdir(), 'image.lz4');
  const payload = randomBytes(40 * 1024 * 1024 + 12345);
  await fs.writeFile(file, payload);

  const target = openTarget(url, opts);
  t.teardown(() => target.close());
  await target.putFile('releases/3.0/image.lz4', file);

  const source = openSource(url, opts);
  t.teardown(() => source.close());
  const info = await source.head('releases/3.0/image.lz4');
  t.equal(info.size, payload.length);
  const parts = server.requests.filter((r) => r.startsWith('PUT ') && /[?&]partNumber=\d+/.test(r));
  t.equal(parts.length, 3, 'uploaded as three 16 MiB parts');
  t.ok(server.requests.some((r) => r.startsWith('POST ') && /[?&]uploadId=/.test(r)), 'and completed as a multipart upload');

  const partEdge = 16 * 1024 * 1024;
  t.same(await source.range('releases/3.0/image.lz4', partEdge - 100, partEdge + 100, info.etag), payload.subarray(partEdge - 100, partEdge + 100), 'across a part boundary');
  t.same(await source.range('releases/3.0/image.lz4', payload.length - 5000, payload.length, info.etag), payload.subarray(-5000), 'the tail');
  t.equal(sha256(await readAll(source.stream('releases/3.0/image.lz4', 0, info.etag))), sha256(payload), 'the whole stream');
  t.equal(sha256(await readAll(source.stream('releases/3.0/image.lz4', 30_000_000, info.etag))), sha256(payload.subarray(30_000_000)), 'a stream from an offset');
});

t.test('a small putFile and putBytes store exactly the bytes (no aws-chunked framing)', async (t) => {
  const { opts, url } = await s3(t);
  const file = path.join(t.testdir(), 'manifest.json');
  const manifest = Buffer.from(JSON.stringify({ version: '3.0', size: 123 }));
  await fs.writeFile(file, manifest);
  const target = openTarget(url, opts);
  t.teardown(() => target.close());
  await target.putFile('releases/3.0/manifest.json', file);
  await target.putBytes('releases/3.0/manifest.json.sig', Buffer.from([1, 2, 3, 255]));

  const source = openSource(url, opts);
  t.teardown(() => source.close());
  t.same(await source.get('releases/3.0/manifest.json'), manifest);
  t.same(await source.get('releases/3.0/manifest.json.sig'), Buffer.from([1, 2, 3, 255]));
  t.equal((await source.head('releases/3.0/manifest.json')).size, manifest.length);
});

t.test('putFile of a missing local file is NOT_FOUND naming it', async (t) => {
  const { opts, url } = await s3(t);
  const target = openTarget(url, opts);
  t.teardown(() => target.close());
  const missing = path.join(t.testdir(), 'nope.img');
  const err = await failure(target.putFile('releases/x/image.lz4', missing));
  t.equal(err.code, 'NOT_FOUND');
  t.match(err.message, missing);
});

t.test('a missing bucket is NOT_FOUND naming the bucket', async (t) => {
  const { opts } = await s3(t);
  const source = openSource('s3://no-such-bucket/p', opts);
  t.teardown(() => source.close());
  const err = await failure(source.get('channels/stable.json'));
  t.equal(err.code, 'NOT_FOUND');
  t.match(err.message, /no-such-bucket/);
});

t.test('wrong credentials: NETWORK with a hint about credentials, no retries', async (t) => {
  const { server, opts, url } = await s3(t);
  // s3rver checks the access key id only (it does not verify SigV4 signatures).
  const saved = process.env.AWS_ACCESS_KEY_ID;
  process.env.AWS_ACCESS_KEY_ID = 'NOT-A-KEY';
  t.teardown(() => {
    process.env.AWS_ACCESS_KEY_ID = saved;
  });
  const source = openSource(url, opts);
  t.teardown(() => source.close());
  const err = await failure(source.get('channels/stable.json'));
  t.equal(err.code, 'NETWORK', err.message);
  t.match(err.message, /HTTP 403/);
  t.match(err.hint ?? '', /credentials/);
  // Asked once through a URL signed without the SDK, then once through the SDK (a store may refuse
  // query signing: s3-lazy.ts), whose answer is the one reported. Neither is retried.
  const asked = server.served.filter((r) => r.path.endsWith('channels/stable.json'));
  t.same(asked.map((r) => r.signed), ['query', 'header'], 'a refusal is not retried');
});

t.test('an endpoint that is down: NETWORK after the retries, naming the object', async (t) => {
  const { server, opts, url } = await s3(t);
  await server.close();
  const source = openSource(url, opts);
  t.teardown(() => source.close());
  const err = await failure(source.range('releases/3.0/image.lz4', 0, 10));
  t.equal(err.code, 'NETWORK');
  t.match(err.message, 's3://upgrades/fleet/stable/releases/3.0/image.lz4');
  t.match(err.message, /3 attempts.*ECONNREFUSED/);
});

/**
 * A TCP proxy in front of s3rver that spoils the first connections' responses: after `afterBytes`
 * bytes it cuts the connection (drop) or forwards nothing more (stall). s3rver itself cannot fail
 * on demand; later connections pass through untouched.
 */
async function startSpoilingProxy(t: Tap, upstreamPort: number, plan: { afterBytes: number; mode: 'drop' | 'stall' }[]): Promise<string> {
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  const proxy = net.createServer((client) => {
    const rule = plan[accepted++];
    const upstream = net.connect(upstreamPort, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => s.destroy());
      s.on('close', () => sockets.delete(s));
    }
    client.pipe(upstream);
    client.on('close', () => upstream.destroy());
    let forwarded = 0;
    upstream.on('data', (chunk: Buffer) => {
      if (rule === undefined) {
        client.write(chunk);
        return;
      }
      const room = rule.afterBytes - forwarded;
      if (room <= 0) return;
      client.write(chunk.subarray(0, room));
      forwarded += Math.min(room, chunk.length);
      if (forwarded >= rule.afterBytes && rule.mode === 'drop') {
        client.end(() => client.destroy());
        upstream.destroy();
      }
    });
    upstream.on('close', () => {
      if (rule === undefined) client.end();
    });
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => proxy.close(() => resolve()));
  });
  return `http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`;
}

for (const mode of ['drop', 'stall'] as const) {
  t.test(`a GetObject body that ${mode}s mid-way is resumed from the byte reached`, async (t) => {
    const { server, opts, url } = await s3(t);
    const payload = randomBytes(3 * 1024 * 1024);
    const target = openTarget(url, opts);
    t.teardown(() => target.close());
    await target.putBytes('releases/4.0/image.lz4', payload);

    const proxied = await startSpoilingProxy(t, Number(new URL(server.endpoint).port), [{ afterBytes: 1_000_000, mode }]);
    const source = openSource(url, { ...opts, endpoint: proxied, retry: { retries: 2, baseDelayMs: 10, stallTimeoutMs: 300 } });
    t.teardown(() => source.close());
    const before = server.requests.length;
    const got = await readAll(source.stream('releases/4.0/image.lz4', 0));
    t.equal(sha256(got), sha256(payload), 'bytes identical');
    const gets = server.requests.slice(before).filter((r) => r.startsWith('GET '));
    t.equal(gets.length, 2, 'one resume');
  });
}

t.test('workerSpec: a pre-signed GET that the worker side fetches as plain HTTP, valid SigV4 for any range', async (t) => {
  const { server, opts, url } = await s3(t);
  const target = openTarget(url, opts);
  const body = randomBytes(300_000);
  await target.putBytes('releases/1.0/image.lz4', body);
  await target.close();
  const source = openSource(url, opts);
  t.teardown(() => source.close());
  const spec = (await source.workerSpec!('releases/1.0/image.lz4'))!;
  t.ok(spec, 'a pre-signed URL (it works here)');
  t.equal(spec.signedKey, 'releases/1.0/image.lz4');
  t.ok(spec.expiresAt! > Date.now() + 10 * 60_000 && spec.expiresAt! <= Date.now() + 15 * 60_000, 'valid for 15 minutes');
  t.equal(await source.workerSpec!('releases/1.0/image.lz4'), spec, 'the same URL again while it is fresh');
  const withCa = openSource(url, { ...opts, ca: '-----BEGIN CERTIFICATE-----\n…' });
  t.teardown(() => withCa.close());
  t.equal((await withCa.workerSpec!('releases/1.0/image.lz4'))?.opts.ca, '-----BEGIN CERTIFICATE-----\n…', '[source] ca_file goes to the workers with the URL');

  // s3rver checks the access key and the expiry but not the signature: check it here, by the SigV4
  // rules (canonical request → string to sign → HMAC chain), with s3rver's secret.
  const signed = new URL(spec.url);
  const q = signed.searchParams;
  t.equal(signed.host, new URL(server.endpoint).host, 'the endpoint, with its port');
  t.equal(signed.pathname, `/${server.bucket}/fleet/stable/releases/1.0/image.lz4`);
  t.equal(q.get('X-Amz-Expires'), '900');
  t.equal(q.get('X-Amz-SignedHeaders'), 'host', 'only the host is signed: Range and If-Match may be added');
  t.equal(q.get('X-Amz-Signature'), sigV4(signed, 'S3RVER'), 'the signature is valid SigV4');

  const worker = openSpec(spec);
  t.teardown(() => worker.close());
  t.same(await worker.range('releases/1.0/image.lz4', 1000, 201_000), body.subarray(1000, 201_000), 'a range through the signed URL');
  t.equal(worker.url, `s3://${server.bucket}/fleet/stable/releases/1.0/image.lz4`, 'printed as the object, without its signature');
  await t.rejects(worker.range('releases/1.0/other', 0, 10), /pre-signed URL of releases\/1\.0\/image\.lz4 only/);
  const gets = server.served.filter((s) => s.method === 'GET' && s.range === 'bytes=1000-200999');
  t.same(gets.map((s) => s.signed), ['query']);
});

t.test('workerSpec with temporary credentials: the URL lives no longer than they do, and is renewed at half its life', async (t) => {
  const { opts, url } = await s3(t);
  const target = openTarget(url, opts);
  await target.putBytes('releases/1.0/image.lz4', randomBytes(1000));
  await target.close();
  // The SDK's environment provider takes an expiry from here (an instance role's credentials carry one).
  const expires = Date.now() + 4_000;
  process.env.AWS_CREDENTIAL_EXPIRATION = new Date(expires).toISOString();
  t.teardown(() => void delete process.env.AWS_CREDENTIAL_EXPIRATION);
  const source = openSource(url, opts);
  t.teardown(() => source.close());
  const spec = (await source.workerSpec!('releases/1.0/image.lz4'))!;
  t.ok(spec, 'a pre-signed URL');
  t.ok(spec.expiresAt! <= expires && spec.expiresAt! > expires - 1000, `counted as expiring with its credentials (${spec.expiresAt! - Date.now()} ms left), not after 15 minutes`);
  t.equal(await source.workerSpec!('releases/1.0/image.lz4'), spec, 'the same URL while more than half its life is left');
  await new Promise((r) => setTimeout(r, spec.signedAt! + (spec.expiresAt! - spec.signedAt!) / 2 + 100 - Date.now()));
  const renewed = (await source.workerSpec!('releases/1.0/image.lz4'))!;
  t.not(renewed, spec, 'a new URL once half of it is gone');
  t.ok(renewed.signedAt! > spec.signedAt!);
});

/** The SigV4 query signature of a pre-signed GET, computed from its URL alone (AWS's documented steps). */
function sigV4(url: URL, secret: string): string {
  const enc = (s: string) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  const params = [...url.searchParams].filter(([k]) => k !== 'X-Amz-Signature').map(([k, v]) => `${enc(k)}=${enc(v)}`).sort();
  const canonical = ['GET', url.pathname, params.join('&'), `host:${url.host}\n`, 'host', 'UNSIGNED-PAYLOAD'].join('\n');
  const date = url.searchParams.get('X-Amz-Date')!;
  const scope = url.searchParams.get('X-Amz-Credential')!.split('/').slice(1).join('/');
  const toSign = ['AWS4-HMAC-SHA256', date, scope, createHash('sha256').update(canonical).digest('hex')].join('\n');
  const hmac = (key: Buffer | string, data: string) => createHmac('sha256', key).update(data).digest();
  const [day, region, service, term] = scope.split('/') as [string, string, string, string];
  const key = hmac(hmac(hmac(hmac(`AWS4${secret}`, day), region), service), term);
  return createHmac('sha256', key).update(toSign).digest('hex');
}
