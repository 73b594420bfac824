import { firstBlockFixCommand, firstBlockOf } from '../../core/first-block.js';
import { listImages } from '../../core/images.js';
import type { Layout } from '../../core/layout.js';
import { imageKernelSignature, type Firmware } from '../../grub/firmware.js';
import { bootImages } from '../../operations/boot.js';
import type { Finding } from './doctor.js';

/**
 * doctor's checks of what the firmware and GRUB need from the images themselves (docs/operators-guide.md,
 * "UEFI and Secure Boot"): the firmware mode, the first block of every image file, and under Secure
 * Boot whether each image's kernel carries a signature.
 */

type Result = Omit<Finding, 'check'>;

export function firmwareFinding(fw: Firmware): Result {
  if (fw.mode === 'bios') return { level: 'ok', message: 'BIOS (legacy) boot: GRUB i386-pc' };
  if (fw.secureBoot === undefined) {
    return { level: 'warn', message: 'UEFI; whether Secure Boot is on cannot be read (no SecureBoot variable)', fix: 'mount efivarfs: mount -t efivarfs efivarfs /sys/firmware/efi/efivars' };
  }
  return {
    level: 'ok',
    message: fw.secureBoot
      ? 'UEFI with Secure Boot on: only shim + signed GRUB run, and they load only signed kernels'
      : 'UEFI, Secure Boot off',
  };
}

/**
 * GRUB cannot open an image file whose first block is a hole ("error: invalid extent" from signed GRUB,
 * core/first-block.ts). commit repairs the image it arms; images already on disk are reported here,
 * as an error where Secure Boot makes it fatal.
 */
export async function checkImageFiles(layout: Layout, fw: Firmware): Promise<Result[]> {
  const out: Result[] = [];
  for (const { file } of await listImages(layout)) {
    const first = await firstBlockOf(file);
    if (first.kind === 'written') continue;
    if (first.kind === 'unknown') {
      out.push({ level: 'ok', message: `${file}: the host filesystem gives no extent map (${first.why}); first block not checked` });
      continue;
    }
    out.push({
      level: fw.secureBoot ? 'error' : 'warn',
      message: `${file} begins with ${first.kind === 'hole' ? 'a hole' : 'an unwritten extent'}: signed GRUB fails on it with "error: invalid extent"${fw.secureBoot ? ' (Secure Boot is on: it cannot boot)' : ''}`,
      fix: `${firstBlockFixCommand(file)}  (rewrites its first block in place; upgradectl commit does this for the image it arms)`,
    });
  }
  if (out.length === 0) out.push({ level: 'ok', message: 'every image file starts with a written block' });
  return out;
}

/** Under Secure Boot, an image whose kernel has no signature cannot boot: the signed GRUB refuses it. */
export async function checkKernelSignatures(layout: Layout): Promise<Result[]> {
  const out: Result[] = [];
  for (const image of await bootImages(layout)) {
    const file = layout.imageFile(image.version);
    const kernel = image.kernel ?? '/vmlinuz';
    const signature = await imageKernelSignature(file, kernel);
    if (signature === 'missing') continue; // the 'images' check already reports it
    out.push(
      signature === 'signed'
        ? { level: 'ok', message: `${image.version}: ${kernel} carries an Authenticode signature` }
        : {
            level: 'error',
            message: `${image.version}: ${kernel} ${signature === 'not-pe' ? 'is not an EFI (PE) kernel' : 'has no signature'}: GRUB refuses to load it under Secure Boot`,
            fix: 'build the image with a signed kernel (Debian: linux-image-amd64, not a self-built one), or sign it with a key enrolled in MOK (sbsign, mokutil)',
          },
    );
  }
  return out;
}
