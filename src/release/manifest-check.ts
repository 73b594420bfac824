import { bootPathProblem, kernelArgsProblem } from '../core/boot-data.js';
import { UpgradeError } from '../core/errors.js';
import { MAX_BLOCK } from './lz4-limits.js';
import { assertVersion } from '../core/version.js';
import { framesRoot } from './frames-root.js';
import { MANIFEST_FORMATS, type Manifest } from './manifest.js';

/**
 * Check every field a machine relies on before it downloads a byte: a manifest that is signed but
 * malformed (a publisher bug) must fail here with its field named, not as a confusing error later.
 */
export function validateManifest(doc: unknown, where: string): Manifest {
  const fail = (field: string, want: string): never => {
    throw new UpgradeError('MANIFEST', `${where}: ${field} is missing or invalid (expected ${want})`, {
      hint: 're-publish the release with upgradectl publish; docs/release-format.md describes the format',
    });
  };
  const obj = (v: unknown, field: string): Record<string, unknown> =>
    v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : fail(field, 'an object');
  const str = (v: unknown, field: string): string => (typeof v === 'string' && v.length > 0 ? v : fail(field, 'a string'));
  const count = (v: unknown, field: string): number =>
    typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : fail(field, 'a whole number ≥ 0');
  const sha = (v: unknown, field: string): string => (typeof v === 'string' && /^[0-9a-f]{64}$/.test(v) ? v : fail(field, 'a SHA-256 in hex'));
  /** A file beside the payload, bound to the manifest by its size and SHA-256. */
  const sideFile = (ref: Record<string, unknown>, field: string): void => {
    if (typeof ref.path !== 'string' || !/^[A-Za-z0-9._-]+$/.test(ref.path)) fail(`${field}.path`, 'a file name beside the payload');
    count(ref.size, `${field}.size`);
    sha(ref.sha256, `${field}.sha256`);
  };

  const m = obj(doc, 'the manifest');
  if (!(MANIFEST_FORMATS as readonly unknown[]).includes(m.format)) fail('format', MANIFEST_FORMATS.map((f) => `"${f}"`).join(' or '));
  const v2 = m.format !== MANIFEST_FORMATS[0];
  const version = str(m.version, 'version');
  assertVersion(version, `${where}: version`);
  const created = str(m.created, 'created');
  if (m.expires !== undefined) str(m.expires, 'expires');
  const image = obj(m.image, 'image');
  const size = count(image.size, 'image.size');
  if (size === 0) fail('image.size', 'a size above 0');
  sha(image.sha256, 'image.sha256');
  count(image.allocated, 'image.allocated');
  const payload = obj(m.payload, 'payload');
  str(payload.path, 'payload.path');
  const payloadSize = count(payload.size, 'payload.size');
  sha(payload.sha256, 'payload.sha256');
  if (payload.compression === 'lz4-frames') {
    const frameSize = count(payload.frameSize, 'payload.frameSize');
    if (frameSize === 0 || frameSize > MAX_BLOCK || frameSize % 4096) fail('payload.frameSize', `a multiple of 4096 up to ${MAX_BLOCK}`);
    if (!Array.isArray(payload.frames)) fail('payload.frames', 'an array');
    const frames = payload.frames as unknown[];
    if (frames.length !== Math.ceil(size / frameSize)) fail('payload.frames', `${Math.ceil(size / frameSize)} frames for ${size} bytes`);
    // Frames tile both the payload and the image exactly, in order: no gap, overlap or overhang.
    let offset = 0;
    let raw = 0;
    frames.forEach((f, i) => {
      const frame = obj(f, `payload.frames[${i}]`);
      if (count(frame.offset, `payload.frames[${i}].offset`) !== offset) fail(`payload.frames[${i}].offset`, `${offset}`);
      offset += count(frame.length, `payload.frames[${i}].length`);
      const rawLength = count(frame.rawLength, `payload.frames[${i}].rawLength`);
      const want = Math.min(frameSize, size - raw);
      if (rawLength !== want) fail(`payload.frames[${i}].rawLength`, `${want}`);
      raw += rawLength;
      sha(frame.sha256, `payload.frames[${i}].sha256`);
      if (frame.payloadSha256 !== undefined) sha(frame.payloadSha256, `payload.frames[${i}].payloadSha256`);
    });
    if (offset !== payloadSize) fail('payload.size', `${offset}, the end of the last frame`);
    if (v2) {
      // The frame-hash root replaces the second pass over the image: it must be there and be right.
      const root = sha(image.framesSha256, 'image.framesSha256');
      if (root !== framesRoot((frames as Array<{ sha256: string }>).map((f) => f.sha256))) fail('image.framesSha256', 'the SHA-256 of the frames\' SHA-256s');
      if (payload.chunkSize !== undefined || payload.index !== undefined) {
        const chunkSize = count(payload.chunkSize, 'payload.chunkSize');
        if (chunkSize === 0 || chunkSize > frameSize || frameSize % chunkSize || chunkSize % 4096) fail('payload.chunkSize', 'a multiple of 4096 dividing payload.frameSize');
        const index = obj(payload.index, 'payload.index');
        sideFile(index, 'payload.index');
        if (index.blockSize !== 4096) fail('payload.index.blockSize', '4096');
        if (payload.zstdChunks !== undefined) sideFile(obj(payload.zstdChunks, 'payload.zstdChunks'), 'payload.zstdChunks');
        if (payload.zstdBlocks !== undefined) {
          const z = obj(payload.zstdBlocks, 'payload.zstdBlocks');
          sideFile(z, 'payload.zstdBlocks');
          const size = count(z.chunkSize, 'payload.zstdBlocks.chunkSize');
          if (size === 0 || size > frameSize || frameSize % size || size % 4096) fail('payload.zstdBlocks.chunkSize', 'a multiple of 4096 dividing payload.frameSize');
          sideFile(obj(z.index, 'payload.zstdBlocks.index'), 'payload.zstdBlocks.index');
        }
      }
    }
  } else if (payload.compression !== 'lz4') {
    fail('payload.compression', '"lz4-frames" or "lz4"');
  }
  const boot = obj(m.boot, 'boot');
  for (const k of ['kernel', 'initrd'] as const) {
    const problem = bootPathProblem(boot[k]);
    if (problem) fail(`boot.${k}`, `an absolute, normalised path inside the image: ${problem}`);
  }
  if (typeof boot.cmdline !== 'string') fail('boot.cmdline', 'a string');
  const argsProblem = kernelArgsProblem(boot.cmdline);
  if (argsProblem) fail('boot.cmdline', `kernel arguments GRUB can pass safely: ${argsProblem}`);
  if (typeof m.reflash !== 'boolean' && m.reflash !== 'disk') fail('reflash', 'true, false or "disk"');
  if (Number.isNaN(Date.parse(created))) fail('created', 'an ISO 8601 date');
  return m as unknown as Manifest;
}
