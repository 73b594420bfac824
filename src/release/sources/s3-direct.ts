import { HttpSource } from './http.js';
import { openSpec } from './index.js';
import { encodeKey, keySegments } from './keys.js';
import { resolvePolicy } from './retry.js';
import { presignS3, type AwsCredentials } from './s3-sigv4.js';
import type { DirectEndpoint } from './s3-endpoint.js';
import type { ObjectInfo, RetryPolicy, SourceOptions, SourceSpec } from './source.js';

/**
 * How long a pre-signed URL handed to the frame workers is valid. Short, because it grants reading the
 * object to whoever holds it (it never leaves this process and is never printed); a fresh one is made
 * once half of this is gone, so a slow (max_rate) download keeps going.
 */
export const SIGNED_LIFETIME_MS = 15 * 60 * 1000;
export const S3_REFUSED_HINT =
  'check the AWS credentials in use (AWS_PROFILE, environment, instance role), the bucket policy and [source] region; ' +
  'without s3:ListBucket, S3 answers 403 rather than 404 for an object that does not exist';
/** A URL signed for one request of this thread: used at once, so it need not live long. */
const REQUEST_LIFETIME_S = 5 * 60;

/**
 * Reads of an S3 bucket without @aws-sdk/client-s3: each request goes to a URL pre-signed here
 * (s3-sigv4.ts) at the endpoint s3-endpoint.ts worked out, with credentials from the SDK's own
 * default chain (@aws-sdk/credential-provider-node: environment, profile, SSO, web identity, ECS,
 * instance role), through the same HttpSource (range-socket.ts) as an HTTPS release. ~30 ms of
 * start-up where the client takes ~130 ms before its first answer; s3-lazy.ts falls back to the
 * client when a read here fails before one has worked. Messages name objects as s3://bucket/key.
 */
export class S3Direct {
  private readonly http: HttpSource;
  private readonly policy: RetryPolicy;
  private provider: Promise<() => Promise<AwsCredentials>> | undefined;
  readonly workerSpecs = new RenewingSpecs((key) => this.sign(key));

  constructor(
    private readonly endpoint: DirectEndpoint,
    /** The s3://bucket/prefix form of `endpoint.base` + prefix, for messages. */
    private readonly shownBase: string,
    private readonly prefixBase: URL,
    private readonly opts: SourceOptions,
  ) {
    this.policy = resolvePolicy(opts.retry);
    this.http = new HttpSource(prefixBase, opts, undefined, {
      sign: async (method, url) => this.signed(method, url, REQUEST_LIFETIME_S, await this.credentials()),
      shownBase: `${shownBase}/`,
      refusedHint: S3_REFUSED_HINT,
    });
  }

  get(key: string): Promise<Buffer> {
    return this.http.get(key);
  }

  head(key: string): Promise<ObjectInfo> {
    return this.http.head(key);
  }

  range(key: string, start: number, end: number, etag?: string, into?: Buffer): Promise<Buffer> {
    return this.http.range(key, start, end, etag, into);
  }

  /** Two bytes of `key` through a fresh worker URL: what a worker will do, tried before relying on it. */
  async tryWorkerUrl(key: string): Promise<SourceSpec> {
    const spec = (await this.workerSpecs.get(key))!;
    await probeWorkerUrl(spec);
    return spec;
  }

  async close(): Promise<void> {
    await this.http.close();
  }

  private async sign(key: string): Promise<SourceSpec> {
    const signedAt = Date.now();
    const credentials = await this.credentials();
    const url = this.signed('GET', new URL(encodeKey(key), this.prefixBase), SIGNED_LIFETIME_MS / 1000, credentials, signedAt);
    // Signed with temporary credentials, a URL stops working when they expire, whatever it says.
    const expiresAt = Math.min(signedAt + SIGNED_LIFETIME_MS, credentials.expiration?.getTime() ?? Infinity);
    const store = { shownBase: `${this.shownBase}/${keySegments(key).join('/')}`, refusedHint: S3_REFUSED_HINT };
    return { url: url.href, opts: { retry: this.policy, ca: this.opts.ca }, signedKey: key, signedAt, expiresAt, store };
  }

  private signed(method: 'GET' | 'HEAD', url: URL, seconds: number, credentials: AwsCredentials, now = Date.now()): URL {
    return presignS3({ method, url, region: this.endpoint.region, credentials, expiresSeconds: seconds, now: new Date(now) });
  }

  /** The SDK's default credential chain, memoized and refreshed by itself before expiry. */
  private async credentials(): Promise<AwsCredentials> {
    this.provider ??= import('@aws-sdk/credential-provider-node').then((m) => m.defaultProvider());
    return (await this.provider)();
  }
}

/** Two bytes of a worker spec's object through its pre-signed URL, as a worker would read it (`opts`: the spec's own by default). */
export async function probeWorkerUrl(spec: SourceSpec, opts: SourceOptions = spec.opts): Promise<void> {
  const probe = openSpec({ ...spec, opts });
  try {
    // Not bytes=0-0: s3rver answers that with the whole object.
    await probe.range(spec.signedKey!, 0, 2, undefined, Buffer.alloc(2));
  } finally {
    await probe.close();
  }
}

/**
 * Per key: its current worker spec, being made or made. Concurrent callers share one signing; a new
 * one is made once half of the old one's life is gone. Undefined specs (the URL does not work here)
 * are kept: the caller reads another way for good.
 */
export class RenewingSpecs {
  private readonly specs = new Map<string, Promise<SourceSpec | undefined>>();

  constructor(private readonly make: (key: string) => Promise<SourceSpec | undefined>) {}

  async get(key: string): Promise<SourceSpec | undefined> {
    const cached = this.specs.get(key);
    if (cached) {
      const spec = await cached;
      if (!spec || spec.expiresAt! - Date.now() > (spec.expiresAt! - spec.signedAt!) / 2) return spec;
      if (this.specs.get(key) !== cached) return this.get(key);
    }
    const made = this.make(key);
    this.specs.set(key, made);
    made.catch(() => this.specs.delete(key));
    return made;
  }
}
