import { createReadStream, promises as fs } from 'node:fs';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand, S3Client, type GetObjectCommandOutput } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { UpgradeError, errnoOf, messageOf } from '../../core/errors.js';
import { asBuffers, byteWindow, collect } from './body.js';
import { checkRange, keySegments, metadataCap, metadataTooLarge, rangeTooLong } from './keys.js';
import { Retrier, resolvePolicy, resumingStream, withRetry, type OpenedBody } from './retry.js';
import { S3_REQUEST_BYTES, refusePlainHttp, type ObjectInfo, type RetryPolicy, type Source, type SourceOptions, type SourceSpec, type Target } from './source.js';
import { presignGet } from './s3-presign.js';
import { s3Location } from './s3-endpoint.js';
import { RenewingSpecs, S3_REFUSED_HINT, SIGNED_LIFETIME_MS, probeWorkerUrl } from './s3-direct.js';
import { log } from '../../core/log.js';

const PART_SIZE = 16 * 1024 * 1024;
const RETRY_HINT = 'check the network and the S3 endpoint ([source] endpoint, region), then run the command again';

/**
 * Releases in S3 or an S3-compatible store (s3://bucket/prefix). Credentials come from the SDK's
 * default chain (environment, profile, instance role). Retries are split in two: the SDK retries each
 * request up to the policy's attempts (including every multipart part), and our Retrier resumes
 * bodies that drop or stall after the SDK has handed them over.
 */
export class S3Store implements Source, Target {
  readonly url: string;
  readonly requestBytes = S3_REQUEST_BYTES;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly policy: RetryPolicy;
  private readonly client: S3Client;
  /** [source] ca_file, for the workers' pre-signed GETs as for the SDK's own requests. */
  private readonly ca: string | undefined;

  constructor(url: URL, opts: SourceOptions = {}) {
    ({ bucket: this.bucket, prefix: this.prefix, shown: this.url } = s3Location(url));
    if (this.bucket === '') {
      throw new UpgradeError('USAGE', `no bucket in ${url.href}`, { hint: 'write an S3 source as s3://BUCKET/PREFIX' });
    }
    this.policy = resolvePolicy(opts.retry);
    this.ca = opts.ca;
    if (opts.endpoint) refusePlainHttp(new URL(opts.endpoint), `the S3 endpoint ${opts.endpoint} ([source] endpoint)`);
    this.client = new S3Client({
      region: opts.region,
      endpoint: opts.endpoint,
      forcePathStyle: opts.forcePathStyle,
      followRegionRedirects: true,
      maxAttempts: this.policy.retries + 1,
      // Default (WHEN_SUPPORTED) checksums make a streamed PutObject send aws-chunked framing,
      // which S3-compatible stores (s3rver, older MinIO/Ceph) store verbatim inside the object.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: {
        connectionTimeout: this.policy.stallTimeoutMs,
        // Socket inactivity, during headers and body alike: the stall detector.
        socketTimeout: this.policy.stallTimeoutMs,
        // Only with [source] ca_file: the SDK's own agent otherwise (keep-alive, node's CA store).
        ...(opts.ca ? { httpsAgent: { ca: opts.ca, keepAlive: true } } : {}),
      },
    });
  }

  async get(key: string): Promise<Buffer> {
    const objectKey = this.keyOf(key);
    return withRetry(
      async () => {
        const out = await this.getObject(objectKey, undefined, undefined);
        return collect(asBuffers(bodyOf(out)), metadataCap(key).bytes, () => metadataTooLarge(this.shown(objectKey), key));
      },
      this.policy,
      `GET ${this.shown(objectKey)}`,
      RETRY_HINT,
    );
  }

  async head(key: string): Promise<ObjectInfo> {
    const objectKey = this.keyOf(key);
    return this.headObject(objectKey);
  }

  /** Per key: its current pre-signed URL (or undefined: such URLs do not work here). */
  private readonly signed = new RenewingSpecs((key) => this.sign(key));

  /**
   * A pre-signed GET of `key`: the frame workers fetch its ranges as plain HTTP(S) (sources/http.ts).
   * Undefined when such a URL does not work here (see `tryUrl`): the caller then reads through the SDK.
   */
  workerSpec(key: string): Promise<SourceSpec | undefined> {
    return this.signed.get(key);
  }

  private async sign(key: string): Promise<SourceSpec | undefined> {
    const objectKey = this.keyOf(key);
    const signedAt = Date.now();
    const url = await this.presignedUrl(key, SIGNED_LIFETIME_MS / 1000);
    // A URL made with temporary credentials (an instance role's, STS) stops working when they expire,
    // whatever X-Amz-Expires says: its life is the shorter of the two, and it is renewed at half of
    // that (the SDK hands out fresh credentials well before the old ones expire).
    const credentialsExpire = (await this.credentialsExpiry()) ?? Infinity;
    const expiresAt = Math.min(signedAt + SIGNED_LIFETIME_MS, credentialsExpire);
    const store = { shownBase: this.shown(objectKey), refusedHint: S3_REFUSED_HINT };
    const spec: SourceSpec = { url, opts: { retry: this.policy, ca: this.ca }, signedKey: key, signedAt, expiresAt, store };
    return (await this.tryUrl(spec, objectKey)) ? spec : undefined;
  }

  /**
   * Two bytes through a fresh pre-signed URL before the workers rely on it. The URL is signed for the
   * configured region and endpoint; a bucket in another region answers it with a redirect that the
   * SDK follows (followRegionRedirects) and a plain GET does not, and a proxy or policy may refuse
   * query-signed requests. Then the ranges go through the SDK, as they did before workers fetched.
   */
  private async tryUrl(spec: SourceSpec, objectKey: string): Promise<boolean> {
    try {
      await probeWorkerUrl(spec, { ...spec.opts, retry: { ...this.policy, retries: 0 } });
      return true;
    } catch (err) {
      log.warn(`${this.shown(objectKey)} cannot be read through a pre-signed URL (${messageOf(err)}); reading its frames through the S3 SDK on one thread instead`);
      return false;
    }
  }

  /** When the credentials in use expire (ms since the epoch); undefined for long-lived keys. */
  private async credentialsExpiry(): Promise<number | undefined> {
    try {
      const credentials = await this.client.config.credentials();
      return credentials.expiration?.getTime();
    } catch {
      return undefined;
    }
  }

  /**
   * A pre-signed GET URL of `key`, valid for `seconds` or until the credentials that signed it expire
   * (an instance role's: a few hours), whichever is first. A bearer token for that one object.
   */
  async presignedUrl(key: string, seconds: number): Promise<string> {
    const objectKey = this.keyOf(key);
    try {
      return await presignGet(this.client, this.bucket, objectKey, seconds);
    } catch (err) {
      throw this.mapError(err, 'GET', objectKey);
    }
  }

  async range(key: string, start: number, end: number, etag?: string): Promise<Buffer> {
    const objectKey = this.keyOf(key);
    checkRange(this.shown(objectKey), start, end);
    if (start === end) return Buffer.alloc(0);
    return withRetry(
      async () => {
        const out = await this.getObject(objectKey, `bytes=${start}-${end - 1}`, etag);
        const bytes = await collect(this.positioned(out, objectKey, start, end), end - start, () => rangeTooLong(this.shown(objectKey), start, end));
        if (bytes.length < end - start) throw this.shorter(objectKey, start + bytes.length, end);
        return bytes;
      },
      this.policy,
      `GET ${this.shown(objectKey)} bytes ${start}-${end - 1}`,
      RETRY_HINT,
    );
  }

  stream(key: string, start: number, etag?: string): AsyncIterable<Buffer> {
    const objectKey = this.keyOf(key);
    checkRange(this.shown(objectKey), start);
    const retrier = new Retrier(this.policy, `GET ${this.shown(objectKey)}`, RETRY_HINT);
    return resumingStream((position, pinned) => this.openAt(objectKey, position, pinned), start, etag, retrier);
  }

  async putBytes(key: string, body: Uint8Array): Promise<void> {
    const objectKey = this.keyOf(key);
    try {
      await this.client.send(
        new PutObjectCommand({ Bucket: this.bucket, Key: objectKey, Body: body, ContentLength: body.byteLength }),
      );
    } catch (err) {
      throw this.mapError(err, 'PUT', objectKey);
    }
  }

  /** Multipart (16 MiB parts, two in flight) above one part; a single PutObject below. */
  async putFile(key: string, file: string): Promise<void> {
    const objectKey = this.keyOf(key);
    const st = await fs.stat(file).catch((err: unknown) => {
      if (errnoOf(err) === 'ENOENT') {
        throw new UpgradeError('NOT_FOUND', `${file} does not exist`, { hint: 'check the path of the file to upload' });
      }
      throw err;
    });
    if (!st.isFile()) throw new UpgradeError('USAGE', `${file} is not a regular file`, { hint: 'upload a file, not a directory' });
    const upload = new Upload({
      client: this.client,
      params: { Bucket: this.bucket, Key: objectKey, Body: createReadStream(file), ContentLength: st.size },
      partSize: PART_SIZE,
      queueSize: 2,
      leavePartsOnError: false,
    });
    try {
      await upload.done();
    } catch (err) {
      throw this.mapError(err, 'PUT', objectKey);
    }
  }

  async close(): Promise<void> {
    // Destroys the keep-alive sockets; servers (s3rver included) cannot finish closing before that.
    this.client.destroy();
  }

  private keyOf(key: string): string {
    const relative = keySegments(key).join('/');
    return this.prefix === '' ? relative : `${this.prefix}/${relative}`;
  }

  private shown(objectKey: string): string {
    return `s3://${this.bucket}/${objectKey}`;
  }

  private async getObject(objectKey: string, range: string | undefined, etag: string | undefined): Promise<GetObjectCommandOutput> {
    let out: GetObjectCommandOutput;
    try {
      out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: objectKey, Range: range, IfMatch: etag }));
    } catch (err) {
      throw this.mapError(err, 'GET', objectKey);
    }
    // s3rver and some S3-compatible stores ignore If-Match; compare ourselves so versions never mix.
    if (etag !== undefined && out.ETag !== undefined && out.ETag !== etag) {
      bodyOf(out).destroy?.();
      throw this.changed(objectKey, etag, out.ETag);
    }
    return out;
  }

  private async openAt(objectKey: string, start: number, etag: string | undefined): Promise<OpenedBody> {
    try {
      const out = await this.getObject(objectKey, start > 0 ? `bytes=${start}-` : undefined, etag);
      return { chunks: this.positioned(out, objectKey, start, undefined), etag: out.ETag ?? etag };
    } catch (err) {
      if (start > 0 && err instanceof UpgradeError && err.code === 'CHANGED') {
        // A resume from exactly the end (416 from S3) is a finished download, not a change.
        const info = await this.headObject(objectKey);
        if (info.size === start && (etag === undefined || info.etag === etag)) return { chunks: asBuffers(none()), etag };
      }
      throw err;
    }
  }

  private async headObject(objectKey: string): Promise<ObjectInfo> {
    try {
      const out = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: objectKey }));
      return { size: out.ContentLength ?? 0, etag: out.ETag };
    } catch (err) {
      throw this.mapError(err, 'HEAD', objectKey);
    }
  }

  /**
   * The body of a GetObject asked from `start` (to `end`, exclusive), positioned exactly at `start`:
   * a 200 to a range carries the object from byte 0 and is skipped forward, never taken as the range.
   */
  private positioned(out: GetObjectCommandOutput, objectKey: string, start: number, end: number | undefined): AsyncIterable<Buffer> {
    const body = bodyOf(out);
    const limit = end === undefined ? Infinity : end - start;
    const ranged = start > 0 || end !== undefined;
    if (!ranged || out.ContentRange === undefined) return byteWindow(asBuffers(body), ranged ? start : 0, limit);
    const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(out.ContentRange);
    const total = m?.[3] === undefined || m[3] === '*' ? undefined : Number(m[3]);
    const shortEnd = end !== undefined && m !== null && Number(m[2]) !== end - 1;
    if (m === null || Number(m[1]) !== start || (shortEnd && (total === undefined || total >= end))) {
      body.destroy?.();
      throw new UpgradeError('NETWORK', `${this.shown(objectKey)} answered a range from byte ${start} with Content-Range ${out.ContentRange}`, {
        hint: 'the S3 endpoint mangles range requests; use another endpoint',
      });
    }
    // Content-Range matched: the body is exactly the range, read it to its end to keep the connection.
    return asBuffers(body);
  }

  private changed(objectKey: string, expected: string, actual: string): UpgradeError {
    return new UpgradeError('CHANGED', `${this.shown(objectKey)} changed: ETag ${actual}, expected ${expected}`, {
      hint: 'the release was re-published while downloading; run the command again to start over',
    });
  }

  private shorter(objectKey: string, size: number, wanted: number): UpgradeError {
    return new UpgradeError('CHANGED', `${this.shown(objectKey)} has only ${size} bytes, ${wanted} were expected`, {
      hint: 'the object was truncated or replaced by another version; run the command again to start over',
    });
  }

  /**
   * An error of `client.send`. The SDK has already retried what it considers transient, so
   * everything here is final: NOT_FOUND, CHANGED, or NETWORK/CONFIG with what to check.
   */
  private mapError(err: unknown, verb: string, objectKey: string): UpgradeError {
    if (err instanceof UpgradeError) return err;
    const shown = this.shown(objectKey);
    const name = err instanceof Error ? err.name : '';
    const meta = (err as { $metadata?: { httpStatusCode?: number; attempts?: number } } | undefined)?.$metadata;
    const status = meta?.httpStatusCode;
    if (name === 'NoSuchBucket') {
      return new UpgradeError('NOT_FOUND', `bucket ${this.bucket} does not exist (${shown})`, {
        hint: 'check the bucket in [source] url, and [source] endpoint/region',
        cause: err,
      });
    }
    if (name === 'NoSuchKey' || name === 'NotFound' || status === 404) {
      return new UpgradeError('NOT_FOUND', `${shown} does not exist`, {
        hint: 'check [source] url and that the release was published there',
        cause: err,
      });
    }
    if (name === 'PreconditionFailed' || status === 412) {
      return new UpgradeError('CHANGED', `${shown} changed: it no longer matches the expected ETag`, {
        hint: 'the release was re-published while downloading; run the command again to start over',
        cause: err,
      });
    }
    if (name === 'InvalidRange' || status === 416) {
      return new UpgradeError('CHANGED', `${shown} is shorter than the range asked`, {
        hint: 'the object was truncated or replaced by another version; run the command again to start over',
        cause: err,
      });
    }
    if (name === 'CredentialsProviderError') {
      return new UpgradeError('CONFIG', `no AWS credentials found for ${shown}: ${messageOf(err)}`, {
        hint: 'provide credentials the AWS SDK finds: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role',
        cause: err,
      });
    }
    if (/region is missing/i.test(messageOf(err))) {
      return new UpgradeError('CONFIG', `no AWS region configured for ${shown}`, {
        hint: 'set region = … in the [source] section of upgradectl.conf, or AWS_REGION',
        cause: err,
      });
    }
    if (status === 401 || status === 403) {
      return new UpgradeError('NETWORK', `${verb} ${shown} refused: ${name} (HTTP ${status})`, {
        hint: S3_REFUSED_HINT,
        cause: err,
      });
    }
    const attempts = meta?.attempts ?? 1;
    return new UpgradeError(
      'NETWORK',
      `${verb} ${shown} failed after ${attempts} attempt${attempts === 1 ? '' : 's'}; last error: ${name ? `${name}: ` : ''}${messageOf(err)}`,
      { hint: RETRY_HINT, cause: err },
    );
  }
}

type NodeBody = AsyncIterable<Uint8Array> & { destroy?: () => void };

/** In Node the SDK's GetObject body is an IncomingMessage: an async iterable we can destroy. */
function bodyOf(out: GetObjectCommandOutput): NodeBody {
  if (out.Body === undefined) return none();
  return out.Body as unknown as NodeBody;
}

async function* none(): AsyncGenerator<Uint8Array> {}
