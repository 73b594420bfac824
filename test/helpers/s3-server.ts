import { promises as fs } from 'node:fs';
import type { IncomingMessage, Server } from 'node:http';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { makePublisher, type Publisher } from './release-fixture.js';

/**
 * s3rver (an S3-protocol server on the local filesystem) on 127.0.0.1, port 0, in a fresh temporary
 * directory with one bucket. Known s3rver gaps (FACTS.md): If-Match is ignored, suffix ranges are off
 * by one, SigV4 signatures are not verified (only the access key id), multipart objects get a plain
 * MD5 ETag, and close() waits for clients' keep-alive sockets, so close() here cuts them first.
 */

interface S3rverInstance {
  run(): Promise<{ address: string; port: number }>;
  close(): Promise<void>;
  httpServer?: Server;
}
type S3rverClass = new (opts: Record<string, unknown>) => S3rverInstance;

// s3rver is CommonJS without type declarations.
const S3rver = createRequire(import.meta.url)('s3rver') as S3rverClass;

/** The fixed credentials s3rver verifies signatures with. */
export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;

export interface TestS3Server {
  /** `http://127.0.0.1:PORT` */
  endpoint: string;
  bucket: string;
  /** Where s3rver keeps objects (to inspect what was stored). */
  directory: string;
  /** `METHOD /path?query` of every request, e.g. to see multipart parts go by. */
  requests: string[];
  /** The same requests with their Range header and how each was signed (Authorization header: the SDK; query: a pre-signed URL). */
  served: Array<{ method: string; path: string; range: string | undefined; signed: 'header' | 'query' | 'none' }>;
  close(): Promise<void>;
}

/**
 * Point the AWS SDK's default credential chain at s3rver's keys, and make sure it never falls
 * through to the EC2 metadata address (tests contact 127.0.0.1 only).
 */
export function useS3rverCredentials(): void {
  process.env.AWS_ACCESS_KEY_ID = S3RVER_CREDENTIALS.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = S3RVER_CREDENTIALS.secretAccessKey;
  delete process.env.AWS_SESSION_TOKEN;
  delete process.env.AWS_PROFILE;
  process.env.AWS_EC2_METADATA_DISABLED = 'true';
  process.env.AWS_REGION = 'us-east-1';
  // The SDK's notice about Node 22 would clutter every test's output.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
}

export async function startS3Server(bucket = 'releases'): Promise<TestS3Server> {
  const directory = await fs.mkdtemp(path.join(os.tmpdir(), 'upgradectl-s3rver-'));
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: true,
    directory,
    configureBuckets: [{ name: bucket }],
  });
  const { port } = await server.run();
  const requests: string[] = [];
  const served: TestS3Server['served'] = [];
  server.httpServer?.on('request', (req: IncomingMessage) => {
    requests.push(`${req.method ?? ''} ${req.url ?? ''}`);
    const url = new URL(req.url ?? '/', 'http://s3rver');
    const signed = req.headers.authorization ? 'header' : url.searchParams.has('X-Amz-Signature') ? 'query' : 'none';
    served.push({ method: req.method ?? '', path: url.pathname, range: req.headers.range, signed });
  });
  let closing: Promise<void> | undefined;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    bucket,
    directory,
    requests,
    served,
    /** Idempotent: a test may stop the server early and its teardown stop it again. */
    close: () => {
      closing ??= (async () => {
        server.httpServer?.closeAllConnections();
        await server.close();
        await fs.rm(directory, { recursive: true, force: true });
      })();
      return closing;
    },
  };
}

/**
 * A fleet on s3rver: the SDK pointed at it, a publisher writing to s3://BUCKET/fleet, what `publish`
 * needs to reach it, and the [source] lines (after url) a machine needs. Stopped at the test's end.
 */
export async function s3Fleet(t: { teardown(fn: () => unknown): void }, dir: string): Promise<{ s3: TestS3Server; pub: Publisher; url: string; publishArgs: string[]; sourceConfig: string }> {
  useS3rverCredentials();
  const s3 = await startS3Server('releases');
  t.teardown(() => s3.close());
  const url = `s3://${s3.bucket}/fleet`;
  const pub = await makePublisher(dir, url);
  return {
    s3, pub, url,
    publishArgs: ['--endpoint', s3.endpoint, '--path-style', '--region', 'us-east-1'],
    sourceConfig: `endpoint = ${s3.endpoint}\nforce_path_style = true\nregion = us-east-1\n`,
  };
}

/**
 * An endpoint in front of `s3` that answers every query-signed (pre-signed) request itself with
 * `status` and passes the rest (the SDK's header-signed requests) through: a bucket in another region
 * (301), a proxy or bucket policy refusing query signatures (403); with `only`, just the requests
 * whose path and query it accepts. Returns its `http://127.0.0.1:PORT`.
 */
export async function refusingPresignedProxy(t: { teardown(fn: () => unknown): void }, s3: TestS3Server, status: 301 | 403, only: (path: string) => boolean = () => true): Promise<string> {
  const { createServer, request } = await import('node:http');
  const upstream = new URL(s3.endpoint);
  const proxy = createServer((req, res) => {
    if (req.url?.includes('X-Amz-Signature=') && only(req.url)) {
      const code = status === 301 ? 'PermanentRedirect' : 'AccessDenied';
      const headers = status === 301 ? { location: `https://${s3.bucket}.s3.eu-north-1.amazonaws.com/` } : {};
      res.writeHead(status, headers).end(`<Error><Code>${code}</Code></Error>`);
      return;
    }
    const fwd = request({ host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    req.pipe(fwd);
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        proxy.closeAllConnections();
        proxy.close(() => resolve());
      }),
  );
  return `http://127.0.0.1:${(proxy.address() as { port: number }).port}`;
}
