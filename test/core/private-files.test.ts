import t from 'tap';
import { chmodSync, mkdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Layout } from '../../src/core/layout.js';
import { mkdirPrivate, repairPrivateModes } from '../../src/core/private-files.js';
import { withUmask } from '../helpers/as-user.js';

const modeOf = (p: string) => statSync(p).mode & 0o7777;

t.test('mkdirPrivate: the directory and every parent it creates are exactly 0700, even with umask 000', async (t) => {
  const dir = t.testdir();
  await withUmask(0, async () => {
    await mkdirPrivate(path.join(dir, 'a/b/c'));
    mkdirSync(path.join(dir, 'open'), { mode: 0o755 });
    await mkdirPrivate(path.join(dir, 'open/x'));
  });
  for (const d of ['a', 'a/b', 'a/b/c', 'open/x']) t.equal(modeOf(path.join(dir, d)), 0o700, d);
  t.equal(modeOf(path.join(dir, 'open')), 0o755, 'a parent that existed is not touched');
});

t.test('repairPrivateModes: images, staging, state and manifests become 0600/0700; links are left alone', async (t) => {
  const dir = t.testdir();
  const layout = new Layout(dir);
  const outside = path.join(dir, 'outside.txt');
  await withUmask(0, async () => {
    for (const d of [layout.imagesDir, layout.stagingDir, layout.manifestsDir]) mkdirSync(d, { recursive: true, mode: 0o755 });
    writeFileSync(layout.imageFile('4'), 'image with /etc/shadow', { mode: 0o644 });
    writeFileSync(path.join(layout.stagingDir, '5.img'), 'half an image', { mode: 0o666 });
    writeFileSync(layout.stateFile, '{}', { mode: 0o644 });
    writeFileSync(layout.manifestFile('4'), '{}', { mode: 0o600 });
    writeFileSync(outside, 'not ours', { mode: 0o644 });
    symlinkSync(outside, path.join(layout.imagesDir, 'link.img'));
  });
  chmodSync(layout.manifestsDir, 0o700);
  const fixed = await repairPrivateModes(layout);
  t.same(
    fixed.map((f) => [path.relative(dir, f.path), f.was, f.now]).sort(),
    [
      ['images', 0o755, 0o700],
      ['images/.staging', 0o755, 0o700],
      ['images/.staging/5.img', 0o666, 0o600],
      ['images/.upgradectl', 0o755, 0o700],
      ['images/.upgradectl/state.json', 0o644, 0o600],
      ['images/4.img', 0o644, 0o600],
    ].sort(),
    'reports exactly what it changed',
  );
  t.equal(modeOf(layout.imageFile('4')), 0o600);
  t.equal(modeOf(outside), 0o644, 'a symlink in images/ does not carry the chmod out of the tree');
  t.same(await repairPrivateModes(layout), [], 'nothing left to repair');
});
