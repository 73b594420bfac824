import { createHash, createHmac } from 'node:crypto';

/** What signs a request: an access key pair, with a session token for temporary (role, STS) credentials. */
export interface AwsCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
  expiration?: Date;
}

export interface PresignRequest {
  method: 'GET' | 'HEAD';
  /** The object's URL (path percent-encoded in any valid way, no query). */
  url: URL;
  region: string;
  credentials: AwsCredentials;
  /** Valid from `now` for this many seconds (S3 accepts 1 … 604800). */
  expiresSeconds: number;
  now: Date;
}

/**
 * AWS Signature Version 4 in the query string ("presigning"), S3 flavour: only `host` is signed and
 * the payload hash is UNSIGNED-PAYLOAD, so the one URL serves any Range and If-Match its holder adds.
 * The algorithm and its worked example: https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html
 * (test/release/s3-sigv4.test.ts checks that example and compares with the SDK's own signer).
 * Written here so that reading a release needs no SDK: @aws-sdk/client-s3 takes ~100 ms to load.
 */
export function presignS3(req: PresignRequest): URL {
  const stamp = req.now.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
  const day = stamp.slice(0, 8);
  const scope = `${day}/${req.region}/s3/aws4_request`;
  const query: [string, string][] = [
    ['X-Amz-Algorithm', 'AWS4-HMAC-SHA256'],
    ['X-Amz-Credential', `${req.credentials.accessKeyId}/${scope}`],
    ['X-Amz-Date', stamp],
    ['X-Amz-Expires', String(req.expiresSeconds)],
    ['X-Amz-SignedHeaders', 'host'],
  ];
  // S3 wants the session token inside what is signed (some services want it appended after).
  if (req.credentials.sessionToken) query.push(['X-Amz-Security-Token', req.credentials.sessionToken]);
  const canonicalQuery = query
    .map(([k, v]) => [uriEncode(k), uriEncode(v)] as const)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
  // The path goes out exactly as signed: each segment in SigV4's own encoding (encodeURIComponent
  // leaves !'()* alone, which S3 would encode before comparing).
  const path = req.url.pathname.split('/').map((s) => uriEncode(decodeURIComponent(s))).join('/');
  const canonicalRequest = [req.method, path, canonicalQuery, `host:${req.url.host}`, '', 'host', 'UNSIGNED-PAYLOAD'].join('\n');
  const stringToSign = ['AWS4-HMAC-SHA256', stamp, scope, sha256Hex(canonicalRequest)].join('\n');
  let key: Buffer = hmac(`AWS4${req.credentials.secretAccessKey}`, day);
  for (const part of [req.region, 's3', 'aws4_request']) key = hmac(key, part);
  const signature = createHmac('sha256', key).update(stringToSign).digest('hex');
  const signed = new URL(req.url.href);
  signed.pathname = path;
  signed.search = `${canonicalQuery}&X-Amz-Signature=${signature}`;
  return signed;
}

/** SigV4's URI encoding: everything but A-Z a-z 0-9 - _ . ~ as %XX of its UTF-8 bytes. */
function uriEncode(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function hmac(key: string | Buffer, data: string): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

function sha256Hex(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}
