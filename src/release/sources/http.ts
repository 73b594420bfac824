import type { Dispatcher } from 'undici';
import { newAgent, request } from './undici-core.js';
import { RangeSockets, type BodyPieces, type RangeReply, type RangeRequest } from './range-socket.js';
import { UpgradeError, errnoOf, messageOf } from '../../core/errors.js';
import { log } from '../../core/log.js';
import { byteWindow, collect } from './body.js';
import { checkRange, encodeKey, metadataCap, metadataTooLarge, rangeTooLong } from './keys.js';
import { Retrier, TransientError, resolvePolicy, resumingStream, withRetry, type OpenedBody } from './retry.js';
import { refusePlainHttp, type ObjectInfo, type PieceTaker, type RetryPolicy, type Source, type SourceOptions, type SourceSpec, type StoreNames } from './source.js';

type Response = Dispatcher.ResponseData;
/** The URL a request of `method` goes to instead of `url` (the same origin): `url` signed, for example. */
export type RequestSigner = (method: 'GET' | 'HEAD', url: URL) => Promise<URL>;

/** A store read over HTTP that is not a plain web server: its names, and a signer for its requests (s3-direct.ts). */
export interface StoreAccess extends StoreNames {
  /** Each request goes to the URL this returns for its method and URL (signed per request). */
  sign?: RequestSigner;
}

const REFUSED_HINT = 'check the URL, and the credentials if the server needs them (https://user:password@host/prefix in [source] url)';
/** What the status and header checks read: undici's response or range-socket.ts's head alike. */
type Head = Pick<Response, 'statusCode' | 'headers'>;

const RETRY_HINT = 'check the network and that the server is up, then run the command again';

/**
 * Releases over https:// (and http:// to this machine only: plain HTTP elsewhere could be tampered
 * with before the signature check, and would leak what the machine runs). One keep-alive Agent per
 * source; undici's headersTimeout/bodyTimeout are the stall detector (its body timer pauses while
 * the consumer applies backpressure, so a slow disk is not mistaken for a stalled server).
 */
export class HttpSource implements Source {
  readonly url: string;
  private readonly spec: SourceSpec;
  private readonly base: URL;
  private readonly authorization: string | undefined;
  private readonly policy: RetryPolicy;
  /** [source] ca_file: the only CAs trusted for this server (undefined: the system's). */
  private readonly ca: string | undefined;
  private undiciAgent: Dispatcher | undefined;
  private warnedRangeIgnored = false;
  /** Requests whose body is read straight into a buffer (range-socket.ts), made on first use. */
  private sockets: RangeSockets | undefined;
  /** Set once the server answered in a way only undici handles (Range ignored, chunked): undici from then on. */
  private socketsDeclined = false;
  /** A pre-signed object URL (an S3 frame fetched by a worker): its query is the signature, and it is the only key. */
  private readonly signed: { key: string; url: URL } | undefined;

  /**
   * With `signedKey`, `url` is that object's pre-signed URL, not a prefix. With `store`, messages name
   * objects under its `shownBase` (and requests are signed when it signs); otherwise they name the URL
   * without credentials or query.
   */
  constructor(
    url: URL,
    opts: SourceOptions = {},
    signedKey?: string,
    private readonly store?: StoreAccess,
  ) {
    refusePlainHttp(url, printable(url));
    this.spec = { url: url.href, opts };
    if (signedKey !== undefined) this.signed = { key: signedKey, url: new URL(url.href) };
    this.policy = resolvePolicy(opts.retry);
    this.ca = opts.ca;
    const base = new URL(url.href);
    if (base.username !== '' || base.password !== '') {
      const user = decodeURIComponent(base.username);
      const password = decodeURIComponent(base.password);
      this.authorization = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
      base.username = '';
      base.password = '';
    }
    base.hash = '';
    if (!base.pathname.endsWith('/') && !this.signed) base.pathname += '/';
    this.base = base;
    this.url = this.shown(base);
  }

  /** `url` as messages and logs name it. */
  private shown(url: URL): string {
    const plain = printable(url);
    if (!this.store) return plain;
    const prefix = printable(this.base);
    return plain.startsWith(prefix) ? `${this.store.shownBase}${plain.slice(prefix.length)}` : plain;
  }

  /** throwForStatus with this source's names and hint. */
  private checkStatus(res: Head, url: URL, etag: string | undefined): void {
    throwForStatus(res, this.shown(url), etag, this.store?.refusedHint ?? REFUSED_HINT);
  }

  /** undici's keep-alive Agent, made on first use (a frame worker's ranges may never need it). */
  private get agent(): Dispatcher {
    return (this.undiciAgent ??= newAgent({
      keepAliveTimeout: 30_000,
      headersTimeout: this.policy.stallTimeoutMs,
      bodyTimeout: this.policy.stallTimeoutMs,
      connect: { timeout: this.policy.stallTimeoutMs, ca: this.ca },
      connections: 16,
    }));
  }

  /** The same prefix opened again: every key is reachable from it. */
  async workerSpec(): Promise<SourceSpec> {
    return this.spec;
  }

  async get(key: string): Promise<Buffer> {
    const url = this.urlOf(key);
    const cap = metadataCap(key).bytes;
    return withRetry(
      async () => {
        const direct = await this.viaSockets('GET', url, {}, (head, length) => {
          this.checkStatus(head, url, undefined);
          if (length === undefined) return undefined;
          if (length > cap) throw metadataTooLarge(this.shown(url), key);
          return Buffer.allocUnsafe(length);
        });
        if (direct) return direct.body;
        const res = await this.send('GET', url, {});
        return collect((await this.accept(res, url, undefined)).chunks, cap, () => metadataTooLarge(this.shown(url), key));
      },
      this.policy,
      `GET ${this.shown(url)}`,
      RETRY_HINT,
    );
  }

  async head(key: string): Promise<ObjectInfo> {
    const url = this.urlOf(key);
    return withRetry(
      async () => {
        const direct = await this.viaSockets('HEAD', url, {}, (head) => {
          this.checkStatus(head, url, undefined);
          return Buffer.alloc(0);
        });
        let res: Head;
        if (direct) res = direct.head;
        else {
          const answer = await this.send('HEAD', url, {});
          await answer.body.dump();
          this.checkStatus(answer, url, undefined);
          res = answer;
        }
        const length = header(res, 'content-length');
        if (length === undefined || !/^\d+$/.test(length)) {
          throw new UpgradeError('NETWORK', `HEAD ${this.shown(url)} answered without a Content-Length`, {
            hint: 'the server must report object sizes; serve the release from a plain static file server',
          });
        }
        return { size: Number(length), etag: header(res, 'etag') };
      },
      this.policy,
      `HEAD ${this.shown(url)}`,
      RETRY_HINT,
    );
  }

  async range(key: string, start: number, end: number, etag?: string, into?: Buffer): Promise<Buffer> {
    if (start === end) {
      checkRange(this.shown(this.urlOf(key)), start, end);
      return Buffer.alloc(0);
    }
    // One range is one piece: the same request, checks and retries as a worker's several frames.
    let bytes: Buffer | undefined;
    await this.rangePieces(key, [start, end], etag, into && into.length >= end - start ? into : Buffer.allocUnsafe(end - start), (_, piece) => {
      bytes = piece;
    });
    return bytes!;
  }

  async rangePieces(key: string, bounds: number[], etag: string | undefined, into: Buffer, take: PieceTaker): Promise<void> {
    const url = this.urlOf(key);
    const last = bounds.length - 1;
    checkRange(this.shown(url), bounds[0]!, bounds[last]!);
    const retrier = new Retrier(this.policy, `GET ${this.shown(url)} bytes ${bounds[0]}-${bounds[last]! - 1}`, RETRY_HINT);
    /** The first piece not yet taken: a retry asks from there. */
    let next = 0;
    // A piece's own failure (its decode, its write) is the caller's to report, not a network error to retry.
    let takeFailed: { err: unknown } | undefined;
    const handOver = (bytes: Buffer): void | Promise<void> => {
      const taken = () => {
        next++;
        retrier.progressed();
      };
      const failed = (err: unknown): never => {
        takeFailed = { err };
        throw err;
      };
      let pending: void | Promise<void>;
      try {
        pending = take(next, bytes);
      } catch (err) {
        return failed(err);
      }
      if (!pending) return taken();
      return pending.then(taken, failed);
    };
    while (next < last) {
      try {
        const start = bounds[next]!;
        const end = bounds[last]!;
        const direct = await this.viaSockets('GET', url, rangeHeaders(start, end, etag), (head, length): BodyPieces | undefined => {
          this.checkHead(head, url, etag, start, end);
          if (head.statusCode !== 206 || length === undefined) return undefined;
          if (length !== end - start) throw new TransientError(`the server announced ${length} bytes for a range of ${end - start}`);
          return { buffer: into, lengths: bounds.slice(next + 1).map((b, j) => b - bounds[next + j]!), take: (_, bytes) => handOver(bytes) };
        });
        if (direct) continue;
        // Answers only undici reads (Range ignored, chunked): one range per piece, windowed as any other.
        while (next < last) {
          const [from, to] = [bounds[next]!, bounds[next + 1]!];
          const opened = await this.open(url, from, to, etag);
          const bytes = await collect(opened.chunks, to - from, () => rangeTooLong(this.shown(url), from, to), into);
          if (bytes.length < to - from) throw shorterThan(this.shown(url), from + bytes.length, to);
          await handOver(bytes);
        }
      } catch (err) {
        if (takeFailed) throw takeFailed.err;
        await retrier.failed(err);
      }
    }
  }

  stream(key: string, start: number, etag?: string): AsyncIterable<Buffer> {
    const url = this.urlOf(key);
    checkRange(this.shown(url), start);
    const retrier = new Retrier(this.policy, `GET ${this.shown(url)}`, RETRY_HINT);
    return resumingStream((position, pinned) => this.open(url, position, undefined, pinned), start, etag, retrier);
  }

  /** Abandons requests still in flight (a consumer that stopped reading) rather than wait for them. */
  async close(): Promise<void> {
    this.sockets?.close();
    await this.undiciAgent?.destroy();
  }

  /**
   * One request through range-socket.ts, its body read into the buffer `accept` gives. Undefined when
   * the answer needs undici (Range ignored, a chunked body): the caller asks again through undici,
   * and this source uses undici from then on.
   */
  private async viaSockets(method: 'GET' | 'HEAD', url: URL, headers: Record<string, string>, accept: RangeRequest['accept']): Promise<Extract<RangeReply, { kind: 'filled' }> | undefined> {
    if (this.socketsDeclined) return undefined;
    if (this.authorization !== undefined) headers = { ...headers, authorization: this.authorization };
    let reply: RangeReply;
    try {
      this.sockets ??= new RangeSockets(new URL(url.origin), this.policy.stallTimeoutMs, this.ca);
      const target = this.store?.sign ? await this.store.sign(method, url) : url;
      reply = await this.sockets.get({ method, path: `${target.pathname}${target.search}`, headers, accept });
    } catch (err) {
      throw certificateError(err, this.shown(url)) ?? err;
    }
    if (reply.kind === 'filled') return reply;
    this.socketsDeclined = true;
    log.debug(`${this.url}: requests through undici from now on (${reply.reason})`);
    return undefined;
  }

  private urlOf(key: string): URL {
    if (this.signed) {
      if (key !== this.signed.key) throw new Error(`${this.url} is a pre-signed URL of ${this.signed.key} only, not of ${key}`);
      return this.signed.url;
    }
    return new URL(encodeKey(key), this.base);
  }

  private async send(method: 'GET' | 'HEAD', url: URL, headers: Record<string, string>): Promise<Response> {
    if (this.authorization !== undefined) headers.authorization = this.authorization;
    try {
      return await request(this.store?.sign ? await this.store.sign(method, url) : url, { dispatcher: this.agent, method, headers });
    } catch (err) {
      throw certificateError(err, this.shown(url)) ?? err;
    }
  }

  /**
   * GET bytes [start, end) (end undefined: to the object's end) of version `etag`, and return the body
   * positioned exactly at `start`, whatever the server did with the Range.
   */
  private async open(url: URL, start: number, end: number | undefined, etag: string | undefined): Promise<OpenedBody> {
    const res = await this.send('GET', url, rangeHeaders(start, end, etag));
    if (res.statusCode === 416 && end === undefined) {
      // Asked from the very end of the object (a finished download resumed): nothing left to send.
      await res.body.dump();
      const total = /^bytes \*\/(\d+)$/.exec(header(res, 'content-range') ?? '')?.[1];
      if (total !== undefined && Number(total) === start) return { chunks: emptyChunks(), etag };
    }
    return this.accept(res, url, etag, start, end);
  }

  /** Check status, version and Content-Range of a GET response; return its body from `start`. */
  private async accept(res: Response, url: URL, etag: string | undefined, start = 0, end?: number): Promise<OpenedBody> {
    try {
      this.checkHead(res, url, etag, start, end);
      const actual = header(res, 'etag') ?? etag;
      // Read a 206 to the end of the (verified) body rather than stop at the limit: cutting a body
      // short costs the keep-alive connection.
      if (res.statusCode === 206) return { chunks: res.body, etag: actual };
      // 200 to a Range: the whole object follows. Skip to `start` rather than write it at `start`.
      return { chunks: byteWindow(res.body, start, end === undefined ? Infinity : end - start), etag: actual };
    } catch (err) {
      discard(res);
      throw err;
    }
  }

  /** Status, version and Content-Range of a GET response for bytes [start, end) of version `etag`. */
  private checkHead(res: Head, url: URL, etag: string | undefined, start: number, end: number | undefined): void {
    this.checkStatus(res, url, etag);
    const actual = header(res, 'etag');
    // Some servers ignore If-Match; compare ourselves so two versions are never spliced together.
    if (etag !== undefined && actual !== undefined && actual !== etag) throw changed(this.shown(url), etag, actual);
    if (res.statusCode === 206) checkContentRange(res, this.shown(url), start, end);
    else if ((start > 0 || end !== undefined) && !this.warnedRangeIgnored) {
      this.warnedRangeIgnored = true;
      log.warn(`${this.url} ignores HTTP Range requests; resuming and parallel downloads will re-read from the start`);
    }
  }
}

/** OpenSSL's verdicts on a server certificate that no retry can change. */
const CERT_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_GET_ISSUER_CERT', 'CERT_UNTRUSTED',
]);

/** An untrusted server certificate (a private CA, a self-signed mirror): say how to trust its CA. */
function certificateError(err: unknown, shown: string): UpgradeError | undefined {
  const code = errnoOf(err);
  if (code === undefined || !CERT_CODES.has(code)) return undefined;
  return new UpgradeError('NETWORK', `${shown}: the server's certificate is not trusted (${code}: ${messageOf(err)})`, {
    cause: err,
    hint:
      'if the release server uses a private or self-signed CA, name that CA certificate (PEM) in upgradectl.conf: ' +
      '[source] ca_file = /etc/upgradectl/credentials.d/release-ca.pem; otherwise the connection may be intercepted',
  });
}

/** The URL without credentials or query (signed tokens) for messages and logs. */
function printable(url: URL): string {
  const shown = new URL(url.href);
  shown.username = '';
  shown.password = '';
  shown.search = '';
  shown.hash = '';
  return shown.href;
}

function header(res: Head, name: string): string | undefined {
  const value = res.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** Map a non-success status to the error the operator should see; transient ones are retried. */
function throwForStatus(res: Head, shown: string, etag: string | undefined, refusedHint: string): void {
  const status = res.statusCode;
  if (status === 200 || status === 206) return;
  if (status === 404 || status === 410) {
    throw new UpgradeError('NOT_FOUND', `${shown} does not exist (HTTP ${status})`, {
      hint: 'check [source] url and that the release was published there',
    });
  }
  if (status === 412) throw changed(shown, etag ?? '?', header(res, 'etag') ?? 'another version');
  if (status === 416) {
    throw new UpgradeError('CHANGED', `${shown} is shorter than the range asked (HTTP 416, ${header(res, 'content-range') ?? 'no size given'})`, {
      hint: 'the object was truncated or replaced by another version; run the command again to start over',
    });
  }
  if (status === 401 || status === 403) {
    throw new UpgradeError('NETWORK', `${shown} refused access (HTTP ${status})`, { hint: refusedHint });
  }
  if (status === 408 || status === 429 || status >= 500) {
    throw new TransientError(`HTTP ${status}`, { retryAfterMs: retryAfterMs(header(res, 'retry-after')) });
  }
  if (status >= 300 && status < 400) {
    throw new UpgradeError('NETWORK', `${shown} redirects (HTTP ${status}) to ${header(res, 'location') ?? 'nowhere'}`, {
      hint: 'upgradectl does not follow redirects: set [source] url to the final location',
    });
  }
  throw new UpgradeError('NETWORK', `${shown} answered HTTP ${status}`, {
    hint: 'check [source] url; the server does not serve it as a plain file',
  });
}

function checkContentRange(res: Head, shown: string, start: number, end: number | undefined): void {
  const value = header(res, 'content-range') ?? '';
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(value);
  const first = m ? Number(m[1]) : NaN;
  const last = m ? Number(m[2]) : NaN;
  const total = m && m[3] !== '*' ? Number(m[3]) : undefined;
  if (first !== start) {
    throw new UpgradeError('NETWORK', `${shown} answered the range from ${start} with "Content-Range: ${value}"`, {
      hint: 'the server or a proxy in between mangles range requests; serve the release from a plain static file server',
    });
  }
  if (end !== undefined && last !== end - 1) {
    if (total !== undefined && total < end) throw shorterThan(shown, total, end);
    throw new UpgradeError('NETWORK', `${shown} answered bytes ${start}-${end - 1} with "Content-Range: ${value}"`, {
      hint: 'the server or a proxy in between shortens range responses; serve the release from a plain static file server',
    });
  }
}

function changed(shown: string, expected: string, actual: string): UpgradeError {
  return new UpgradeError('CHANGED', `${shown} changed: ETag ${actual}, expected ${expected}`, {
    hint: 'the release was re-published while downloading; run the command again to start over',
  });
}

function shorterThan(shown: string, size: number, wanted: number): UpgradeError {
  return new UpgradeError('CHANGED', `${shown} has only ${size} bytes, ${wanted} were expected`, {
    hint: 'the object was truncated or replaced by another version; run the command again to start over',
  });
}

function retryAfterMs(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (/^\d+$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/** The Range and If-Match headers of a GET of bytes [start, end) (end undefined: to the end) of version `etag`. */
function rangeHeaders(start: number, end: number | undefined, etag: string | undefined): Record<string, string> {
  const headers: Record<string, string> = {};
  if (start > 0 || end !== undefined) headers.range = `bytes=${start}-${end === undefined ? '' : end - 1}`;
  if (etag !== undefined) headers['if-match'] = etag;
  return headers;
}

/** Drop a body we will not read: a short one keeps its connection for reuse, a long one is cut. */
function discard(res: Response): void {
  res.body.dump().catch(() => undefined);
}

async function* emptyChunks(): AsyncGenerator<Buffer> {}
