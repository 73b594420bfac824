import { promises as fs } from 'node:fs';
import { run } from './exec.js';

/**
 * The first block of an image file must be allocated and written on the host filesystem.
 *
 * GRUB's ext4 driver looks a file block up among the extents of the file's extent-tree leaf; a block
 * before the first extent is an error, "invalid extent" (a hole after it reads as zeros). An ext4 image
 * begins with 1 KiB of zeros before its superblock, so on a host filesystem with 1 KiB blocks, an
 * image copied sparsely (`cp --sparse=always`, `mke2fs -d`, rsync -S) starts with a hole. Signed Debian
 * GRUB then refuses to open the loopback file (measured, FACTS.md); an unwritten (fallocated) extent is
 * no better: GRUB reads its stale disk blocks as they are. Rewriting the bytes Linux reads there (zeros)
 * allocates real, written blocks.
 */

/** Bytes rewritten at offset 0: at least one block of any host filesystem GRUB reads (1, 2 or 4 KiB). */
export const FIRST_BLOCK_BYTES = 4096;

export type FirstBlock =
  | { kind: 'written' }
  | { kind: 'hole' }
  | { kind: 'unwritten' }
  /** The filesystem gives no extent map (tmpfs, no filefrag): nothing can be said. */
  | { kind: 'unknown'; why: string };

/**
 * How the host filesystem maps the file's first block, from FIEMAP through e2fsprogs' `filefrag -v`
 * (`-s`: synced first, so delayed allocation shows as the extent it becomes).
 */
export async function firstBlockOf(file: string): Promise<FirstBlock> {
  let out: string;
  try {
    out = (await run('filefrag', ['-s', '-v', file])).stdout;
  } catch (err) {
    return { kind: 'unknown', why: (err as Error).message };
  }
  if (/\b0 extents? found/.test(out)) return { kind: 'hole' };
  // "   0:        0..       0:    8159746..   8159746:      1:             last,unwritten": the
  // logical range comes second, the flags last.
  const parts = out.split('\n').find((l) => /^\s*0:/.test(l))?.split(':');
  const start = parts && /(\d+)\.\./.exec(parts[1] ?? '')?.[1];
  if (!parts || start === undefined) return { kind: 'unknown', why: `filefrag printed no extent table for ${file}` };
  if (start !== '0') return { kind: 'hole' };
  return parts.at(-1)!.trim().split(',').includes('unwritten') ? { kind: 'unwritten' } : { kind: 'written' };
}

/**
 * Write the first FIRST_BLOCK_BYTES of the file back over themselves and sync: the content is
 * unchanged (a hole reads as zeros and gets zeros), the blocks become allocated and written. Only for
 * a file nobody else writes (an image that is not mounted); GRUB sees the new mapping once the host
 * filesystem's journal is checkpointed (grub/host-fs.ts checkpointHost).
 */
export async function rewriteFirstBlock(file: string): Promise<void> {
  const fh = await fs.open(file, 'r+');
  try {
    const buf = Buffer.alloc(FIRST_BLOCK_BYTES);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    if (bytesRead > 0) await fh.write(buf, 0, bytesRead, 0);
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/**
 * Make sure GRUB can open the image: rewrite its first block when the extent map shows a hole or an
 * unwritten extent there, or when no map can be read (the rewrite is harmless on a written block).
 * Returns what was found before.
 */
export async function ensureFirstBlockWritten(file: string): Promise<FirstBlock> {
  const found = await firstBlockOf(file);
  if (found.kind !== 'written') await rewriteFirstBlock(file);
  return found;
}

/** The command an operator runs for the same repair by hand (the image must not be mounted read-write elsewhere). */
export function firstBlockFixCommand(file: string): string {
  return `dd if=${file} of=${file} bs=${FIRST_BLOCK_BYTES} count=1 conv=notrunc,fsync`;
}
