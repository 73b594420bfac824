import { connect as connectTcp, isIP, type Socket } from 'node:net';
import { connect as connectTls, type ConnectionOptions } from 'node:tls';
import { TransientError } from './retry.js';

/**
 * Ranged GETs whose body the kernel reads straight into the caller's buffer: a frame worker's hot
 * path. Each connection reads with node:net's `onread` user buffer, pointed at the unfilled rest of
 * the frame's receive buffer while a body comes in, so the bytes are copied once (socket → frame)
 * instead of socket → parser chunk → frame, and no HTTP parser runs per chunk. Measured on the 2-core
 * machine: docs/performance.md.
 *
 * Deliberately narrow: HTTP/1.1 keep-alive, one request per connection at a time, a body framed by
 * Content-Length. Anything else (chunked encoding, no length, a status the caller does not take) is
 * handed back undecided, and the caller asks again through its general client (undici). Everything
 * read from the server is bounded: the head at 16 KiB and 100 lines, the body at the caller's limit,
 * and bytes after the body, or while no request is out, end the connection.
 */

/** The status line and headers of a response; names lower-case, a repeated header as an array. */
export interface RangeHead {
  statusCode: number;
  headers: Record<string, string | string[] | undefined>;
}

export type RangeReply =
  /** The body (exactly `limit` bytes) is in `into`. */
  | { kind: 'filled'; head: RangeHead }
  /** The caller's `accept` declined this head, or the body is not framed by Content-Length: ask again elsewhere. */
  | { kind: 'declined'; head: RangeHead; reason: string };

export interface RangeRequest {
  /** Path and query, as they go on the request line. */
  path: string;
  headers: Record<string, string>;
  into: Buffer;
  /** The body's exact length. */
  limit: number;
  /**
   * Called with the head before any body byte is taken: true reads the body into `into`, false
   * declines (the connection is dropped), and a throw fails the request with what it threw.
   */
  accept(head: RangeHead): boolean;
}

const HEAD_MAX = 16 << 10;
const HEAD_LINES_MAX = 100;
/** Idle connections kept per origin, and for how long (node's own server closes its side after 5 s). */
const IDLE_MAX = 16;
const IDLE_MS = 4_000;
const CRLFCRLF = Buffer.from('\r\n\r\n');
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** Field values we send: visible ASCII and spaces only, so nothing can split the request. */
const SAFE_VALUE = /^[\x20-\x7e]*$/;

class ProtocolError extends TransientError {}

/** One keep-alive connection; `run` one request at a time. */
class Connection {
  readonly socket: Socket;
  /** The head being read, and how much of it is in. */
  private readonly headBuf = Buffer.allocUnsafeSlow(HEAD_MAX);
  private headLen = 0;
  private state: 'idle' | 'head' | 'body' | 'dead' = 'idle';
  private current:
    | { req: RangeRequest; filled: number; head?: RangeHead; keepAlive: boolean; resolve: (r: RangeReply) => void; reject: (e: Error) => void }
    | undefined;
  /** Requests this connection answered (a reused connection the server closed meanwhile is retried once). */
  answered = 0;
  idleTimer: NodeJS.Timeout | undefined;

  constructor(url: URL, stallMs: number, onDead: (c: Connection) => void) {
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
    const onread = { buffer: () => this.nextBuffer(), callback: (n: number) => this.onBytes(n) };
    this.socket =
      url.protocol === 'https:'
        ? // tls.connect takes onread too (node's docs), though its typings do not say so.
          connectTls({ host, port, servername: isIP(host) ? undefined : host, ALPNProtocols: ['http/1.1'], onread } as ConnectionOptions)
        : connectTcp({ host, port, onread, noDelay: true });
    const stall = stallMs >= 1000 ? `${Math.round(stallMs / 1000)} s` : `${stallMs} ms`;
    this.socket.setTimeout(stallMs, () => this.fail(new TransientError(`stalled: no data for ${stall}`)));
    this.socket.on('error', (err) => this.fail(err));
    this.socket.on('close', () => {
      this.fail(new TransientError('the server closed the connection'));
      onDead(this);
    });
  }

  get alive(): boolean {
    return this.state === 'idle' && !this.socket.destroyed;
  }

  /** `text`: the request's head, already checked (requestHead). */
  run(req: RangeRequest, text: string): Promise<RangeReply> {
    return new Promise((resolve, reject) => {
      this.current = { req, filled: 0, keepAlive: true, resolve, reject };
      this.headLen = 0;
      this.state = 'head';
      this.socket.write(text, 'latin1');
    });
  }

  /** Where the next read goes: the rest of the body, or the head buffer. */
  private nextBuffer(): Uint8Array {
    const c = this.current;
    if (this.state === 'body' && c && c.filled < c.req.limit) return c.req.into.subarray(c.filled, c.req.limit);
    return this.headLen < HEAD_MAX ? this.headBuf.subarray(this.headLen) : this.headBuf;
  }

  private onBytes(n: number): boolean {
    const c = this.current;
    try {
      if (this.state === 'body' && c) {
        c.filled += n;
        if (c.filled === c.req.limit) this.finish();
        return true;
      }
      // Outside a body, reads go to the head buffer (nextBuffer): bytes while no request is out are a broken server's.
      if (this.state !== 'head' || !c) throw new ProtocolError('the server sent data no request asked for');
      this.headLen += n;
      this.takeHead(c);
      return true;
    } catch (err) {
      this.fail(err as Error);
      return false;
    }
  }

  /** Parse the head once it is all in; start the body with the bytes that came after it. */
  private takeHead(c: NonNullable<Connection['current']>): void {
    let end = this.headBuf.subarray(0, this.headLen).indexOf(CRLFCRLF);
    while (end >= 0) {
      const head = parseHead(this.headBuf.toString('latin1', 0, end));
      const rest = this.headBuf.subarray(end + 4, this.headLen);
      if (head.statusCode >= 100 && head.statusCode < 200) {
        // An interim answer (100 Continue and the like): the real one follows.
        rest.copy(this.headBuf);
        this.headLen = rest.length;
        end = this.headBuf.subarray(0, this.headLen).indexOf(CRLFCRLF);
        continue;
      }
      c.head = head;
      const version = head.version;
      const connection = String(head.headers.connection ?? '').toLowerCase();
      c.keepAlive = version === 1 ? !/\bclose\b/.test(connection) : /\bkeep-alive\b/.test(connection);
      const length = contentLength(head);
      if (head.headers['transfer-encoding'] !== undefined || length === undefined) {
        this.decline(c, head, 'the body is not framed by Content-Length');
        return;
      }
      if (!c.req.accept(head)) {
        this.decline(c, head, `HTTP ${head.statusCode}`);
        return;
      }
      if (length !== c.req.limit) throw new ProtocolError(`the server announced ${length} bytes for a range of ${c.req.limit}`);
      if (rest.length > length) throw new ProtocolError('the server sent more than the body it announced');
      c.filled = rest.copy(c.req.into, 0);
      this.headLen = 0;
      this.state = 'body';
      if (c.filled === c.req.limit) this.finish();
      return;
    }
    if (this.headLen >= HEAD_MAX) throw new ProtocolError(`the response head is larger than ${HEAD_MAX} bytes`);
  }

  private finish(): void {
    const c = this.current!;
    this.current = undefined;
    this.answered++;
    if (c.keepAlive) this.state = 'idle';
    else this.drop();
    c.resolve({ kind: 'filled', head: c.head! });
  }

  private decline(c: NonNullable<Connection['current']>, head: RangeHead, reason: string): void {
    this.current = undefined;
    this.drop();
    c.resolve({ kind: 'declined', head, reason });
  }

  /** End the connection (nothing on it is wanted any more). */
  drop(): void {
    this.state = 'dead';
    clearTimeout(this.idleTimer);
    this.socket.destroy();
  }

  private fail(err: Error): void {
    const c = this.current;
    this.current = undefined;
    this.drop();
    if (c) {
      // A request that got nothing back on a reused connection: the server had closed it while idle.
      const unanswered = c.head === undefined && this.headLen === 0 && this.answered > 0;
      c.reject(unanswered ? Object.assign(new TransientError(err.message, { cause: err }), { unanswered: true }) : err);
    }
  }
}

/** The request line and headers; a header that could split the request is refused, not sent. */
function requestHead(req: RangeRequest, host: string): string {
  const lines = [`GET ${req.path} HTTP/1.1`, `host: ${host}`];
  if (!/^\/[\x21-\x7e]*$/.test(req.path)) throw new Error(`refusing to request ${JSON.stringify(req.path)}: not a plain HTTP path`);
  for (const [name, value] of Object.entries(req.headers)) {
    if (!TOKEN.test(name) || !SAFE_VALUE.test(value)) throw new Error(`refusing to send header ${JSON.stringify(name)}: not a plain HTTP field`);
    lines.push(`${name}: ${value}`);
  }
  return `${lines.join('\r\n')}\r\n\r\n`;
}

function parseHead(text: string): RangeHead & { version: 0 | 1 } {
  const lines = text.split('\r\n');
  if (lines.length > HEAD_LINES_MAX) throw new ProtocolError(`the response head has more than ${HEAD_LINES_MAX} lines`);
  const status = /^HTTP\/1\.([01]) (\d{3})(?: [^\r\n]*)?$/.exec(lines[0]!);
  if (!status) throw new ProtocolError(`not an HTTP/1.x status line: ${JSON.stringify(lines[0]!.slice(0, 80))}`);
  const headers: Record<string, string | string[] | undefined> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).toLowerCase();
    // No name, or a folded continuation line (obsolete, and a classic smuggling vector).
    if (colon <= 0 || !TOKEN.test(name)) throw new ProtocolError(`malformed response header line ${JSON.stringify(line.slice(0, 80))}`);
    const value = line.slice(colon + 1).trim();
    const seen = headers[name];
    headers[name] = seen === undefined ? value : Array.isArray(seen) ? [...seen, value] : [seen, value];
  }
  return { statusCode: Number(status[2]), headers, version: status[1] === '1' ? 1 : 0 };
}

/** Content-Length as a number; undefined when absent; a protocol error when malformed or repeated differently. */
function contentLength(head: RangeHead): number | undefined {
  const raw = head.headers['content-length'];
  if (raw === undefined) return undefined;
  const values = new Set((Array.isArray(raw) ? raw : [raw]).flatMap((v) => v.split(',').map((s) => s.trim())));
  const [value] = values;
  if (values.size !== 1 || !/^\d{1,15}$/.test(value!)) throw new ProtocolError(`bad Content-Length ${JSON.stringify(raw)}`);
  return Number(value);
}

/** The keep-alive connections to one origin (scheme, host, port). */
export class RangeSockets {
  private idle: Connection[] = [];
  private closed = false;

  constructor(
    private readonly origin: URL,
    private readonly stallMs: number,
  ) {}

  async get(req: RangeRequest): Promise<RangeReply> {
    const text = requestHead(req, this.origin.host);
    for (;;) {
      const conn = this.take();
      try {
        const reply = await conn.run(req, text);
        if (conn.alive) this.release(conn);
        return reply;
      } catch (err) {
        // The server had closed a kept connection before our request reached it: a fresh one will do.
        if ((err as { unanswered?: boolean }).unanswered && !this.closed) continue;
        throw err;
      }
    }
  }

  close(): void {
    this.closed = true;
    for (const c of this.idle) c.drop();
    this.idle = [];
  }

  private take(): Connection {
    for (let c = this.idle.pop(); c; c = this.idle.pop()) {
      clearTimeout(c.idleTimer);
      c.socket.ref();
      if (c.alive) return c;
    }
    return new Connection(this.origin, this.stallMs, (dead) => (this.idle = this.idle.filter((c) => c !== dead)));
  }

  private release(conn: Connection): void {
    if (this.closed || this.idle.length >= IDLE_MAX) {
      conn.drop();
      return;
    }
    // An idle connection must not keep the process alive, nor stay open forever.
    conn.socket.unref();
    conn.idleTimer = setTimeout(() => {
      this.idle = this.idle.filter((c) => c !== conn);
      conn.drop();
    }, IDLE_MS);
    conn.idleTimer.unref();
    this.idle.push(conn);
  }
}
