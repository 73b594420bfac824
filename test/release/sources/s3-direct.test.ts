import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { S3Client } from '@aws-sdk/client-s3';
import { setLogLevel } from '../../../src/core/log.js';
import { openSource, openSpec, openTarget, type SourceOptions } from '../../../src/release/sources/index.js';
import { presignS3 } from '../../../src/release/sources/s3-sigv4.js';
import { directEndpoint } from '../../../src/release/sources/s3-endpoint.js';
import { refusingPresignedProxy, startS3Server, useS3rverCredentials } from '../../helpers/s3-server.js';
import { failure } from '../../helpers/assert.js';

/**
 * Reading S3 without the SDK (s3-sigv4.ts, s3-endpoint.ts, s3-direct.ts, s3-lazy.ts): the signature
 * against AWS's worked example and the SDK's own signer, the endpoint rules, and against s3rver the
 * same answers as the SDK, messages naming s3:// objects, and the fall-back to the SDK.
 */

setLogLevel('error');
useS3rverCredentials();

t.test("SigV4 query signing: AWS's worked example", async (t) => {
  // https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html ("An example"):
  // GET examplebucket/test.txt, us-east-1, 2013-05-24T00:00:00Z, valid 86400 s, with AWS's example keys.
  const url = presignS3({
    method: 'GET',
    url: new URL('https://examplebucket.s3.amazonaws.com/test.txt'),
    region: 'us-east-1',
    credentials: { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' },
    expiresSeconds: 86400,
    now: new Date('2013-05-24T00:00:00Z'),
  });
  t.equal(
    url.href,
    'https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256' +
      '&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z' +
      '&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404',
  );
});

t.test("SigV4 query signing: the same URL as the SDK's signer, for odd keys, session tokens and HEAD", async (t) => {
  const credentials = { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'se/cr+et=', sessionToken: 'to/ken+==' };
  const now = new Date('2026-11-28T09:30:00Z');
  const cases: { method: 'GET' | 'HEAD'; host: string; region: string; path: string; token: boolean }[] = [
    { method: 'GET', host: 'bucket.s3.eu-west-1.amazonaws.com', region: 'eu-west-1', path: '/fleet/releases/2.0/image.lz4', token: true },
    { method: 'HEAD', host: 'bucket.s3.eu-west-1.amazonaws.com', region: 'eu-west-1', path: '/fleet/releases/2.0/image.lz4', token: false },
    { method: 'GET', host: '127.0.0.1:9000', region: 'us-east-1', path: "/b/a b/été/x!'()*+~.lz4", token: true },
  ];
  for (const c of cases) {
    const client = new S3Client({ region: c.region, credentials: c.token ? credentials : { ...credentials, sessionToken: undefined } });
    t.teardown(() => client.destroy());
    const url = new URL(`https://${c.host}${c.path}`);
    const mine = presignS3({ method: c.method, url, region: c.region, credentials: c.token ? credentials : { ...credentials, sessionToken: undefined }, expiresSeconds: 900, now });
    // What the SDK's GetObject sends and signs: its serializer's path encoding, UNSIGNED-PAYLOAD as
    // the payload hash, only `host` signed (s3-presign.ts asks its signer the same way).
    const signer = (await client.config.signer()) as unknown as {
      presign(r: object, o: object): Promise<{ path: string; query: Record<string, string> }>;
    };
    const sdk = await signer.presign(
      { method: c.method, protocol: 'https:', hostname: url.hostname, port: url.port ? Number(url.port) : undefined, path: mine.pathname, query: {}, headers: { host: url.host, 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' } },
      { expiresIn: 900, signingDate: now, signingRegion: c.region, unhoistableHeaders: new Set(['x-amz-content-sha256']), unsignableHeaders: new Set(['x-amz-content-sha256']) },
    );
    t.equal(mine.pathname, sdk.path, `${c.path}: the path as S3 canonicalizes it`);
    t.same(Object.fromEntries(mine.searchParams), sdk.query, `${c.method} ${c.path}${c.token ? ' with a session token' : ''}: the same query and signature`);
  }
});

t.test('which set-ups are read without the SDK, and at which URL', async (t) => {
  const env = { HOME: t.testdir() };
  const at = (bucket: string, opts: SourceOptions, e: NodeJS.ProcessEnv = env) => {
    const r = directEndpoint(bucket, opts, e);
    return 'sdk' in r ? `SDK: ${r.sdk}` : `${r.base.href} ${r.region}`;
  };
  t.equal(at('releases', { endpoint: 'http://127.0.0.1:4568', forcePathStyle: true, region: 'us-east-1' }), 'http://127.0.0.1:4568/releases/ us-east-1');
  t.equal(at('releases', { endpoint: 'https://minio.example:9000', forcePathStyle: true }, { ...env, AWS_REGION: 'eu-central-1' }), 'https://minio.example:9000/releases/ eu-central-1', 'AWS_REGION');
  t.equal(at('fleet-images', { region: 'eu-west-1' }), 'https://fleet-images.s3.eu-west-1.amazonaws.com/ eu-west-1');
  t.equal(at('fleet-images', { region: 'cn-north-1' }), 'https://fleet-images.s3.cn-north-1.amazonaws.com.cn/ cn-north-1');
  t.equal(at('fleet-images', { region: 'us-east-1', forcePathStyle: true }), 'https://s3.us-east-1.amazonaws.com/fleet-images/ us-east-1');
  t.match(at('fleet-images', {}), /^SDK: no region/);
  t.match(at('fleet.images', { region: 'eu-west-1' }), /^SDK: bucket name/, 'a dotted name: the SDK knows when to switch to path style');
  t.match(at('images--usw2-az1--x-s3', { region: 'us-west-2' }), /^SDK: bucket name/, 'a directory bucket');
  t.match(at('fleet-images', { region: 'us-gov-west-1' }), /^SDK: region/);
  t.match(at('fleet-images', { region: 'us-isob-east-1' }), /^SDK: region/);
  t.match(at('releases', { endpoint: 'https://minio.example', region: 'us-east-1' }), /^SDK: virtual-hosted/);
  t.match(at('releases', { endpoint: 'https://gw.example/s3', forcePathStyle: true, region: 'us-east-1' }), /^SDK: an endpoint with a path/);
  t.match(at('releases', { endpoint: 'http://minio.example', forcePathStyle: true, region: 'us-east-1' }), /^SDK: not an https endpoint/, 'refused by S3Store with its own message');
  for (const name of ['AWS_USE_FIPS_ENDPOINT', 'AWS_USE_DUALSTACK_ENDPOINT', 'AWS_ENDPOINT_URL_S3']) {
    t.match(at('fleet-images', { region: 'eu-west-1' }, { ...env, [name]: 'true' }), new RegExp(`^SDK: ${name}`));
  }
  t.equal(at('fleet-images', { region: 'eu-west-1' }, { ...env, AWS_USE_FIPS_ENDPOINT: 'false' }), 'https://fleet-images.s3.eu-west-1.amazonaws.com/ eu-west-1');
  const config = path.join(t.testdir(), 'aws-config');
  writeFileSync(config, '[profile fleet]\nregion = eu-west-1\nuse_fips_endpoint = true\n');
  t.match(at('fleet-images', { region: 'eu-west-1' }, { ...env, AWS_CONFIG_FILE: config }), /^SDK: .*aws-config sets use_fips_endpoint/, 'the shared config file moves S3: the SDK decides');
  writeFileSync(config, '[profile fleet]\nregion = eu-west-1\nrole_arn = arn:aws:iam::1:role/r\n');
  t.equal(at('fleet-images', { region: 'eu-west-1' }, { ...env, AWS_CONFIG_FILE: config }), 'https://fleet-images.s3.eu-west-1.amazonaws.com/ eu-west-1');
});

t.test('against s3rver: the same answers with and without the SDK; misses named as s3:// objects; a refused URL falls back to the SDK', async (t) => {
  const server = await startS3Server('upgrades');
  t.teardown(() => server.close());
  const base: SourceOptions = { endpoint: server.endpoint, region: 'us-east-1', retry: { retries: 1, baseDelayMs: 10, stallTimeoutMs: 2000 } };
  const url = `s3://${server.bucket}/fleet/stable`;
  const body = randomBytes(200_000);
  const target = openTarget(url, { ...base, forcePathStyle: true });
  await target.putBytes('releases/1.0/image.lz4', body);
  await target.putBytes('releases/1.0/manifest.json', Buffer.from('{"version":"1.0"}'));
  await target.close();

  // Path style: read here. Without it on an IP endpoint, only the SDK knows the answer (path style too).
  const direct = openSource(url, { ...base, forcePathStyle: true });
  const viaSdk = openSource(url, base);
  t.teardown(() => Promise.all([direct.close(), viaSdk.close()]));
  for (const [name, source, signed] of [['without the SDK', direct, 'query'], ['through the SDK', viaSdk, 'header']] as const) {
    const from = server.served.length;
    t.same(await source.get('releases/1.0/manifest.json'), Buffer.from('{"version":"1.0"}'), `${name}: get`);
    const info = await source.head('releases/1.0/image.lz4');
    t.equal(info.size, body.length, `${name}: head`);
    t.same(await source.range('releases/1.0/image.lz4', 1000, 150_000, info.etag), body.subarray(1000, 150_000), `${name}: range`);
    t.ok((await source.workerSpec!('releases/1.0/image.lz4'))?.url.includes('X-Amz-Signature='), `${name}: a worker URL`);
    const missing = await failure(source.get('releases/9.9/manifest.json'));
    t.equal(missing.code, 'NOT_FOUND', `${name}: a missing object`);
    t.match(missing.message, 's3://upgrades/fleet/stable/releases/9.9/manifest.json', `${name}: named as configured, not by its endpoint URL`);
    t.notMatch(missing.message, /X-Amz/);
    t.same([...new Set(server.served.slice(from).filter((q) => !q.range || q.range !== 'bytes=0-1').map((q) => q.signed))], [signed], `${name}: every read signed in the ${signed}`);
  }
  t.equal((await direct.head('releases/1.0/image.lz4')).etag, (await viaSdk.head('releases/1.0/image.lz4')).etag, 'the same ETag both ways (resume compares it)');

  // A bucket in another region answers URLs signed for this one with a redirect, which the SDK
  // follows (followRegionRedirects) and a plain GET does not: the first read falls back to the SDK,
  // and the SDK reads from then on.
  const redirected = openSource(url, { ...base, forcePathStyle: true, endpoint: await refusingPresignedProxy(t, server, 301) });
  t.teardown(() => redirected.close());
  const from = server.served.length;
  t.same(await redirected.get('releases/1.0/manifest.json'), Buffer.from('{"version":"1.0"}'), 'read through the SDK after the redirect');
  t.same(await redirected.range('releases/1.0/image.lz4', 0, 100), body.subarray(0, 100), 'and the next read too');
  t.same(server.served.slice(from).map((q) => q.signed), ['header', 'header'], 'only the SDK reached the store');
});

t.test('a refusal after reads have worked is that read\'s own failure, with what to check on S3', async (t) => {
  const server = await startS3Server('upgrades');
  t.teardown(() => server.close());
  const opts: SourceOptions = { endpoint: server.endpoint, forcePathStyle: true, region: 'us-east-1', retry: { retries: 1, baseDelayMs: 10, stallTimeoutMs: 2000 } };
  const url = `s3://${server.bucket}/fleet/stable`;
  const target = openTarget(url, opts);
  await target.putBytes('releases/1.0/manifest.json', Buffer.from('{}'));
  await target.putBytes('releases/2.0/manifest.json', Buffer.from('{}'));
  await target.close();
  // A bucket policy that denies one prefix (or an object that does not exist, to a role without s3:ListBucket).
  const endpoint = await refusingPresignedProxy(t, server, 403, (p) => p.includes('/releases/2.0/'));
  const source = openSource(url, { ...opts, endpoint });
  t.teardown(() => source.close());
  t.same(await source.get('releases/1.0/manifest.json'), Buffer.from('{}'));
  const from = server.served.length;
  const err = await failure(source.get('releases/2.0/manifest.json'));
  t.equal(err.code, 'NETWORK');
  t.match(err.message, 's3://upgrades/fleet/stable/releases/2.0/manifest.json refused access (HTTP 403)');
  t.match(err.hint ?? '', /AWS credentials in use.*s3:ListBucket/, 'what to check on S3, not user:password in a URL');
  t.same(server.served.slice(from), [], 'not asked again through the SDK');

  // A frame worker reads by the pre-signed URL alone, and says the same.
  const spec = (await source.workerSpec!('releases/2.0/manifest.json'))!;
  const worker = openSpec(spec);
  t.teardown(() => worker.close());
  const inWorker = await failure(worker.range('releases/2.0/manifest.json', 0, 2));
  t.match(inWorker.message, 's3://upgrades/fleet/stable/releases/2.0/manifest.json refused access (HTTP 403)', 'a worker names the object too');
  t.notMatch(inWorker.message, /X-Amz|127\.0\.0\.1/, 'not its signed URL');
  t.match(inWorker.hint ?? '', /AWS credentials in use/);
});
