import { promises as fs } from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { MigrationError, migrateIntoImage, type MigrationReport } from '../../src/migrate/index.js';
import { run } from '../../src/core/exec.js';
import { Layout } from '../../src/core/layout.js';
import { skipUnless } from '../helpers/requirements.js';
import {
  buildImage,
  debianTree,
  detachLeftovers,
  freshImageTree,
  imageCat,
  imageStat,
  liveIn,
  loopsUnder,
  sha256File,
  treeDigest,
} from './fixtures/machine.js';

/**
 * The cases where migrating would do harm. Each must stop with a MIGRATE error that names the path
 * and the reason, write nothing into the image (its bytes are unchanged) and leave the running tree
 * exactly as it was.
 */

const skip = skipUnless({ root: true, commands: ['losetup', 'mke2fs', 'debootstrap', 'debugfs', 'ssh-keygen', 'useradd'] });

interface Case {
  machine: string;
  imageTree: string;
  layout: Layout;
}

/** A lived-in machine and a fresh image tree; `arrange` makes them evil before the image is built. */
async function scenario(dir: string, arrange: (c: Case) => Promise<void>, size = '64M'): Promise<Case & { image: string }> {
  const machine = await debianTree(path.join(dir, 'machine'));
  await liveIn(machine);
  const imageTree = await debianTree(path.join(dir, 'image-tree'));
  await freshImageTree(imageTree);
  const c = { machine, imageTree, layout: new Layout(machine) };
  await arrange(c);
  const image = await buildImage(imageTree, path.join(dir, 'next.img'), size);
  return { ...c, image };
}

/** Run the migration expecting it to refuse; assert nothing was lost on either side. */
async function expectRefusal(t: Test, s: Case & { image: string }, message: RegExp): Promise<MigrationError> {
  const imageBefore = await sha256File(s.image);
  const machineBefore = await treeDigest(s.machine);
  const err = await migrateIntoImage({ layout: s.layout, imageFile: s.image }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof MigrationError, 'a MigrationError');
  const e = err as MigrationError;
  t.equal(e.code, 'MIGRATE');
  t.match(e.message, message);
  t.ok(e.hint, `with a hint: ${e.hint}`);
  t.equal(e.imageModified, false, 'reported as not modified');
  t.equal(await sha256File(s.image), imageBefore, 'the image is byte for byte unchanged');
  t.equal(await treeDigest(s.machine), machineBefore, 'the running tree is unchanged');
  return e;
}

async function migrateOk(t: Test, s: Case & { image: string }): Promise<MigrationReport> {
  const machineBefore = await treeDigest(s.machine);
  const report = await migrateIntoImage({ layout: s.layout, imageFile: s.image });
  t.equal(report.fsck, 'clean');
  t.equal(await treeDigest(s.machine), machineBefore, 'the running tree is unchanged');
  return report;
}

t.test('evil cases', { skip }, async (t) => {
  const top = t.testdir({});
  t.teardown(() => detachLeftovers(top));
  let n = 0;
  const fresh = async () => {
    const d = path.join(top, `case-${++n}`);
    await fs.mkdir(d);
    return d;
  };

  t.test('a whitelisted path that is a symlink climbing out of the tree to /etc/shadow', async (t) => {
    const s = await scenario(await fresh(), async ({ machine }) => {
      await fs.rm(path.join(machine, 'etc/hostname'));
      await fs.symlink('../../../../../../../../../../etc/shadow', path.join(machine, 'etc/hostname'));
    });
    await expectRefusal(t, s, /etc\/hostname is a symlink to \.\.\/.*etc\/shadow, which leads out of/);
  });

  t.test('a symlink climbing out inside a whitelisted directory', async (t) => {
    const s = await scenario(await fresh(), async ({ machine }) => {
      await fs.symlink('../../../../../../../../root/.bash_history', path.join(machine, 'etc/netplan/99-evil.yaml'));
    });
    await expectRefusal(t, s, /etc\/netplan\/99-evil\.yaml is a symlink to .*which leads out of/);
  });

  t.test('an absolute symlink to /etc/shadow is migrated as the link, never dereferenced', async (t) => {
    const s = await scenario(await fresh(), async ({ machine }) => {
      await fs.rm(path.join(machine, 'etc/hostname'));
      await fs.symlink('/etc/shadow', path.join(machine, 'etc/hostname'));
    });
    const report = await migrateOk(t, s);
    t.equal((await imageStat(s.image, '/etc/hostname'))?.type, 'symlink');
    t.match((await run('debugfs', ['-R', 'stat /etc/hostname', s.image])).stdout, /Fast link dest: "\/etc\/shadow"/);
    t.ok(report.moved.find((m) => m.path === '/etc/hostname' && m.kind === 'symlink' && m.target === '/etc/shadow'));
  });

  t.test('a symlink inside the image pointing out of it', async (t) => {
    const outside = path.join(await fresh(), 'outside');
    await fs.mkdir(outside);
    const s = await scenario(await fresh(), async ({ imageTree }) => {
      await fs.rm(path.join(imageTree, 'etc/ssh'), { recursive: true, force: true });
      // From /etc/ssh inside the image, enough ../ to reach this host's `outside` directory.
      await fs.symlink(`../../../../../../../../../..${outside}`, path.join(imageTree, 'etc/ssh'));
    });
    await expectRefusal(t, s, /\/etc\/ssh\/ssh_host_.* in the image: .*etc\/ssh is a symlink to .*which leads out of/);
    t.same(await fs.readdir(outside), [], 'nothing was written through the link');
  });

  t.test("a symlink at a file's place in the image is replaced, not written through", async (t) => {
    const s = await scenario(await fresh(), async ({ imageTree }) => {
      await fs.rm(path.join(imageTree, 'etc/hostname'));
      await fs.symlink('/etc/shadow', path.join(imageTree, 'etc/hostname'));
    });
    await migrateOk(t, s);
    t.equal((await imageStat(s.image, '/etc/hostname'))?.type, 'file');
    t.equal(await imageCat(s.image, '/etc/hostname'), 'machine-42\n');
    t.match(await imageCat(s.image, '/etc/shadow'), /^root:/, "the image's shadow is still a shadow file");
  });

  t.test('a UID clash stops the migration, by name', async (t) => {
    const s = await scenario(await fresh(), async ({ imageTree }) => {
      await run('useradd', ['-P', imageTree, '-u', '1001', '-U', 'builder']);
    });
    const e = await expectRefusal(t, s, /UID 1001 is bob on this machine but builder in the image/);
    t.match(e.message, /GID 1001 is group bob on this machine but builder in the image/);
    t.ok(e.report?.accounts?.clashes.length, 'the report lists the clashes');
  });

  t.test('the same name with another UID is a clash too', async (t) => {
    const s = await scenario(await fresh(), async ({ imageTree }) => {
      await run('useradd', ['-P', imageTree, '-u', '1005', '-U', 'alice']);
    });
    await expectRefusal(t, s, /account alice is UID 1000 on this machine but UID 1005 in the image/);
  });

  t.test('on_clash = skip leaves the clashing account out and migrates the rest', async (t) => {
    const s = await scenario(await fresh(), async ({ imageTree, machine }) => {
      await run('useradd', ['-P', imageTree, '-u', '1001', '-U', 'builder']);
      await fs.writeFile(path.join(machine, 'etc/upgradectl/migrate.conf'), '[accounts]\non_clash = skip\n');
    });
    const report = await migrateOk(t, s);
    const passwd = await imageCat(s.image, '/etc/passwd');
    t.match(passwd, /^builder:x:1001:1001:/m, "the image's account stays");
    t.notMatch(passwd, /^bob:/m, 'the clashing machine account is left out');
    t.match(passwd, /^alice:x:1000:/m);
    t.notMatch(await imageCat(s.image, '/etc/group'), /^ops:.*bob/m, 'and is not a member of anything');
    t.ok(report.accounts?.skipped.find((x) => x.name === 'bob' && /on_clash = skip/.test(x.reason)));
  });

  t.test('a directory in the image where the machine has a file', async (t) => {
    const s = await scenario(await fresh(), async ({ imageTree }) => {
      await fs.rm(path.join(imageTree, 'etc/hostname'));
      await fs.mkdir(path.join(imageTree, 'etc/hostname'));
      await fs.writeFile(path.join(imageTree, 'etc/hostname/keep'), 'precious\n');
    });
    await expectRefusal(t, s, /the image has a directory at \/etc\/hostname where this machine has a file/);
  });

  t.test('a file in the image where the machine has a directory', async (t) => {
    const s = await scenario(await fresh(), async ({ imageTree }) => {
      await fs.writeFile(path.join(imageTree, 'etc/netplan'), 'not a directory\n');
    });
    await expectRefusal(t, s, /the image has a file at \/etc\/netplan where this machine has a directory/);
  });

  t.test('an image too full to take the files', async (t) => {
    const s = await scenario(
      await fresh(),
      async ({ imageTree, machine }) => {
        // 6 MiB of the machine's own data to migrate; an image with ~2 MiB left.
        await fs.mkdir(path.join(machine, 'etc/upgradectl/credentials.d'), { recursive: true });
        await fs.writeFile(path.join(machine, 'etc/upgradectl/credentials.d/fleet-ca-bundle.pem'), Buffer.alloc(6 * 1024 * 1024, 0x41));
        await fs.writeFile(path.join(imageTree, 'filler'), Buffer.alloc(20 * 1024 * 1024, 0x42));
      },
      '32M',
    );
    const e = await expectRefusal(t, s, /next\.img: the image is too full: the migration needs about [\d.]+ MiB and the image has [\d.]+ MiB free/);
    t.ok((e.report?.spaceNeeded ?? 0) > 6 * 1024 * 1024, 'the report says how much is needed');
  });

  t.test('devices, sockets and FIFOs are skipped with a warning', async (t) => {
    const s = await scenario(await fresh(), async ({ machine }) => {
      await fs.mkdir(path.join(machine, 'etc/upgradectl/credentials.d'), { recursive: true });
      await run('mkfifo', [path.join(machine, 'etc/upgradectl/credentials.d/control.fifo')]);
      await run('mknod', [path.join(machine, 'etc/upgradectl/credentials.d/null'), 'c', '1', '3']);
    });
    const report = await migrateOk(t, s);
    t.ok(report.skipped.find((x) => x.path === '/etc/upgradectl/credentials.d/control.fifo' && /FIFO/.test(x.reason)));
    t.ok(report.skipped.find((x) => x.path === '/etc/upgradectl/credentials.d/null' && /device/.test(x.reason)));
    t.ok(report.warnings.some((w) => /control\.fifo/.test(w)));
    t.equal(await imageStat(s.image, '/etc/upgradectl/credentials.d/null'), undefined, 'no device node in the image');
    t.equal(await imageCat(s.image, '/etc/upgradectl/upgradectl.conf'), await fs.readFile(path.join(s.machine, 'etc/upgradectl/upgradectl.conf'), 'utf8'));
  });

  t.test('a broken migrate.conf stops before the image is attached', async (t) => {
    const s = await scenario(await fresh(), async ({ machine }) => {
      await fs.writeFile(path.join(machine, 'etc/upgradectl/migrate.conf'), '[paths]\n/etc/passwd = copy\n');
    });
    await expectRefusal(t, s, /migrate\.conf:2: \[paths\] \/etc\/passwd = copy: copying the account database/);
  });

  t.test('an image that is already attached is refused', async (t) => {
    const s = await scenario(await fresh(), async () => undefined);
    const { stdout } = await run('losetup', ['--find', '--show', '--read-only', s.image]);
    t.teardown(() => run('losetup', ['-d', stdout.trim()]));
    await expectRefusal(t, s, /already attached to a loop device/);
  });

  t.test('no loop device is left attached', async (t) => {
    t.same(await loopsUnder(top), []);
  });
});
