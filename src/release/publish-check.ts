import { promises as fs } from 'node:fs';
import path from 'node:path';
import { bootPathProblem, kernelArgsProblem } from '../core/boot-data.js';
import { UpgradeError } from '../core/errors.js';
import { run } from '../core/exec.js';
import { log } from '../core/log.js';
import { assertVersion, compareVersions } from '../core/version.js';
import { assertChannelName } from './layout.js';
import { FRAME_MAGIC, Lz4StreamDecoder, MAX_BLOCK } from './lz4.js';
import type { BootData } from './manifest.js';
import { normalKeyId } from './signing.js';

/**
 * Everything `publish` is given, checked before a byte is compressed or uploaded: a bad argument found
 * after the payload went up burns the version (releases are immutable). The boot data is checked with
 * the same rules a machine applies (src/core/boot-data.ts), and against the image itself.
 */
export interface PublishArgs {
  image: string;
  version: string;
  channel?: string;
  rollout: number;
  boot: BootData;
  /** A whole host partition (true) or disk ('disk') for the RAM flasher: no kernel at its root to look for. */
  reflash?: boolean | 'disk';
  expiresInDays: number;
  frameSize: number;
  chunkSize?: number;
  minVersion?: string;
  revokeKeys: string[];
  /** The key id of the signing key: a channel may not revoke the key that signs it. */
  signingKeyId: string;
}

export async function checkPublishArgs(a: PublishArgs): Promise<{ lz4: boolean }> {
  assertVersion(a.version);
  if (a.channel !== undefined) assertChannelName(a.channel, '--channel');
  if (a.frameSize <= 0 || a.frameSize > MAX_BLOCK || a.frameSize % 4096 !== 0) {
    throw new UpgradeError('USAGE', `frame size ${a.frameSize} is not valid`, { hint: `use a multiple of 4096 up to ${MAX_BLOCK}` });
  }
  if (a.chunkSize !== undefined && (a.chunkSize <= 0 || a.chunkSize % 4096 !== 0 || a.frameSize % a.chunkSize !== 0)) {
    throw new UpgradeError('USAGE', `chunk size ${a.chunkSize} is not valid`, { hint: `use a multiple of 4096 that divides the frame size (${a.frameSize})` });
  }
  if (!Number.isInteger(a.rollout) || a.rollout < 0 || a.rollout > 100) throw new UpgradeError('USAGE', `--rollout ${a.rollout} is not valid`, { hint: 'give a percentage from 0 to 100' });
  if (!Number.isInteger(a.expiresInDays) || a.expiresInDays < 1) throw new UpgradeError('USAGE', `--expires-days ${a.expiresInDays} is not valid`, { hint: 'give a whole number of days, at least 1' });
  if ((a.minVersion !== undefined || a.revokeKeys.length) && a.channel === undefined) {
    throw new UpgradeError('USAGE', '--min-version and --revoke are written into the channel file', { hint: 'add --channel NAME' });
  }
  if (a.minVersion !== undefined) {
    assertVersion(a.minVersion, '--min-version');
    if (compareVersions(a.minVersion, a.version) > 0) {
      throw new UpgradeError('USAGE', `--min-version ${a.minVersion} is above the version being published, ${a.version}`, { hint: 'machines would refuse the release the channel points to; lower --min-version' });
    }
  }
  for (const id of a.revokeKeys) {
    const norm = normalKeyId(id);
    if (!norm) throw new UpgradeError('USAGE', `--revoke ${id} is not a key id`, { hint: 'give the 16 hex digits upgradectl keygen printed for the key' });
    if (norm === a.signingKeyId) throw new UpgradeError('USAGE', `--revoke ${id} is the key this release is signed with`, { hint: 'sign with a new key (upgradectl keygen) and revoke the old one' });
  }
  for (const [what, p] of [['kernel', a.boot.kernel], ['initrd', a.boot.initrd]] as const) {
    const problem = bootPathProblem(p);
    if (problem) throw new UpgradeError('USAGE', `--${what}: ${problem}`, { hint: `give the ${what}'s absolute path inside the image, e.g. --${what} /${what === 'kernel' ? 'vmlinuz' : 'initrd.img'}` });
  }
  const argsProblem = kernelArgsProblem(a.boot.cmdline);
  if (argsProblem) throw new UpgradeError('USAGE', `--cmdline: ${argsProblem}`, { hint: 'pass only the extra kernel arguments the release needs; upgradectl adds root=, upgradectl.loop= and panic= itself' });
  return checkImage(a.image, a.boot, a.reflash);
}

const EXT4_MAGIC_OFFSET = 1080;
const EXT4_MAGIC = 0xef53;
const MBR_SIGNATURE_OFFSET = 510;
const MBR_SIGNATURE = 0xaa55;

/** The input is an ext4 filesystem (raw or inside an LZ4 stream) that holds its kernel and initrd. */
async function checkImage(image: string, boot: BootData, reflash: boolean | 'disk' = false): Promise<{ lz4: boolean }> {
  const head = await readHead(image);
  const lz4 = head.length >= 4 && head.readUInt32LE(0) === FRAME_MAGIC;
  const fs0 = lz4 ? await decodedHead(image) : head;
  if (reflash === 'disk') {
    // A whole disk starts with an MBR (or GPT's protective MBR): its boot signature, not a superblock.
    if (fs0.length < 512 || fs0.readUInt16LE(MBR_SIGNATURE_OFFSET) !== MBR_SIGNATURE) {
      throw new UpgradeError('USAGE', `${image} is not a whole-disk image: no partition table (boot signature 0x55AA at byte 510)${lz4 ? ' inside its LZ4 stream' : ''}`, {
        hint: 'publish the disk (partition table, boot code, partitions) with --reflash-disk, or a host partition with --reflash',
      });
    }
    return { lz4 };
  }
  if (fs0.length < EXT4_MAGIC_OFFSET + 2 || fs0.readUInt16LE(EXT4_MAGIC_OFFSET) !== EXT4_MAGIC) {
    throw new UpgradeError('USAGE', `${image} is not an ext4 filesystem image${lz4 ? ' (inside its LZ4 stream)' : ''}`, {
      hint: 'machines loop-mount the image as /: build one with upgradectl image build ROOTFS_DIR OUT.img',
    });
  }
  // A reflash release is a whole host partition (docs/flasher.md): it boots through its own grub.cfg
  // and images, so no kernel is looked for at its root.
  if (reflash) return { lz4 };
  if (lz4) {
    // debugfs needs the filesystem as a file; decompressing a whole image only to look is not worth it.
    log.warn(`${image} is LZ4: its kernel (${boot.kernel}) and initrd (${boot.initrd}) were not looked for inside it`);
    return { lz4 };
  }
  const missing: string[] = [];
  for (const [what, p] of [['kernel', boot.kernel], ['initrd', boot.initrd]] as const) {
    const problem = await fileProblem(image, p);
    if (problem) missing.push(`${what} ${p}: ${problem}`);
  }
  if (missing.length) {
    throw new UpgradeError('USAGE', `${image} cannot boot as published: ${missing.join('; ')}`, {
      hint: 'point --kernel/--initrd at the files inside the image (debugfs -R "ls -l /" IMAGE lists its root), or rebuild the image with them',
    });
  }
  return { lz4 };
}

async function readHead(image: string): Promise<Buffer> {
  let fh;
  try {
    fh = await fs.open(image, 'r');
  } catch (err) {
    throw new UpgradeError('USAGE', `cannot open image ${image}: ${(err as Error).message}`, { cause: err, hint: 'pass an ext4 image file or a block device' });
  }
  try {
    const head = Buffer.alloc(4096);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    if (bytesRead === 0) throw new UpgradeError('USAGE', `image ${image} is empty`, { hint: 'build one with upgradectl image build' });
    return head.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** The first decoded bytes of an LZ4 stream: enough for the superblock. */
async function decodedHead(file: string): Promise<Buffer> {
  const decoder = new Lz4StreamDecoder();
  const out: Buffer[] = [];
  let have = 0;
  const fh = await fs.open(file, 'r');
  try {
    for await (const chunk of fh.createReadStream({ highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
      for (const { data } of decoder.push(Buffer.from(chunk))) {
        out.push(data);
        have += data.length;
      }
      if (have >= 4096) break;
    }
  } catch (err) {
    throw new UpgradeError('USAGE', `${file} is not a valid LZ4 stream: ${(err as Error).message}`, { cause: err, hint: 'recompress the image with lz4, or publish the raw image' });
  } finally {
    await fh.close();
  }
  return Buffer.concat(out);
}

/**
 * Why `p` is not a file GRUB can load from the image, or undefined. Read with debugfs (no mount, no
 * root needed); symlinks are followed inside the image, as GRUB follows them.
 */
async function fileProblem(image: string, p: string, depth = 0): Promise<string | undefined> {
  if (depth > 8) return 'too many symbolic links';
  const { stdout } = await run('debugfs', ['-R', `stat "${p}"`, image]);
  const type = /Type: (\S+)/.exec(stdout)?.[1];
  if (!type) return 'not found in the image';
  if (type === 'regular') return undefined;
  if (type !== 'symlink') return `a ${type}, not a file`;
  let target = /Fast link dest: "(.*)"/.exec(stdout)?.[1];
  if (target === undefined) target = (await run('debugfs', ['-R', `cat "${p}"`, image])).stdout;
  const next = path.posix.normalize(target.startsWith('/') ? target : path.posix.join(path.posix.dirname(p), target));
  // A link target with quotes or newlines cannot be named to debugfs, and GRUB would not find it either.
  if (bootPathProblem(next)) return `a symbolic link to '${target}', which is not a plain path`;
  return fileProblem(image, next, depth + 1);
}
