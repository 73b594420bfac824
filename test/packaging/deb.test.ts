import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { skipUnless } from '../helpers/requirements.js';
import { SYSTEMD, cachedDebianRootTarball, extractDebianRoot } from '../helpers/debian-root.js';

/**
 * `npm run package` (packaging/build.mjs): the .deb must install on Debian 12 and run without Node from
 * the distribution. Built once here, then checked three ways: its file list and modes (dpkg-deb -x),
 * the packaged Node running the packaged program, and a dpkg --root install into a debootstrap tree
 * (the boot tests' cached one, when an earlier run built it) where /usr/bin/upgradectl runs under chroot.
 */

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const skip = skipUnless({ root: true, commands: ['dpkg-deb', 'dpkg', 'npm', 'gzip', 'tar', 'chroot'] });

t.test('the .deb: layout, the packaged Node runs upgradectl, and it installs into a Debian 12 tree', { skip }, async (t) => {
  // Outside t.testdir(): the staged tree has a 99 MB binary, and tap copies nothing, but this keeps
  // the fixtures directory small for the other tests' listings.
  const work = mkdtempSync(path.join(os.tmpdir(), 'upgradectl-deb-'));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  if (!existsSync(path.join(repo, 'dist/upgradectl/main.js'))) execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: repo });
  const started = performance.now();
  const printed = execFileSync(process.execPath, [path.join(repo, 'packaging/build.mjs'), '--out', work], { encoding: 'utf8' });
  const seconds = (performance.now() - started) / 1000;
  const version = (JSON.parse(readFileSync(path.join(repo, 'package.json'), 'utf8')) as { version: string }).version;
  const deb = path.join(work, `upgradectl_${version}_amd64.deb`);
  t.ok(existsSync(deb) && existsSync(deb.replace(/\.deb$/, '.tar.gz')), 'a .deb and a tarball');
  t.comment(`package build ${seconds.toFixed(1)} s; ${printed.trim().split('\n').slice(0, 2).join('; ')}`);

  const field = (f: string) => execFileSync('dpkg-deb', ['--field', deb, f], { encoding: 'utf8' }).trim();
  t.equal(field('Package'), 'upgradectl');
  t.equal(field('Version'), version);
  t.match(field('Depends'), /e2fsprogs.*grub-common/);
  t.notMatch(field('Depends'), /nodejs/, 'no Node from the distribution');

  const x = path.join(work, 'x');
  execFileSync('dpkg-deb', ['-x', deb, x]);
  const mode = (rel: string) => (statSync(path.join(x, rel)).mode & 0o7777).toString(8);
  for (const [rel, want] of [
    ['usr/lib/upgradectl/node', '755'],
    ['usr/bin/upgradectl', '755'],
    ['usr/share/initramfs-tools/hooks/upgradectl', '755'],
    ['usr/share/initramfs-tools/scripts/local-bottom/upgradectl', '755'],
    ['etc/grub.d/09_upgradectl', '755'],
    ['etc/kernel/postinst.d/zz-upgradectl', '755'],
    ['etc/kernel/postrm.d/zz-upgradectl', '755'],
    ['lib/systemd/system/upgradectl.service', '644'],
    ['lib/systemd/system/upgradectl-confirm.service', '644'],
    ['usr/share/doc/upgradectl/upgradectl.conf.example', '644'],
    ['usr/share/man/man8/upgradectl.8.gz', '644'],
    ['usr/share/bash-completion/completions/upgradectl', '644'],
  ] as const) {
    t.equal(existsSync(path.join(x, rel)) ? mode(rel) : 'missing', want, rel);
  }
  t.ok(readdirSync(path.join(x, 'usr/lib/upgradectl/node_modules/@antoniomuso')).some((n) => /^lz4-napi-linux-x64/.test(n)), 'the native lz4 addon is shipped');
  t.match(execFileSync('sh', ['-c', `gzip -dc "$1" | head -1`, 'sh', path.join(x, 'usr/share/man/man8/upgradectl.8.gz')], { encoding: 'utf8' }), /^\.TH UPGRADECTL 8/);
  t.equal(spawnSync('bash', ['-n', path.join(x, 'usr/share/bash-completion/completions/upgradectl')]).status, 0, 'completion parses');

  // Through `env -i`: tap puts its loaders in NODE_OPTIONS of every child, whatever env it is given,
  // and the packaged Node must start as it will on a machine.
  const clean = (cmd: string, ...args: string[]) => spawnSync('env', ['-i', 'PATH=/usr/sbin:/usr/bin:/sbin:/bin', cmd, ...args], { encoding: 'utf8' });
  const packaged = (root: string, ...args: string[]) => clean(path.join(root, 'usr/lib/upgradectl/node'), path.join(root, 'usr/lib/upgradectl/bin/upgradectl.js'), ...args);
  t.equal(packaged(x, '--version').stdout.trim(), `upgradectl ${version}`, 'the packaged Node runs the packaged program');

  const tarball = cachedDebianRootTarball(SYSTEMD);
  if (!tarball) {
    t.comment('no cached Debian tree (test/helpers/debian-root.ts builds it for the boot tests): dpkg --root install not checked');
    return;
  }
  const tree = path.join(work, 'debian');
  await extractDebianRoot(tree, { flavour: SYSTEMD });
  t.notOk(existsSync(path.join(tree, 'usr/bin/node')), 'the tree has no Node of its own');
  const install = spawnSync('dpkg', [`--root=${tree}`, '--install', deb], { encoding: 'utf8' });
  t.equal(install.status, 0, `dpkg --root --install: ${install.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  t.match(spawnSync('chroot', [tree, 'dpkg-query', '-W', '-f', '${Status}', 'upgradectl'], { encoding: 'utf8' }).stdout, 'install ok installed');
  const inside = clean('chroot', tree, '/usr/bin/upgradectl', '--version');
  t.equal(inside.stdout.trim(), `upgradectl ${version}`, `/usr/bin/upgradectl runs inside Debian 12 ${inside.stderr}`);

  const doctor = packaged(tree, '--root', tree, 'doctor', '--json');
  const report = JSON.parse(doctor.stdout) as { ok: boolean; findings: Array<{ check: string; level: string; message: string }> };
  t.ok([0, 1].includes(doctor.status ?? -1), `doctor exits 0 or 1 (${doctor.status})`);
  t.match(report.findings.find((f) => f.check === 'firmware'), { level: 'ok', message: /^BIOS|^UEFI/ }, 'doctor runs and reports');
  t.match(report.findings.find((f) => f.check === 'grub tools'), { level: 'ok' }, 'grub-common from Depends is found');
});
