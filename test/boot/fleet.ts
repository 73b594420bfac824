import { createHash, generateKeyPairSync } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { writeBootFiles } from '../../src/operations/boot.js';
import type { GrubEnv } from '../../src/grub/env.js';
import { buildImage } from '../../src/release/image-build.js';
import { parseConfig } from '../../src/operations/config.js';
import { run } from '../../src/core/exec.js';
import { setLogLevel } from '../../src/core/log.js';
import { Layout } from '../../src/core/layout.js';
import { testModeFlag } from '../../src/core/test-switches.js';
import { initialState } from '../../src/operations/state.js';
import { installFlasher } from '../../src/operations/flasher-install.js';
import { upgradectl } from '../helpers/cli.js';
import { cacheDir } from '../helpers/debian-root.js';
import { startHttpServer, type TestHttpServer } from '../helpers/http-server.js';
import { makeTestCertificate } from '../helpers/tls.js';
import { buildBusyboxTree } from './busybox-image.js';
import { FW_CFG_RUN, FW_CFG_SCRIPT, buildDebianImage } from './debian-image.js';
import { buildHostDisk, installGrubModules, readHostFile, type HostDisk } from './disk.js';
import { bootKernel, type BootKernel } from './kernel.js';
import { HOST_UUID, envOnDisk } from './machine.js';
import { serialLogPath, Vm } from './qemu.js';

/**
 * One machine of a fleet and the fleet's release server, for the scenarios that run upgradectl itself
 * (issue 5: 2, 3, 4, 5, 7 and the demo):
 *
 * - a release server: HTTPS on the host's 127.0.0.1, which the VM reaches as https://10.0.2.100/ through
 *   QEMU's restricted user network (guestfwd); releases published there by `upgradectl publish`;
 * - the machine: a raw disk whose host partition holds v1 (a Debian + systemd + Node image with
 *   upgradectl installed and this machine's identity: hostname, SSH host keys, an operator account (fleetadmin)),
 *   its state and GRUB files written by upgradectl's own code, and room for two more images;
 * - runs: the VM boots with a shell script handed in through fw_cfg, which the image's test driver
 *   runs on every boot with $BOOT counting the boots of that run (debian-image.ts).
 *
 * Everything the guest reports back is written under /host/.upgradectl-test/ and read from the disk
 * after the VM is off, with debugfs, so nothing depends on a console line surviving intact.
 */

/** Where the guest sees the release server. */
export const RELEASE_ADDR = '10.0.2.100';
/** Where the guest sees a scenario's hawkBit DDI server (the same test certificate covers both). */
export const DDI_ADDR = '10.0.2.101';

/** The identity v1 carries and the upgrades must keep. */
export const IDENTITY = {
  hostname: 'fleet-node-17',
  user: 'fleetadmin',
  uid: 1001,
  // A real sha512-crypt hash (of "correct horse"): migration must carry the bytes, not a placeholder.
  passwordHash: '$6$rounds=5000$upgradectltest$Hj2yXbWvQkqM2eYcF0m8Rr6pYsbZ9NYX.ZbCNUbb7CqB3v0sRgC3Cq7QPlF0Hq2pDg5V8nJ4QYyT7U2iB9dKq/',
};

/** upgradectl.conf of the boot tests' Debian images: the HTTPS release server through QEMU's network. */
export const BOOT_CONFIG = `[source]
url = https://${RELEASE_ADDR}/fleet/
channel = stable

[boot]
host_uuid = ${HOST_UUID}
serial_console = ttyS0,115200
panic_timeout = 1
menu_timeout = 0
trial_attempts = 1

[health]
timeout = 120
`;

export type ReleaseKind =
  /** The Debian image with upgradectl, like v1 but without this machine's identity. */
  | { kind: 'debian'; files?: Record<string, { content: string; mode?: number }> }
  /** A busybox image whose init dies at once: the kernel panics on every boot of it. */
  | { kind: 'panic' };

export interface FleetRun {
  /** Names the serial log and the run's boot counter. */
  name: string;
  /** Shell run by the image's test driver on every boot; $BOOT, $VERSION, marker and save are defined. */
  script: string;
  /** Kernel starts after which the VM is killed as a boot loop. */
  maxBoots: number;
  echo?: (line: string) => void;
  /** More host servers the guest reaches at these addresses, on port 443 unless guestPort says otherwise (e.g. a DDI server at DDI_ADDR). */
  forward?: Array<{ guestAddr: string; hostPort: number; guestPort?: number }>;
}

export class Fleet {
  /** Name of the last run started: saved outputs are kept per run. */
  private lastRun = '';

  private constructor(
    readonly workDir: string,
    readonly kernel: BootKernel,
    readonly server: TestHttpServer,
    readonly key: string,
    readonly caCert: string,
    readonly disk: HostDisk,
    /** Seconds spent building v1 and the disk. */
    readonly buildSeconds: number,
    /** What v1 was given that is not in IDENTITY. */
    readonly identity: { sshKeySha256: string },
    /** The servers' certificate and key (both addresses), for a scenario's own HTTPS servers. */
    readonly tls: { key: string; cert: string },
  ) {}

  /** Build the release server and the machine with v1 installed. */
  static async create(workDir: string): Promise<Fleet> {
    if (!process.env.UPGRADECTL_LOG_LEVEL) setLogLevel('warn');
    const started = performance.now();
    const kernel = await bootKernel();
    const tls = await makeTestCertificate(path.join(workDir, 'tls'), [RELEASE_ADDR, DDI_ADDR]);
    const key = path.join(workDir, 'release.key');
    const kg = await upgradectl(['keygen', '--out', key]);
    if (kg.code !== 0) throw new Error(`keygen failed: ${kg.stderr}`);
    const www = path.join(workDir, 'www');
    await fs.mkdir(path.join(www, 'fleet'), { recursive: true });
    const server = await startHttpServer(www, { tls });

    try {
      const hostTree = path.join(workDir, 'host');
      const host = new Layout(hostTree);
      await fs.mkdir(host.imagesDir, { recursive: true });
      // The scripts run in the VM set UPGRADECTL_REBOOT_COMMAND: a test machine (core/test-switches.ts).
      await fs.writeFile(testModeFlag(hostTree), 'test machine: test-only switches are honoured\n');
      let sshKeySha256 = '';
      await buildDebianImage(workDir, host.imageFile('1'), {
        ...(await imageBase(kernel, key, tls.cert)),
        version: '1',
        customize: async (tree) => {
          sshKeySha256 = await giveIdentity(tree);
        },
      });
      const config = parseConfig(BOOT_CONFIG, 'fleet config');
      await writeBootFiles(host, config, { ...initialState(), current: '1' });
      await installGrubModules(hostTree);
      const imageBytes = (await fs.stat(host.imageFile('1'))).size;
      // v1 plus a staged and a prepared image, with slack for the state and the boot files.
      const sizeMiB = Math.ceil((imageBytes * 3.2) / 1048576) + 128;
      const disk = await buildHostDisk({ hostTree, hostUuid: HOST_UUID, out: path.join(workDir, 'disk.img'), sizeMiB });
      await fs.rm(hostTree, { recursive: true, force: true });
      return new Fleet(workDir, kernel, server, key, tls.cert, disk, (performance.now() - started) / 1000, { sshKeySha256 }, tls);
    } catch (err) {
      await server.close();
      throw err;
    }
  }

  /** Build `version` and publish it to the channel, as a release engineer would. Returns seconds spent. */
  async release(version: string, what: ReleaseKind): Promise<number> {
    const started = performance.now();
    const image = path.join(this.workDir, `release-${version}.img`);
    if (what.kind === 'debian') {
      await buildDebianImage(this.workDir, image, { ...(await imageBase(this.kernel, this.key, this.caCert)), version, files: what.files });
    } else {
      const tree = path.join(this.workDir, `root-${version}`);
      await buildBusyboxTree(tree, { version, action: 'panic', kernel: this.kernel });
      await buildImage({ rootfs: tree, out: image });
      await fs.rm(tree, { recursive: true, force: true });
    }
    const releases = `file://${path.join(this.workDir, 'www/fleet')}`;
    const p = await upgradectl(['publish', image, '--version', version, '--to', releases, '--key', this.key, '--channel', 'stable']);
    if (p.code !== 0) throw new Error(`publish ${version} failed: ${p.stderr}`);
    await fs.rm(image, { force: true });
    return (performance.now() - started) / 1000;
  }

  /** Power the machine on with a scenario script. The caller waits on the VM and must kill it (teardown). */
  async start(runOpts: FleetRun): Promise<Vm> {
    this.lastRun = runOpts.name;
    const dir = path.join(this.workDir, 'runs', runOpts.name);
    await fs.mkdir(dir, { recursive: true });
    const script = path.join(dir, 'script.sh');
    const runId = path.join(dir, 'run-id');
    await fs.writeFile(script, `${runOpts.script.trim()}\n`);
    await fs.writeFile(runId, runOpts.name);
    return Vm.start({
      disk: this.disk.file,
      logFile: await serialLogPath(cacheDir(), runOpts.name),
      allowReboot: true,
      maxBoots: runOpts.maxBoots,
      memoryMiB: 1024,
      guestfwd: [
        { guestAddr: RELEASE_ADDR, guestPort: 443, hostPort: this.server.port },
        ...(runOpts.forward ?? []).map((f) => ({ guestAddr: f.guestAddr, guestPort: f.guestPort ?? 443, hostPort: f.hostPort })),
      ],
      fwCfg: { [FW_CFG_SCRIPT]: script, [FW_CFG_RUN]: runId },
      echo: runOpts.echo,
    });
  }

  /**
   * What the guest saved with `save NAME ...` in the last run, read from the powered-off disk;
   * undefined if absent.
   */
  async saved(name: string): Promise<{ out: string; rc: number } | undefined> {
    const dir = `/.upgradectl-test/out/${this.lastRun}`;
    const out = await readHostFile(this.disk, `${dir}/${name}`);
    const rc = await readHostFile(this.disk, `${dir}/${name}.rc`);
    if (out === undefined || rc === undefined) return undefined;
    return { out: out.toString('utf8'), rc: Number(rc.toString('utf8').trim()) };
  }

  /** `save NAME upgradectl --json ...` output, parsed. */
  async savedJson(name: string): Promise<any> {
    const s = await this.saved(name);
    if (!s) throw new Error(`the guest saved no ${name} (see the serial log)`);
    try {
      return JSON.parse(s.out);
    } catch {
      throw new Error(`the guest's ${name} is not JSON (exit ${s.rc}): ${s.out.slice(0, 500)}`);
    }
  }

  /** A file of the host partition as GRUB would read it (no journal replay); undefined if absent. */
  hostFile(file: string): Promise<Buffer | undefined> {
    return readHostFile(this.disk, file);
  }

  /**
   * A reflash release (docs/flasher.md): a whole host partition holding the Debian image `version` as
   * its default (no identity: that is what the reflash must keep), its GRUB files written by
   * upgradectl's own code, under the host UUID GRUB's core.img searches for; published --reflash to the
   * channel. Returns seconds spent.
   */
  async reflashRelease(version: string): Promise<number> {
    const started = performance.now();
    const hostTree = path.join(this.workDir, `reflash-${version}`);
    const host = new Layout(hostTree);
    await fs.mkdir(host.imagesDir, { recursive: true });
    await buildDebianImage(this.workDir, host.imageFile(version), { ...(await imageBase(this.kernel, this.key, this.caCert)), version });
    await writeBootFiles(host, parseConfig(BOOT_CONFIG, 'fleet config'), { ...initialState(), current: version });
    await installGrubModules(hostTree);
    const imageBytes = (await fs.stat(host.imageFile(version))).size;
    const partition = path.join(this.workDir, `reflash-${version}.img`);
    const mib = Math.ceil((imageBytes * 1.15) / 1048576) + 32;
    await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'host', '-U', HOST_UUID, '-d', hostTree, partition, `${mib}M`]);
    await fs.rm(hostTree, { recursive: true, force: true });
    const releases = `file://${path.join(this.workDir, 'www/fleet')}`;
    const p = await upgradectl(['publish', partition, '--version', version, '--to', releases, '--key', this.key, '--channel', 'stable', '--reflash']);
    if (p.code !== 0) throw new Error(`publish --reflash ${version} failed: ${p.stderr}`);
    await fs.rm(partition, { force: true });
    return (performance.now() - started) / 1000;
  }

  /**
   * `upgradectl flasher install` as the machine would run it, on its powered-off host partition
   * (loop-mounted): the flasher built from the kernel the fleet boots and this machine's busybox, lz4
   * and openssl (the Debian image carries none of them), its GRUB entries in grub.cfg.
   */
  async installFlasher(): Promise<void> {
    const mnt = await fs.mkdtemp(path.join(this.workDir, 'hostfs-'));
    await run('mount', ['-o', `loop,offset=${this.disk.offset}`, '-t', 'ext4', this.disk.file, mnt]);
    try {
      await installFlasher(new Layout(mnt), parseConfig(BOOT_CONFIG, 'fleet config'), {
        kernel: this.kernel.vmlinuz, modulesDir: `/lib/modules/${this.kernel.release}`, busybox: '/bin/busybox', lz4: '/usr/bin/lz4', openssl: '/usr/bin/openssl',
      });
    } finally {
      await run('umount', [mnt]);
      await fs.rmdir(mnt);
    }
  }

  /** grubenv as GRUB will read it at the next power-on (no journal replay). */
  grubEnv(): Promise<GrubEnv> {
    return envOnDisk(this);
  }

  /** The machine's disk as it is now, kept as `name` so later scenarios can each start from it. */
  async snapshot(name: string): Promise<string> {
    const copy = path.join(this.workDir, `${name}.disk.img`);
    await run('cp', ['--sparse=always', this.disk.file, copy]);
    return copy;
  }

  /** Put a snapshot back as the machine's disk. */
  async restore(snapshot: string): Promise<void> {
    await run('cp', ['--sparse=always', snapshot, this.disk.file]);
  }

  async close(): Promise<void> {
    await this.server.close();
  }
}

async function imageBase(kernel: BootKernel, key: string, caCert: string) {
  return { kernel, config: BOOT_CONFIG, trustedKey: await fs.readFile(`${key}.pub`, 'utf8'), caCert };
}

/**
 * Make the installed image this machine: hostname, SSH host keys and an operator with a password.
 * Returns the SHA-256 of the private host key.
 */
async function giveIdentity(tree: string): Promise<string> {
  await fs.writeFile(path.join(tree, 'etc/hostname'), `${IDENTITY.hostname}\n`);
  await fs.writeFile(path.join(tree, 'etc/hosts'), `127.0.0.1\tlocalhost\n127.0.1.1\t${IDENTITY.hostname}\n`);
  await fs.mkdir(path.join(tree, 'etc/ssh'), { recursive: true });
  // No sshd in the image: the keys only have to arrive byte for byte, mode and all.
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const hostKey = privateKey.export({ type: 'pkcs8', format: 'pem' });
  await fs.writeFile(path.join(tree, 'etc/ssh/ssh_host_ed25519_key'), hostKey, { mode: 0o600 });
  await fs.writeFile(path.join(tree, 'etc/ssh/ssh_host_ed25519_key.pub'), publicKey.export({ type: 'spki', format: 'pem' }), { mode: 0o644 });
  const append = (file: string, line: string) => fs.appendFile(path.join(tree, 'etc', file), `${line}\n`);
  const { user, uid, passwordHash } = IDENTITY;
  await append('passwd', `${user}:x:${uid}:${uid}:Fleet operator:/home/${user}:/bin/sh`);
  await append('shadow', `${user}:${passwordHash}:20000:0:99999:7:::`);
  await append('group', `${user}:x:${uid}:`);
  await append('gshadow', `${user}:!::`);
  return createHash('sha256').update(hostKey).digest('hex');
}
