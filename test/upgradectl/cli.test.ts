import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { upgradectl } from '../helpers/cli.js';
import { skipUnless } from '../helpers/requirements.js';
import { makeMachine, boot } from '../operations/fixtures/machine.js';
import { makeMachine as makeReleaseMachine, makePublisher } from '../helpers/release-fixture.js';

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/**
 * A temporary directory for tests that mount into it: t.testdir() is removed before this test's own
 * teardown could unmount, so these tests make and remove their directory themselves.
 */
function mountableDir(t: Test): string {
  return mkdtempSync(path.join(os.tmpdir(), `upgradectl-${t.name.replace(/\W+/g, '-').slice(0, 40)}-`));
}

t.test('the first hour: usage, help, version and --root, through the real CLI', async (t) => {
  const root = t.testdir({});
  const cases: Array<{ args: string[]; code: number; stdout?: RegExp; stderr?: RegExp; json?: object }> = [
    { args: ['--version'], code: 0, stdout: new RegExp(`^upgradectl ${VERSION}\\n$`) },
    { args: ['--version', '--json'], code: 0, json: { version: VERSION } },
    { args: ['image', '--help'], code: 0, stdout: /^usage: upgradectl image build ROOTFS_DIR\|ROOTFS\.tar\[\.gz\|\.zst\] OUT\.img/ },
    { args: ['image'], code: 2, stderr: /'image' needs a subcommand[\s\S]*usage: upgradectl image build/ },
    { args: ['status', '--root', root], code: 0, stdout: /^phase: +idle/ },
    { args: ['status', '--root', root, '--json'], code: 0, json: { phase: 'idle', host: root } },
    { args: ['status', `--root=${root}`, '--json'], code: 0, json: { phase: 'idle' } },
    { args: ['--jsn', 'status'], code: 2, stderr: /Unknown option '--jsn'/ },
    { args: ['--json', '--jsn', 'status'], code: 2, json: { error: { code: 'USAGE', message: /--jsn/ } } },
    { args: ['--root'], code: 2, stderr: /--root <value>' argument missing/ },
    { args: ['status', '--root'], code: 2, stderr: /argument missing/ },
    { args: ['--json', '--root', '/nonexistent', 'status'], code: 2, json: { error: { code: 'USAGE', message: '--root /nonexistent: no such directory' } } },
    { args: ['--json', '--root=', 'status'], code: 2, json: { error: { code: 'USAGE', message: '--root needs a directory' } } },
    { args: ['--json'], code: 2, json: { error: { code: 'USAGE', message: 'no command given', hint: /--help/ } } },
    { args: ['--help', '--json'], code: 0, json: { commands: [{ name: 'status' }] } },
    { args: ['status', '--bogus'], code: 2, stderr: /Unknown option '--bogus'/ },
  ];
  for (const c of cases) {
    const r = await upgradectl(c.args);
    const what = `upgradectl ${c.args.join(' ')}`;
    t.equal(r.code, c.code, `${what}: exit ${c.code}\n${r.stderr}`);
    if (c.stdout) t.match(r.stdout, c.stdout, `${what}: stdout`);
    if (c.stderr) t.match(r.stderr, c.stderr, `${what}: stderr`);
    if (c.json) t.match(r.json, c.json, `${what}: one JSON document`);
    t.notMatch(r.stdout + r.stderr, /INTERNAL/, `${what}: never INTERNAL`);
  }
});

t.test('raw filesystem errors name the file and the way out', { skip: skipUnless({ root: true, commands: ['mount', 'chattr'] }) }, async (t) => {
  const dir = mountableDir(t);
  for (const d of ['ro', 'full', 'immutable', 'out', 'tree/host']) mkdirSync(path.join(dir, d), { recursive: true });
  writeFileSync(path.join(dir, 'tree/vmlinuz'), 'k');
  writeFileSync(path.join(dir, 'tree/initrd.img'), 'i');
  const mounts: string[] = [];
  t.teardown(() => {
    for (const m of mounts) execFileSync('umount', [m]);
    execFileSync('chattr', ['-i', path.join(dir, 'immutable')]);
    rmSync(dir, { recursive: true, force: true });
  });
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'upgradectl-test', path.join(dir, 'ro')]);
  mounts.push(path.join(dir, 'ro'));
  // One inode: the root directory itself; creating any file fails with ENOSPC.
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,nr_inodes=1', 'upgradectl-test', path.join(dir, 'full')]);
  mounts.push(path.join(dir, 'full'));
  execFileSync('chattr', ['+i', path.join(dir, 'immutable')]);

  const cases = [
    { errno: 'EROFS', args: ['keygen', '--out', path.join(dir, 'ro/k')], code: 'IO', message: /ro\/k is on a read-only filesystem \(open EROFS\)/, hint: /mount -o remount,rw/ },
    { errno: 'ENOSPC', args: ['keygen', '--out', path.join(dir, 'full/k')], code: 'NO_SPACE', message: /full\/k cannot be written: no space left/, hint: /df -h .*full\/k/ },
    { errno: 'EPERM', args: ['keygen', '--out', path.join(dir, 'immutable/k')], code: 'IO', message: /immutable\/k cannot be changed: operation not permitted/, hint: /chattr -i/ },
    { errno: 'EISDIR', args: ['image', 'build', path.join(dir, 'tree'), path.join(dir, 'out'), '--force'], code: 'IO', message: /-> .*\/out is a directory/, hint: /not the directory .*\/out$/ },
  ];
  for (const c of cases) {
    const r = await upgradectl(['--json', ...c.args]);
    t.equal(r.code, 1, `${c.errno}: exit 1`);
    t.match(r.json?.error, { code: c.code, message: c.message, hint: c.hint }, `${c.errno}: ${r.stdout}`);
  }
});

t.test('status says why the booted image has no record, and what to do', async (t) => {
  // The host partition is not mounted at /host: the booted image's file is nowhere to be found.
  const lost = makeMachine(t.testdir({}), {});
  boot(lost, '2.0');
  const a = await upgradectl(['--root', lost.root, 'status']);
  t.equal(a.code, 0, a.stderr);
  t.match(a.stdout, /booted: +2\.0 \(untracked\)/);
  t.match(a.stdout, /note: +the booted image 2\.0 has no record: .*images\/2\.0\.img is not on disk .*host\/images does not exist/);
  t.match(a.stdout, /check that the host partition is mounted at .*\/host/);

  // Booted by hand from the GRUB menu: an image on disk that the state does not name.
  const picked = makeMachine(t.testdir({}), { images: ['1.0', '2.0'], current: '1.0' });
  boot(picked, '2.0');
  const b = await upgradectl(['--root', picked.root, '--json', 'status']);
  t.match(b.json, { booted: '2.0', current: '1.0', untracked: { reason: /current image is 1\.0 .*picked by hand in the GRUB menu/, hint: /reboot to return to 1\.0/ } });

  const tracked = makeMachine(t.testdir({}), { images: ['1.0'], current: '1.0' });
  t.match((await upgradectl(['--root', tracked.root, '--json', 'status'])).json, { booted: '1.0', untracked: null });
});

t.test('hints do not send the operator in a circle', { skip: skipUnless({ commands: ['mke2fs', 'debugfs', 'grub-editenv'] }) }, async (t) => {
  const dir = t.testdir({});
  const pub = await makePublisher(dir);
  await pub.publish('1.0');
  const root = makeReleaseMachine(dir, 'm', `file://${pub.releases}`, pub.pub);
  mkdirSync(path.join(root, 'images/.upgradectl'), { recursive: true });
  writeFileSync(path.join(root, 'images/.upgradectl/state.json'), JSON.stringify({ schema: 1, phase: 'idle', current: '2.0', bad: {}, history: [] }));
  writeFileSync(path.join(root, 'images/2.0.img'), 'current');

  const rb = await upgradectl(['--root', root, '--json', 'rollback', '--no-reboot']);
  t.match(rb.json?.error, { code: 'STATE', hint: /upgradectl prepare --allow-downgrade VERSION, then upgradectl commit/ });
  t.notMatch(rb.json?.error?.hint, /rollback/);
  const down = await upgradectl(['--root', root, '--json', 'prepare', '1.0']);
  t.match(down.json?.error, { code: 'DOWNGRADE', hint: /prepare --allow-downgrade 1\.0$/ }, 'no rollback to suggest: there is no previous image');
});

t.test('an images/ that cannot be renamed into is found before the download', { skip: skipUnless({ root: true, commands: ['mke2fs', 'debugfs', 'mount'] }) }, async (t) => {
  const dir = mountableDir(t);
  const pub = await makePublisher(dir);
  await pub.publish('1.0');
  const root = makeReleaseMachine(dir, 'm', `file://${pub.releases}`, pub.pub);
  // .staging on a filesystem of its own: every write works, only the final rename (EXDEV) cannot.
  const staging = path.join(root, 'images/.staging');
  mkdirSync(staging, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'upgradectl-test', staging]);
  t.teardown(() => {
    execFileSync('umount', [staging]);
    rmSync(dir, { recursive: true, force: true });
  });
  const started = Date.now();
  const r = await upgradectl(['--root', root, '--json', 'prepare', '1.0']);
  t.equal(r.code, 1);
  t.match(r.json?.error, {
    code: 'IO',
    message: /cannot stage images under .*images: .*cannot be renamed across filesystems .*nothing was downloaded/,
    hint: /\.staging must be on the same filesystem as .*images/,
  });
  t.same(execFileSync('ls', ['-A', staging], { encoding: 'utf8' }), '', 'no byte of the image was staged');
  t.ok(Date.now() - started < 20_000, 'failed at once');
});
