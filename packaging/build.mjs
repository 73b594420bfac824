#!/usr/bin/env node
// npm run package: dist/ (built by npm run build first) -> a staged root -> a .tar.gz and a .deb.
//
//   node packaging/build.mjs [--out DIR]        default DIR: ./package-out
//
// The .deb installs on Debian 12 without Node from the distribution: bookworm ships Node 18 and
// upgradectl needs 20, so the package carries the Node binary it was built and tested with
// (process.execPath) under /usr/lib/upgradectl/node, next to the compiled program and its production
// node_modules (native lz4-napi addon included). Plain dpkg-deb, no debhelper: the layout is small and
// written out below, so a reader sees every file the package puts on a machine.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const here = path.join(repo, 'packaging');
const outIndex = process.argv.indexOf('--out');
const out = path.resolve(outIndex > 0 ? process.argv[outIndex + 1] : path.join(repo, 'package-out'));
const pkg = JSON.parse(readFileSync(path.join(repo, 'package.json'), 'utf8'));
const started = Date.now();

/** dpkg's name for this machine's architecture: the Node binary and the native addon are built for it. */
const arch = { x64: 'amd64', arm64: 'arm64' }[process.arch];
if (!arch) fail(`no Debian architecture for Node's ${process.arch}`);
if (!existsSync(path.join(repo, 'dist/upgradectl/main.js'))) fail('dist/ is not built: run npm run build (npm run package does it first)');
const major = Number(process.versions.node.split('.')[0]);
if (major !== 20) fail(`package with Node 20 (package.json engines), not ${process.version}`);

const name = `upgradectl_${pkg.version}_${arch}`;
const root = path.join(out, name);
rmSync(root, { recursive: true, force: true });
mkdirSync(root, { recursive: true });
const put = (rel, mode) => {
  const dest = path.join(root, rel);
  mkdirSync(path.dirname(dest), { recursive: true });
  return { dest, done: () => chmodSync(dest, mode) };
};
const copy = (from, rel, mode = 0o644) => {
  const { dest, done } = put(rel, mode);
  copyFileSync(from, dest);
  done();
};
const write = (rel, text, mode = 0o644) => {
  const { dest, done } = put(rel, mode);
  writeFileSync(dest, text);
  done();
};

// The program: what debian-image.ts installs into the boot tests' image, plus the Node binary.
const lib = 'usr/lib/upgradectl';
for (const item of ['package.json', 'bin', 'dist']) cpSync(path.join(repo, item), path.join(root, lib, item), { recursive: true });
const deps = execFileSync('npm', ['ls', '--omit=dev', '--all', '--parseable'], { cwd: repo, encoding: 'utf8' });
for (const dir of new Set(deps.split('\n').map((l) => l.trim()).filter((l) => l && l !== repo))) {
  const rel = path.relative(repo, dir);
  if (rel.startsWith('node_modules')) cpSync(dir, path.join(root, lib, rel), { recursive: true });
}
pruneNativeBuilds(path.join(root, lib, 'node_modules'));
copy(process.execPath, `${lib}/node`, 0o755);
// A wrapper, not a symlink to bin/upgradectl.js: its #!/usr/bin/env node would find the distribution's
// Node 18, or none.
write('usr/bin/upgradectl', `#!/bin/sh\nexec /${lib}/node /${lib}/bin/upgradectl.js "$@"\n`, 0o755);

// Boot integration, each where its consumer looks.
for (const unit of readdirSync(path.join(repo, 'systemd')).filter((u) => /\.(service|timer)$/.test(u))) {
  copy(path.join(repo, 'systemd', unit), `lib/systemd/system/${unit}`);
}
copy(path.join(repo, 'initramfs-hooks/hooks/upgradectl'), 'usr/share/initramfs-tools/hooks/upgradectl', 0o755);
copy(path.join(repo, 'initramfs-hooks/scripts/local-bottom/upgradectl'), 'usr/share/initramfs-tools/scripts/local-bottom/upgradectl', 0o755);
copy(path.join(repo, 'grub.d/09_upgradectl'), 'etc/grub.d/09_upgradectl', 0o755);
// After a kernel's zz-update-grub: an adopted machine gets upgradectl's grub.cfg back (docs/grub.md).
for (const when of ['postinst.d', 'postrm.d']) copy(path.join(repo, 'kernel/zz-upgradectl'), `etc/kernel/${when}/zz-upgradectl`, 0o755);

// Documentation: the config example, the man page (gzip -n: no name or time in the header, so the
// same sources give the same bytes), bash completion.
copy(path.join(here, 'upgradectl.conf.example'), 'usr/share/doc/upgradectl/upgradectl.conf.example');
copy(path.join(here, 'debian/copyright'), 'usr/share/doc/upgradectl/copyright');
write('usr/share/man/man8/upgradectl.8.gz', execFileSync('gzip', ['-9n', '-c', path.join(here, 'upgradectl.8')]));
copy(path.join(here, 'bash-completion/upgradectl'), 'usr/share/bash-completion/completions/upgradectl');

// Control area.
const files = walk(root);
const installedKiB = Math.ceil(files.reduce((n, f) => n + statSync(path.join(root, f)).size, 0) / 1024);
const control = `Package: upgradectl
Version: ${pkg.version}
Architecture: ${arch}
Maintainer: upgradectl developers <upgradectl@localhost>
Installed-Size: ${installedKiB}
Depends: libc6, libstdc++6, libgcc-s1, e2fsprogs, util-linux, mount, grub-common, attr
Recommends: initramfs-tools, lz4
Section: admin
Priority: optional
Homepage: https://github.com/upgradectl/upgradectl
Description: image-based upgrades for Linux servers and appliances
 Runs the machine from one complete OS image (an ext4 file that GRUB
 loop-mounts as /), prefetches the next signed image in the background,
 carries the machine's own files into it, boots it once and keeps it only
 if it comes up healthy. Carries its own Node.js 20 runtime.
`;
write('DEBIAN/control', control);
write('DEBIAN/conffiles', ['/etc/grub.d/09_upgradectl', '/etc/kernel/postinst.d/zz-upgradectl', '/etc/kernel/postrm.d/zz-upgradectl', ''].join('\n'));
write('DEBIAN/md5sums', files.map((f) => `${createHash('md5').update(readFileSync(path.join(root, f))).digest('hex')}  ${f}\n`).join(''));
copy(path.join(here, 'debian/postinst'), 'DEBIAN/postinst', 0o755);
copy(path.join(here, 'debian/postrm'), 'DEBIAN/postrm', 0o755);
copy(path.join(here, 'debian/triggers'), 'DEBIAN/triggers');

// gzip rather than dpkg's default xz: on 2 cores xz -6 took 102 s for 24.9 MiB and zstd -19 90 s for
// 27.5 MiB, gzip -6 10 s for 35.6 MiB (measured 2026-11-27); the package build is held to about a minute.
const deb = path.join(out, `${name}.deb`);
execFileSync('dpkg-deb', ['--root-owner-group', '-Zgzip', '-z6', '--build', root, deb], { stdio: ['ignore', 'ignore', 'inherit'] });
const tarball = path.join(out, `${name}.tar.gz`);
execFileSync('tar', ['--create', `--file=${tarball}`, '--gzip', '--owner=0', '--group=0', '--numeric-owner', '--exclude=./DEBIAN', `--directory=${root}`, '.']);
rmSync(root, { recursive: true, force: true });

const mib = (f) => `${(statSync(f).size / 1048576).toFixed(1)} MiB`;
console.log(`${deb} (${mib(deb)})\n${tarball} (${mib(tarball)})\nbuilt in ${((Date.now() - started) / 1000).toFixed(1)} s`);

function walk(dir, rel = '') {
  const outFiles = [];
  for (const entry of readdirSync(path.join(dir, rel), { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    const r = rel ? `${rel}/${entry.name}` : entry.name;
    if (r === 'DEBIAN') continue;
    if (entry.isDirectory()) outFiles.push(...walk(dir, r));
    else if (entry.isFile()) outFiles.push(r);
  }
  return outFiles;
}

/**
 * A native addon compiled by npm ci (zstd-napi) leaves its C sources, object files and a second copy of
 * the addon under build/: 7 of the 8 MiB it would add. The package keeps the loaded `build/<type>/*.node`.
 */
function pruneNativeBuilds(modules) {
  for (const pkgDir of packageDirs(modules)) {
    if (!existsSync(path.join(pkgDir, 'binding.gyp'))) continue;
    for (const sources of ['deps', 'src']) rmSync(path.join(pkgDir, sources), { recursive: true, force: true });
    const build = path.join(pkgDir, 'build');
    if (!existsSync(build)) continue;
    for (const file of walk(build)) {
      if (!/^[^/]+\/[^/]+\.node$/.test(file)) rmSync(path.join(build, file));
    }
    removeEmptyDirs(build);
  }
}

function packageDirs(modules) {
  const dirs = [];
  for (const entry of readdirSync(modules, { withFileTypes: true })) {
    if (!entry.isDirectory() || entry.name.startsWith('.')) continue;
    const full = path.join(modules, entry.name);
    if (entry.name.startsWith('@')) dirs.push(...readdirSync(full).map((n) => path.join(full, n)));
    else dirs.push(full);
  }
  return dirs;
}

function removeEmptyDirs(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) removeEmptyDirs(path.join(dir, entry.name));
  }
  if (readdirSync(dir).length === 0) rmSync(dir, { recursive: true });
}

function fail(message) {
  console.error(`packaging: ${message}`);
  process.exit(1);
}
