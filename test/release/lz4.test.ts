import t from 'tap';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { encodeFrame, frameBlocks, Lz4FormatError, Lz4StreamDecoder, xxh32 } from '../../src/release/lz4.js';
import { skipUnless } from '../helpers/requirements.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
/** A whole frame decoded, block by block as the frame workers do (the frame buffer is consumed). */
const decodeFrame = (frame: Buffer, rawLength: number) => Buffer.concat([...frameBlocks(frame, rawLength)], rawLength);

/** Realistic-ish data: text-like runs, zeros and random bytes, so blocks compress unevenly. */
function sample(size: number): Buffer {
  const out = Buffer.alloc(size);
  let pos = 0;
  let i = 0;
  while (pos < size) {
    const kind = i++ % 3;
    const n = Math.min(size - pos, 50_000 + ((i * 7919) % 200_000));
    if (kind === 0) out.write('the quick brown fox jumps over the lazy dog '.repeat(Math.ceil(n / 44)).slice(0, n), pos);
    else if (kind === 1) randomBytes(n).copy(out, pos);
    pos += n;
  }
  return out;
}

t.test('xxh32 matches the reference vectors', async (t) => {
  t.equal(xxh32(Buffer.alloc(0)), 0x02cc5d05);
  t.equal(xxh32(Buffer.from('a')), 0x550d7456);
  t.equal(xxh32(Buffer.from('abc')), 0x32d153ff);
  t.equal(xxh32(Buffer.from('Nobody inspects the spammish repetition')), 0xe2293b2f);
});

t.test('our frames round-trip, also for incompressible and empty data', async (t) => {
  for (const raw of [sample(3 << 20), randomBytes(1 << 20), Buffer.alloc(4 << 20), Buffer.alloc(0), Buffer.from('x')]) {
    const frame = encodeFrame(raw);
    t.equal(sha(decodeFrame(Buffer.from(frame), raw.length)), sha(raw), `${raw.length} bytes`);
  }
  t.throws(() => encodeFrame(Buffer.alloc((4 << 20) + 1)), RangeError);
});

t.test('frameBlocks rejects damaged frames', async (t) => {
  const raw = sample(1 << 20);
  const frame = encodeFrame(raw);
  t.throws(() => decodeFrame(Buffer.from(frame.subarray(0, frame.length - 10)), raw.length), Lz4FormatError, 'truncated');
  const badMagic = Buffer.from(frame);
  badMagic[0] = 0;
  t.throws(() => decodeFrame(badMagic, raw.length), Lz4FormatError, 'magic');
  const badHeader = Buffer.from(frame);
  badHeader[14] = badHeader[14]! ^ 0xff;
  t.throws(() => decodeFrame(badHeader, raw.length), /header checksum/);
  t.throws(() => decodeFrame(Buffer.from(frame), raw.length + 1), /decodes to/, 'wrong length');
});

t.test('stock lz4 decodes our concatenated frames', { skip: skipUnless({ commands: ['lz4'] }) }, async (t) => {
  const dir = t.testdir();
  const raw = sample(9 << 20);
  const frames: Buffer[] = [];
  for (let o = 0; o < raw.length; o += 4 << 20) frames.push(encodeFrame(raw.subarray(o, o + (4 << 20))));
  writeFileSync(path.join(dir, 'p.lz4'), Buffer.concat(frames));
  const out = execFileSync('lz4', ['-d', '-c', path.join(dir, 'p.lz4')], { maxBuffer: 64 << 20 });
  t.equal(sha(out), sha(raw));
});

t.test('the stream decoder reads what stock lz4 writes, fed in odd chunk sizes', { skip: skipUnless({ commands: ['lz4'] }) }, async (t) => {
  const dir = t.testdir();
  const raw = sample(6 << 20);
  const input = path.join(dir, 'raw');
  writeFileSync(input, raw);
  // Defaults (independent 4 MiB blocks), linked 64 KiB blocks with checksums, and two frames concatenated.
  const variants: Array<[string, string[]]> = [
    ['default', []],
    ['linked+checksums', ['-BD', '-B4', '-BX', '--content-size']],
    ['no frame checksum', ['--no-frame-crc', '-B5']],
  ];
  for (const [name, flags] of variants) {
    const compressed = execFileSync('lz4', ['-q', '-c', ...flags, input], { maxBuffer: 64 << 20 });
    const payload = name === 'default' ? Buffer.concat([compressed, compressed]) : compressed;
    const expected = name === 'default' ? Buffer.concat([raw, raw]) : raw;
    const dec = new Lz4StreamDecoder();
    const out = Buffer.alloc(expected.length);
    for (let o = 0; o < payload.length; o += 777_777) {
      for (const { data, rawOffset } of dec.push(payload.subarray(o, o + 777_777))) data.copy(out, rawOffset);
    }
    dec.finish();
    t.equal(sha(out), sha(expected), name);
    t.equal(dec.at.rawOffset, expected.length);
  }
});

t.test('the stream decoder resumes from a recorded position and catches truncation', { skip: skipUnless({ commands: ['lz4'] }) }, async (t) => {
  const dir = t.testdir();
  const raw = sample(3 << 20);
  writeFileSync(path.join(dir, 'raw'), raw);
  const payload = execFileSync('lz4', ['-q', '-c', '-BD', '-B4', path.join(dir, 'raw')]);
  const pristine = Buffer.from(payload); // push() decodes in place
  const first = new Lz4StreamDecoder();
  const out = Buffer.alloc(raw.length);
  for (const { data, rawOffset } of first.push(payload.subarray(0, payload.length >> 1))) data.copy(out, rawOffset);
  const at = first.at;
  t.ok(at.rawOffset > 0 && at.frame, 'stopped inside the frame');
  const second = new Lz4StreamDecoder(at, first.dictionary);
  for (const { data, rawOffset } of second.push(payload.subarray(at.payloadOffset))) data.copy(out, rawOffset);
  second.finish();
  t.equal(sha(out), sha(raw), 'resumed decode is identical');

  const cut = new Lz4StreamDecoder();
  for (const _ of cut.push(pristine.subarray(0, payload.length - 9))) void _;
  t.throws(() => cut.finish(), /truncated LZ4 payload/);
});
