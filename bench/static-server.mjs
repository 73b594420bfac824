// A plain static file server with single-range support, for benchmarks: the same server feeds curl,
// casync and upgradectl, in its own process. Usage: node static-server.mjs DIR  → prints the port.
// With an IPC channel, answers any message with the body bytes it has sent so far (bytes on the wire).
import { createReadStream, promises as fs } from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const root = path.resolve(process.argv[2]);
// Payload transfer stats for rate benchmarks: bytes sent and the span from the first request's start to
// the last response's end. GET /__stats returns them and starts afresh.
let stats = { bytes: 0, first: 0, last: 0 };
let sent = 0;
const server = http.createServer(async (req, res) => {
  if (req.url === '/__stats') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(stats));
    stats = { bytes: 0, first: 0, last: 0 };
    return;
  }
  const file = path.join(root, decodeURIComponent(new URL(req.url, 'http://x').pathname));
  if (!file.startsWith(root)) return res.writeHead(403).end();
  let st;
  try {
    st = await fs.stat(file);
  } catch {
    return res.writeHead(404).end();
  }
  if (!st.isFile()) return res.writeHead(404).end();
  const etag = `"${st.size}-${st.mtimeMs}"`;
  const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
  const start = m ? Number(m[1]) : 0;
  const end = m && m[2] ? Number(m[2]) : st.size - 1;
  const headers = { 'content-length': end - start + 1, etag, 'accept-ranges': 'bytes' };
  if (m) headers['content-range'] = `bytes ${start}-${end}/${st.size}`;
  res.writeHead(m ? 206 : 200, headers);
  if (req.method === 'HEAD') return res.end();
  const payload = file.endsWith('.lz4');
  if (payload && !stats.first) stats.first = Date.now();
  const stream = createReadStream(file, { start, end, highWaterMark: 1 << 20 });
  stream.on('data', (d) => (sent += d.length));
  if (payload) {
    stream.on('data', (chunk) => (stats.bytes += chunk.length));
    res.on('finish', () => (stats.last = Date.now()));
  }
  stream.pipe(res);
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
process.on('message', () => process.send(sent));
process.on('disconnect', () => process.exit(0));
