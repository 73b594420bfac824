import { promises as fs, existsSync } from 'node:fs';
import path from 'node:path';
import { readFromImage, resolveInImage } from '../core/ext4-image.js';

/**
 * What firmware starts GRUB here, and whether Secure Boot is on: under Secure Boot only a signed GRUB
 * (shim + grub-efi-amd64-signed) runs, it loads only signed kernels, and it fails on images whose
 * first block is a hole (core/first-block.ts). Read from sysfs under --root, so a test builds the tree.
 */
export interface Firmware {
  mode: 'uefi' | 'bios';
  /** undefined: UEFI without a readable SecureBoot variable (efivarfs not mounted). */
  secureBoot: boolean | undefined;
}

/** The global EFI variable GUID (EFI_GLOBAL_VARIABLE); the file holds 4 attribute bytes, then the value. */
const SECURE_BOOT_VAR = 'SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c';

export async function firmwareOf(root: string): Promise<Firmware> {
  const efi = path.join(root, 'sys/firmware/efi');
  if (!existsSync(efi)) return { mode: 'bios', secureBoot: false };
  try {
    const bytes = await fs.readFile(path.join(efi, 'efivars', SECURE_BOOT_VAR));
    return { mode: 'uefi', secureBoot: bytes.length >= 5 ? bytes[4] === 1 : undefined };
  } catch {
    return { mode: 'uefi', secureBoot: undefined };
  }
}

export type PeSignature = 'signed' | 'unsigned' | 'not-pe';

/** The signature of the kernel at `kernel` inside an image file (symlinks followed inside the image). */
export async function imageKernelSignature(image: string, kernel: string): Promise<PeSignature | 'missing'> {
  const found = await resolveInImage(image, kernel);
  if ('missing' in found) return 'missing';
  return peSignature(await readFromImage(image, found.path));
}

/**
 * Whether a kernel file carries an Authenticode signature: a PE/COFF image (an EFI-stub kernel is one)
 * whose certificate table, data directory 4 ("security"), is not empty. It says a signature is there,
 * not that the firmware's keys accept it; that is shim's and the firmware's call at boot.
 */
export function peSignature(file: Buffer): PeSignature {
  if (file.length < 0x40 || file.toString('latin1', 0, 2) !== 'MZ') return 'not-pe';
  const pe = file.readUInt32LE(0x3c);
  if (pe + 24 > file.length || file.toString('latin1', pe, pe + 4) !== 'PE\0\0') return 'not-pe';
  const optional = pe + 24;
  const magic = file.readUInt16LE(optional);
  // PE32 and PE32+ differ in where the data directories start (and in the count's offset before them).
  const layout = magic === 0x10b ? { count: 92, dirs: 96 } : magic === 0x20b ? { count: 108, dirs: 112 } : undefined;
  if (!layout || optional + layout.dirs + 5 * 8 > file.length) return 'not-pe';
  if (file.readUInt32LE(optional + layout.count) < 5) return 'unsigned';
  const size = file.readUInt32LE(optional + layout.dirs + 4 * 8 + 4);
  return size > 0 ? 'signed' : 'unsigned';
}
