import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { skipUnless } from '../helpers/requirements.js';
import { writeBootFiles } from '../../src/operations/boot.js';
import { loadConfig } from '../../src/operations/config.js';
import type { Layout } from '../../src/core/layout.js';
import type { State } from '../../src/operations/state.js';
import { armTrial } from '../../src/operations/boot.js';
import { editenv, envList, grubStart, makeMachine, type MachineOptions } from '../operations/fixtures/machine.js';

/**
 * Boot counting of the default, GRUB side: what grubenv holds after each reset, with nothing in the
 * booted OS clearing the count (as when the default dies before userspace). grubStart runs the
 * selection of the installed grub.cfg and writes the environment with the real grub-editenv, as GRUB's
 * save_env would; the real GRUB does the same in QEMU (test/boot/scenario-6-broken-image.test.ts, 6d).
 */

const skip = skipUnless({ commands: ['grub-editenv', 'grub-script-check', 'mke2fs'] });

/** Running 2.0 (previous 1.0), boot files written by upgradectl, as after a confirm. */
async function machine(dir: string, opts: MachineOptions & { defaultAttempts?: number } = {}): Promise<{ layout: Layout; state: State }> {
  const layout = makeMachine(dir, { images: ['1.0', '2.0'], current: '2.0', previous: '1.0', ...opts });
  if (opts.defaultAttempts !== undefined) {
    writeFileSync(layout.configFile, readFileSync(layout.configFile, 'utf8').replace('[boot]', `[boot]\ndefault_attempts = ${opts.defaultAttempts}`));
  }
  const state: State = { schema: 1, phase: 'idle', current: '2.0', previous: '1.0', bad: {}, history: [] };
  await writeBootFiles(layout, await loadConfig(layout), state);
  return { layout, state };
}

/** Resets in a row: the image each one boots, and the count grubenv holds after it. */
function resets(layout: Layout, n: number): Array<[string, string | undefined]> {
  return Array.from({ length: n }, () => {
    const booted = grubStart(layout);
    return [booted, envList(layout).upgradectl_default_tries];
  });
}

t.test('default_attempts = 2 (the default): two uncleared starts, then the previous image for good', { skip }, async (t) => {
  const { layout } = await machine(t.testdir());
  t.same(envList(layout), { saved_entry: 'upgradectl-2.0' }, 'nothing counted before the first boot');
  t.same(resets(layout, 4), [
    ['2.0', '1'],
    ['2.0', '2'],
    ['1.0', '2'],
    ['1.0', '2'],
  ]);
  t.equal(envList(layout).saved_entry, 'upgradectl-2.0', 'GRUB never changes the default itself');
});

t.test('default_attempts = 1 and 3: the chain has as many links', { skip }, async (t) => {
  const one = await machine(`${t.testdir()}/one`, { defaultAttempts: 1 });
  t.same(resets(one.layout, 3), [['2.0', '1'], ['1.0', '1'], ['1.0', '1']]);
  const three = await machine(`${t.testdir()}/three`, { defaultAttempts: 3 });
  t.same(resets(three.layout, 4), [['2.0', '1'], ['2.0', '2'], ['2.0', '3'], ['1.0', '3']]);
});

t.test('a count cleared by the booted OS starts again from nothing', { skip }, async (t) => {
  const { layout } = await machine(t.testdir());
  t.same(resets(layout, 1), [['2.0', '1']]);
  // What reconcile does on the default's boot (test/upgradectl/default-count.test.ts).
  editenv(layout, 'unset', 'upgradectl_default_tries');
  t.same(resets(layout, 2), [['2.0', '1'], ['2.0', '2']]);
});

t.test('trial boots are not counted; the default after a failed trial is', { skip }, async (t) => {
  const { layout, state } = await machine(t.testdir(), { images: ['1.0', '2.0', '3.0'] });
  const config = await loadConfig(layout);
  await writeBootFiles(layout, config, { ...state, phase: 'committed', next: '3.0' });
  await armTrial(layout, config, state, '3.0');
  t.same(resets(layout, 3), [
    ['3.0', undefined],
    ['2.0', '1'],
    ['2.0', '2'],
  ]);
});

t.test('no previous image: nothing is counted, the default boots every time', { skip }, async (t) => {
  const layout = makeMachine(t.testdir(), { images: ['2.0'], current: '2.0' });
  await writeBootFiles(layout, await loadConfig(layout), { schema: 1, phase: 'idle', current: '2.0', bad: {}, history: [] });
  t.same(resets(layout, 3), [['2.0', undefined], ['2.0', undefined], ['2.0', undefined]]);
});
