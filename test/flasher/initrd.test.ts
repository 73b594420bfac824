import t from 'tap';
import { createHash } from 'node:crypto';
import { existsSync, promises as fs, statSync } from 'node:fs';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { run } from '../../src/core/exec.js';
import { buildFlasherInitrd } from '../../src/flasher/initrd.js';
import { Layout } from '../../src/core/layout.js';
import { addFlasherKey } from '../../src/operations/flasher-install.js';
import { newestKernel } from '../boot/kernel.js';
import { skipUnless } from '../helpers/requirements.js';

const skip = skipUnless({ root: true, commands: ['busybox', 'lz4', 'cpio'] });

/** The flasher initrd built from this machine's kernel, busybox and lz4 (and dropbear), unpacked into DIR/tree. */
async function unpackedInitrd(dir: string, dropbear?: string, openssl?: string): Promise<{ built: Awaited<ReturnType<typeof buildFlasherInitrd>>; tree: string }> {
  const { release } = await newestKernel();
  const built = await buildFlasherInitrd({ busybox: '/bin/busybox', lz4: '/usr/bin/lz4', modulesDir: `/lib/modules/${release}`, dropbear, openssl });
  const archive = path.join(dir, 'initrd.cpio');
  await fs.writeFile(archive, gunzipSync(built.data));
  const tree = path.join(dir, 'tree');
  await fs.mkdir(tree);
  await run('sh', ['-c', `cd ${tree} && cpio -idm --quiet < ${archive}`]);
  return { built, tree };
}

t.test('the flasher initrd unpacks into a tree that runs: init, busybox, lz4 with its libraries, modules in order', { skip }, async (t) => {
  const dir = t.testdir();
  const { built, tree } = await unpackedInitrd(dir);
  t.equal(statSync(path.join(tree, 'init')).mode & 0o777, 0o755, '/init is executable');
  t.equal(statSync(path.join(tree, 'bin/busybox')).uid, 0, 'owned by root');
  // Inside the tree alone (chroot): proves lz4's loader and libc came along.
  const { stdout } = await run('chroot', [tree, '/bin/sh', '-c', 'echo flasher | lz4 -c | lz4 -dc && sha256sum /init >/dev/null && echo ok']);
  t.equal(stdout, 'flasher\nok\n');
  const order = (await fs.readFile(path.join(tree, 'lib/modules/load-order'), 'utf8')).trim().split('\n');
  const at = (name: string) => order.findIndex((m) => m.endsWith(`/${name}.ko`));
  for (const m of ['virtio_blk', 'virtio_net', 'virtio_pci', 'ext4', 'jbd2']) t.ok(at(m) >= 0, `${m} is in the initrd`);
  t.ok(at('virtio') < at('virtio_net') && at('jbd2') < at('ext4'), 'dependencies load first');
  t.ok(built.data.length < 16 * 1048576, `small: ${(built.data.length / 1048576).toFixed(1)} MiB`);
  t.comment(`initrd ${(built.data.length / 1048576).toFixed(1)} MiB, ${order.length} modules`);
});

t.test('SSH into the flasher: its dropbear lets in the keys of flasher add-key, only when root-only, without passwords', { skip: skipUnless({ root: true, commands: ['busybox', 'lz4', 'cpio', 'ssh', 'ssh-keygen', 'chroot', 'mknod'], files: ['/usr/sbin/dropbear'] }) }, async (t) => {
  const dir = t.testdir();
  const { tree } = await unpackedInitrd(dir, '/usr/sbin/dropbear');
  // What the kernel's devtmpfs gives the flasher: the two devices dropbear opens.
  await run('mknod', ['-m', '666', path.join(tree, 'dev/null'), 'c', '1', '3']);
  await run('mknod', ['-m', '444', path.join(tree, 'dev/urandom'), 'c', '1', '9']);
  // The host partition as the flasher mounts it, with the key file flasher add-key wrote.
  const layout = new Layout(path.join(tree, 'host'));
  const key = path.join(dir, 'operator');
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key]);
  await addFlasherKey(layout, await fs.readFile(`${key}.pub`, 'utf8'));
  const port = 20000 + Math.floor(Math.random() * 20000);
  const pidFile = path.join(tree, 'run/dropbear.pid');
  let dropbearPid = 0;
  // The daemon this test started, by its PID (read when it started: the tree is gone by teardown).
  t.teardown(() => {
    if (dropbearPid > 0) process.kill(dropbearPid, 'SIGTERM');
  });
  const flasher = (body: string) => run('chroot', [tree, '/bin/sh', '-c', `export PATH=/bin:/sbin; . /lib/upgradectl/flasher.sh; HOST_MNT=/host SSH_PORT=127.0.0.1:${port}; mkdir -p $FLASHER_DIR; ${body}`]);
  const ssh = (cmd: string) => run('ssh', ['-i', key, '-p', String(port), '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR', 'root@127.0.0.1', cmd]);

  // A key file others could have written is refused: no keys, so no SSH at all.
  await fs.chmod(path.join(layout.flasherDir, 'authorized_keys'), 0o666);
  const refused = await flasher('copy_ssh_keys; start_ssh; ls /root/.ssh/authorized_keys 2>&1; cat $FLASHER_DIR/log');
  t.match(refused.stdout, /not root-only: SSH stays off/);
  t.match(refused.stdout, /No such file/);
  await fs.chmod(path.join(layout.flasherDir, 'authorized_keys'), 0o600);

  await flasher('copy_ssh_keys; status fetch "attempt 1: http://10.0.2.100/releases/2/image.lz4"; start_ssh');
  // dropbear's daemonized child writes the PID file after its parent has returned: wait for it.
  for (let i = 0; i < 50 && !existsSync(pidFile); i++) await new Promise((r) => setTimeout(r, 100));
  dropbearPid = Number((await fs.readFile(pidFile, 'utf8')).trim());
  const { stdout } = await ssh('cat /run/upgradectl-flasher/status; id -u');
  t.match(stdout, /^phase=ssh\nmessage=dropbear listens on port 127\.0\.0\.1:\d+ .*\n/, 'logged in as root with the key; the status file is there to read');
  t.match(stdout, /\n0\n$/);
  const other = path.join(dir, 'stranger');
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other]);
  await t.rejects(run('ssh', ['-i', other, '-p', String(port), '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR', 'root@127.0.0.1', 'true']), 'another key is refused');
});

t.test('a static network: the flasher puts the job\'s address on the card with its MAC, in a network namespace of its own', { skip: skipUnless({ root: true, commands: ['busybox', 'lz4', 'cpio', 'chroot', 'unshare', 'ip'] }) }, async (t) => {
  const dir = t.testdir();
  const { tree } = await unpackedInitrd(dir);
  // unshare -n -m: the cards, the address and sysfs exist only for this command (bridges stand for
  // cards: this kernel has no dummy driver). JOB_KIND=rescue: a failure ends the story instead of
  // rebooting, and reboot is shadowed besides.
  const flasher = (mac: string) => run('unshare', ['-n', '-m', 'sh', '-ec', `
    ip link add eth7 address 52:54:00:ab:cd:01 type bridge
    ip link add eth8 address 52:54:00:ab:cd:02 type bridge
    mount -t sysfs sysfs ${tree}/sys
    chroot ${tree} /bin/sh -c 'export PATH=/bin:/sbin JOB_KIND=rescue CARD_WAIT_SECONDS=1 CARRIER_WAIT_SECONDS=1
      reboot() { echo "reboot refused"; exit 9; }
      . /lib/upgradectl/flasher.sh; mkdir -p $FLASHER_DIR /etc
      job_net=static job_net_mac=${mac} job_net_addr=192.0.2.10/24 job_net_gw=192.0.2.1 job_net_dns=192.0.2.53,198.51.100.53
      network_up; echo "#"; ip -4 addr show; echo "#"; ip route; echo "#"; cat /etc/resolv.conf'`]);
  const { stdout } = await flasher('52:54:00:ab:cd:02');
  const [log, addrs, routes, resolv] = stdout.split('#\n');
  t.match(log, /\[network\] eth8: 192\.0\.2\.10\/24 static \(gateway 192\.0\.2\.1/, 'the card with the MAC of the job');
  t.match(addrs, /eth8[\s\S]*inet 192\.0\.2\.10\/24/);
  t.notMatch(addrs, /eth7[^\n]*\n[^\n]*inet 192/, 'not on the other card');
  t.match(routes, /^default via 192\.0\.2\.1 dev eth8/m);
  t.equal(resolv, 'nameserver 192.0.2.53\nnameserver 198.51.100.53\n');
  const missing = await flasher('52:54:00:ab:cd:09').then(() => undefined, (err: { stdout?: string }) => err.stdout ?? '');
  t.match(missing, /no network card with MAC 52:54:00:ab:cd:09/, 'a card that is not there: refused before anything is fetched');
});

t.test('SHA-256 in the flasher: openssl when the initrd has it (no config file needed), busybox otherwise, the same digests', { skip: skipUnless({ root: true, commands: ['busybox', 'lz4', 'cpio', 'chroot'], files: ['/usr/bin/openssl'] }) }, async (t) => {
  const dir = t.testdir();
  const data = Buffer.alloc(3 * 1048576 + 17, 'upgradectl ');
  const want = createHash('sha256').update(data).digest('hex');
  const hashes = async (tree: string) => {
    await fs.writeFile(path.join(tree, 'tmp/data'), data);
    const { stdout } = await run('chroot', [tree, '/bin/sh', '-c', 'export PATH=/bin:/sbin; . /lib/upgradectl/flasher.sh; sha256 /tmp/data; sha256 < /tmp/data; [ -x /bin/openssl ] && echo openssl || echo busybox']);
    return stdout.trim().split('\n');
  };
  await fs.mkdir(path.join(dir, 'a'));
  await fs.mkdir(path.join(dir, 'b'));
  const withOpenssl = await unpackedInitrd(path.join(dir, 'a'), undefined, '/usr/bin/openssl');
  t.same(await hashes(withOpenssl.tree), [want, want, 'openssl'], 'openssl in the initrd, from a file and from a pipe');
  const plain = await unpackedInitrd(path.join(dir, 'b'));
  t.same(await hashes(plain.tree), [want, want, 'busybox'], 'busybox without it');
});
