// A frame worker's ranged GET in a process of its own (for environment only read at start-up, such as
// NODE_EXTRA_CA_CERTS). Usage: range-into.ts URL KEY START END → prints the SHA-256 of the bytes.
import { createHash } from 'node:crypto';
import { openSource } from '../../src/release/sources/index.js';

const [url, key, start, end] = process.argv.slice(2);
const source = openSource(url!, { retry: { retries: 0, baseDelayMs: 1, stallTimeoutMs: 5000 } });
try {
  const into = Buffer.alloc(Number(end) - Number(start));
  const got = await source.range(key!, Number(start), Number(end), undefined, into);
  if (got.buffer !== into.buffer) throw new Error('the range did not land in the given buffer');
  console.log(createHash('sha256').update(got).digest('hex'));
} finally {
  await source.close();
}
