import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { skipUnless } from '../helpers/requirements.js';
import { mountLoopFs } from '../helpers/loop-fs.js';
import { diagnose } from '../../src/upgradectl/commands/doctor.js';
import { peSignature } from '../../src/grub/firmware.js';
import { makeMachine, writeAccounts, type MachineOptions } from '../operations/fixtures/machine.js';
import { firstBlockOf } from '../../src/core/first-block.js';
import { commit } from '../../src/operations/commit.js';
import { loadConfig } from '../../src/operations/config.js';
import type { Layout } from '../../src/core/layout.js';

const skip = skipUnless({ commands: ['grub-editenv', 'mke2fs', 'debugfs', 'filefrag', 'findmnt', 'lsblk'] });

/** Debian's kernel: an EFI-stub PE signed by Debian (linux-image-amd64). */
const debianKernel = (() => {
  const name = readdirSync('/boot').filter((n) => n.startsWith('vmlinuz-')).sort().at(-1);
  return name ? path.join('/boot', name) : undefined;
})();

/** The same kernel with its certificate table emptied, as `sbattach --remove` leaves it. */
function stripSignature(kernel: Buffer): Buffer {
  const copy = Buffer.from(kernel);
  const optional = copy.readUInt32LE(0x3c) + 24;
  copy.writeUInt32LE(0, optional + 112 + 4 * 8 + 4);
  return copy;
}

t.test('PE signature: the certificate table of a signed kernel, an unsigned one, and not a PE', { skip: debianKernel ? false : 'no /boot/vmlinuz-*' }, async (t) => {
  const kernel = readFileSync(debianKernel!);
  t.equal(peSignature(kernel), 'signed', debianKernel!);
  t.equal(peSignature(stripSignature(kernel)), 'unsigned');
  t.equal(peSignature(Buffer.from('kernel 1.0\n')), 'not-pe');
  t.equal(peSignature(readFileSync(process.execPath).subarray(0, 4096)), 'not-pe', 'an ELF file');
  t.equal(peSignature(kernel.subarray(0, 0x40)), 'not-pe', 'cut short');
});

/** Firmware as sysfs shows it under --root. */
function firmware(layout: Layout, mode: 'bios' | 'uefi' | 'secure'): void {
  rmSync(path.join(layout.root, 'sys'), { recursive: true, force: true });
  if (mode === 'bios') return;
  const vars = path.join(layout.root, 'sys/firmware/efi/efivars');
  mkdirSync(vars, { recursive: true });
  // efivarfs: 4 bytes of attributes (BOOTSERVICE_ACCESS | RUNTIME_ACCESS = 6), then the value.
  writeFileSync(path.join(vars, 'SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c'), Buffer.from([6, 0, 0, 0, mode === 'secure' ? 1 : 0]));
}

/** An image whose /vmlinuz is the given bytes. */
function imageWithKernel(layout: Layout, version: string, kernel: Buffer): void {
  const tree = mkdtempSync(path.join(os.tmpdir(), 'upgradectl-kernel-tree-'));
  mkdirSync(path.join(tree, 'boot'));
  mkdirSync(path.join(tree, 'host'));
  writeFileSync(path.join(tree, 'boot/vmlinuz-6.1'), kernel);
  execFileSync('ln', ['-s', 'boot/vmlinuz-6.1', path.join(tree, 'vmlinuz')]);
  writeFileSync(path.join(tree, 'initrd.img'), 'initrd\n');
  writeAccounts(path.join(tree, 'etc'));
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, layout.imageFile(version), '64M'], { stdio: 'ignore' });
  rmSync(tree, { recursive: true });
}

t.test('doctor: firmware mode, Secure Boot, and under Secure Boot the kernels of the images', { skip: skip || (debianKernel ? false : 'no /boot/vmlinuz-*') }, async (t) => {
  const layout = makeMachine(t.testdir(), { images: ['1.0'], current: '1.0' });
  const kernel = readFileSync(debianKernel!);
  imageWithKernel(layout, '2.0', kernel);
  imageWithKernel(layout, '3.0', stripSignature(kernel));
  const by = async (check: string) => (await diagnose(layout)).filter((x) => x.check === check);

  firmware(layout, 'bios');
  t.match(await by('firmware'), [{ level: 'ok', message: /^BIOS/ }]);
  t.same(await by('signed kernels'), [], 'no Secure Boot: kernels are not looked at');

  firmware(layout, 'uefi');
  t.match(await by('firmware'), [{ level: 'ok', message: 'UEFI, Secure Boot off' }]);
  t.same(await by('signed kernels'), []);

  firmware(layout, 'secure');
  t.match(await by('firmware'), [{ level: 'ok', message: /UEFI with Secure Boot on/ }]);
  const kernels = await by('signed kernels');
  t.match(kernels.find((f) => f.message.startsWith('1.0:')), { level: 'error', message: /is not an EFI \(PE\) kernel/, fix: /signed kernel/ });
  t.match(kernels.find((f) => f.message.startsWith('2.0:')), { level: 'ok', message: '2.0: /vmlinuz carries an Authenticode signature' }, 'followed the symlink to the signed kernel');
  t.match(kernels.find((f) => f.message.startsWith('3.0:')), { level: 'error', message: /has no signature/ });

  rmSync(path.join(layout.root, 'sys/firmware/efi/efivars'), { recursive: true });
  t.match(await by('firmware'), [{ level: 'warn', message: /cannot be read/, fix: /efivarfs/ }]);
});

const holeSkip = skipUnless({ root: true, commands: ['grub-editenv', 'grub-script-check', 'mke2fs', 'debugfs', 'filefrag', 'mkfs.ext4', 'losetup', 'mount', 'findmnt', 'lsblk'] });

/** A machine on a mounted 1 KiB-block host filesystem whose image `sparseVersion` starts with a hole, as `cp --sparse=always` leaves it. */
async function holeyMachine(t: Test, opts: MachineOptions, sparseVersion: string): Promise<Layout> {
  // Outside t.testdir(), whose own cleanup would run into the mount.
  const dir = mkdtempSync(path.join(os.tmpdir(), 'upgradectl-hole-'));
  const host = await mountLoopFs(dir, 128);
  t.teardown(async () => {
    await host.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });
  const layout = makeMachine(host.mnt, opts);
  const sparse = `${layout.imageFile(sparseVersion)}.sparse`;
  execFileSync('cp', ['--sparse=always', layout.imageFile(sparseVersion), sparse]);
  execFileSync('mv', [sparse, layout.imageFile(sparseVersion)]);
  t.same(await firstBlockOf(layout.imageFile(sparseVersion)), { kind: 'hole' }, 'the copy starts with a hole');
  return layout;
}

t.test('commit rewrites the first block of the image it arms', { skip: holeSkip }, async (t) => {
  const layout = await holeyMachine(t, { images: ['1.0', '2.0'], current: '1.0', next: '2.0' }, '2.0');
  const r = await commit(layout, await loadConfig(layout), { reboot: false });
  t.equal(r.detail?.firstBlock, 'repaired (hole)', 'said so in the result');
  t.same(await firstBlockOf(layout.imageFile('2.0')), { kind: 'written' }, 'GRUB can open it now');
});

t.test('doctor: an image file that starts with a hole, on a host with 1 KiB blocks', { skip: holeSkip }, async (t) => {
  const layout = await holeyMachine(t, { images: ['1.0', '2.0'], current: '1.0' }, '2.0');
  const files = async () => (await diagnose(layout)).filter((x) => x.check === 'image files');

  t.match(await files(), [{ level: 'warn', message: /2\.0\.img begins with a hole: signed GRUB fails on it with "error: invalid extent"$/, fix: /^dd if=\S+2\.0\.img of=\S+2\.0\.img bs=4096 count=1 conv=notrunc,fsync/ }], 'a warning without Secure Boot');
  firmware(layout, 'secure');
  const [finding] = await files();
  t.match(finding, { level: 'error', message: /Secure Boot is on: it cannot boot/ }, 'an error under Secure Boot');
  execFileSync('sh', ['-c', finding!.fix!.split('  (')[0]!], { stdio: 'ignore' });
  t.match(await files(), [{ level: 'ok', message: 'every image file starts with a written block' }], 'the fix works');
});
