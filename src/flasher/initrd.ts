import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UpgradeError } from '../core/errors.js';
import { run } from '../core/exec.js';
import { gzipCpio, type CpioEntry } from './cpio.js';

/**
 * The flasher's initrd: busybox-static (shell, wget, udhcpc, sha256sum, dd, findfs), the lz4 tool with
 * the libraries it links (busybox has no LZ4 decoder), the running kernel's modules for disks, network
 * and ext4, and our /init with flasher/flasher.sh (docs/flasher.md). It runs from RAM with the running
 * image's kernel, so the modules must be that kernel's.
 */

/** The scripts, at the top of the repository (shipped with the package, like initramfs-hooks/). */
export const FLASHER_SCRIPTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../flasher');

/**
 * What a flash needs from the kernel, loaded in this order with their dependencies first: the disk
 * (virtio, SATA/IDE, SCSI), the network (virtio, Intel e1000/e1000e, the common cards of VMs and
 * servers; others: docs/flasher.md), ext4 to read the job, crc32c for ext4's checksums.
 */
export const FLASHER_MODULES = [
  'crc32c_generic', 'virtio_pci', 'virtio_blk', 'virtio_scsi', 'virtio_net', 'ata_piix', 'ahci', 'sd_mod', 'e1000', 'e1000e', 'ext4',
];

export interface InitrdInputs {
  /** busybox-static, from the running image. */
  busybox: string;
  /** The lz4 CLI; its shared libraries come along (ldd). */
  lz4: string;
  /** /lib/modules/<release> of the kernel the flasher boots. */
  modulesDir: string;
  /** Debian's dropbear (dropbear-bin), for SSH into the flasher; none: the flasher has no SSH. */
  dropbear?: string;
  /**
   * The openssl CLI, for SHA-256 (flasher.sh sha256): it uses the CPU's SHA extensions, ~8x busybox's
   * plain C on a 1 GiB image (1.2 s against 10 s here), and the flasher hashes the image three times.
   * None: busybox's sha256sum.
   */
  openssl?: string;
}

export interface BuiltInitrd {
  data: Buffer;
  modules: string[];
  files: string[];
}

/** A dynamically linked busybox would need a libc the initrd does not carry: refuse it here. */
async function assertStatic(file: string): Promise<void> {
  const elf = await fs.readFile(file);
  if (elf.readUInt32BE(0) !== 0x7f454c46) throw new UpgradeError('UNSUPPORTED', `${file} is not an ELF binary`);
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  for (let i = 0; i < elf.readUInt16LE(0x38); i++) {
    if (elf.readUInt32LE(phoff + i * phentsize) === 3 /* PT_INTERP */) {
      throw new UpgradeError('UNSUPPORTED', `${file} is dynamically linked; the flasher needs a static busybox`, { hint: 'apt-get install busybox-static' });
    }
  }
}

/** The shared objects `bin` loads, with the dynamic loader (absolute paths), from ldd. */
export async function sharedLibraries(bin: string): Promise<string[]> {
  let stdout: string;
  try {
    ({ stdout } = await run('ldd', [bin]));
  } catch (err) {
    // ldd exits 1 for a static binary: nothing to copy.
    if (/not a dynamic executable/.test(String((err as { stdout?: string; stderr?: string }).stderr ?? '') + String((err as { stdout?: string }).stdout ?? ''))) return [];
    throw err;
  }
  const libs: string[] = [];
  for (const line of stdout.split('\n')) {
    const m = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line);
    if (m) libs.push(m[1]!);
    else if (/=>\s*not found/.test(line)) throw new UpgradeError('NOT_FOUND', `${bin} needs a library that is missing: ${line.trim()}`);
  }
  return libs;
}

/** `names` and everything they depend on, dependencies first, as paths relative to modulesDir (modules.dep). */
export async function moduleClosure(modulesDir: string, names: string[]): Promise<string[]> {
  const depFile = path.join(modulesDir, 'modules.dep');
  const deps = new Map<string, string[]>();
  for (const line of (await fs.readFile(depFile, 'utf8')).split('\n')) {
    const [mod, rest] = line.split(':');
    if (mod && rest !== undefined) deps.set(mod, rest.trim().split(/\s+/).filter(Boolean));
  }
  const byName = new Map<string, string>();
  for (const mod of deps.keys()) byName.set(path.basename(mod).replace(/\.ko(\..*)?$/, '').replace(/-/g, '_'), mod);
  const order: string[] = [];
  const visit = (mod: string) => {
    if (order.includes(mod)) return;
    // modules.dep lists a module's whole closure, the deepest last: load those first.
    for (const d of [...(deps.get(mod) ?? [])].reverse()) visit(d);
    order.push(mod);
  };
  for (const name of names) {
    const mod = byName.get(name);
    // Built into this kernel, or absent (a kernel without e1000e): nothing to load.
    if (mod) visit(mod);
  }
  for (const mod of order) {
    if (!mod.endsWith('.ko')) {
      throw new UpgradeError('UNSUPPORTED', `${mod} is compressed; the flasher's busybox insmod loads plain .ko files only`, {
        hint: 'build the flasher from a kernel whose modules are not compressed (Debian 12 ships plain .ko)',
      });
    }
  }
  return order;
}

export async function buildFlasherInitrd(inputs: InitrdInputs): Promise<BuiltInitrd> {
  await assertStatic(inputs.busybox);
  const entries: CpioEntry[] = [];
  const dirs = new Set<string>();
  const dir = (p: string) => {
    const parts = p.split('/').filter(Boolean);
    for (let i = 1; i <= parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (!dirs.has(d)) {
        dirs.add(d);
        entries.push({ path: d, kind: 'dir', mode: 0o755 });
      }
    }
  };
  const file = async (p: string, from: string, mode: number) => {
    dir(path.posix.dirname(p));
    entries.push({ path: p, kind: 'file', mode, data: await fs.readFile(from) });
  };
  for (const d of ['bin', 'sbin', 'dev', 'proc', 'sys', 'run', 'ram', 'host', 'etc', 'tmp']) dir(d);

  await file('bin/busybox', inputs.busybox, 0o755);
  const { stdout } = await run(inputs.busybox, ['--list']);
  for (const applet of stdout.split('\n').map((s) => s.trim()).filter((a) => a && a !== 'busybox')) {
    entries.push({ path: `bin/${applet}`, kind: 'symlink', target: 'busybox' });
  }

  // Copied at the same absolute paths, so the loader named in lz4's ELF header finds them.
  await file('bin/lz4', inputs.lz4, 0o755);
  const libs = new Set(await sharedLibraries(inputs.lz4));
  if (inputs.dropbear) {
    // SSH into the flasher with the operator's keys (flasher add-key): root's account, no password.
    await file('sbin/dropbear', inputs.dropbear, 0o755);
    for (const lib of await sharedLibraries(inputs.dropbear)) libs.add(lib);
    const text = (p: string, data: string) => entries.push({ path: p, kind: 'file', mode: 0o644, data: Buffer.from(data) });
    text('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n');
    text('etc/group', 'root:x:0:\n');
    text('etc/shells', '/bin/sh\n');
    dir('etc/dropbear');
  }
  if (inputs.openssl) {
    await file('bin/openssl', inputs.openssl, 0o755);
    for (const lib of await sharedLibraries(inputs.openssl)) libs.add(lib);
  }
  for (const lib of libs) await file(lib.replace(/^\//, ''), lib, 0o755);

  const modules = await moduleClosure(inputs.modulesDir, FLASHER_MODULES);
  for (const mod of modules) await file(`lib/modules/${mod}`, path.join(inputs.modulesDir, mod), 0o644);
  dir('lib/modules');
  entries.push({ path: 'lib/modules/load-order', kind: 'file', mode: 0o644, data: Buffer.from(modules.map((m) => `${m}\n`).join('')) });

  if (!existsSync(path.join(FLASHER_SCRIPTS, 'init'))) {
    throw new UpgradeError('NOT_FOUND', `the flasher scripts are missing from ${FLASHER_SCRIPTS}`, { hint: 'reinstall upgradectl: its package ships flasher/' });
  }
  await file('init', path.join(FLASHER_SCRIPTS, 'init'), 0o755);
  await file('lib/upgradectl/flasher.sh', path.join(FLASHER_SCRIPTS, 'flasher.sh'), 0o644);
  await file('lib/upgradectl/udhcpc.script', path.join(FLASHER_SCRIPTS, 'udhcpc.script'), 0o755);
  return { data: gzipCpio(entries), modules, files: entries.map((e) => e.path) };
}
