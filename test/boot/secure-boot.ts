import { existsSync, promises as fs, readdirSync } from 'node:fs';
import path from 'node:path';
import { run } from '../../src/core/exec.js';
import { cacheDir } from '../helpers/debian-root.js';
import type { SignedBoot } from './disk.js';

/**
 * Debian's signed boot chain for the Secure Boot test, from the packages' .deb files in the test cache
 * (scripts/install-deps.sh downloads them there). Never installed on this machine: shim-signed's
 * postinst runs grub-install on a UEFI host, and this machine's bootloader is not the tests' to touch.
 */
export const SIGNED_DEBS = ['shim-signed', 'grub-efi-amd64-signed'];

export function signedDebsDir(): string {
  return path.join(cacheDir(), 'sb-debs');
}

function debOf(name: string): string | undefined {
  const dir = signedDebsDir();
  const file = existsSync(dir) ? readdirSync(dir).filter((f) => f.startsWith(`${name}_`) && f.endsWith('.deb')).sort().at(-1) : undefined;
  return file && path.join(dir, file);
}

/** Why the signed chain is not available (for tap's skip), or false. */
export function signedBootMissing(): string | false {
  const missing = SIGNED_DEBS.filter((n) => !debOf(n));
  return missing.length ? `needs ${missing.join(', ')} .deb files in ${signedDebsDir()} (scripts/install-deps.sh)` : false;
}

/** shimx64.efi.signed and grubx64.efi.signed, unpacked once per .deb into the cache. */
export async function signedBoot(): Promise<SignedBoot> {
  const unpack = async (name: string) => {
    const deb = debOf(name);
    if (!deb) throw new Error(signedBootMissing() || `no ${name}`);
    const dest = path.join(cacheDir(), 'boot', 'signed', path.basename(deb, '.deb'));
    if (!existsSync(dest)) {
      await fs.mkdir(`${dest}.tmp`, { recursive: true });
      await run('dpkg-deb', ['-x', deb, `${dest}.tmp`]);
      await fs.rename(`${dest}.tmp`, dest);
    }
    return dest;
  };
  return {
    shim: path.join(await unpack('shim-signed'), 'usr/lib/shim/shimx64.efi.signed'),
    grub: path.join(await unpack('grub-efi-amd64-signed'), 'usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed'),
  };
}
