import t from 'tap';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Layout } from '../../src/core/layout.js';
import { loadConfig } from '../../src/operations/config.js';
import { prepareRelease } from '../../src/operations/prepare.js';
import { Progress } from '../../src/release/progress.js';
import { stagingPaths } from '../../src/release/stage.js';
import { readableBy, withUmask } from '../helpers/as-user.js';
import { makeMachine, makePublisher } from '../helpers/release-fixture.js';
import { skipUnless } from '../helpers/requirements.js';

/**
 * Images hold the machine's /etc/shadow and SSH host keys once committed: every file prepare leaves
 * under HOST/images is root-only, with modes set explicitly, so even a umask of 000 changes nothing.
 * Checked for real as the user nobody, beside a world-readable control file in the same tree.
 */

const modeOf = (p: string) => statSync(p).mode & 0o7777;
const policy = { allowUnsigned: false, allowExpired: false, allowDowngrade: false, force: false };

t.test('after prepare (umask 000) nobody can read the image, the staging file, state.json or the lock', { skip: skipUnless({ root: true, commands: ['mke2fs', 'debugfs', 'runuser'] }) }, async (t) => {
  await withUmask(0, async () => {
    const dir = t.testdir();
    const pub = await makePublisher(dir);
    await pub.publish('1.0');
    const layout = new Layout(makeMachine(dir, 'm', `file://${pub.releases}`, pub.pub, '[prepare]\nparallel = 1\n'));
    const control = path.join(layout.root, 'public.txt');
    writeFileSync(control, 'anyone\n', { mode: 0o644 });
    t.ok(readableBy(control), 'control: nobody can reach into this tree and read a 0644 file');

    // While frames arrive: the lock is held and the staging file is being written (state.json is written
    // when the phase changes, and checked after).
    const during: Record<string, { exists: boolean; readable: boolean; mode: number }> = {};
    const look = (name: string, file: string) => (during[name] ??= { exists: existsSync(file), readable: readableBy(file), mode: existsSync(file) ? modeOf(file) : 0 });
    const r = await prepareRelease({
      layout,
      config: await loadConfig(layout),
      version: '1.0',
      policy,
      progress: (total) => {
        const p = new Progress('test', total);
        p.onChange(() => {
          look('staging file', stagingPaths(layout, '1.0').image);
          look('lock', layout.lockFile);
        });
        return p;
      },
    });
    t.equal(r.action, 'prepared');
    for (const [name, seen] of Object.entries(during)) {
      t.ok(seen.exists, `${name} exists mid-prepare`);
      t.notOk(seen.readable, `${name}: nobody cannot read it mid-prepare`);
      t.equal(seen.mode, 0o600, `${name} is 0600`);
    }
    t.same(Object.keys(during).sort(), ['lock', 'staging file']);

    for (const file of [layout.imageFile('1.0'), layout.stateFile, layout.manifestFile('1.0')]) {
      t.notOk(readableBy(file), `nobody cannot read ${path.relative(layout.root, file)}`);
      t.equal(modeOf(file), 0o600, `${path.relative(layout.root, file)} is 0600`);
    }
    for (const d of [layout.imagesDir, layout.stagingDir, layout.stateDir, layout.manifestsDir]) t.equal(modeOf(d), 0o700, `${path.relative(layout.root, d)}/ is 0700`);
  });
});

t.test('prepare repairs the modes of an image an older version left readable', { skip: skipUnless({ root: true, commands: ['mke2fs', 'debugfs', 'runuser'] }) }, async (t) => {
  await withUmask(0, async () => {
    const dir = t.testdir();
    const pub = await makePublisher(dir);
    await pub.publish('1.0');
    const layout = new Layout(makeMachine(dir, 'm', `file://${pub.releases}`, pub.pub));
    const old = layout.imageFile('0.9');
    writeFileSync(old, 'an image with /etc/shadow inside', { mode: 0o644 });
    t.ok(readableBy(old), 'control: the old image is readable by nobody before');
    await prepareRelease({ layout, config: await loadConfig(layout), version: '1.0', policy });
    t.equal(modeOf(old), 0o600);
    t.notOk(readableBy(old), 'and not after prepare');
  });
});
