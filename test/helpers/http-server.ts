import { promises as fs, type BigIntStats } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';

/**
 * A real HTTP/1.1 file server on 127.0.0.1 for transport tests: single Range (206 + Content-Range,
 * 416), strong ETag, If-Match (412), HEAD, and faults injected per test and per path.
 */

export type FaultKind =
  /** Answer this status (e.g. 503) instead of the file. */
  | { kind: 'status'; status: number; retryAfter?: string }
  /** Send headers and `afterBytes` of the body, then cut the connection. */
  | { kind: 'drop'; afterBytes: number }
  /** Send headers and `afterBytes` of the body (default 0), then nothing, keeping the socket open. */
  | { kind: 'stall'; afterBytes?: number }
  /** Never answer at all, not even headers. */
  | { kind: 'stall-headers' }
  /** Answer 200 with the whole file to a Range request, like some CDNs and proxies. */
  | { kind: 'ignore-range' }
  /** Serve whatever version is there whatever If-Match says, like s3rver and some caches. */
  | { kind: 'ignore-if-match' }
  /** Flip the byte at `atByte` of the body (default: its middle), as a broken proxy or link would. */
  | { kind: 'corrupt'; atByte?: number };

export type Fault = FaultKind & {
  /** URL path it applies to, e.g. `/releases/1/image.lz4`; every path when absent. */
  path?: string;
  /** Number of requests it affects; every request when absent. */
  times?: number;
  /** Matching requests to let through untouched before it applies (default 0). */
  skip?: number;
};

export interface RequestRecord {
  method: string;
  path: string;
  range: string | undefined;
  ifMatch: string | undefined;
  authorization: string | undefined;
  /** The status sent, or 0 while no headers went out (stall-headers). */
  status: number;
}

export interface FaultControl {
  add(fault: Fault): void;
  clear(): void;
}

export interface TestHttpServer {
  /** `http://127.0.0.1:PORT/` (https:// with the tls option) */
  url: string;
  port: number;
  faults: FaultControl;
  requests: RequestRecord[];
  /** TCP connections accepted so far (keep-alive reuses them). */
  readonly connections: number;
  /** Requests to one path (all methods). */
  count(urlPath: string): number;
  /** Bytes of one path asked for by range requests answered 206, from request number `from` on. */
  rangeBytes(urlPath: string, from?: number): number;
  /** The ETag the server gives a file under its root. */
  etagOf(relative: string): Promise<string>;
  close(): Promise<void>;
}

const CHUNK = 64 * 1024;

export interface HttpServerOptions {
  /** Serve HTTPS with this key and certificate (PEM) instead of plain HTTP. */
  tls?: { key: string; cert: string };
}

export async function startHttpServer(root: string, opts: HttpServerOptions = {}): Promise<TestHttpServer> {
  const faults: Fault[] = [];
  const requests: RequestRecord[] = [];

  const take = (urlPath: string, method: string): FaultKind[] => {
    const hit: FaultKind[] = [];
    for (const f of faults) {
      if (f.path !== undefined && f.path !== urlPath) continue;
      // Body faults mean nothing to a HEAD request: leave them for the next GET.
      if (method === 'HEAD' && (f.kind === 'drop' || f.kind === 'stall' || f.kind === 'corrupt')) continue;
      if (f.skip) {
        f.skip -= 1;
        continue;
      }
      if (f.times !== undefined) {
        if (f.times <= 0) continue;
        f.times -= 1;
      }
      hit.push(f);
    }
    return hit;
  };

  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const urlPath = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    const record: RequestRecord = {
      method: req.method ?? '',
      path: urlPath,
      range: req.headers.range,
      ifMatch: req.headers['if-match'],
      authorization: req.headers.authorization,
      status: 0,
    };
    requests.push(record);
    const origWriteHead = res.writeHead.bind(res);
    res.writeHead = ((status: number, ...rest: unknown[]) => {
      record.status = status;
      return (origWriteHead as (s: number, ...r: unknown[]) => http.ServerResponse)(status, ...rest);
    }) as typeof res.writeHead;
    serve(root, urlPath, req, res, take(urlPath, req.method ?? 'GET')).catch((err: unknown) => {
      if (!res.headersSent) {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(String(err));
      } else {
        res.destroy();
      }
    });
  };
  const server = opts.tls ? https.createServer({ key: opts.tls.key, cert: opts.tls.cert }, handler) : http.createServer(handler);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  let connections = 0;
  server.on('connection', () => {
    connections += 1;
  });

  return {
    url: `${opts.tls ? 'https' : 'http'}://127.0.0.1:${port}/`,
    port,
    requests,
    get connections() {
      return connections;
    },
    faults: {
      add: (fault) => faults.push({ ...fault }),
      clear: () => faults.splice(0),
    },
    count: (urlPath) => requests.filter((r) => r.path === urlPath).length,
    rangeBytes: (urlPath, from = 0) =>
      requests
        .slice(from)
        .filter((r) => r.path === urlPath && r.method === 'GET' && r.status === 206)
        .reduce((n, r) => {
          const m = /^bytes=(\d+)-(\d+)$/.exec(r.range ?? '');
          return m ? n + Number(m[2]) - Number(m[1]) + 1 : n;
        }, 0),
    etagOf: async (relative) => etagOf(await fs.stat(path.join(root, relative), { bigint: true })),
    close: async () => {
      // Stalled responses never end by themselves: cut every connection, then wait for the listener.
      server.closeAllConnections();
      await new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve())));
    },
  };
}

function etagOf(st: BigIntStats): string {
  return `"${st.ino.toString(16)}-${st.size.toString(16)}-${st.mtimeNs.toString(16)}"`;
}

export async function serve(root: string, urlPath: string, req: http.IncomingMessage, res: http.ServerResponse, hit: FaultKind[]): Promise<void> {
  const has = <K extends FaultKind['kind']>(kind: K) => hit.find((f): f is Extract<FaultKind, { kind: K }> => f.kind === kind);

  if (has('stall-headers')) return;
  const status = has('status');
  if (status) {
    const headers: http.OutgoingHttpHeaders = { 'content-type': 'text/plain' };
    if (status.retryAfter !== undefined) headers['retry-after'] = status.retryAfter;
    res.writeHead(status.status, headers);
    res.end(`injected ${status.status}\n`);
    return;
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD' });
    res.end();
    return;
  }

  const file = path.join(root, path.normalize(urlPath));
  const st = await fs.stat(file, { bigint: true }).catch(() => undefined);
  if (!file.startsWith(path.join(root, path.sep)) || !st?.isFile()) {
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
    return;
  }
  const size = Number(st.size);
  const etag = etagOf(st);

  const ifMatch = req.headers['if-match'];
  if (ifMatch !== undefined && !has('ignore-if-match')) {
    const tags = ifMatch.split(',').map((s) => s.trim());
    if (!tags.includes('*') && !tags.includes(etag)) {
      res.writeHead(412, { etag });
      res.end();
      return;
    }
  }

  let start = 0;
  let end = size; // exclusive
  let code = 200;
  const headers: http.OutgoingHttpHeaders = { etag, 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream' };
  const range = req.headers.range;
  const m = range === undefined ? null : /^bytes=(\d*)-(\d*)$/.exec(range);
  if (m && !has('ignore-range') && (m[1] !== '' || m[2] !== '')) {
    if (m[1] === '') {
      start = Math.max(0, size - Number(m[2]));
    } else {
      start = Number(m[1]);
      end = m[2] === '' ? size : Math.min(size, Number(m[2]) + 1);
    }
    if (start >= size || start >= end) {
      res.writeHead(416, { 'content-range': `bytes */${size}`, etag });
      res.end();
      return;
    }
    code = 206;
    headers['content-range'] = `bytes ${start}-${end - 1}/${size}`;
  }
  headers['content-length'] = String(end - start);
  res.writeHead(code, headers);
  if (req.method === 'HEAD') {
    res.end();
    return;
  }

  const drop = has('drop');
  const stall = has('stall');
  const corrupt = has('corrupt');
  const length = end - start;
  const cut = drop ? Math.min(drop.afterBytes, length) : stall ? Math.min(stall.afterBytes ?? 0, length) : length;
  // Read as it goes (not the whole file first): tests measure the client's memory in this process.
  const fh = await fs.open(file, 'r');
  try {
    for (let off = 0; off < cut; off += CHUNK) {
      const chunk = Buffer.alloc(Math.min(cut, off + CHUNK) - off);
      await fh.read(chunk, 0, chunk.length, start + off);
      const flip = (corrupt?.atByte ?? Math.floor(length / 2)) - off;
      if (corrupt && flip >= 0 && flip < chunk.length) chunk[flip] = chunk[flip]! ^ 0xff;
      if (!res.write(chunk)) await drainedOrClosed(res);
      if (res.destroyed) return;
    }
  } finally {
    await fh.close();
  }
  if (drop) {
    // Let the bytes already written reach the client, then cut: the client sees a short body.
    await new Promise<void>((resolve) => res.write('', () => resolve()));
    res.socket?.destroy();
    return;
  }
  if (stall) {
    res.flushHeaders();
    return;
  }
  res.end();
}

function drainedOrClosed(res: http.ServerResponse): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.once('drain', done);
    res.once('close', done);
  });
}
