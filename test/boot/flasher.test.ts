import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Layout } from '../../src/core/layout.js';
import { run } from '../../src/core/exec.js';
import { setLogLevel } from '../../src/core/log.js';
import { parseConfig, type Config } from '../../src/operations/config.js';
import { writeBootFiles } from '../../src/operations/boot.js';
import { addFlasherKey, installFlasher } from '../../src/operations/flasher-install.js';
import { reflash, type ReflashResult } from '../../src/operations/reflash.js';
import { initialState, saveState, type State } from '../../src/operations/state.js';
import { buildImage } from '../../src/release/image-build.js';
import { publishRelease } from '../../src/release/publish.js';
import { generateKeyPair, loadPrivateKey } from '../../src/release/signing.js';
import { cacheDir } from '../helpers/debian-root.js';
import { startHttpServer, type TestHttpServer } from '../helpers/http-server.js';
import { blockDevicesUnder } from '../helpers/block-devices.js';
import { skipUnless } from '../helpers/requirements.js';
import { buildBusyboxTree } from './busybox-image.js';
import { buildHostDisk, installGrubModules, readHostFile, PARTITION_OFFSET, type HostDisk } from './disk.js';
import { bootKernel, type BootKernel } from './kernel.js';
import { HOST_UUID, TEST_BOOT_CONFIG, envOnDisk, secs } from './machine.js';
import { serialLogPath, Vm } from './qemu.js';

/**
 * The RAM flasher in QEMU (docs/flasher.md): a machine running busybox image 1 is armed by
 * upgradectl's own reflash (signed manifest verified, job written, GRUB one-shot with the nonce) for a
 * release whose payload is a whole new host partition holding image 2; GRUB boots the flasher, which
 * fetches the release from a server on the host's loopback (guestfwd), verifies it and writes
 * /dev/vda1. The arming runs on the host against the machine's host tree, as the other boot tests arm
 * trials: the busybox images have no node to run upgradectl in.
 */

const skip = skipUnless({ root: true, commands: ['qemu-system-x86_64', 'mke2fs', 'debugfs', 'sfdisk', 'grub-mkimage', 'busybox', 'lz4', 'mkinitramfs', 'ssh', 'ssh-keygen'], files: ['/usr/sbin/dropbear', '/usr/bin/openssl'] });
const DISK_MIB = 160;
const NEW_HOST_MIB = 96;
/**
 * The whole-disk release (f): smaller than the VM's disk, its host partition at 2 MiB instead of
 * 1 MiB, so the partition table the machine ends with is visibly the release's.
 */
const NEW_DISK = { mib: 128, hostOffset: 2 * 1048576 };
const SERVER = { guestAddr: '10.0.2.100', guestPort: 80 };
const CONFIG = `${TEST_BOOT_CONFIG}[source]\nurl = file:///unused\n[flasher]\nurl = http://${SERVER.guestAddr}/\n`;

interface World {
  dir: string;
  kernel: BootKernel;
  config: Config;
  keysDir: string;
  www: string;
  newHost: string;
  /** Image 1, built once, published as release 1 (what rescue fetches) and copied into each machine. */
  image1: string;
}

async function hostTree(dir: string, name: string, kernel: BootKernel, version: string, config: Config, keysDir?: string, image?: string): Promise<Layout> {
  const root = path.join(dir, name);
  const host = path.join(root, 'host');
  await fs.mkdir(path.join(host, 'images'), { recursive: true });
  if (keysDir) await fs.cp(keysDir, path.join(root, 'etc/upgradectl/keys.d'), { recursive: true });
  const layout = new Layout(root);
  if (image) await fs.copyFile(image, layout.imageFile(version));
  else {
    const tree = path.join(dir, `${name}-rootfs`);
    await buildBusyboxTree(tree, { version, action: 'poweroff', kernel });
    await buildImage({ rootfs: tree, out: layout.imageFile(version) });
    await fs.rm(tree, { recursive: true, force: true });
  }
  const state: State = { ...initialState(), current: version };
  await writeBootFiles(layout, config, state);
  await installGrubModules(host);
  return layout;
}

/** Once per file: the key, release 2 (a whole host partition holding image 2) published with file://. */
async function makeWorld(dir: string): Promise<World> {
  setLogLevel('warn');
  const kernel = await bootKernel();
  const config = parseConfig(CONFIG, 'test config');
  const keys = path.join(dir, 'keys');
  await fs.mkdir(keys);
  await generateKeyPair(path.join(keys, 'release'));
  const keysDir = path.join(dir, 'keys.d');
  await fs.mkdir(keysDir);
  await fs.copyFile(path.join(keys, 'release.pub'), path.join(keysDir, 'release.pub'));
  const v2 = await hostTree(dir, 'new-host', kernel, '2', config);
  const newHost = path.join(dir, 'new-host.img');
  // Same UUID: GRUB's core.img in the MBR gap finds the host partition by it, before and after.
  await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'host', '-U', HOST_UUID, '-d', v2.host, newHost, `${NEW_HOST_MIB}M`]);
  const www = path.join(dir, 'www');
  const key = await loadPrivateKey(path.join(keys, 'release'));
  const common = { to: `file://${www}`, key, rollout: 100, boot: { kernel: '/vmlinuz', initrd: '/initrd.img', cmdline: '' }, expiresInDays: 30, frameSize: 4 << 20 };
  await publishRelease({ ...common, image: newHost, version: '2', reflash: true });
  const tree = path.join(dir, 'image-1-rootfs');
  const image1 = path.join(dir, 'image-1.img');
  await buildBusyboxTree(tree, { version: '1', action: 'poweroff', kernel });
  await buildImage({ rootfs: tree, out: image1 });
  await fs.rm(tree, { recursive: true, force: true });
  // Release 1 is an ordinary image release: what the machines run, and what rescue puts back.
  await publishRelease({ ...common, image: image1, version: '1', reflash: false });
  return { dir, kernel, config, keysDir, www, newHost, image1 };
}

const flasherFiles = (w: World) => ({ kernel: w.kernel.vmlinuz, modulesDir: `/lib/modules/${w.kernel.release}`, busybox: '/bin/busybox', lz4: '/usr/bin/lz4', openssl: '/usr/bin/openssl' });

interface ArmOptions {
  /** As root could edit the job (the flasher trusts only root's files): e.g. a reserve no VM has. */
  editJob?: (text: string) => string;
  /** More [flasher] keys for the machine's config. */
  flasherConfig?: string;
  /** Default release 2 from the world's server. */
  release?: { version: string; www: string };
  /** The machine's root shows its disk as the VM's kernel will (vda, host partition vda1), which commit --reflash of a whole-disk release reads. */
  wholeDisk?: boolean;
  /** Files of the running machine (path under its root → content, mode), which commit --reflash keeps. */
  machineFiles?: Record<string, { content: string; mode: number }>;
}

/** Machine 1: image 1, the flasher installed, reflash to 2 (or `release`) armed by upgradectl's own operation. */
async function armedMachine(w: World, name: string, opts: ArmOptions = {}): Promise<{ disk: HostDisk; job: ReflashResult; jobText: string }> {
  const release = opts.release ?? { version: '2', www: w.www };
  const layout = await hostTree(w.dir, name, w.kernel, '1', w.config, w.keysDir, w.image1);
  for (const [rel, f] of Object.entries(opts.machineFiles ?? {})) {
    await fs.mkdir(path.dirname(path.join(layout.root, rel)), { recursive: true });
    await fs.writeFile(path.join(layout.root, rel), f.content, { mode: f.mode });
  }
  await installFlasher(layout, w.config, flasherFiles(w));
  if (opts.wholeDisk) await blockDevicesUnder(layout.root, { uuid: HOST_UUID, disk: 'vda', partition: 'vda1', diskBytes: DISK_MIB * 1048576 });
  // CONFIG ends in [flasher]: extra keys land there.
  const config = parseConfig(CONFIG.replace('file:///unused', `file://${release.www}`) + (opts.flasherConfig ?? ''), 'test config');
  const job = await reflash(layout, config, { version: release.version, reboot: false, policy: { allowDowngrade: false, allowUnsigned: false, allowExpired: false, force: false } });
  if (opts.editJob) await fs.writeFile(job.job, opts.editJob(await fs.readFile(job.job, 'utf8')));
  const jobText = await fs.readFile(job.job, 'utf8');
  const disk = await buildHostDisk({ hostTree: layout.host, hostUuid: HOST_UUID, out: path.join(w.dir, `${name}.disk`), sizeMiB: DISK_MIB });
  await fs.rm(path.join(w.dir, name), { recursive: true, force: true });
  return { disk, job, jobText };
}

/**
 * Machine 1 as prepare and confirm leave it (release 1's verified manifest beside its image, previous
 * image 0), the flasher installed, which writes the rescue job for release 1; then both images deleted.
 */
async function machineWithoutImages(w: World, name: string, sshKey?: string): Promise<{ disk: HostDisk; rescueJob: string }> {
  const layout = await hostTree(w.dir, name, w.kernel, '1', w.config, w.keysDir, w.image1);
  await fs.copyFile(w.image1, layout.imageFile('0'));
  await fs.mkdir(layout.manifestsDir, { recursive: true });
  await fs.copyFile(path.join(w.www, 'releases/1/manifest.json'), layout.manifestFile('1'));
  await saveState(layout, { ...initialState(), current: '1', previous: '0' });
  await installFlasher(layout, w.config, { ...flasherFiles(w), ...(sshKey ? { dropbear: '/usr/sbin/dropbear' } : {}) });
  if (sshKey) await addFlasherKey(layout, sshKey);
  const rescueJob = await fs.readFile(layout.rescueJobFile, 'utf8');
  await fs.rm(layout.imageFile('1'));
  await fs.rm(layout.imageFile('0'));
  const disk = await buildHostDisk({ hostTree: layout.host, hostUuid: HOST_UUID, out: path.join(w.dir, `${name}.disk`), sizeMiB: DISK_MIB });
  await fs.rm(path.join(w.dir, name), { recursive: true, force: true });
  return { disk, rescueJob };
}

/** SHA-256 of the host partition with grubenv's 1024 bytes masked: GRUB itself rewrites them (the one-shot and nonce). */
async function partitionHash(disk: HostDisk): Promise<string> {
  const { stdout: bmap } = await run('debugfs', ['-R', 'bmap /boot/grub/grubenv 0', `${disk.file}?offset=${disk.offset}`]);
  const { stdout: stats } = await run('debugfs', ['-R', 'stats', `${disk.file}?offset=${disk.offset}`]);
  const blockSize = Number(/Block size:\s+(\d+)/.exec(stats)![1]);
  const bytes = await fs.readFile(disk.file);
  const part = Buffer.from(bytes.subarray(PARTITION_OFFSET));
  part.fill(0, Number(bmap.trim()) * blockSize, Number(bmap.trim()) * blockSize + 1024);
  return createHash('sha256').update(part).digest('hex');
}

async function withServer<T>(root: string, fn: (s: TestHttpServer) => Promise<T>): Promise<T> {
  const server = await startHttpServer(root);
  try {
    return await fn(server);
  } finally {
    await server.close();
  }
}

async function startVm(t: { teardown(fn: () => unknown): void }, name: string, disk: HostDisk, server: TestHttpServer, opts: { allowReboot: boolean; maxBoots: number; memoryMiB?: number; blkdebug?: string; hostfwd?: Array<{ hostPort: number; guestPort: number }> }): Promise<Vm> {
  const vm = Vm.start({
    disk: disk.file, logFile: await serialLogPath(cacheDir(), name), ...opts,
    guestfwd: [{ ...SERVER, hostPort: server.port }],
  });
  t.teardown(() => vm.kill('test teardown'));
  return vm;
}

/**
 * A flash that must be refused before writing: QEMU stops at the flasher's reboot (-no-reboot), and every
 * byte of the partition but grubenv is compared. Returns the flasher's console lines and the server.
 */
async function refusedBeforeWriting(t: Test, name: string, disk: HostDisk, www: string, why: RegExp): Promise<{ lines: string[]; server: TestHttpServer }> {
  const before = await partitionHash(disk);
  const started = performance.now();
  const result = await withServer(www, async (server) => {
    const vm = await startVm(t, `flasher-${name}`, disk, server, { allowReboot: false, maxBoots: 1 });
    await vm.waitForLine(/upgradectl-flasher: \[failed\]/, 240_000, 'the flasher refused');
    await vm.waitForExit(60_000);
    const lines = flasherLines(vm);
    t.comment(lines.join('\n'));
    t.ok(lines.some((l) => why.test(l) && /nothing was written; rebooting into the old system/.test(l)), `refused: ${why}`);
    t.notOk(lines.some((l) => /\[write\]/.test(l)), 'never started writing');
    return { lines, server };
  });
  t.equal(await partitionHash(disk), before, 'every byte of the partition but grubenv is unchanged');
  t.equal((await envOnDisk({ disk })).saved_entry, 'upgradectl-1', 'the old system stays the default');
  t.comment(`${name}: power-on to refusal ${secs(performance.now() - started)} s`);
  return result;
}

/**
 * After scenario a (docs/flasher.md, "The first boot after a flash"): the flasher armed image 2's first
 * boot as a trial and GRUB consumed it. The busybox image has no upgradectl to confirm it, so the disk
 * is as an unconfirmed trial leaves it: the next boot would reach the reboot entry, i.e. hold mode.
 */
async function firstBootWasATrial(t: Test, disk: HostDisk): Promise<void> {
  const env = await envOnDisk({ disk });
  t.equal(env.next_entry ?? '', '', "image 2's boot consumed the one-shot");
  t.equal(env.upgradectl_trial, 'upgradectl-2', 'it was a trial of image 2');
  t.equal(env.saved_entry, 'upgradectl-reboot', 'unconfirmed, GRUB goes to the reboot entry (the flasher in hold mode)');
  t.equal((await readHostFile(disk, '/boot/upgradectl/flasher/trial'))?.toString(), 'upgradectl-flash-trial 1\nversion 2\nrelease 2\nnetwork dhcp\n', 'the marker upgradectl records the trial from');
  t.ok(await readHostFile(disk, '/boot/upgradectl/flasher/vmlinuz'), "the flasher's kernel, kept in RAM, is on the new partition");
  t.ok(await readHostFile(disk, '/boot/upgradectl/flasher/initrd.img'), 'and its initrd');
  const log = (await readHostFile(disk, '/boot/upgradectl/flasher/log'))?.toString() ?? '';
  t.match(log, /\[keep\] the flasher's kernel and initrd[^\n]* kept in RAM/, 'kept before writing');
  t.match(log, /\[written\][^]*\[trial\] the first boot of image 2 is a trial/, 'armed after the read-back');
}

/**
 * f: release 3's image panics at its first boot: GRUB's reset goes to the reboot entry, which boots the
 * flasher in hold mode instead of rebooting. The VM is stopped at the hold's first console line.
 */
async function reflashedSystemPanics(t: Test, w: World): Promise<void> {
  const tree = path.join(w.dir, 'image-3-rootfs');
  const image3 = path.join(w.dir, 'image-3.img');
  await buildBusyboxTree(tree, { version: '3', action: 'panic', kernel: w.kernel });
  await buildImage({ rootfs: tree, out: image3 });
  await fs.rm(tree, { recursive: true, force: true });
  const v3 = await hostTree(w.dir, 'new-host-3', w.kernel, '3', w.config, undefined, image3);
  const newHost = path.join(w.dir, 'new-host-3.img');
  await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'host', '-U', HOST_UUID, '-d', v3.host, newHost, `${NEW_HOST_MIB}M`]);
  await fs.rm(image3);
  const www = path.join(w.dir, 'www-f');
  await fs.cp(w.www, www, { recursive: true });
  const key = await loadPrivateKey(path.join(w.dir, 'keys/release'));
  await publishRelease({ to: `file://${www}`, key, rollout: 100, boot: { kernel: '/vmlinuz', initrd: '/initrd.img', cmdline: '' }, expiresInDays: 30, frameSize: 4 << 20, image: newHost, version: '3', reflash: true });
  const { disk } = await armedMachine(w, 'f', { release: { version: '3', www } });
  const started = performance.now();
  await withServer(www, async (server) => {
    const vm = await startVm(t, 'flasher-f', disk, server, { allowReboot: true, maxBoots: 3 });
    await vm.waitForLine(/upgradectl-flasher: \[trial\] the first boot of image 3 is a trial/, 240_000, 'the flasher armed the trial');
    const armed = performance.now();
    await vm.waitForLine(/upgradectl-flasher: HOLD: release 3's reflashed system \(image 3\) did not confirm its first boot/, 180_000, 'the flasher in hold mode');
    const boots = vm.boots();
    t.equal(boots.length, 3, 'the flasher, the trial of image 3, the flasher in hold mode');
    t.match(boots[1]!.cmdline, /upgradectl\.loop=\/images\/3\.img/, 'the trial boot');
    t.match(vm.serial, /Kernel panic/, 'which panicked');
    t.match(boots[2]!.cmdline, /upgradectl\.hold=1/, 'then GRUB booted the reboot entry in hold mode');
    t.notMatch(boots[2]!.cmdline, /upgradectl\.flasher=\w/, 'with no flash nonce');
    t.match(vm.serial, /upgradectl: the reflashed system did not confirm its first boot/, "GRUB's message");
    t.ok(flasherLines(vm).some((l) => /\[hold\] release 3's reflashed system .* does not reboot/.test(l)), 'the status says why');
    t.comment(`f: power-on to trial armed ${secs(armed - started)} s; to hold mode (after the panic) ${secs(performance.now() - started)} s`);
    await vm.kill('hold mode reached: it stays up by design');
  });
}

/**
 * Release 2 as a whole disk (f, g), built like the machines' own disks (GRUB's boot code and core.img in
 * the MBR gap) from the same host tree as the partition release, its filesystem UUID `hostUuid`, in a
 * www of its own.
 */
async function publishDiskRelease(w: World, name: string, hostUuid: string): Promise<{ www: string; image: HostDisk }> {
  const www = path.join(w.dir, `www-${name}`);
  const image = await buildHostDisk({ hostTree: path.join(w.dir, 'new-host/host'), hostUuid, out: path.join(w.dir, `new-disk-${name}.img`), sizeMiB: NEW_DISK.mib, hostOffset: NEW_DISK.hostOffset });
  const key = await loadPrivateKey(path.join(w.dir, 'keys/release'));
  await publishRelease({ to: `file://${www}`, key, rollout: 100, boot: { kernel: '/vmlinuz', initrd: '/initrd.img', cmdline: '' }, expiresInDays: 30, frameSize: 4 << 20, image: image.file, version: '2', reflash: 'disk' });
  return { www, image };
}

/** Machine a's own files: what a reflash must not lose (docs/flasher.md, "What a reflash keeps"). */
const MACHINE_A = {
  'etc/hostname': { content: 'machine-a\n', mode: 0o644 },
  'etc/ssh/ssh_host_ed25519_key': { content: 'machine a private host key\n', mode: 0o600 },
  'etc/passwd': { content: 'root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n', mode: 0o644 },
  'etc/shadow': { content: 'root:*:19000:0:99999:7:::\nalice:$6$salt$hash:19000:0:99999:7:::\n', mode: 0o640 },
  'etc/group': { content: 'root:x:0:\nalice:x:1000:\n', mode: 0o644 },
};

/**
 * The archive commit --reflash packed went through the flasher's RAM onto the new partition, byte for
 * byte as the job names it, with the hash file that makes the new system restore it (the restore
 * itself: test/operations/kept-files.test.ts, on real Debian trees).
 */
async function machineFilesCarried(t: Test, w: World, disk: HostDisk, jobText: string): Promise<void> {
  const [, size, sha] = /^keep (\d+) ([0-9a-f]{64})$/m.exec(jobText) ?? [];
  t.ok(sha, 'the job names the machine files to keep');
  const archive = await readHostFile(disk, '/boot/upgradectl/flasher/machine-files.tar');
  t.equal(archive?.length, Number(size), 'the archive is on the new partition, of the size the job names');
  t.equal(archive && createHash('sha256').update(archive).digest('hex'), sha, 'and the hash');
  t.equal((await readHostFile(disk, '/boot/upgradectl/flasher/machine-files.sha256'))?.toString().trim(), sha, 'with the hash file only the flasher writes');
  const copy = path.join(w.dir, 'a-machine-files.tar');
  await fs.writeFile(copy, archive ?? '');
  const members = (await run('tar', ['--list', '--file', copy])).stdout.split('\n');
  for (const rel of Object.keys(MACHINE_A)) t.ok(members.includes(`./${rel}`), `kept: /${rel}`);
}

/** The first MBR partition entry's start sector (bytes 446 + 8..11). */
const partitionStart = (mbr: Buffer) => mbr.readUInt32LE(446 + 8);

const flasherLines = (vm: Vm) => vm.serial.split('\n').filter((l) => l.includes('upgradectl-flasher:'));

t.test('RAM flasher in QEMU', { skip }, async (t) => {
  const w = await makeWorld(t.testdir());

  t.test('a: the machine reflashes its own host partition from a release on loopback, through an I/O error mid-write (retried from RAM), and boots the result', async (t) => {
    const { disk, job, jobText } = await armedMachine(w, 'a', { machineFiles: MACHINE_A });
    t.comment(`flash job: ${job.url}, payload ${(job.payloadSize / 1048576).toFixed(1)} MiB, image ${job.imageSize / 1048576} MiB, RAM needed ${(job.ramNeeded / 1048576).toFixed(0)} MiB`);
    // A real I/O error (QEMU blkdebug): one EIO on the first write that covers a sector 48 MiB into the
    // partition. Only the flasher's dd writes there (GRUB writes grubenv, near the start), so it hits
    // the first write attempt in its middle.
    const rules = path.join(w.dir, 'a-blkdebug.conf');
    const sector = (PARTITION_OFFSET + 48 * 1048576) / 512;
    await fs.writeFile(rules, `[inject-error]\nevent = "write_aio"\nerrno = "5"\nonce = "on"\nsector = "${sector}"\n`);
    const started = performance.now();
    await withServer(w.www, async (server) => {
      const vm = await startVm(t, 'flasher-a', disk, server, { allowReboot: true, maxBoots: 3, blkdebug: rules });
      await vm.waitForLine(/upgradectl-flasher: \[written\]/, 240_000, 'the flasher wrote and verified the target');
      const written = performance.now();
      await vm.waitForLine(/UPGRADECTL-MARKER booted version=2 /, 120_000, 'image 2 booted from the new host partition');
      await vm.waitForExit(60_000);
      const lines = flasherLines(vm);
      t.comment(lines.join('\n'));
      t.ok(lines.some((l) => /\[verify\] image SHA-256 matches/.test(l)), 'verified before writing');
      t.match(vm.serial, /I\/O error, dev vda/, 'a real I/O error, reported by the kernel');
      t.ok(lines.some((l) => /write attempt 1 failed/.test(l)), 'the first write attempt failed');
      t.ok(lines.some((l) => /\[write\] attempt 2 of 3/.test(l)) && lines.some((l) => /\[written\] .* read back and verified/.test(l)), 'the retry from RAM wrote and verified');
      t.ok(server.requests.some((r) => r.path === '/releases/2/image.lz4' && r.status === 200), 'fetched from the server');
      t.equal(server.requests.filter((r) => r.path === '/releases/2/image.lz4').length, 1, 'fetched once: the retry comes from RAM');
      const boots = vm.boots();
      t.match(boots[0]!.cmdline, new RegExp(`upgradectl.flasher=${job.nonce}`), 'GRUB passed the job nonce to the flasher');
      t.equal(boots.length, 2, 'the flasher, then image 2');
      t.comment(`a: power-on to written (with one failed attempt) ${secs(written - started)} s; total with v2 boot ${secs(performance.now() - started)} s`);
    });
    const status = (await readHostFile(disk, '/boot/upgradectl/flasher/status'))?.toString();
    t.match(status, /phase=trial\nmessage=the first boot of image 2 is a trial/, 'the status file is on the new host partition: written, then the trial armed');
    // The flasher's own log (seconds since its kernel started): the phase times docs/flasher.md quotes.
    t.comment(`a: flasher log\n${(await readHostFile(disk, '/boot/upgradectl/flasher/log'))?.toString().split('\n').filter((l) => /\] /.test(l)).join('\n')}`);
    t.ok(await readHostFile(disk, '/images/2.img'), 'image 2 on the host partition');
    t.notOk(await readHostFile(disk, '/images/1.img'), 'image 1 is gone: the whole partition was rewritten');
    await firstBootWasATrial(t, disk);
    await machineFilesCarried(t, w, disk, jobText);
  });

  t.test('b: a corrupt payload is refused before writing; the partition is untouched and image 1 boots', async (t) => {
    const { disk } = await armedMachine(w, 'b');
    const before = await partitionHash(disk);
    const www = path.join(w.dir, 'www-b');
    await fs.cp(w.www, www, { recursive: true });
    const payload = path.join(www, 'releases/2/image.lz4');
    const fh = await fs.open(payload, 'r+');
    const at = Math.floor((await fh.stat()).size / 2);
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0] = b[0]! ^ 0xff;
    await fh.write(b, 0, 1, at);
    await fh.close();
    const started = performance.now();
    await withServer(www, async (server) => {
      // -no-reboot: QEMU stops at the flasher's reboot, so the disk is compared before image 1 mounts it.
      const vm = await startVm(t, 'flasher-b', disk, server, { allowReboot: false, maxBoots: 1 });
      await vm.waitForLine(/upgradectl-flasher: \[failed\]/, 240_000, 'the flasher refused');
      await vm.waitForExit(60_000);
      const lines = flasherLines(vm);
      t.comment(lines.join('\n'));
      t.ok(lines.some((l) => /\[failed\] payload SHA-256 \w+ is not the manifest's .* nothing was written; rebooting into the old system/.test(l)), 'refused for the hash');
      t.notOk(lines.some((l) => /\[write\]/.test(l)), 'never started writing');
    });
    t.equal(await partitionHash(disk), before, 'every byte of the partition but grubenv is unchanged');
    const env = await envOnDisk({ disk });
    t.notOk(env.next_entry, 'the one-shot is consumed');
    t.notOk(env.upgradectl_flasher_nonce, 'and the nonce: the job is stale from now on');
    t.equal(env.saved_entry, 'upgradectl-1');
    await withServer(www, async (server) => {
      const vm = await startVm(t, 'flasher-b2', disk, server, { allowReboot: false, maxBoots: 1 });
      await vm.waitForLine(/UPGRADECTL-MARKER booted version=1 /, 120_000, 'image 1 boots');
      await vm.waitForExit(60_000);
    });
    t.comment(`b: refusal and image 1 back in ${secs(performance.now() - started)} s`);
  });

  t.test('c: both images gone, the release not on the server yet: rescue fails and stays up (no reboot loop), the operator reads why over SSH, puts the release back and says rescue-now; release 1 is restored and boots', async (t) => {
    const key = path.join(w.dir, 'operator');
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key]);
    const { disk, rescueJob } = await machineWithoutImages(w, 'c', await fs.readFile(`${key}.pub`, 'utf8'));
    t.match(rescueJob, /^upgradectl-rescue-job 1\nversion 1\nurl http:\/\/10\.0\.2\.100\/releases\/1\/image\.lz4\n/, 'the rescue job names release 1, fetched over http');
    const www = path.join(w.dir, 'www-c');
    await fs.cp(w.www, www, { recursive: true });
    const payload = path.join(www, 'releases/1/image.lz4');
    await fs.rename(payload, `${payload}.later`);
    const sshPort = 20000 + Math.floor(Math.random() * 20000);
    const started = performance.now();
    await withServer(www, async (server) => {
      const vm = await startVm(t, 'flasher-c', disk, server, { allowReboot: true, maxBoots: 3, hostfwd: [{ hostPort: sshPort, guestPort: 22 }] });
      await vm.waitForLine(/upgradectl-flasher: RESCUE FAILED \(attempt 1\)/, 240_000, 'the first rescue attempt failed and says so');
      const failed = performance.now();
      const ssh = (k: string, cmd: string) => run('ssh', ['-i', k, '-p', String(sshPort), '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=20', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR', 'root@127.0.0.1', cmd], { timeoutMs: 60_000 });
      const { stdout } = await ssh(key, 'cat /run/upgradectl-flasher/status');
      t.match(stdout, /^phase=failed\nmessage=download of http:\/\/10\.0\.2\.100\/releases\/1\/image\.lz4 failed 3 times/, 'over SSH, with the key of flasher add-key: the status says why');
      const stranger = path.join(w.dir, 'stranger');
      await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', stranger]);
      await t.rejects(ssh(stranger, 'true'), 'another key is refused');
      t.equal(vm.boots().length, 1, 'a failed rescue does not reboot (it would come straight back)');
      t.equal(server.requests.filter((r) => r.path === '/releases/1/image.lz4' && r.status === 404).length, 3, 'three attempts, each a 404');
      await fs.rename(`${payload}.later`, payload);
      const now = await ssh(key, 'sh /lib/upgradectl/flasher.sh rescue-now');
      t.match(now.stdout, /the rescue tries again now/, 'the operator cuts the wait short');
      t.comment(`c: power-on to rescue failed ${secs(failed - started)} s; SSH and rescue-now ${secs(performance.now() - failed)} s later`);
      await vm.waitForLine(/upgradectl-flasher: \[done\]/, 240_000, 'the rescue flasher restored an image');
      const restored = performance.now();
      await vm.waitForLine(/UPGRADECTL-MARKER booted version=1 /, 120_000, 'image 1 booted again');
      await vm.waitForExit(60_000);
      const lines = flasherLines(vm);
      t.comment(lines.join('\n'));
      t.ok(lines.some((l) => /\[verify\] image SHA-256 matches/.test(l)), 'verified before writing');
      t.ok(server.requests.some((r) => r.path === '/releases/1/image.lz4' && r.status === 200), 'release 1 fetched from the server');
      const boots = vm.boots();
      t.match(boots[0]!.cmdline, /upgradectl\.rescue=1/, 'GRUB fell back to the rescue entry');
      t.notMatch(boots[0]!.cmdline, /upgradectl\.flasher=\w/, 'with no flash nonce');
      t.equal(boots.length, 2, 'rescue (two attempts, one boot), then image 1');
      t.comment(`c: power-on to image restored ${secs(restored - started)} s; total with image 1 booted ${secs(performance.now() - started)} s`);
    });
    t.ok(await readHostFile(disk, '/images/1.img'), 'image 1 is back in /images');
    t.equal((await readHostFile(disk, '/boot/upgradectl/flasher/rescue-count'))?.toString().trim(), '1', 'the rescue is counted (a second one without upgradectl running stays up)');
    const env = await envOnDisk({ disk });
    t.equal(env.saved_entry, 'upgradectl-1', 'the restored image is the default');
  });

  t.test('d: on a static address (no DHCP used), the payload is missing on the server (404): refused before writing, the partition is untouched', async (t) => {
    // The machine's own static set-up, as [flasher] gives it: QEMU's user network, its card's MAC.
    const { disk, job } = await armedMachine(w, 'd', { flasherConfig: 'network = static\naddress = 10.0.2.15/24\ngateway = 10.0.2.2\nmac = 52:54:00:12:34:56\n' });
    t.match(await readHostFile(disk, '/boot/upgradectl/flasher/job').then(String), /\nnetwork static 52:54:00:12:34:56 10\.0\.2\.15\/24 10\.0\.2\.2 none\n/, 'the job carries the static set-up');
    const www = path.join(w.dir, 'www-d');
    await fs.cp(w.www, www, { recursive: true });
    await fs.rm(path.join(www, 'releases/2/image.lz4'));
    const { server, lines } = await refusedBeforeWriting(t, 'd', disk, www, /\[failed\] download of http:\/\/10\.0\.2\.100\/releases\/2\/image\.lz4 failed 3 times/);
    t.equal(server.requests.filter((r) => r.path === '/releases/2/image.lz4' && r.status === 404).length, 3, 'three attempts, each a 404: the static address reached the server');
    t.ok(lines.some((l) => /\[network\] eth0: 10\.0\.2\.15\/24 static \(gateway 10\.0\.2\.2/.test(l)), 'the card with that MAC got the static address');
  });

  t.test('e: not enough RAM for payload and reserve: refused before anything is downloaded or written', async (t) => {
    // A reserve of 64 GiB: no VM here has it, so the check fails whatever the payload.
    const { disk } = await armedMachine(w, 'e', { editJob: (job) => job.replace(/^ram_reserve \d+$/m, `ram_reserve ${64 * 2 ** 30}`) });
    const { server, lines } = await refusedBeforeWriting(t, 'e', disk, w.www, /\[failed\] not enough memory: \d+ MiB available, \d+ MiB needed/);
    t.notOk(lines.some((l) => /\[fetch\]/.test(l)), 'nothing fetched');
    t.same(server.requests, [], 'no request reached the server');
  });

  t.test("f: the reflashed system panics at its first boot (a trial): GRUB's reboot entry boots the flasher in hold mode, not a reboot loop", async (t) => {
    await reflashedSystemPanics(t, w);
  });

  t.test('g: a whole-disk release: the machine rewrites its disk (table, GRUB, partition at a new offset), the kernel re-reads the table, and the new disk boots image 2', async (t) => {
    const { www, image } = await publishDiskRelease(w, 'g', HOST_UUID);
    const { disk, job } = await armedMachine(w, 'g', { release: { version: '2', www }, wholeDisk: true });
    t.same(job.target, { kind: 'disk', device: '/dev/vda', size: DISK_MIB * 1048576, partition: 'vda1' }, 'commit --reflash names the disk it will overwrite');
    t.equal(partitionStart(await fs.readFile(disk.file)), PARTITION_OFFSET / 512, 'before: the host partition starts at 1 MiB');
    const started = performance.now();
    await withServer(www, async (server) => {
      const vm = await startVm(t, 'flasher-g', disk, server, { allowReboot: true, maxBoots: 3 });
      await vm.waitForLine(/upgradectl-flasher: \[table\]/, 240_000, 'the flasher wrote the disk and the kernel read its new table');
      const written = performance.now();
      await vm.waitForLine(/UPGRADECTL-MARKER booted version=2 /, 120_000, 'image 2 booted from the new disk');
      await vm.waitForExit(60_000);
      const lines = flasherLines(vm);
      t.comment(lines.join('\n'));
      t.ok(lines.some((l) => /\[job\] release 2: \d+ bytes onto \/dev\/vda from/.test(l)), 'the flasher targets the whole disk');
      t.ok(lines.some((l) => new RegExp(`\\[verify\\] the image's partition at sector ${NEW_DISK.hostOffset / 512} carries the host filesystem UUID ${HOST_UUID}`).test(l)), "the image's table checked before writing");
      t.ok(lines.some((l) => /\[written\] \/dev\/vda holds release 2, read back and verified/.test(l)), 'written onto the disk and read back');
      t.ok(lines.some((l) => new RegExp(`\\[table\\] /dev/vda: new partition table read; the host partition is /dev/vda1 \\(${(NEW_DISK.mib * 1048576) - NEW_DISK.hostOffset} bytes at sector ${NEW_DISK.hostOffset / 512}\\)`).test(l)), 'the kernel sees the release\'s partition: its size and offset');
      t.equal(server.requests.filter((r) => r.path === '/releases/2/image.lz4').length, 1, 'fetched once');
      const boots = vm.boots();
      t.match(boots[0]!.cmdline, new RegExp(`upgradectl.flasher=${job.nonce}`), 'GRUB passed the job nonce to the flasher');
      t.equal(boots.length, 2, 'the flasher, then image 2 (GRUB from the new disk found the host partition at its new offset)');
      t.comment(`g: power-on to disk written and table re-read ${secs(written - started)} s; total with v2 boot ${secs(performance.now() - started)} s`);
    });
    const bytes = await fs.readFile(disk.file);
    t.equal(partitionStart(bytes), NEW_DISK.hostOffset / 512, 'after: the partition table is the release\'s (host partition at 2 MiB)');
    // Nothing but the flasher writes before the partition (GRUB writes grubenv inside the filesystem).
    t.ok(bytes.subarray(0, NEW_DISK.hostOffset).equals((await fs.readFile(image.file)).subarray(0, NEW_DISK.hostOffset)), 'boot code, table and core.img in the gap are the release\'s');
    const moved = { ...disk, offset: NEW_DISK.hostOffset };
    t.match((await readHostFile(moved, '/boot/upgradectl/flasher/status'))?.toString(), /phase=trial\n/, 'the status file is on the new host partition (its last step: the first boot armed as a trial)');
    t.comment(`g: flasher log\n${(await readHostFile(moved, '/boot/upgradectl/flasher/log'))?.toString().split('\n').filter((l) => /\] /.test(l)).join('\n')}`);
    t.ok(await readHostFile(moved, '/images/2.img'), 'image 2 on the new host partition');
    t.notOk(await readHostFile(moved, '/images/1.img'), 'image 1 is gone');
  });

  t.test('h: a whole-disk release whose partitions do not carry the host UUID GRUB searches for: refused before writing, the disk untouched', async (t) => {
    const { www } = await publishDiskRelease(w, 'h', '0ddba11e-0000-4000-8000-00000000d15c');
    const { disk } = await armedMachine(w, 'h', { release: { version: '2', www }, wholeDisk: true });
    const mbr = (await fs.readFile(disk.file)).subarray(0, PARTITION_OFFSET);
    await refusedBeforeWriting(t, 'h', disk, www, new RegExp(`\\[failed\\] no partition in the image's table \\(${NEW_DISK.hostOffset / 512}\\) carries the host filesystem UUID ${HOST_UUID}`));
    t.ok((await fs.readFile(disk.file)).subarray(0, PARTITION_OFFSET).equals(mbr), 'boot code, table and GRUB gap unchanged');
  });

});
