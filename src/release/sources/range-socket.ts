import { connect as connectTcp, isIP, type Socket } from 'node:net';
import { connect as connectTls, type ConnectionOptions } from 'node:tls';
import { TransientError } from './retry.js';

/**
 * GETs (and HEADs) whose body the kernel reads straight into the caller's buffer: a frame worker's
 * ranges, and the manifest, its signature and the payload's size on the main thread, which then
 * never loads undici (~30 ms before the first frame). Each connection reads with node:net's `onread`
 * user buffer, pointed at the unfilled rest of the caller's buffer while a body comes in, so the bytes
 * are copied once (socket → frame) instead of socket → parser chunk → frame, and no HTTP parser runs
 * per chunk. Measured on the 2-core machine: docs/performance.md.
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
  /** The body is in the buffer `accept` gave (empty when it went to `BodyPieces.take` piece by piece). */
  | { kind: 'filled'; head: RangeHead; body: Buffer }
  /** `accept` declined this head, or the body is not framed by Content-Length: ask again elsewhere. */
  | { kind: 'declined'; head: RangeHead; reason: string };

/**
 * A body read piece by piece into one buffer, each piece handed over as soon as it is in: one GET of
 * several consecutive frames, each decoded while the next one arrives.
 */
export interface BodyPieces {
  /** Where each piece is read, from its start; at least as long as the longest piece. */
  buffer: Buffer;
  /** The pieces' lengths in order (each > 0); their sum is the body's length. */
  lengths: number[];
  /**
   * Piece `index` is in `buffer.subarray(0, lengths[index])`. The buffer is read into again once this
   * returns or, when it returns a promise, once that settles: meanwhile the connection reads nothing
   * (the server's side of it fills up and waits). A throw or rejection fails the request with it.
   */
  take(index: number, bytes: Buffer): void | Promise<void>;
}

export interface RangeRequest {
  method: 'GET' | 'HEAD';
  /** Path and query, as they go on the request line. */
  path: string;
  headers: Record<string, string>;
  /**
   * Called with the head and the body's length (0 for HEAD; undefined when the body is not framed by
   * Content-Length, which is then declined whatever this returns) before any body byte is taken: the
   * buffer of exactly that length the body goes into, pieces adding up to it, or undefined to decline
   * (the connection is dropped). A throw fails the request with what it threw.
   */
  accept(head: RangeHead, length: number | undefined): Buffer | BodyPieces | undefined;
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

/** The request on a connection and how far its answer has come. */
interface Exchange {
  req: RangeRequest;
  head?: RangeHead;
  keepAlive: boolean;
  /** What the caller gets back as the body: its buffer, or an empty one when the body went by pieces. */
  body?: Buffer;
  pieces?: BodyPieces;
  /** The piece being read and how much of it is in. */
  piece: number;
  filled: number;
  /** Body bytes read ahead of their piece (with the head, or while a piece was being taken). */
  carry?: Buffer;
  /** Body bytes not yet read. */
  left: number;
  /** A piece's `take` that has not settled: nothing is read until it has. */
  taking?: Promise<void>;
  resolve: (r: RangeReply) => void;
  reject: (e: Error) => void;
}

const NO_PIECE_WORK = () => undefined;

/** One keep-alive connection; `run` one request at a time. */
class Connection {
  readonly socket: Socket;
  /** The head being read, and how much of it is in. */
  private readonly headBuf = Buffer.allocUnsafeSlow(HEAD_MAX);
  private headLen = 0;
  private state: 'idle' | 'head' | 'body' | 'dead' = 'idle';
  private current: Exchange | undefined;
  /** Requests this connection answered (a reused connection the server closed meanwhile is retried once). */
  answered = 0;
  idleTimer: NodeJS.Timeout | undefined;

  constructor(url: URL, stallMs: number, ca: string | undefined, onDead: (c: Connection) => void) {
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
    const onread = { buffer: () => this.nextBuffer(), callback: (n: number) => this.onBytes(n) };
    this.socket =
      url.protocol === 'https:'
        ? // tls.connect takes onread too (node's docs), though its typings do not say so.
          connectTls({ host, port, servername: isIP(host) ? undefined : host, ALPNProtocols: ['http/1.1'], ca, onread } as ConnectionOptions)
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
      this.current = { req, piece: 0, filled: 0, left: 0, keepAlive: true, resolve, reject };
      this.headLen = 0;
      this.state = 'head';
      this.socket.write(text, 'latin1');
    });
  }

  /** Whether the last buffer handed out for a read was the current piece's (else the head buffer). */
  private readingPiece = false;

  /**
   * Where the next read goes: the rest of the current piece, or the head buffer. node asks for it
   * right after each read, before a paused connection reads again: while body bytes wait in `carry`
   * (or a piece is being taken) the piece's place is not known yet, so the read goes to the head
   * buffer and joins the carry.
   */
  private nextBuffer(): Uint8Array {
    const c = this.current;
    const want = c?.pieces?.lengths[c.piece];
    this.readingPiece = this.state === 'body' && want !== undefined && !c!.taking && !c!.carry?.length && c!.filled < want;
    if (this.readingPiece) return c!.pieces!.buffer.subarray(c!.filled, want);
    if (this.state === 'body') return this.headBuf;
    return this.headLen < HEAD_MAX ? this.headBuf.subarray(this.headLen) : this.headBuf;
  }

  private onBytes(n: number): boolean {
    const c = this.current;
    try {
      if (this.state === 'body' && c?.pieces) {
        c.left -= n;
        if (c.left < 0) throw new ProtocolError('the server sent more than the body it announced');
        if (this.readingPiece) return this.advance(c, n);
        c.carry = Buffer.concat([c.carry ?? Buffer.alloc(0), this.headBuf.subarray(0, n)]);
        return c.taking ? false : this.advance(c, 0);
      }
      // Outside a body, reads go to the head buffer (nextBuffer): bytes while no request is out are a broken server's.
      if (this.state !== 'head' || !c) throw new ProtocolError('the server sent data no request asked for');
      this.headLen += n;
      return this.takeHead(c);
    } catch (err) {
      this.fail(err as Error);
      return false;
    }
  }

  /** Parse the head once it is all in; start the body with the bytes that came after it. False: stop reading (advance). */
  private takeHead(c: Exchange): boolean {
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
      const connection = String(head.headers.connection ?? '').toLowerCase();
      c.keepAlive = head.version === 1 ? !/\bclose\b/.test(connection) : /\bkeep-alive\b/.test(connection);
      // A HEAD answer's Content-Length is the object's, and no body follows. A body framed otherwise
      // (chunked, or up to the connection's end) is not read here: `accept` sees no length.
      const length = c.req.method === 'HEAD' ? 0 : head.headers['transfer-encoding'] === undefined ? contentLength(head) : undefined;
      // The caller's status checks come first: a 404 is NOT_FOUND however its body is framed.
      const taken = c.req.accept(head, length);
      if (!taken || length === undefined) {
        this.decline(c, head, length === undefined ? 'the body is not framed by Content-Length' : `HTTP ${head.statusCode}`);
        return true;
      }
      const pieces = Buffer.isBuffer(taken) ? { buffer: taken, lengths: taken.length ? [taken.length] : [], take: NO_PIECE_WORK } : taken;
      const total = pieces.lengths.reduce((a, b) => a + b, 0);
      if (total !== length || pieces.lengths.some((l) => !(l > 0 && l <= pieces.buffer.length))) {
        throw new Error(`pieces of ${pieces.lengths.join('+')} bytes in a ${pieces.buffer.length}-byte buffer for a ${length}-byte body`);
      }
      if (rest.length > length) throw new ProtocolError('the server sent more than the body it announced');
      c.body = Buffer.isBuffer(taken) ? taken : taken.buffer.subarray(0, 0);
      c.pieces = pieces;
      // Copied: the head buffer takes later reads while these wait for their piece.
      c.carry = Buffer.from(rest);
      c.left = length - rest.length;
      this.headLen = 0;
      this.state = 'body';
      return this.advance(c, 0);
    }
    if (this.headLen >= HEAD_MAX) throw new ProtocolError(`the response head is larger than ${HEAD_MAX} bytes`);
    return true;
  }

  /**
   * `n` more bytes of the current piece are in: hand over every full piece, then finish the body.
   * False while a piece's `take` is pending (the caller stops reading; the settled take resumes it).
   */
  private advance(c: Exchange, n: number): boolean {
    const pieces = c.pieces!;
    c.filled += n;
    for (;;) {
      if (c.piece === pieces.lengths.length) {
        this.finish();
        return true;
      }
      const want = pieces.lengths[c.piece]!;
      if (c.carry?.length && c.filled < want) {
        const k = c.carry.copy(pieces.buffer, c.filled, 0, want - c.filled);
        c.filled += k;
        c.carry = c.carry.subarray(k);
      }
      if (c.filled < want) return true;
      const index = c.piece++;
      c.filled = 0;
      const pending = pieces.take(index, pieces.buffer.subarray(0, want));
      if (!pending) continue;
      c.taking = pending;
      pending.then(
        () => {
          c.taking = undefined;
          if (this.current !== c) return;
          try {
            // Reading again, also once the body is done: an idle connection must see the server close it.
            if (this.advance(c, 0) && !this.socket.destroyed) this.socket.resume();
          } catch (err) {
            this.fail(err as Error);
          }
        },
        (err: unknown) => {
          c.taking = undefined;
          if (this.current === c) this.fail(err as Error);
        },
      );
      return false;
    }
  }

  private finish(): void {
    const c = this.current!;
    this.current = undefined;
    this.answered++;
    if (c.keepAlive) this.state = 'idle';
    else this.drop();
    c.resolve({ kind: 'filled', head: c.head!, body: c.body! });
  }

  private decline(c: Exchange, head: RangeHead, reason: string): void {
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
      const reason = unanswered ? Object.assign(new TransientError(err.message, { cause: err }), { unanswered: true }) : err;
      // Not before a piece being taken has let go of the buffer: the caller may read into it again at once.
      if (c.taking) c.taking.then(() => c.reject(reason), () => c.reject(reason));
      else c.reject(reason);
    }
  }
}

/** The request line and headers; a header that could split the request is refused, not sent. */
function requestHead(req: RangeRequest, host: string): string {
  const lines = [`${req.method} ${req.path} HTTP/1.1`, `host: ${host}`];
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

  /** `ca`: PEM of the only CAs trusted for an https origin (undefined: node's default store). */
  constructor(
    private readonly origin: URL,
    private readonly stallMs: number,
    private readonly ca?: string,
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
    return new Connection(this.origin, this.stallMs, this.ca, (dead) => (this.idle = this.idle.filter((c) => c !== dead)));
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
