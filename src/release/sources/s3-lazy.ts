import { log } from '../../core/log.js';
import { messageOf } from '../../core/errors.js';
import { S3Direct } from './s3-direct.js';
import { directEndpoint, s3Location } from './s3-endpoint.js';
import { S3_REQUEST_BYTES, type ObjectInfo, type Source, type SourceOptions, type SourceSpec, type Target } from './source.js';
import type { S3Store } from './s3.js';

/**
 * An s3:// source or target. The AWS SDK costs ~27 MB of memory and ~130 ms before its first answer,
 * so reads go without it where the endpoint is plain (s3-endpoint.ts, s3-direct.ts) and the SDK is
 * loaded only for what needs it: uploads, the RAM flasher's URL, streamed payloads, and every read
 * once a read without it has failed before any succeeded (a region redirect, a store that refuses
 * query signing, a rule the SDK knows and s3-endpoint.ts does not). After one has worked, a failed
 * read is that read's own failure and is reported as such.
 */
export class LazyS3 implements Source, Target {
  readonly url: string;
  readonly requestBytes = S3_REQUEST_BYTES;
  private store: Promise<S3Store> | undefined;
  private direct: S3Direct | undefined;
  private directWorked = false;

  constructor(
    private readonly parsed: URL,
    private readonly opts: SourceOptions,
  ) {
    const { bucket, prefix, shown } = s3Location(parsed);
    this.url = shown;
    const where = bucket === '' ? { sdk: 'no bucket' } : directEndpoint(bucket, opts);
    if ('sdk' in where) {
      log.debug(`${this.url}: read through the AWS SDK (${where.sdk})`);
      return;
    }
    const prefixBase = new URL(prefix === '' ? '' : `${prefix.split('/').map(encodeURIComponent).join('/')}/`, where.base);
    this.direct = new S3Direct(where, shown, prefixBase, opts);
  }

  private load(): Promise<S3Store> {
    this.store ??= import('./s3.js').then((m) => new m.S3Store(this.parsed, this.opts));
    return this.store;
  }

  /** `op` without the SDK while that works, else through it. */
  private async read<T>(direct: (d: S3Direct) => Promise<T>, sdk: (s: S3Store) => Promise<T>): Promise<T> {
    const d = this.direct;
    if (d) {
      try {
        const value = await direct(d);
        this.directWorked = true;
        return value;
      } catch (err) {
        if (this.directWorked) throw err;
        if (this.direct === d) {
          this.direct = undefined;
          log.debug(`${this.url}: reading through the AWS SDK from now on (without it: ${messageOf(err)})`);
          d.close().catch(() => undefined);
        }
      }
    }
    return sdk(await this.load());
  }

  get(key: string): Promise<Buffer> {
    return this.read((d) => d.get(key), (s) => s.get(key));
  }
  head(key: string): Promise<ObjectInfo> {
    return this.read((d) => d.head(key), (s) => s.head(key));
  }
  range(key: string, start: number, end: number, etag?: string, into?: Buffer): Promise<Buffer> {
    return this.read((d) => d.range(key, start, end, etag, into), (s) => s.range(key, start, end, etag));
  }
  workerSpec(key: string): Promise<SourceSpec | undefined> {
    // Until a read has worked here, a worker URL is tried before the workers rely on it.
    return this.read((d) => (this.directWorked ? d.workerSpecs.get(key) : d.tryWorkerUrl(key)), (s) => s.workerSpec(key));
  }
  async presignedUrl(key: string, seconds: number): Promise<string> {
    return (await this.load()).presignedUrl(key, seconds);
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
    await this.direct?.close();
    if (this.store) await (await this.store).close();
  }
}
