import type { Command } from '../cli.js';
import { UpgradeError } from '../../core/errors.js';
import { buildImage } from '../../release/image-build.js';
import { parseSize } from './args.js';
import type { Layout } from '../../core/layout.js';
import { bootedVersion } from '../../grub/boot-control.js';

async function bootedImage(layout: Layout): Promise<string[]> {
  const v = await bootedVersion(layout);
  return v ? [layout.imageFile(v)] : [];
}

export const imageBuildCommand: Command = {
  summary: 'a reproducible ext4 image from a directory tree or a tarball of one',
  usage: 'image build ROOTFS_DIR|ROOTFS.tar[.gz|.zst] OUT.img [--size SIZE] [--uuid UUID] [--label L] [--kernel PATH] [--initrd PATH] [--force]',
  options: {
    size: { type: 'string' },
    uuid: { type: 'string' },
    label: { type: 'string' },
    time: { type: 'string' },
    kernel: { type: 'string' },
    initrd: { type: 'string' },
    force: { type: 'boolean' },
  },
  async run({ layout, options, positionals }) {
    const [rootfs, out] = positionals;
    if (!rootfs || !out || positionals.length > 2) {
      throw new UpgradeError('USAGE', 'image build needs ROOTFS_DIR (or a tarball of it) and OUT.img', { hint: 'e.g. upgradectl image build ./rootfs ./2.0.img, or ./rootfs.tar.zst ./2.0.img' });
    }
    const result = await buildImage({
      rootfs,
      out,
      size: typeof options.size === 'string' ? parseSize(options.size, '--size') : undefined,
      uuid: options.uuid as string | undefined,
      label: options.label as string | undefined,
      time: typeof options.time === 'string' ? Number(options.time) : undefined,
      kernel: options.kernel as string | undefined,
      initrd: options.initrd as string | undefined,
      force: Boolean(options.force),
      // The image this machine booted from (--root's /proc/cmdline) is never a valid output.
      protect: await bootedImage(layout),
    });
    return { data: result, text: `${result.out}: ${result.size} bytes, ${result.files} files, UUID ${result.uuid}, sha256 ${result.sha256}` };
  },
};
