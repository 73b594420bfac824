import t from 'tap';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { upgradectl } from '../helpers/cli.js';
import { makePublisher, makeTree } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';

/**
 * publish checks everything with the rules a machine applies, before it uploads anything: a release
 * that fails only after its payload went up has burned its version (releases are immutable).
 */

t.test('publish refuses bad input before uploading a byte', { skip: skipUnless({ commands: ['mke2fs', 'debugfs', 'lz4'] }) }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  const image = path.join(dir, 'good.img');
  const b = await upgradectl(['image', 'build', makeTree(dir, 'good', 1), image, '--size', '32M']);
  t.equal(b.code, 0, b.stderr);
  const random = path.join(dir, 'random.bin');
  writeFileSync(random, randomBytes(2 << 20));
  const lz4Random = path.join(dir, 'random.lz4');
  const { execFileSync } = await import('node:child_process');
  execFileSync('lz4', ['-q', random, lz4Random]);
  const url = `file://${pub.releases}`;

  const cases: Array<[string, string[], RegExp, RegExp]> = [
    ['random bytes', [random], /random\.bin is not an ext4 filesystem image/, /image build/],
    ['random bytes in LZ4', [lz4Random], /not an ext4 filesystem image \(inside its LZ4 stream\)/, /image build/],
    ['a relative kernel path', [image, '--kernel', 'vmlinuz'], /--kernel: 'vmlinuz' is not absolute/, /--kernel \/vmlinuz/],
    ['a kernel path with ..', [image, '--kernel', '/../vmlinuz'], /--kernel: '\/\.\.\/vmlinuz' is not a normalised path/, /absolute path/],
    ['a kernel path with a space', [image, '--kernel', '/boot/vm linuz'], /--kernel: .* has characters other than/, /absolute path/],
    ['a kernel the image does not have', [image, '--kernel', '/boot/vmlinuz-9.9'], /cannot boot as published: kernel \/boot\/vmlinuz-9\.9: not found in the image/, /--kernel/],
    ['an initrd that is a directory', [image, '--initrd', '/boot'], /initrd \/boot: a directory, not a file/, /--initrd/],
    ['a cmdline that picks the image', [image, '--cmdline', 'quiet upgradectl.loop=/images/old.img'], /--cmdline: .*overrides upgradectl\.loop=/, /upgradectl adds/],
    ['a cmdline that disables the fallback', [image, '--cmdline', 'panic=0'], /overrides panic=/, /upgradectl adds/],
    ['a channel that leaves the prefix', [image, '--channel', '../x'], /--channel '\.\.\/x' is not valid/, /stable or beta/],
    ['a floor above the version', [image, '--channel', 'stable', '--min-version', '9'], /--min-version 9 is above the version being published/, /lower/],
    ['a revocation that is not a key id', [image, '--channel', 'stable', '--revoke', 'nope'], /--revoke nope is not a key id/, /16 hex/],
    ['a floor without a channel', [image, '--min-version', '1'], /written into the channel file/, /--channel/],
    ['a version that is a path', [image, '--version', '../v'], /version '\.\.\/v' is not a valid version/, /letters, digits/],
    ['a key that is not a key', [image, '--key', random], /is not a PEM private key/, /upgradectl keygen/],
  ];
  for (const [what, args, message, hint] of cases) {
    const version = args.includes('--version') ? [] : ['--version', '7.0'];
    const key = args.includes('--key') ? [] : ['--key', pub.key];
    const r = await upgradectl(['--json', 'publish', ...args, ...version, '--to', url, ...key]);
    t.not(r.code, 0, `${what}: refused`);
    t.equal(r.json?.error?.code, 'USAGE', `${what}: USAGE`);
    t.match(r.json?.error?.message, message, `${what}: names the problem`);
    t.match(r.json?.error?.hint, hint, `${what}: says how to fix it`);
    t.notOk(existsSync(path.join(pub.releases, 'releases')) && readdirSync(path.join(pub.releases, 'releases')).length, `${what}: nothing uploaded`);
  }

  // The same image with sane arguments goes through, symlinked kernel (/vmlinuz -> boot/vmlinuz-6.1) and all.
  const ok = await upgradectl(['publish', image, '--version', '7.0', '--to', url, '--key', pub.key, '--channel', 'stable', '--frame-size', '1M']);
  t.equal(ok.code, 0, ok.stderr);
});
