import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, existsSync, lstatSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { skipUnless } from '../helpers/requirements.js';
import { SYSTEMD, cachedDebianRootTarball, extractDebianRoot } from '../helpers/debian-root.js';
import { filesUnder, packagedDeb } from '../helpers/package-deb.js';

/**
 * `npm run package` (packaging/build.mjs): the .deb must install on Debian 12 and run without Node from
 * the distribution. Built once per content (test/helpers/package-deb.ts, the same file the boot tests'
 * images install), then checked three ways: its file list and modes (dpkg-deb -x),
 * the packaged Node running the packaged program, and a dpkg --root install into a debootstrap tree
 * (the boot tests' cached one, when an earlier run built it) where /usr/bin/upgradectl runs under chroot.
 */

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const skip = skipUnless({ root: true, commands: ['dpkg-deb', 'dpkg', 'npm', 'gzip', 'tar', 'chroot', 'readelf'] });

t.test('the .deb: layout, the packaged Node runs upgradectl, and it installs into a Debian 12 tree', { skip }, async (t) => {
  const work = mkdtempSync(path.join(os.tmpdir(), 'upgradectl-deb-'));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  if (!existsSync(path.join(repo, 'dist/upgradectl/main.js'))) execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: repo });
  // The same cached build the boot tests' images install (keyed by the content of every input).
  const { deb, tarball, buildSeconds } = await packagedDeb();
  const version = (JSON.parse(readFileSync(path.join(repo, 'package.json'), 'utf8')) as { version: string }).version;
  t.equal(path.basename(deb), `upgradectl_${version}_amd64.deb`);
  t.ok(existsSync(deb) && existsSync(tarball), 'a .deb and a tarball');
  const mib = (f: string) => `${(statSync(f).size / 1048576).toFixed(1)} MiB`;
  t.comment(`package ${buildSeconds === undefined ? 'reused from this content\'s earlier build' : `built in ${buildSeconds.toFixed(1)} s`}; .deb ${mib(deb)}, tarball ${mib(tarball)}`);

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
    ['lib/systemd/system/upgradectl-kept-files.service', '644'],
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
  // The native addons load and work from the package (their build leftovers are pruned by build.mjs).
  const modules = path.join(x, 'usr/lib/upgradectl/node_modules');
  const roundTrip = clean(path.join(x, 'usr/lib/upgradectl/node'), '-e', `
    const zstd = require(${JSON.stringify(path.join(modules, 'zstd-napi'))});
    const lz4 = require(${JSON.stringify(path.join(modules, 'lz4-napi'))});
    const data = Buffer.from('upgradectl '.repeat(1000));
    const z = zstd.decompress(zstd.compress(data));
    const l = lz4.uncompressSync(lz4.compressSync(data));
    process.stdout.write(String(z.equals(data) && l.equals(data)));`);
  t.equal(roundTrip.stdout, 'true', `zstd-napi and lz4-napi round-trip in the packaged Node ${roundTrip.stderr}`);
  t.notOk(existsSync(path.join(modules, 'zstd-napi/deps')) || existsSync(path.join(modules, 'zstd-napi/build/Release/obj.target')), 'no C sources or object files shipped');

  // Ubuntu 22.04/24.04 cannot be reached from here (Debian's archive only), so what decides whether the
  // binaries load there is checked statically: the newest symbol versions they need from the C and C++
  // runtimes, against the oldest supported release's (ubuntu-versions.md beside this test).
  const need = newestSymbolVersions((await filesUnder(path.join(x, 'usr/lib/upgradectl'))).filter((f) => lstatSync(f).isFile() && isElf(f)));
  t.ok(compareVersions(need.GLIBC, UBUNTU_2204.GLIBC) <= 0, `needs glibc ${need.GLIBC}; Ubuntu 22.04 has ${UBUNTU_2204.GLIBC}`);
  t.ok(compareVersions(need.GLIBCXX, UBUNTU_2204.GLIBCXX) <= 0, `needs GLIBCXX ${need.GLIBCXX}; Ubuntu 22.04 has ${UBUNTU_2204.GLIBCXX}`);
  t.ok(compareVersions(need.CXXABI, UBUNTU_2204.CXXABI) <= 0, `needs CXXABI ${need.CXXABI}; Ubuntu 22.04 has ${UBUNTU_2204.CXXABI}`);
  t.comment(`binaries need glibc ${need.GLIBC}, GLIBCXX ${need.GLIBCXX}, CXXABI ${need.CXXABI}`);
  for (const dep of field('Depends').split(',').map((d) => d.trim().split(/\s/)[0]!)) {
    t.ok(UBUNTU_PACKAGES.includes(dep), `Depends: ${dep} is a package of Ubuntu 22.04 and 24.04`);
  }

  if (!cachedDebianRootTarball(SYSTEMD)) {
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

/**
 * The C/C++ runtime versions of Ubuntu 22.04 (jammy), the oldest release the package promises, and the
 * binary packages our Depends name, present in both 22.04 and 24.04. Source and date: ubuntu-versions.md.
 */
const UBUNTU_2204 = { GLIBC: '2.35', GLIBCXX: '3.4.30', CXXABI: '1.3.13' };
const UBUNTU_PACKAGES = ['libc6', 'libstdc++6', 'libgcc-s1', 'e2fsprogs', 'util-linux', 'mount', 'grub-common', 'attr'];

function isElf(file: string): boolean {
  const fd = openSync(file, 'r');
  try {
    const magic = Buffer.alloc(4);
    return readSync(fd, magic, 0, 4, 0) === 4 && magic.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
  } finally {
    closeSync(fd);
  }
}

/** The newest GLIBC_/GLIBCXX_/CXXABI_ version any of the files imports (readelf's version needs). */
function newestSymbolVersions(files: string[]): { GLIBC: string; GLIBCXX: string; CXXABI: string } {
  const newest = { GLIBC: '0', GLIBCXX: '0', CXXABI: '0' };
  for (const file of files) {
    const text = execFileSync('readelf', ['--version-info', '--wide', file], { encoding: 'utf8', maxBuffer: 64 << 20 });
    for (const m of text.matchAll(/Name: (GLIBC|GLIBCXX|CXXABI)_([0-9.]+)/g)) {
      const key = m[1] as keyof typeof newest;
      if (compareVersions(m[2]!, newest[key]) > 0) newest[key] = m[2]!;
    }
  }
  return newest;
}

function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}
