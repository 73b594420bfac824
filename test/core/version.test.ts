import t from 'tap';
import { assertVersion, compareVersions, isVersion } from '../../src/core/version.js';
import { parseBootedVersion } from '../../src/grub/boot-control.js';

// Versions name files and GRUB entries: one definition, an order in which only identical versions are equal.
t.test('only identical versions compare equal; the order is total and antisymmetric', async (t) => {
  const sorted = ['0.9', '1', '01', '1.0~rc1', '1.0', '1.00', '1.2', '1.10', '2026.9.30', '2026.11.2'];
  for (let i = 0; i < sorted.length; i++) {
    for (let j = 0; j < sorted.length; j++) {
      const c = compareVersions(sorted[i]!, sorted[j]!);
      if (i === j) t.equal(c, 0, `${sorted[i]} = itself`);
      else t.not(c, 0, `${sorted[i]} and ${sorted[j]} are distinct`);
      t.equal(Math.sign(c), -Math.sign(compareVersions(sorted[j]!, sorted[i]!)), `antisymmetric: ${sorted[i]} / ${sorted[j]}`);
    }
  }
  t.ok(compareVersions('1.10', '1.9') > 0, 'digit runs compare as numbers');
  t.ok(compareVersions('1.0~rc1', '1.0') < 0, 'a ~ part sorts first, as in Debian');
  t.ok(compareVersions('2026.11.2', '2026.9.30') > 0);
});

t.test('what is a version: no path, quoting or whitespace; bounded length', async (t) => {
  for (const v of ['1', '2026.11.1', 'v2_rc+1~x']) t.ok(isVersion(v), v);
  for (const v of ['', '../x', 'a/b', '.hidden', '-x', 'a b', 'x'.repeat(65), 'a"b', 'constructor\n']) t.notOk(isVersion(v), JSON.stringify(v));
  t.notOk(isVersion(null));
  t.throws(() => assertVersion('../x'), { code: 'USAGE', hint: /letters, digits/ });
});

t.test('the booted image from the kernel command line is a plain version or nothing', async (t) => {
  t.equal(parseBootedVersion('root=UUID=x upgradectl.loop=/images/2.0.img ro'), '2.0');
  t.equal(parseBootedVersion('upgradectl.loop=/images/../x.img'), undefined, '/images/../x.img names no image of ours');
  t.equal(parseBootedVersion('upgradectl.loop=/images/a/b.img'), undefined);
  t.equal(parseBootedVersion('upgradectl.loop=/images/.img'), undefined);
  t.equal(parseBootedVersion('quiet'), undefined);
});
