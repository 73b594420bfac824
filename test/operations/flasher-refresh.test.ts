import t from 'tap';
import { copyFileSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../../src/operations/config.js';
import { commit } from '../../src/operations/commit.js';
import { confirm } from '../../src/operations/confirm.js';
import { flasherProvenance, installFlasher, type FlasherInstallOptions } from '../../src/operations/flasher-install.js';
import { reconcile } from '../../src/operations/reconcile/index.js';
import type { Layout } from '../../src/core/layout.js';
import { diagnose } from '../../src/upgradectl/commands/doctor.js';
import { newestKernel } from '../boot/kernel.js';
import { skipUnless } from '../helpers/requirements.js';
import { grubBoot, makeMachine } from './fixtures/machine.js';

/**
 * The flasher follows the current image: confirm rebuilds it from the image that just proved itself
 * (its kernel is the running one), and doctor says when the flasher is missing or was built from an
 * image that is no longer current.
 */

const skip = skipUnless({ root: true, commands: ['grub-editenv', 'grub-script-check', 'mke2fs', 'e2fsck', 'losetup', 'debugfs', 'busybox', 'lz4'] });

function prepared(dir: string): Layout {
  const layout = makeMachine(dir, { images: ['0.9', '1.0', '2.0'], current: '1.0', previous: '0.9', next: '2.0' });
  process.env.UPGRADECTL_REBOOT_COMMAND = `touch ${path.join(layout.root, 'reboot-requested')}`;
  return layout;
}

async function flasherOptions(busybox = '/bin/busybox'): Promise<FlasherInstallOptions> {
  const k = await newestKernel();
  return { kernel: k.vmlinuz, modulesDir: `/lib/modules/${k.release}`, busybox, lz4: '/usr/bin/lz4' };
}

const flasherFindings = async (layout: Layout) => (await diagnose(layout)).filter((f) => f.check === 'flasher');

/** commit 2.0, its trial boot, confirm. */
async function upgrade(layout: Layout) {
  const config = await loadConfig(layout);
  await commit(layout, config, { reboot: false });
  grubBoot(layout);
  await reconcile(layout);
  return confirm(layout, config, { reboot: false });
}

t.test('doctor: no flasher; then built from the current image; confirm rebuilds it from the new image', { skip }, async (t) => {
  const layout = prepared(t.testdir());
  const none = await flasherFindings(layout);
  t.match(none, [{ level: 'warn', message: /the RAM flasher is not installed/, fix: 'upgradectl flasher install' }]);

  await installFlasher(layout, await loadConfig(layout), await flasherOptions());
  t.equal((await flasherProvenance(layout))?.image, '1.0', 'built from the running image');
  t.match(await flasherFindings(layout), [{ level: 'ok', message: /built from the current image 1\.0/ }]);
  const initrdBefore = readFileSync(path.join(layout.flasherDir, 'initrd.img'));

  const r = await upgrade(layout);
  t.equal(r.event, 'confirm-ok');
  t.equal(r.detail.flasher, 'rebuilt from 2.0');
  t.equal((await flasherProvenance(layout))?.image, '2.0', 'the flasher now comes from the confirmed image');
  t.ok(readFileSync(path.join(layout.flasherDir, 'initrd.img')).length > 0 && initrdBefore.length > 0);
  t.match(await flasherFindings(layout), [{ level: 'ok', message: /built from the current image 2\.0/ }]);
});

t.test('a rebuild that fails does not fail the confirm; doctor then says the flasher is stale', { skip }, async (t) => {
  const dir = t.testdir();
  const layout = prepared(dir);
  const busybox = path.join(dir, 'busybox');
  copyFileSync('/bin/busybox', busybox);
  await installFlasher(layout, await loadConfig(layout), await flasherOptions(busybox));
  rmSync(busybox);
  const r = await upgrade(layout);
  t.equal(r.event, 'confirm-ok', 'the upgrade is done whatever happens to the flasher');
  t.match(r.detail.flasher, /^not rebuilt: no busybox \(looked for \S+\/busybox\)/);
  t.match(await flasherFindings(layout), [{ level: 'warn', message: /the RAM flasher is stale: built from image 1\.0 on \d{4}-\d\d-\d\d, the current image is 2\.0/, fix: /upgradectl flasher install/ }]);
});
