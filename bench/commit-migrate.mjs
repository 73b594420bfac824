#!/usr/bin/env node
// Commit's downtime-critical step: migrate a lived-in machine's files into a prepared 1 GiB image
// holding a whole Debian minbase, with the default whitelist, including loop attach, mount, unmount,
// detach and `e2fsck -n`. Runs the compiled code: `npx tsc -p tsconfig.json && node bench/commit-migrate.mjs`.
// Needs root, losetup, mke2fs, debootstrap (the Debian tree is the tests' cached tarball).
//
// Printed next to it, measured in the same run: the floor no migration can go under — attach, mount,
// unmount, detach and e2fsck of the same image with nothing migrated.
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { migrateIntoImage } = await import(path.join(repo, 'dist/migrate/index.js'));
const { withMountedImage } = await import(path.join(repo, 'dist/migrate/image-mount.js'));
const { Layout } = await import(path.join(repo, 'dist/core/layout.js'));
const { run } = await import(path.join(repo, 'dist/core/exec.js'));

const RUNS = Number(process.env.RUNS ?? 5);
const TARGET_MS = 2000;

async function tarball() {
  const candidates = [process.env.UPGRADECTL_TEST_CACHE, '/var/cache/upgradectl-test', path.join(repo, '.cache')].filter(Boolean);
  for (const dir of candidates) {
    const file = path.join(dir, 'debian-bookworm-minbase.tar');
    if (existsSync(file)) return file;
  }
  throw new Error('no cached Debian tree: run `npx tap test/migrate` once (it builds it with debootstrap, ~40 s)');
}

async function write(root, rel, text, mode = 0o644) {
  const file = path.join(root, rel);
  await fs.mkdir(path.dirname(file), { recursive: true });
  await fs.writeFile(file, text, { mode });
  await fs.chmod(file, mode);
}

/** What the default whitelist finds on a real server: identity, keys, network, users. */
async function liveIn(root) {
  await write(root, 'etc/hostname', 'bench-1\n');
  await write(root, 'etc/hosts', '127.0.0.1 localhost\n10.1.2.3 bench-1\n');
  await write(root, 'etc/machine-id', '0123456789abcdef0123456789abcdef\n', 0o444);
  await fs.mkdir(path.join(root, 'etc/ssh'), { recursive: true });
  for (const type of ['ed25519', 'ecdsa', 'rsa']) {
    await run('ssh-keygen', ['-q', '-t', type, '-N', '', '-f', path.join(root, `etc/ssh/ssh_host_${type}_key`)]);
  }
  await write(root, 'etc/network/interfaces', 'source /etc/network/interfaces.d/*\n');
  await write(root, 'etc/network/interfaces.d/eth0', 'auto eth0\niface eth0 inet dhcp\n');
  await write(root, 'etc/netplan/50-cloud.yaml', 'network: {version: 2, ethernets: {eth0: {dhcp4: true}}}\n', 0o600);
  await write(root, 'etc/systemd/network/10-eth0.network', '[Match]\nName=eth0\n[Network]\nDHCP=yes\n');
  await write(root, 'etc/NetworkManager/system-connections/eth0.nmconnection', '[connection]\nid=eth0\n', 0o600);
  await write(root, 'etc/timezone', 'Europe/Berlin\n');
  await write(root, 'etc/upgradectl/upgradectl.conf', '[source]\nurl = file:///srv/releases\n');
  await write(root, 'root/.ssh/authorized_keys', 'ssh-ed25519 AAAA operator\n', 0o600);
  for (let i = 0; i < 20; i++) await run('useradd', ['-P', root, '-u', String(1000 + i), '-U', '-G', 'sudo,users', `user${i}`]);
}

const work = await fs.mkdtemp(path.join(os.tmpdir(), 'bench-migrate-'));
try {
  const tar = await tarball();
  const machine = path.join(work, 'machine');
  const imageTree = path.join(work, 'image-tree');
  await fs.mkdir(machine);
  await fs.mkdir(imageTree);
  await run('tar', ['--numeric-owner', '-C', machine, '-xf', tar, './etc', './root']);
  await liveIn(machine);
  await run('tar', ['--numeric-owner', '-C', imageTree, '-xf', tar]);
  await fs.mkdir(path.join(imageTree, 'host'), { recursive: true });
  const pristine = path.join(work, 'pristine.img');
  await run('mke2fs', ['-q', '-t', 'ext4', '-d', imageTree, '-F', pristine, '1G']);
  const image = path.join(work, 'next.img');
  const layout = new Layout(machine);

  const floor = [];
  const migrate = [];
  let report;
  for (let i = 0; i < RUNS; i++) {
    await run('cp', ['--sparse=always', pristine, image]);
    await run('sync', []);
    let t0 = process.hrtime.bigint();
    await withMountedImage(image, {}, async () => undefined);
    await run('e2fsck', ['-n', '-f', image]);
    floor.push(Number(process.hrtime.bigint() - t0) / 1e6);

    await run('cp', ['--sparse=always', pristine, image]);
    await run('sync', []);
    t0 = process.hrtime.bigint();
    report = await migrateIntoImage({ layout, imageFile: image });
    migrate.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const m = median(migrate);
  const f = median(floor);
  const used = (await fs.stat(pristine)).blocks * 512;
  console.log(`image: 1 GiB ext4, ${(used / 2 ** 20).toFixed(0)} MiB used (Debian bookworm minbase)`);
  console.log(`migrated: ${report.moved.length} items, ${report.bytes} bytes, ${report.accounts?.usersAdded.length ?? 0} accounts added; fsck ${report.fsck}`);
  console.log(`migrate (attach+mount+plan+copy+merge+umount+detach+e2fsck), median of ${RUNS}: ${m.toFixed(0)} ms  [runs: ${migrate.map((x) => x.toFixed(0)).join(', ')}]`);
  console.log(`floor   (attach+mount+umount+detach+e2fsck, nothing migrated):   ${f.toFixed(0)} ms  [runs: ${floor.map((x) => x.toFixed(0)).join(', ')}]`);
  console.log(`ratio migrate/floor: ${(m / f).toFixed(2)}; target < ${TARGET_MS} ms: ${m < TARGET_MS ? 'met' : 'MISSED'}`);
  if (m >= TARGET_MS) process.exitCode = 1;
} finally {
  await fs.rm(work, { recursive: true, force: true });
}
