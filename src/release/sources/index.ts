import { UpgradeError } from '../../core/errors.js';
import { FileStore } from './file.js';
import { HttpSource } from './http.js';
import { S3_REQUEST_BYTES, type ObjectInfo, type Source, type SourceOptions, type SourceSpec, type Target } from './source.js';
import type { S3Store } from './s3.js';

export type { ObjectInfo, RetryPolicy, Source, SourceOptions, SourceSpec, Target } from './source.js';
export { DEFAULT_RETRY } from './source.js';

const SOURCE_FORMS = 's3://BUCKET/PREFIX, https://HOST/PREFIX, http://127.0.0.1/PREFIX (loopback only) or file:///DIR';
const TARGET_FORMS = 's3://BUCKET/PREFIX or file:///DIR';

/** Where releases are read from, chosen by the URL's scheme. Nothing is contacted until the first call. */
export function openSource(url: string, opts: SourceOptions = {}): Source {
  const parsed = parseUrl(url, SOURCE_FORMS);
  switch (parsed.protocol) {
    case 'file:':
      return new FileStore(parsed);
    case 'http:':
    case 'https:':
      return new HttpSource(parsed, opts);
    case 's3:':
      return new LazyS3(parsed, opts);
    default:
      throw unknownScheme(parsed, SOURCE_FORMS);
  }
}

/**
 * A source opened again in another thread from its `workerSpec`. A pre-signed S3 object is plain
 * HTTP(S): the worker needs neither the SDK (~27 MB and its start-up per thread) nor credentials.
 */
export function openSpec(spec: SourceSpec): Source {
  if (spec.signedKey !== undefined) return new HttpSource(parseUrl(spec.url, SOURCE_FORMS), spec.opts, spec.signedKey);
  return openSource(spec.url, spec.opts);
}

/** Where `publish` writes releases. HTTP servers are read-only to us: publish to their backing store. */
export function openTarget(url: string, opts: SourceOptions = {}): Target {
  const parsed = parseUrl(url, TARGET_FORMS);
  switch (parsed.protocol) {
    case 'file:':
      return new FileStore(parsed);
    case 's3:':
      return new LazyS3(parsed, opts);
    case 'http:':
    case 'https:':
      throw new UpgradeError('USAGE', `cannot publish to ${redact(parsed)}: HTTP sources are read-only`, {
        hint: `publish to the directory or bucket the web server serves (${TARGET_FORMS})`,
      });
    default:
      throw unknownScheme(parsed, TARGET_FORMS);
  }
}

function parseUrl(url: string, forms: string): URL {
  try {
    return new URL(url);
  } catch (err) {
    throw new UpgradeError('USAGE', `"${url}" is not a URL`, {
      hint: `write the release location as ${forms}${url.startsWith('/') ? ` (here: file://${url})` : ''}`,
      cause: err,
    });
  }
}

function unknownScheme(parsed: URL, forms: string): UpgradeError {
  return new UpgradeError('USAGE', `unsupported URL scheme "${parsed.protocol}" in ${redact(parsed)}`, {
    hint: `write the release location as ${forms}`,
  });
}

/** Never echo a password from a URL into a message. */
function redact(url: URL): string {
  if (url.password === '') return url.href;
  const shown = new URL(url.href);
  shown.password = '***';
  return shown.href;
}

/**
 * The AWS SDK costs ~27 MB of memory and a noticeable start-up: load it only for s3:// URLs, on the
 * first call, so HTTP and file machines stay within prepare's memory budget.
 */
class LazyS3 implements Source, Target {
  readonly url: string;
  readonly requestBytes = S3_REQUEST_BYTES;
  private store: Promise<S3Store> | undefined;

  constructor(
    private readonly parsed: URL,
    private readonly opts: SourceOptions,
  ) {
    this.url = `s3://${parsed.host}${parsed.pathname.replace(/\/+$/, '')}`;
  }

  private load(): Promise<S3Store> {
    this.store ??= import('./s3.js').then((m) => new m.S3Store(this.parsed, this.opts));
    return this.store;
  }

  async get(key: string): Promise<Buffer> {
    return (await this.load()).get(key);
  }
  async head(key: string): Promise<ObjectInfo> {
    return (await this.load()).head(key);
  }
  async workerSpec(key: string): Promise<SourceSpec | undefined> {
    return (await this.load()).workerSpec(key);
  }
  async presignedUrl(key: string, seconds: number): Promise<string> {
    return (await this.load()).presignedUrl(key, seconds);
  }
  async range(key: string, start: number, end: number, etag?: string): Promise<Buffer> {
    return (await this.load()).range(key, start, end, etag);
  }
  async *stream(key: string, start: number, etag?: string): AsyncIterable<Buffer> {
    yield* (await this.load()).stream(key, start, etag);
  }
  async putBytes(key: string, body: Uint8Array): Promise<void> {
    return (await this.load()).putBytes(key, body);
  }
  async putFile(key: string, file: string): Promise<void> {
    return (await this.load()).putFile(key, file);
  }
  async close(): Promise<void> {
    if (this.store) await (await this.store).close();
  }
}
