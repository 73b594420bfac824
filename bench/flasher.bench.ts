// The RAM flasher on a ~1 GiB host partition of real files (bench/images.mjs a.img plus a bootable
// image 2), in QEMU (TCG, one vCPU), against the pipeline Netflix's s3-flash-bootloader runs
// (`wget -O- URL | lz4 -d | dd`, no verification, no read-back) booted from the same kernel and initrd
// on the same VM in the same run. Prints the flasher's phases, both times and their ratio, and the RAM
// the flasher asked for. `npm run bench:flasher` (as root; needs what test/boot/flasher.test.ts needs).
import t from 'tap';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Layout } from '../src/core/layout.js';
import { run } from '../src/core/exec.js';
import { setLogLevel } from '../src/core/log.js';
import { gzipCpio } from '../src/flasher/cpio.js';
import { parseConfig } from '../src/operations/config.js';
import { writeBootFiles } from '../src/operations/boot.js';
import { installFlasher } from '../src/operations/flasher-install.js';
import { reflash } from '../src/operations/reflash.js';
import { initialState, type State } from '../src/operations/state.js';
import { buildImage } from '../src/release/image-build.js';
import { publishRelease } from '../src/release/publish.js';
import { generateKeyPair, loadPrivateKey } from '../src/release/signing.js';
import { cacheDir } from '../test/helpers/debian-root.js';
import { startHttpServer } from '../test/helpers/http-server.js';
import { buildBusyboxTree } from '../test/boot/busybox-image.js';
import { buildHostDisk, installGrubModules, readHostFile } from '../test/boot/disk.js';
import { bootKernel, type BootKernel } from '../test/boot/kernel.js';
import { HOST_UUID, TEST_BOOT_CONFIG, secs } from '../test/boot/machine.js';
import { serialLogPath, Vm } from '../test/boot/qemu.js';

process.env.BENCH_DIR ??= '/var/tmp/upgradectl-bench-speed';
// The other benchmarks' plain-JS helpers (no type declarations): the same image and work directory.
const benchModule = (name: string): Promise<unknown> => import(new URL(name, import.meta.url).href);
const { benchImages } = (await benchModule('./images.mjs')) as { benchImages: (dir: string) => { a: string } };
const { work } = (await benchModule('./common.mjs')) as { work: string };

const SERVER = { guestAddr: '10.0.2.100', guestPort: 80 };
const CONFIG = `${TEST_BOOT_CONFIG}[source]\nurl = file:///unused\n[flasher]\nurl = http://${SERVER.guestAddr}/\n`;
const DISK_MIB = 1100;
const VM_MIB = 1024;

/** A host partition tree running busybox image `version`, with its GRUB menu. */
async function hostTree(dir: string, version: string, kernel: BootKernel, config = parseConfig(CONFIG, 'bench config')): Promise<Layout> {
  const layout = new Layout(path.join(dir, `host-${version}`));
  await fs.rm(layout.root, { recursive: true, force: true });
  await fs.mkdir(layout.imagesDir, { recursive: true });
  const tree = path.join(dir, `rootfs-${version}`);
  await buildBusyboxTree(tree, { version, action: 'poweroff', kernel });
  await buildImage({ rootfs: tree, out: layout.imageFile(version) });
  await fs.rm(tree, { recursive: true, force: true });
  const state: State = { ...initialState(), current: version };
  await writeBootFiles(layout, config, state);
  await installGrubModules(layout.host);
  return layout;
}

/** Release 2: a.img (1 GiB of real files) with host 2's tree copied in, as the host partition GRUB finds by UUID. */
async function newHostPartition(dir: string, kernel: BootKernel): Promise<string> {
  const { a } = benchImages(work);
  const out = path.join(dir, 'new-host.img');
  await run('cp', ['--sparse=always', a, out]);
  await run('e2fsck', ['-fy', out], { timeoutMs: 600_000 }).catch(() => undefined);
  await run('tune2fs', ['-U', HOST_UUID, '-L', 'host', out], { timeoutMs: 600_000 });
  const v2 = await hostTree(dir, '2', kernel);
  const mnt = path.join(dir, 'mnt');
  await fs.mkdir(mnt, { recursive: true });
  await run('mount', ['-o', 'loop', out, mnt]);
  try {
    await run('cp', ['-a', `${v2.host}/.`, mnt]);
  } finally {
    await run('umount', [mnt]);
  }
  return out;
}

/** s3-flash-bootloader's flash, as /init of the flasher's own initrd: the reference, timed by the guest. */
function referenceInit(url: string): string {
  return `#!/bin/sh
export PATH=/bin:/sbin
. /lib/upgradectl/flasher.sh
mount -t proc proc /proc
setup_system
job_net=dhcp
network_up
wait_for '[ -b /dev/vda1 ]' 15
t0=$(cut -d' ' -f1 /proc/uptime)
wget -q -O- '${url}' | lz4 -dc | dd of=/dev/vda1 bs=4M conv=fsync 2>/dev/null
t1=$(cut -d' ' -f1 /proc/uptime)
echo "BENCH-REFERENCE network-up-at=$t0 written-at=$t1"
poweroff -f
`;
}

/** Seconds since the flasher's kernel started, of its first log line matching `re`. */
function at(log: string, re: RegExp): number {
  const line = log.split('\n').find((l) => re.test(l));
  if (!line) throw new Error(`no flasher log line ${re}`);
  return Number(line.split(' ')[0]);
}

t.test('RAM flasher, 1 GiB of real files, vs wget | lz4 -d | dd', async (t) => {
  setLogLevel('warn');
  const dir = path.join(work, 'flasher');
  await fs.mkdir(dir, { recursive: true });
  const kernel = await bootKernel();
  const config = parseConfig(CONFIG, 'bench config');

  const built = performance.now();
  const newHost = await newHostPartition(dir, kernel);
  const www = path.join(dir, 'www');
  await fs.rm(www, { recursive: true, force: true });
  // A throwaway key per run (keygen never overwrites one).
  const keys = path.join(dir, 'keys');
  await fs.rm(keys, { recursive: true, force: true });
  await fs.mkdir(keys);
  await generateKeyPair(path.join(keys, 'release'));
  await publishRelease({
    to: `file://${www}`, key: await loadPrivateKey(path.join(keys, 'release')), rollout: 100, expiresInDays: 1, frameSize: 4 << 20,
    boot: { kernel: '/vmlinuz', initrd: '/initrd.img', cmdline: '' }, image: newHost, version: '2', reflash: true,
  });
  const v1 = await hostTree(dir, '1', kernel, config);
  await fs.mkdir(path.join(v1.root, 'etc/upgradectl/keys.d'), { recursive: true });
  await fs.copyFile(path.join(keys, 'release.pub'), path.join(v1.root, 'etc/upgradectl/keys.d/release.pub'));
  await installFlasher(v1, config, { kernel: kernel.vmlinuz, modulesDir: `/lib/modules/${kernel.release}`, busybox: '/bin/busybox', lz4: '/usr/bin/lz4', openssl: '/usr/bin/openssl' });
  const job = await reflash(v1, parseConfig(CONFIG.replace('file:///unused', `file://${www}`), 'bench config'), {
    version: '2', reboot: false, policy: { allowDowngrade: false, allowUnsigned: false, allowExpired: false, force: false },
  });
  const flasherInitrd = await fs.readFile(v1.flasherInitrd);
  const disk = await buildHostDisk({ hostTree: v1.host, hostUuid: HOST_UUID, out: path.join(dir, 'machine.disk'), sizeMiB: DISK_MIB });
  t.comment(`release 2: image ${(job.imageSize / 2 ** 20).toFixed(0)} MiB, payload ${(job.payloadSize / 2 ** 20).toFixed(0)} MiB, flasher RAM needed ${(job.ramNeeded / 2 ** 20).toFixed(0)} MiB; set up in ${secs(performance.now() - built)} s`);

  const server = await startHttpServer(www);
  t.teardown(() => server.close());
  const vmOpts = { disk: disk.file, memoryMiB: VM_MIB, guestfwd: [{ ...SERVER, hostPort: server.port }] };

  // upgradectl's flasher: GRUB's one-shot, fetch into RAM, verify, write, read back, reboot into 2.
  const started = performance.now();
  const ours = Vm.start({ ...vmOpts, logFile: await serialLogPath(cacheDir(), 'bench-flasher'), allowReboot: true, maxBoots: 2 });
  t.teardown(() => ours.kill('bench teardown'));
  await ours.waitForLine(/upgradectl-flasher: \[written\]/, 1_800_000, 'the flasher wrote and verified the partition');
  const written = performance.now();
  await ours.waitForLine(/UPGRADECTL-MARKER booted version=2 /, 300_000, 'image 2 booted from the new partition');
  const booted = performance.now();
  await ours.waitForExit(120_000);
  const log = (await readHostFile(disk, '/boot/upgradectl/flasher/log'))?.toString() ?? '';
  const phase = { network: at(log, /\[network\]/), fetched: at(log, /\[fetch\] \d+ bytes/), verified: at(log, /\[verify\] image SHA-256 matches/), written: at(log, /\[written\]/) };
  const oursFlash = phase.written - phase.network;
  t.comment(`upgradectl flasher: power-on to written ${secs(written - started)} s, to image 2 booted ${secs(booted - started)} s`);
  t.comment(`  phases (flasher clock): fetch ${(phase.fetched - phase.network).toFixed(1)} s, verify ${(phase.verified - phase.fetched).toFixed(1)} s, write + read back ${(phase.written - phase.verified).toFixed(1)} s; network up to written ${oursFlash.toFixed(1)} s`);

  // The reference on the same machine and disk, booted from the same kernel and initrd (its /init replaced).
  const initrd = path.join(dir, 'reference-initrd.img');
  await fs.writeFile(initrd, Buffer.concat([flasherInitrd, gzipCpio([{ path: 'init', kind: 'file', mode: 0o755, data: Buffer.from(referenceInit(job.url)) }])]));
  const ref = Vm.start({
    ...vmOpts, logFile: await serialLogPath(cacheDir(), 'bench-flasher-reference'), allowReboot: false, maxBoots: 1,
    directKernel: { kernel: kernel.vmlinuz, initrd, append: `console=ttyS0 panic=1 upgradectl.host=${HOST_UUID}` },
  });
  t.teardown(() => ref.kill('bench teardown'));
  const line = await ref.waitForLine(/BENCH-REFERENCE /, 1_800_000, 'the reference pipeline finished');
  await ref.waitForExit(60_000);
  const m = /network-up-at=([\d.]+) written-at=([\d.]+)/.exec(line)!;
  const refFlash = Number(m[2]) - Number(m[1]);
  t.comment(`wget | lz4 -d | dd conv=fsync: network up to written ${refFlash.toFixed(1)} s`);
  t.comment(`ratio (upgradectl / reference, network up to written): ${(oursFlash / refFlash).toFixed(2)}; what the difference buys: payload SHA-256, every frame and the whole image verified before the first write, the partition read back and hashed after it`);
  t.comment(`load average ${(await fs.readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ')}`);
  t.ok(oursFlash > 0 && refFlash > 0, 'both flashes timed');
});
