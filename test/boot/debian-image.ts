import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { buildImage } from '../../src/release/image-build.js';
import { run } from '../../src/core/exec.js';
import { extractDebianRoot, SYSTEMD } from '../helpers/debian-root.js';
import { packagedDeb } from '../helpers/package-deb.js';
import { MARKER } from './busybox-image.js';
import type { BootKernel } from './kernel.js';

/**
 * The image the real upgrade flow runs in: Debian bookworm minbase + systemd + udev + grub-common, and
 * upgradectl installed from its .deb (/usr/lib/upgradectl with its own Node, /usr/bin/upgradectl, the
 * units in /lib/systemd/system; the test enables confirm-on-boot). The kernel and initrd
 * are the boot tests' own (Debian's kernel, our initramfs hooks); the modules udev needs for the
 * VM's network card and fw_cfg are copied in and indexed with depmod.
 *
 * What makes it a test image and nothing else: the test driver unit (runs the script the test handed
 * the VM through QEMU's fw_cfg, see DRIVER below) and a CA certificate for the test's HTTPS server.
 */

/** Name of the fw_cfg blob that carries the scenario script (QEMU: -fw_cfg name=...,file=...). */
export const FW_CFG_SCRIPT = 'opt/upgradectl/script';
/** Name of the fw_cfg blob that names the run, so each VM run counts its own boots. */
export const FW_CFG_RUN = 'opt/upgradectl/run';

/** Modules udev loads in the VM (by modalias) and their dependencies, resolved with modprobe. */
const IMAGE_MODULES = ['virtio_net', 'qemu_fw_cfg'];

/** Units that cost boot time under TCG and do nothing for a test VM (masked, i.e. linked to /dev/null). */
const MASKED_UNITS = [
  'apt-daily.timer', 'apt-daily-upgrade.timer', 'e2scrub_all.timer', 'e2scrub_reap.service', 'fstrim.timer',
  // Nobody logs in on the serial console: the driver writes there, and a login prompt would interleave.
  'serial-getty@ttyS0.service', 'getty@tty1.service', 'getty-static.service',
];

/**
 * Runs on every boot after confirm-on-boot: the scenario's script (fw_cfg) with BOOT = how many boots
 * of this run the driver has seen (counted on the host partition, which outlives every image),
 * `marker` to print lines the test parses and `save` to keep a command's output for the test.
 * No script (a VM started without one): nothing happens.
 */
const DRIVER = `#!/bin/sh
# upgradectl boot tests: run the scenario script this VM was started with (QEMU fw_cfg), once per boot.
modprobe qemu_fw_cfg 2>/dev/null
fw=/sys/firmware/qemu_fw_cfg/by_name
[ -r "$fw/${FW_CFG_SCRIPT}/raw" ] || exit 0
run=$(cat "$fw/${FW_CFG_RUN}/raw" 2>/dev/null || echo default)
# The host partition: /host in an upgradectl image, / itself on a plain install (the adopt test).
host=/host
mountpoint -q /host || host=
count=$host/.upgradectl-test/boots-$run
mkdir -p $host/.upgradectl-test
BOOT=$(( $(cat "$count" 2>/dev/null || echo 0) + 1 ))
echo "$BOOT" > "$count"
sync -f "$count"
cp "$fw/${FW_CFG_SCRIPT}/raw" /run/upgradectl-test-script
marker() { echo "${MARKER} $*"; }
out=$host/.upgradectl-test/out/$run
mkdir -p "$out"
# save NAME CMD...: run CMD; its stdout and exit status go to the host partition for the test to read
# from the powered-off disk, and to the console. The freeze checkpoints the host's journal, so the
# files are where debugfs (which does not replay the journal) finds them.
save() {
	name=$1
	shift
	"$@" > "$out/$name"
	rc=$?
	echo "$rc" > "$out/$name.rc"
	cat "$out/$name"
	# (/ is never frozen: the shutdown that follows every script checkpoints it.)
	sync -f "$out/$name.rc" && { [ -z "$host" ] || { fsfreeze -f /host && fsfreeze -u /host; }; }
	marker saved name=$name rc=$rc
	return $rc
}
VERSION=$(cat /etc/upgradectl-test-version)
export BOOT VERSION
marker driver boot=$BOOT version=$VERSION uptime=$(cut -d' ' -f1 /proc/uptime)
# A script that succeeds has asked for its own reboot or poweroff; one that fails would leave the VM
# up until the test's timeout, so the driver powers it off and the test fails at once with the reason.
if ! ( . /run/upgradectl-test-script ); then
	marker script-failed boot=$BOOT
	systemctl poweroff
fi
`;

// No default dependencies: multi-user.target would be ordered after the driver, and the driver comes
// after confirm-on-boot, which comes after multi-user.target (an ordering cycle systemd breaks by
// dropping the driver).
const DRIVER_UNIT = `[Unit]
Description=upgradectl boot tests: run this VM's scenario script
DefaultDependencies=no
After=upgradectl-confirm.service network-online.target
Wants=network-online.target
Conflicts=shutdown.target
Before=shutdown.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/upgradectl-test-driver
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/console
Environment=NODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/upgradectl-test.crt

[Install]
WantedBy=multi-user.target
`;

const NETWORK = `# QEMU user networking: DHCP from QEMU itself; the only reachable peer is the guestfwd address.
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
`;

export interface DebianImageOptions {
  version: string;
  kernel: BootKernel;
  /** upgradectl.conf of the image. */
  config: string;
  /** Public key the image trusts for releases (keys.d/release.pub). */
  trustedKey: string;
  /** PEM of the CA that signed the test HTTPS server's certificate. */
  caCert: string;
  /** Extra files, path in the image -> content (e.g. a failing health check). */
  files?: Record<string, { content: string; mode?: number }>;
  /** Runs on the finished tree before the image is made: machine-specific files for an installed image. */
  customize?: (tree: string) => Promise<void>;
}

/** Build the tree in `workDir/root-<version>` and make the image `out` from it. Returns seconds spent. */
export async function buildDebianImage(workDir: string, out: string, opts: DebianImageOptions): Promise<number> {
  const started = performance.now();
  const tree = path.join(workDir, `root-${opts.version}`);
  await fs.rm(tree, { recursive: true, force: true });
  await extractDebianRoot(tree, { flavour: SYSTEMD });
  try {
    await slim(tree);
    await installUpgradectl(tree);
    await installKernel(tree, opts.kernel);
    await configure(tree, opts);
    if (opts.customize) await opts.customize(tree);
    await buildImage({ rootfs: tree, out, label: `debian-${opts.version}` });
  } finally {
    await fs.rm(tree, { recursive: true, force: true });
  }
  return (performance.now() - started) / 1000;
}

/** Documentation and translations are a third of minbase and nothing boots from them. */
async function slim(tree: string): Promise<void> {
  for (const dir of ['usr/share/doc', 'usr/share/man', 'usr/share/info', 'usr/share/locale', 'var/lib/apt/lists', 'var/cache/debconf']) {
    const full = path.join(tree, dir);
    await fs.rm(full, { recursive: true, force: true });
    await fs.mkdir(full, { recursive: true });
  }
}

/**
 * upgradectl as an operator installs it: the .deb of this checkout (`npm run package`, cached by
 * content) through dpkg, which checks its Depends against the image's packages and runs its maintainer
 * scripts. The package carries its own Node 20 (bookworm ships 18); the image gets no other Node.
 */
async function installUpgradectl(tree: string): Promise<void> {
  const { deb } = await packagedDeb();
  await run('dpkg', [`--root=${tree}`, '--install', deb], { timeoutMs: 5 * 60_000 });
}

/** Debian's layout: /boot/vmlinuz-<release>, /boot/initrd.img-<release>, links at / and the modules. */
export async function installKernel(tree: string, kernel: BootKernel): Promise<void> {
  const boot = path.join(tree, 'boot');
  await fs.mkdir(boot, { recursive: true });
  await fs.copyFile(kernel.vmlinuz, path.join(boot, `vmlinuz-${kernel.release}`));
  await fs.copyFile(kernel.initrd, path.join(boot, `initrd.img-${kernel.release}`));
  await fs.symlink(`boot/vmlinuz-${kernel.release}`, path.join(tree, 'vmlinuz'));
  await fs.symlink(`boot/initrd.img-${kernel.release}`, path.join(tree, 'initrd.img'));

  const modules = new Set<string>();
  for (const name of IMAGE_MODULES) {
    const { stdout } = await run('modprobe', ['-S', kernel.release, '--show-depends', name]);
    for (const m of stdout.matchAll(/^insmod (\S+)/gm)) modules.add(m[1]!);
  }
  const src = path.join('/lib/modules', kernel.release);
  const dst = path.join(tree, 'lib/modules', kernel.release);
  for (const file of modules) {
    const target = path.join(dst, path.relative(src, file));
    await fs.mkdir(path.dirname(target), { recursive: true });
    await fs.copyFile(file, target);
  }
  for (const meta of ['modules.builtin', 'modules.builtin.modinfo', 'modules.order']) {
    if (existsSync(path.join(src, meta))) await fs.copyFile(path.join(src, meta), path.join(dst, meta));
  }
  await run('depmod', ['-b', tree, kernel.release]);
}

export async function configure(tree: string, opts: DebianImageOptions): Promise<void> {
  const write = async (rel: string, content: string, mode = 0o644) => {
    const file = path.join(tree, rel);
    await fs.mkdir(path.dirname(file), { recursive: true });
    await fs.writeFile(file, content, { mode });
    await fs.chmod(file, mode);
  };
  await write('etc/upgradectl-test-version', `${opts.version}\n`);
  await write('etc/hostname', 'localhost\n');
  // The initramfs has checked the image (e2fsck -p) and mounted it read-only; systemd-remount-fs makes
  // it writable as on any Debian system. No fsck pass: the root is a loop device by the time fstab is read.
  await write('etc/fstab', '/dev/root / ext4 rw,errors=remount-ro 0 0\n');
  // An image ships without an identity; systemd makes one on its first boot, and migration carries it on.
  await write('etc/machine-id', '');
  await write('etc/upgradectl/upgradectl.conf', opts.config);
  await write('etc/upgradectl/keys.d/release.pub', opts.trustedKey);
  await write('usr/local/share/ca-certificates/upgradectl-test.crt', opts.caCert);
  await write('etc/systemd/network/50-qemu.network', NETWORK);
  await write('usr/local/sbin/upgradectl-test-driver', DRIVER, 0o755);
  await write('etc/systemd/system/upgradectl-test-driver.service', DRIVER_UNIT);
  for (const [rel, f] of Object.entries(opts.files ?? {})) await write(rel.replace(/^\/+/, ''), f.content, f.mode ?? 0o644);
  await fs.mkdir(path.join(tree, 'host'), { recursive: true });

  await run('systemctl', ['--root', tree, 'enable', 'systemd-networkd.service', 'upgradectl-confirm.service', 'upgradectl-kept-files.service', 'upgradectl-test-driver.service']);
  await run('systemctl', ['--root', tree, 'mask', ...MASKED_UNITS]);
}
