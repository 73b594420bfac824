import t from 'tap';
import { bootPathProblem, kernelArgsProblem } from '../../src/core/boot-data.js';
import { parseConfig } from '../../src/operations/config.js';
import { validateManifest } from '../../src/release/manifest-check.js';

/** One rule for boot data, wherever it enters: publish, a manifest, the config (issue: validation differs). */

t.test('kernel and initrd paths: absolute, normalised, plain', async (t) => {
  for (const ok of ['/vmlinuz', '/boot/vmlinuz-6.1.0-28-amd64', '/initrd.img', '/boot/initrd.img-6.1+deb12~1']) t.equal(bootPathProblem(ok), undefined, ok);
  const bad: Array<[string, RegExp]> = [
    ['vmlinuz', /not absolute/],
    ['/../vmlinuz', /not a normalised path/],
    ['/boot/../vmlinuz', /not a normalised path/],
    ['/boot//vmlinuz', /not a normalised path/],
    ['/boot/./vmlinuz', /not a normalised path/],
    ['/boot/', /not a normalised path/],
    ['/boot/vm linuz', /characters other than/],
    ["/boot/vm'linuz", /characters other than/],
    ['/boot/vm\nlinuz', /characters other than/],
    ['', /empty/],
  ];
  for (const [p, re] of bad) t.match(bootPathProblem(p), re, JSON.stringify(p));
});

t.test('kernel arguments may not override the boot contract', async (t) => {
  for (const ok of ['', 'quiet', 'console=ttyS0,115200 net.ifnames=0', 'systemd.unit=multi-user.target', 'rootwait', 'foo="a b"', 'upgradectl.ro']) {
    t.equal(kernelArgsProblem(ok), undefined, ok);
  }
  const bad: Array<[string, RegExp]> = [
    ['upgradectl.loop=/images/evil.img', /overrides upgradectl\.loop=/],
    ['quiet "upgradectl.loop=/images/evil.img"', /overrides upgradectl\.loop=/],
    ['root=/dev/sdb1', /overrides root=/],
    ['"root=/dev/sdb1"', /overrides root=/],
    ['panic=0', /overrides panic=/],
    ['upgradectl.trial_deadline=0', /overrides upgradectl\.trial_deadline=/],
    ['upgradectl.trial=1', /overrides upgradectl\.trial=/],
    ['loop=/images/x.img', /overrides loop=/],
    ['quiet\ninsmod evil', /control character/],
    ['foo="a', /unbalanced/],
  ];
  for (const [args, re] of bad) t.match(kernelArgsProblem(args), re, JSON.stringify(args));
});

t.test('the same rule in a manifest and in the config', async (t) => {
  const manifest = (boot: Record<string, unknown>) => ({
    format: 'upgradectl-release/1',
    version: '2.0',
    created: '2026-11-21T05:42:55.101Z',
    image: { size: 4096, sha256: 'a'.repeat(64), allocated: 4096 },
    payload: { path: 'image.lz4', size: 10, sha256: 'b'.repeat(64), compression: 'lz4' },
    boot: { kernel: '/vmlinuz', initrd: '/initrd.img', cmdline: '', ...boot },
    reflash: false,
  });
  t.ok(validateManifest(manifest({}), 'm'));
  t.throws(() => validateManifest(manifest({ kernel: '/boot/vm linuz' }), 'm'), { code: 'MANIFEST', message: /boot\.kernel/ });
  t.throws(() => validateManifest(manifest({ initrd: '/boot//initrd.img' }), 'm'), { code: 'MANIFEST', message: /boot\.initrd/ });
  t.throws(() => validateManifest(manifest({ cmdline: 'upgradectl.loop=/images/1.img' }), 'm'), { code: 'MANIFEST', message: /boot\.cmdline.*upgradectl\.loop/ });
  t.throws(() => parseConfig('[boot]\nkernel_args = quiet upgradectl.loop=/images/old.img\n', 'u.conf'), { code: 'CONFIG', message: /kernel_args/ });
  t.equal(parseConfig('[boot]\nkernel_args = quiet\n').boot.kernelArgs, 'quiet');
  t.equal(parseConfig('[source]\nmin_version = 2026.11\n').source.minVersion, '2026.11');
  t.throws(() => parseConfig('[source]\nmin_version = ../x\n', 'u.conf'), { code: 'CONFIG', message: /min_version/ });
});
