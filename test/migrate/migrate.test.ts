import { promises as fs } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { formatMigrationReport, migrateIntoImage, MigrationError, planMigration } from '../../src/migrate/index.js';
import { Layout } from '../../src/core/layout.js';
import { run } from '../../src/core/exec.js';
import { skipUnless } from '../helpers/requirements.js';
import {
  buildImage,
  detachLeftovers,
  debianTree,
  freshImageTree,
  imageCat,
  imageStat,
  liveIn,
  loopsUnder,
  PASSWORD_HASH,
  ROOT_HASH,
  sha256File,
  treeDigest,
} from './fixtures/machine.js';

const skip = skipUnless({ root: true, commands: ['losetup', 'mke2fs', 'debootstrap', 'debugfs', 'ssh-keygen', 'useradd', 'setfacl'] });

t.test('default whitelist into a real Debian image', { skip }, async (t) => {
  const dir = t.testdir({});
  const machine = await debianTree(path.join(dir, 'machine'));
  await liveIn(machine);
  // Extended attributes and an ACL on a migrated secret: they must travel with it.
  const nm = path.join(machine, 'etc/NetworkManager/system-connections/wired.nmconnection');
  await run('setfattr', ['-n', 'user.origin', '-v', 'machine-42', nm]);
  await run('setfacl', ['-m', 'u:1001:r', path.join(machine, 'etc/upgradectl/upgradectl.conf')]);
  const imageTree = await debianTree(path.join(dir, 'image-tree'));
  await freshImageTree(imageTree);
  // Trust and hooks belong to the image; only the operator's own keys travel (docs/security.md).
  const put = async (root: string, rel: string, text: string) => {
    await fs.mkdir(path.dirname(path.join(root, rel)), { recursive: true });
    await fs.writeFile(path.join(root, rel), text, { mode: 0o755 });
  };
  await put(machine, 'etc/upgradectl/keys.d/local/operator.pub', 'operator key\n');
  await put(machine, 'etc/upgradectl/health.d/10-old-check', '#!/bin/sh\nexit 0\n');
  await put(imageTree, 'etc/upgradectl/keys.d/release.pub', 'the new image vendor key\n');
  await put(imageTree, 'etc/upgradectl/keys.d/revoked', '# revoked by the vendor\n');
  const image = await buildImage(imageTree, path.join(dir, 'next.img'));
  const layout = new Layout(machine);
  const machineBefore = await treeDigest(machine);
  t.teardown(() => detachLeftovers(dir));

  t.test('dry run: the plan, and not a byte written', async (t) => {
    const before = await sha256File(image);
    const plan = await planMigration({ layout, imageFile: image });
    t.equal(plan.dryRun, true);
    t.same(plan.problems, []);
    t.ok(plan.moved.find((m) => m.path === '/etc/hostname' && m.action === 'replace'));
    t.ok(plan.moved.find((m) => m.path === '/etc/netplan' && m.action === 'create' && m.kind === 'dir'));
    t.ok(plan.skipped.find((s) => s.path === '/etc/machine-id') === undefined, 'machine-id exists on the machine');
    t.same(plan.accounts?.usersAdded, ['alice', 'bob']);
    t.equal(await sha256File(image), before, 'image unchanged');
    t.same(JSON.parse(JSON.stringify(plan)), plan, 'JSON-serialisable');
    const text = formatMigrationReport(plan);
    t.comment(text);
    t.match(text, /Migration plan: .* -> .*next\.img/);
    t.match(text, /replace +\/etc\/hostname/);
    t.match(text, /users added: alice, bob/);
  });

  t.test('migrate', async (t) => {
    const report = await migrateIntoImage({ layout, imageFile: image });
    t.equal(report.fsck, 'clean');
    t.same(report.problems, []);
    t.equal(await treeDigest(machine), machineBefore, 'the running tree is unchanged');

    // Bytes, owner, mode and mtime of every migrated file, read back with debugfs (not our mount code).
    for (const rel of [
      'etc/hostname',
      'etc/hosts',
      'etc/machine-id',
      'etc/ssh/ssh_host_ed25519_key',
      'etc/ssh/ssh_host_ed25519_key.pub',
      'etc/ssh/ssh_host_rsa_key',
      'etc/network/interfaces',
      'etc/network/interfaces.d/eth0',
      'etc/netplan/50-static.yaml',
      'etc/systemd/network/10-eth0.network',
      'etc/NetworkManager/system-connections/wired.nmconnection',
      'etc/timezone',
      'etc/upgradectl/upgradectl.conf',
      'etc/upgradectl/keys.d/local/operator.pub',
      'root/.ssh/authorized_keys',
    ]) {
      const want = await fs.lstat(path.join(machine, rel));
      const got = await imageStat(image, `/${rel}`);
      t.equal(await imageCat(image, `/${rel}`), await fs.readFile(path.join(machine, rel), 'utf8'), `${rel}: bytes`);
      t.equal(got?.mode ?? 0, want.mode & 0o7777, `${rel}: mode ${(want.mode & 0o7777).toString(8)}`);
      t.equal(`${got?.uid}:${got?.gid}`, `${want.uid}:${want.gid}`, `${rel}: owner`);
      t.equal(got?.mtimeS, Math.floor(want.mtimeMs / 1000), `${rel}: mtime`);
    }
    t.equal((await imageStat(image, '/etc/ssh/ssh_host_rsa_key'))?.mode, 0o600, 'private host key stays 0600');
    t.equal(await imageCat(image, '/etc/upgradectl/keys.d/release.pub'), 'the new image vendor key\n', "the machine's old trusted key does not replace the image's");
    t.equal(await imageCat(image, '/etc/upgradectl/keys.d/revoked'), '# revoked by the vendor\n', "the image's revoked list stays");
    t.equal(await imageStat(image, '/etc/upgradectl/health.d/10-old-check'), undefined, "the machine's old hook does not travel into the image");
    t.equal((await imageStat(image, '/etc/NetworkManager/system-connections'))?.mode, 0o700, 'a created directory keeps its mode');
    t.equal((await imageStat(image, '/root/.ssh'))?.mode, 0o700);
    const link = await imageStat(image, '/etc/localtime');
    t.equal(link?.type, 'symlink', '/etc/localtime stays a symlink');
    t.match((await run('debugfs', ['-R', 'stat /etc/localtime', image])).stdout, /Fast link dest: "\/usr\/share\/zoneinfo\/Europe\/Berlin"/);
    const xattrs = (await run('debugfs', ['-R', 'ea_list /etc/NetworkManager/system-connections/wired.nmconnection', image])).stdout;
    t.match(xattrs, /user\.origin.*machine-42/, 'user xattr carried');
    const acl = (await run('debugfs', ['-R', 'ea_list /etc/upgradectl/upgradectl.conf', image])).stdout;
    t.match(acl, /system\.posix_acl_access/, 'ACL carried');

    // Accounts: image's system accounts stay, machine's humans join, hashes carried.
    const passwd = await imageCat(image, '/etc/passwd');
    t.match(passwd, /^newsvc:x:998:/m, "the image's own system account stays");
    t.match(passwd, /^alice:x:1000:1000:Alice Admin:\/home\/alice:\/bin\/bash$/m);
    t.match(passwd, /^bob:x:1001:1001:/m);
    t.notMatch(passwd, /^postgres:/m, "the machine's system account is not carried");
    const shadow = await imageCat(image, '/etc/shadow');
    t.ok(shadow.includes(`alice:${PASSWORD_HASH}:`), "alice's hash");
    t.ok(shadow.includes(`root:${ROOT_HASH}:`), "root's hash carried");
    t.match(shadow, /^newsvc:/m);
    const group = await imageCat(image, '/etc/group');
    t.match(group, /^sudo:x:27:alice$/m);
    t.match(group, /^users:x:100:alice$/m);
    t.match(group, /^ops:x:1500:alice,bob$/m);
    t.match(group, /^alice:x:1000:$/m);
    t.notMatch(group, /^docker:/m, 'system group only on the machine is not carried');
    const gshadow = await imageCat(image, '/etc/gshadow');
    t.match(gshadow, /^sudo:\*::alice$/m, 'gshadow members follow group');
    t.match(gshadow, /^ops:!::alice,bob$/m);
    t.equal((await imageStat(image, '/etc/shadow'))?.mode, 0o640, 'shadow keeps the image mode');
    t.equal((await imageStat(image, '/etc/shadow'))?.gid, 42, 'shadow keeps group shadow');
    t.ok(report.accounts?.warnings.some((w) => /alice's membership in docker is dropped/.test(w)));
    // The shadow tools themselves accept the merged database.
    const chroot = path.join(dir, 'merged');
    await fs.mkdir(path.join(chroot, 'etc'), { recursive: true });
    for (const f of ['passwd', 'shadow', 'group', 'gshadow', 'login.defs']) {
      await fs.writeFile(path.join(chroot, 'etc', f), await imageCat(image, `/etc/${f}`));
    }
    await t.resolves(run('grpck', ['-r', '-R', chroot]), 'grpck accepts group/gshadow');
    await t.resolves(run('pwck', ['-r', '-q', '-R', chroot]), 'pwck accepts passwd/shadow');
    t.same(JSON.parse(JSON.stringify(report)), report, 'JSON-serialisable for the state history');
    t.match(formatMigrationReport(report), /e2fsck -n: clean/);
  });

  t.test('a missing tool is reported before the image is touched', async (t) => {
    // A PATH with every tool the migration runs except getfattr/setfattr (package attr): seen for real
    // on a Debian image without attr, where it used to fail halfway through writing.
    const bin = path.join(dir, 'bin-without-attr');
    await fs.mkdir(bin, { recursive: true });
    for (const tool of ['losetup', 'mount', 'umount', 'e2fsck']) {
      const { stdout } = await run('sh', ['-c', `command -v ${tool}`]);
      await fs.symlink(stdout.trim(), path.join(bin, tool));
    }
    const before = await sha256File(image);
    const savedPath = process.env.PATH;
    process.env.PATH = bin;
    t.teardown(() => {
      process.env.PATH = savedPath;
    });
    const err = await migrateIntoImage({ layout, imageFile: image }).then(
      () => undefined,
      (e: unknown) => e as MigrationError,
    );
    process.env.PATH = savedPath;
    t.ok(err instanceof MigrationError, 'a MigrationError');
    t.equal(err?.imageModified, false, 'the image is declared untouched');
    t.match(err?.message, /getfattr, setfattr not found on PATH/);
    t.match(err?.hint, /apt-get install attr/, 'the hint names the package');
    t.equal(await sha256File(image), before, 'and it is: same bytes');
  });

  t.test('cleaned up', async (t) => {
    t.same(await loopsUnder(dir), [], 'no loop device left attached (losetup -a)');
  });
});
