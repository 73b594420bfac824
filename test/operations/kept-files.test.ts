import t from 'tap';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Layout } from '../../src/core/layout.js';
import { run } from '../../src/core/exec.js';
import { KEPT_FILES_HASH } from '../../src/flasher/job.js';
import { keptFilesArchive, packKeptFiles, restoreKeptFiles, restoreLateKeptFiles } from '../../src/operations/kept-files.js';
import { skipUnless } from '../helpers/requirements.js';
import { debianTree, freshImageTree, liveIn, PASSWORD_HASH, treeDigest } from '../migrate/fixtures/machine.js';

/**
 * What a reflash keeps (docs/flasher.md, "What a reflash keeps"), on real Debian trees: commit --reflash
 * packs the whitelisted files of the running machine; the reflashed system restores them into its own
 * root with the migration's planner, accounts merged. The flasher's part (size, hash, RAM, the hash
 * file on the new partition) is tested in test/flasher/job.test.ts and in the QEMU reflash (scenario a).
 */

const skip = skipUnless({ root: true, commands: ['debootstrap', 'ssh-keygen', 'useradd', 'tar', 'setfattr', 'getfattr'] });

const sha256 = async (file: string) => createHash('sha256').update(await fs.readFile(file)).digest('hex');
const read = (root: string, rel: string) => fs.readFile(path.join(root, rel), 'utf8');

/** A reflashed system: the release's pristine tree, its host partition at /host, with what the flasher put there. */
async function reflashedSystem(dir: string, name: string, archive: string, hash: string | undefined): Promise<Layout> {
  const root = await debianTree(path.join(dir, name));
  await freshImageTree(root);
  await fs.mkdir(path.join(root, 'host/images'), { recursive: true });
  const layout = new Layout(root);
  await fs.mkdir(layout.flasherDir, { recursive: true });
  await fs.copyFile(archive, keptFilesArchive(layout));
  await fs.chmod(keptFilesArchive(layout), 0o600);
  if (hash !== undefined) await fs.writeFile(path.join(layout.flasherDir, KEPT_FILES_HASH), `${hash}\n`, { mode: 0o600 });
  return layout;
}

t.test('a reflash keeps the machine: packed from the running root, restored into the reflashed system before its first health check', { skip }, async (t) => {
  const dir = t.testdir();
  const machine = await debianTree(path.join(dir, 'machine'));
  await liveIn(machine);
  const nm = 'etc/NetworkManager/system-connections/wired.nmconnection';
  await run('setfattr', ['-n', 'user.origin', '-v', 'machine-42', path.join(machine, nm)]);
  await fs.writeFile(path.join(machine, 'etc/motd'), 'not on the whitelist\n');
  const etcBefore = await treeDigest(path.join(machine, 'etc'));
  const layout = new Layout(machine);

  const packed = await packKeptFiles(layout);
  t.equal(packed.file, keptFilesArchive(layout));
  const st = await fs.stat(packed.file);
  t.equal(st.mode & 0o777, 0o600, 'the archive holds /etc/shadow: root-only');
  t.equal(st.uid, 0);
  t.equal(packed.size, st.size);
  t.equal(packed.sha256, await sha256(packed.file), 'the hash the job carries is the archive\'s');
  t.equal(await treeDigest(path.join(machine, 'etc')), etcBefore, 'the running machine was only read');
  t.same(await fs.readdir(path.join(machine, 'run/upgradectl')), [], 'no staging copy of its secrets is left behind');
  const { stdout: members } = await run('tar', ['--list', '--file', packed.file]);
  for (const m of ['./etc/hostname', './etc/ssh/ssh_host_ed25519_key', './etc/shadow', './etc/passwd', `./${nm}`, './root/.ssh/authorized_keys', './etc/upgradectl/upgradectl.conf']) {
    t.ok(members.split('\n').includes(m), `packed: ${m}`);
  }
  t.notOk(members.includes('./etc/motd'), 'what the whitelist does not name is not packed');
  t.notOk(members.includes('./etc/upgradectl/keys.d/release.pub'), 'the vendor keys belong to the new image');

  const next = await reflashedSystem(dir, 'next', packed.file, packed.sha256);
  const motd = await read(next.root, 'etc/motd');
  const restored = await restoreKeptFiles(next);
  t.ok(restored);
  t.ok(restored!.moved > 10, `${restored!.moved} items restored`);
  t.equal(restored!.accounts, true, 'accounts merged');
  t.equal(await read(next.root, 'etc/hostname'), 'machine-42\n', 'its name');
  for (const rel of ['etc/ssh/ssh_host_ed25519_key', 'etc/ssh/ssh_host_rsa_key', 'etc/network/interfaces.d/eth0', 'root/.ssh/authorized_keys', nm]) {
    t.equal(await sha256(path.join(next.root, rel)), await sha256(path.join(machine, rel)), `the same ${rel}`);
    const [a, b] = [await fs.lstat(path.join(next.root, rel)), await fs.lstat(path.join(machine, rel))];
    t.same([a.mode, a.uid, a.gid], [b.mode, b.uid, b.gid], `${rel}: owner and mode`);
  }
  t.equal((await run('getfattr', ['--only-values', '-n', 'user.origin', path.join(next.root, nm)])).stdout, 'machine-42', 'extended attributes travel');
  const passwd = await read(next.root, 'etc/passwd');
  t.match(passwd, /^alice:x:1000:/m, "the machine's accounts");
  t.match(passwd, /^newsvc:x:998:/m, "and the new image's system account: merged, not copied");
  t.match(await read(next.root, 'etc/shadow'), `alice:${PASSWORD_HASH}:`, 'with their passwords');
  t.equal(await read(next.root, 'etc/motd'), motd, 'everything else is the release as published');
  t.equal(await fs.readlink(path.join(next.root, 'etc/localtime')), '/usr/share/zoneinfo/Europe/Berlin');
  for (const f of [keptFilesArchive(next), path.join(next.flasherDir, KEPT_FILES_HASH)]) {
    await t.rejects(fs.access(f), `${path.basename(f)} removed once restored`);
  }
  t.same(await fs.readdir(path.join(next.root, 'run/upgradectl')), [], 'the unpacked copy is removed');
  t.equal(await restoreKeptFiles(next), undefined, 'a second run finds nothing to do');

  t.test('an archive without the hash file only the flasher writes: a commit --reflash whose flash never happened; removed, never applied', async (t) => {
    const stale = await reflashedSystem(dir, 'stale', packed.file, undefined);
    t.equal(await restoreKeptFiles(stale), undefined);
    t.equal(await read(stale.root, 'etc/hostname'), 'debian-image\n', 'nothing applied over the running system');
    await t.rejects(fs.access(keptFilesArchive(stale)), 'the stale copy of /etc/shadow is removed');
  });

  t.test('a damaged or replaced archive is refused, nothing written; at confirm the trial fails with the reason', async (t) => {
    const bad = await reflashedSystem(dir, 'bad', packed.file, 'e'.repeat(64));
    const before = await treeDigest(path.join(bad.root, 'etc'));
    await t.rejects(restoreKeptFiles(bad), /SHA-256 is not the one the flasher recorded/);
    t.equal(await treeDigest(path.join(bad.root, 'etc')), before, 'nothing written');
    t.ok(await fs.stat(keptFilesArchive(bad)), 'the archive stays for the operator');
    t.match(await restoreLateKeptFiles(bad), /could not be restored: .*SHA-256/, 'confirm gets why the trial fails');
    await fs.chmod(keptFilesArchive(bad), 0o644);
    await t.rejects(restoreKeptFiles(bad), /mode 0644: it may hold \/etc\/shadow, and only a root-only archive is trusted/);
    t.equal(await restoreLateKeptFiles(next), undefined, 'nothing pending: confirm goes on to the health checks');
  });

  t.test('a destination the running system mounted over (systemd\'s transient machine-id) is left out, the rest restored', async (t) => {
    const live = await reflashedSystem(dir, 'live', packed.file, packed.sha256);
    const transient = path.join(dir, 'transient-machine-id');
    await fs.writeFile(transient, 'transient\n');
    // As images ship it: empty, for systemd to fill (on a tmpfs mounted over it) at first boot.
    await fs.writeFile(path.join(live.root, 'etc/machine-id'), '');
    await run('mount', ['--bind', transient, path.join(live.root, 'etc/machine-id')]);
    t.teardown(() => run('umount', [path.join(live.root, 'etc/machine-id')]).catch(() => undefined));
    const r = await restoreKeptFiles(live);
    t.same(r?.leftOut, ['/etc/machine-id']);
    t.equal(await read(live.root, 'etc/hostname'), 'machine-42\n');
    t.equal(await read(live.root, 'etc/machine-id'), 'transient\n', 'the mount is not replaced underneath systemd');
  });
});
