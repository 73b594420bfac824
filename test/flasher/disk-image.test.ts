import t from 'tap';
import path from 'node:path';
import { run } from '../../src/core/exec.js';
import { FLASHER_SCRIPTS } from '../../src/flasher/initrd.js';
import { skipUnless } from '../helpers/requirements.js';

/**
 * The flasher's look into a whole-disk image before it writes it (flasher/flasher.sh
 * image_partition_starts, image_ext4_uuid, used by check_disk_image): real MBR and GPT disks made with
 * sfdisk and mke2fs, compressed with lz4 as a payload is, read with busybox sh.
 */
const skip = skipUnless({ commands: ['busybox', 'lz4', 'sfdisk', 'mke2fs', 'truncate'] });
const UUID = '0c6d2a3e-6f3b-4a5e-9a41-2b7c1d9e8f10';

async function payload(dir: string, name: string, table: string | undefined, fs: Array<{ offsetMiB: number; sizeMiB: number; uuid: string }>): Promise<string> {
  const img = path.join(dir, `${name}.img`);
  await run('truncate', ['-s', '8M', img]);
  if (table) await run('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', img], { input: table });
  for (const f of fs) await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-U', f.uuid, '-E', `offset=${f.offsetMiB << 20}`, img, `${f.sizeMiB}M`]);
  const out = `${img}.lz4`;
  await run('lz4', ['-q', '-f', img, out]);
  return out;
}

/** Each partition's start sector and the ext4 UUID found there (empty: none). */
async function look(file: string): Promise<string[]> {
  const script = `. ${path.join(FLASHER_SCRIPTS, 'flasher.sh')}; PAYLOAD=$1; for l in $(image_partition_starts); do echo "$l=$(image_ext4_uuid $((l * 512)))"; done`;
  const { stdout } = await run('busybox', ['sh', '-c', script, 'sh', file]);
  return stdout.trim().split('\n').filter(Boolean);
}

t.test('the flasher finds the partitions of a whole-disk image and the ext4 UUID on each, before writing', { skip }, async (t) => {
  const dir = t.testdir();
  t.same(await look(await payload(dir, 'mbr', 'label: dos\nstart=2048, type=83\n', [{ offsetMiB: 1, sizeMiB: 7, uuid: UUID }])), [`2048=${UUID}`], 'MBR');
  t.same(await look(await payload(dir, 'gpt', 'label: gpt\nstart=2048, size=4096, type=L\nstart=8192, type=L\n', [{ offsetMiB: 4, sizeMiB: 3, uuid: UUID }])), ['2048=', `8192=${UUID}`], 'GPT behind its protective MBR: the second partition holds the filesystem');
  const other = '11111111-2222-4333-8444-555555555555';
  t.same(await look(await payload(dir, 'other', 'label: dos\nstart=2048, type=83\n', [{ offsetMiB: 1, sizeMiB: 7, uuid: other }])), [`2048=${other}`], 'another filesystem: its UUID, which check_disk_image refuses');
  t.same(await look(await payload(dir, 'bare', undefined, [{ offsetMiB: 0, sizeMiB: 8, uuid: UUID }])), [], 'a bare filesystem has no table');
});
