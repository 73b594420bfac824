import { gzipSync } from 'node:zlib';

/**
 * A gzip-compressed cpio "newc" archive, the format the kernel unpacks as an initramfs
 * (Documentation/driver-api/early-userspace/buffer-format.rst). Written here rather than with cpio(1)
 * so the result does not depend on the build machine's owners and times: every entry is root's, at
 * time 0, so the same inputs give the same bytes.
 */

export type CpioEntry =
  | { path: string; kind: 'dir'; mode: number }
  | { path: string; kind: 'file'; mode: number; data: Buffer }
  | { path: string; kind: 'symlink'; target: string };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

function pad4(n: number): Buffer {
  return Buffer.alloc((4 - (n % 4)) % 4);
}

function header(ino: number, mode: number, nlink: number, size: number, name: string): Buffer {
  const hex = (n: number) => n.toString(16).padStart(8, '0');
  // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
  const fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, Buffer.byteLength(name) + 1, 0];
  const head = Buffer.from(`070701${fields.map(hex).join('')}${name}\0`, 'latin1');
  return Buffer.concat([head, pad4(head.length)]);
}

export function cpioNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    // Archive paths are relative ("bin/busybox"), as the kernel expects.
    const name = e.path.replace(/^\/+/, '');
    const data = e.kind === 'file' ? e.data : e.kind === 'symlink' ? Buffer.from(e.target) : Buffer.alloc(0);
    const mode = e.kind === 'dir' ? S_IFDIR | e.mode : e.kind === 'file' ? S_IFREG | e.mode : S_IFLNK | 0o777;
    parts.push(header(ino++, mode, e.kind === 'dir' ? 2 : 1, data.length, name), data, pad4(data.length));
  }
  parts.push(header(0, 0, 1, 0, 'TRAILER!!!'));
  return Buffer.concat(parts);
}

export function gzipCpio(entries: CpioEntry[]): Buffer {
  return gzipSync(cpioNewc(entries), { level: 9 });
}
