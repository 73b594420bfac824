import { promises as fs } from 'node:fs';
import path from 'node:path';
import { armTrial } from '../../src/operations/boot.js';
import { writeBootFiles, readBootEnv } from '../../src/operations/boot.js';
import { parseGrubEnv, type GrubEnv } from '../../src/grub/env.js';
import { buildImage } from '../../src/release/image-build.js';
import { parseConfig, type Config } from '../../src/operations/config.js';
import { setLogLevel } from '../../src/core/log.js';
import { Layout } from '../../src/core/layout.js';
import { initialState, type State } from '../../src/operations/state.js';
import { cacheDir } from '../helpers/debian-root.js';
import { buildBusyboxTree, type InitAction } from './busybox-image.js';
import { buildHostDisk, installGrubModules, readHostFile, type Firmware, type HostDisk, type SignedBoot } from './disk.js';
import { bootKernel, type BootKernel } from './kernel.js';
import { serialLogPath, Vm, type VmOptions } from './qemu.js';

/**
 * The front door of the boot tests: a machine whose host partition was set up by upgradectl's own
 * code (image build, grub.cfg renderer, grubenv writer, boot control), written to a raw disk, booted
 * in QEMU. The scenario says what the host holds; this module does it the way upgradectl would.
 */

/** Fixed so that a failing run's grub.cfg and serial log can be compared with a passing one. */
export const HOST_UUID = '5ca1ab1e-0000-4000-8000-00000000b007';

/**
 * panic=1: a failed boot costs one second before the reset instead of the default ten; the chain
 * (initramfs panic or kernel panic -> reset -> GRUB -> default) is the same.
 */
export const TEST_BOOT_CONFIG = `[boot]
host_uuid = ${HOST_UUID}
serial_console = ttyS0,115200
panic_timeout = 1
menu_timeout = 0
trial_attempts = 1
`;

export interface MachineImage {
  version: string;
  action: InitAction;
}

export interface MachineSpec {
  /** Names the work files and the serial log. */
  name: string;
  /** Images put on the host partition with `upgradectl image build`. */
  images: MachineImage[];
  /** The lifecycle state the boot files are written for (current = GRUB's default). */
  state: Partial<State>;
  /** Arm a one-shot trial of this version through boot-control's armTrial, as commit does. */
  trial?: string;
  /**
   * Runs on the host tree after upgradectl wrote the boot files and before the disk is made: the place
   * to break things behind upgradectl's back (delete or damage an image).
   */
  tamper?: (host: Layout) => Promise<void>;
  configText?: string;
  /** Default bios; uefi: GPT, an ESP with GRUB x86_64-efi, OVMF (disk.ts). */
  firmware?: Firmware;
  /** With firmware uefi: shim and Debian's signed GRUB, OVMF with Secure Boot on (secure-boot.ts). */
  secureBoot?: SignedBoot;
}

export interface Machine {
  spec: MachineSpec;
  disk: HostDisk;
  host: Layout;
  config: Config;
  kernel: BootKernel;
  /** grub.cfg and grubenv as written, before any boot. */
  grubCfg: string;
  envBefore: GrubEnv;
  logFile: string;
  /** Seconds spent building images and the disk. */
  buildSeconds: number;
}

/** Build a machine's disk under `workDir` (a t.testdir()). */
export async function buildMachine(workDir: string, spec: MachineSpec): Promise<Machine> {
  // upgradectl's info lines ("built …", "creating grubenv") would only clutter the TAP stream.
  if (!process.env.UPGRADECTL_LOG_LEVEL) setLogLevel('warn');
  const started = performance.now();
  const kernel = await bootKernel();
  const hostTree = path.join(workDir, 'host');
  await fs.mkdir(hostTree, { recursive: true });
  const host = new Layout(hostTree);
  await fs.mkdir(host.imagesDir, { recursive: true });
  const config = parseConfig(spec.configText ?? TEST_BOOT_CONFIG, 'test config');

  for (const image of spec.images) {
    const tree = path.join(workDir, `root-${image.version}`);
    await buildBusyboxTree(tree, { version: image.version, action: image.action, kernel });
    await buildImage({ rootfs: tree, out: host.imageFile(image.version) });
    await fs.rm(tree, { recursive: true, force: true });
  }

  const state: State = { ...initialState(), ...spec.state };
  await writeBootFiles(host, config, state);
  if (spec.trial) await armTrial(host, config, state, spec.trial);
  await installGrubModules(hostTree, spec.firmware);
  const grubCfg = await fs.readFile(host.grubCfg, 'utf8');
  const envBefore = (await readBootEnv(host)) ?? {};
  if (spec.tamper) await spec.tamper(host);

  const disk = await buildHostDisk({ hostTree, hostUuid: HOST_UUID, out: path.join(workDir, 'disk.img'), firmware: spec.firmware, secureBoot: spec.secureBoot });
  // The tree was only the source of the disk; the images in it are large.
  await fs.rm(hostTree, { recursive: true, force: true });
  const logFile = await serialLogPath(cacheDir(), spec.name);
  return { spec, disk, host, config, kernel, grubCfg, envBefore, logFile, buildSeconds: (performance.now() - started) / 1000 };
}

/** Tap's teardown hook, as much of it as this module needs. */
interface Teardown {
  teardown(fn: () => unknown): void;
}

/** Power the machine on. The VM is killed (by its PID) in the test's teardown if it is still running. */
export function powerOn(t: Teardown, machine: Machine, opts: Pick<VmOptions, 'allowReboot' | 'maxBoots' | 'directKernel'>): Vm {
  const vm = Vm.start({ disk: machine.disk.file, logFile: machine.logFile, efi: machine.disk.efi, ...opts });
  t.teardown(() => vm.kill('test teardown'));
  return vm;
}

/** grubenv as GRUB left it on the disk (read without journal replay, i.e. as GRUB itself reads it). */
export async function envOnDisk(machine: { disk: HostDisk }): Promise<GrubEnv> {
  const block = await readHostFile(machine.disk, '/boot/grub/grubenv');
  if (!block) throw new Error(`no /boot/grub/grubenv on ${machine.disk.file}`);
  return parseGrubEnv(block, `${machine.disk.file}:/boot/grub/grubenv`);
}

/** Seconds, one decimal, for t.comment lines. */
export function secs(ms: number): string {
  return (ms / 1000).toFixed(1);
}
