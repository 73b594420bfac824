import t from 'tap';
import { readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { skipUnless } from '../helpers/requirements.js';
import { defaultTriesExhausted, renderGrubConfig, renderGrubFragment, entryId, versionOfEntry, type GrubConfigInput } from '../../src/grub/render.js';
import { checkGrubScript, installGrubConfig, orderEntries } from '../../src/grub/boot-files.js';
import { bootImages, renderForState } from '../../src/operations/boot.js';
import { parseBootedVersion } from '../../src/grub/boot-control.js';
import { parseConfig } from '../../src/operations/config.js';
import { Layout } from '../../src/core/layout.js';
import { makeMachine, HOST_UUID } from '../operations/fixtures/machine.js';
import { defaultCountOf } from '../helpers/assert.js';

const skip = skipUnless({ commands: ['grub-script-check'] });

const base: GrubConfigInput = {
  hostUuid: HOST_UUID,
  entries: [
    { version: '2026.11.1', title: 'upgradectl image 2026.11.1 (built 2026-11-02)', kernel: '/vmlinuz', initrd: '/initrd.img', cmdline: 'quiet' },
    { version: '2026.11.2', title: "it's new", kernel: 'boot/vmlinuz-6.1.0-28-amd64', initrd: '/boot/initrd.img-6.1.0-28-amd64', cmdline: '' },
    { version: '2026.10.9~rc1', title: 'old', kernel: '/vmlinuz', initrd: '/initrd.img', cmdline: 'dyndbg="file x.c +p" net.ifnames=0' },
  ],
  panicTimeout: 10,
  trialAttempts: 1,
  defaultAttempts: 2,
  kernelArgs: 'console=ttyS1 $notavar',
  serialConsole: '',
  menuTimeout: 0,
  fallbackVersion: '2026.10.9~rc1',
};

/** Where boot-files.ts says the flasher's files and a reflash's trial marker are. */
const HOLD = { kernel: '/boot/upgradectl/flasher/vmlinuz', initrd: '/boot/upgradectl/flasher/initrd.img', marker: '/boot/upgradectl/flasher/trial' };

const cases: Array<[string, GrubConfigInput]> = [
  ['one attempt, no serial', base],
  ['three attempts, serial console, menu', { ...base, trialAttempts: 3, serialConsole: 'ttyS0,115200', menuTimeout: 5 }],
  ['two attempts, save_env off', { ...base, trialAttempts: 2, saveEnv: false }],
  ['a single image, no fallback', { ...base, entries: [base.entries[0]!], fallbackVersion: undefined }],
  ['default counted once', { ...base, defaultAttempts: 1 }],
  ['default counted five times, three trial attempts', { ...base, defaultAttempts: 5, trialAttempts: 3 }],
  ['no images at all', { ...base, entries: [], fallbackVersion: undefined }],
  ['trial deadline, two attempts', { ...base, trialAttempts: 2, trialDeadline: 900 }],
  ['trial deadline, save_env off', { ...base, trialDeadline: 900, saveEnv: false }],
  ['with the flasher', { ...base, flasher: { kernel: '/boot/upgradectl/flasher/vmlinuz', initrd: '/boot/upgradectl/flasher/initrd.img', cmdline: '' } }],
  ['adopted, no image confirmed yet', { ...base, entries: [base.entries[0]!], fallbackVersion: undefined, distro: { isDefault: true } }],
  ['adopted, with the flasher, a rescue job and a previous image', { ...base, distro: { isDefault: false }, flasher: { kernel: '/boot/upgradectl/flasher/vmlinuz', initrd: '/boot/upgradectl/flasher/initrd.img', cmdline: '', rescue: true } }],
  ['adopted, with the flasher and a previous image', { ...base, distro: { isDefault: false }, flasher: { kernel: '/boot/upgradectl/flasher/vmlinuz', initrd: '/boot/upgradectl/flasher/initrd.img', cmdline: '' } }],
  ['hold mode, serial console, a rescue job', { ...base, serialConsole: 'ttyS0,115200', hold: HOLD, flasher: { kernel: '/boot/upgradectl/flasher/vmlinuz', initrd: '/boot/upgradectl/flasher/initrd.img', cmdline: '', rescue: true } }],
  ['hold mode, a single image, no flasher yet', { ...base, entries: [base.entries[0]!], fallbackVersion: undefined, hold: HOLD }],
];

for (const [name, input] of cases) {
  t.test(`rendered config passes grub-script-check: ${name}`, { skip }, async (t) => {
    const cfg = renderGrubConfig(input);
    await checkGrubScript(cfg);
    await checkGrubScript(renderGrubFragment(input));
    for (const [i, e] of input.entries.entries()) {
      t.match(cfg, `--id ${entryId(e.version)} {`);
      t.match(cfg, `loopback ucl${i} /images/${e.version}.img`);
      t.match(cfg, `root=UUID=${HOST_UUID} upgradectl.loop=/images/${e.version}.img ro panic=10`);
    }
    t.equal(new Set([...cfg.matchAll(/loopback (\S+)/g)].map((m) => m[1])).size, input.entries.length, 'a distinct loop name per entry');
    t.notMatch(cfg, /expr|\$\(\(|\+\+|-= /, 'no arithmetic');
    const saves = cfg.match(/save_env/g)?.length ?? 0;
    const counted = input.saveEnv !== false && input.fallbackVersion !== undefined;
    const nonce = input.flasher && input.saveEnv !== false ? 1 : 0;
    t.equal(saves, input.saveEnv === false ? 0 : input.trialAttempts + (counted ? input.defaultAttempts : 0) + nonce, 'one save_env per one-shot link, per counted start, and for the flash job nonce');
    if (input.flasher) {
      t.match(cfg, /\n  if \[ "\$\{next_entry\}" = upgradectl-flasher \]; then\n    set upgradectl_flasher_boot="\$\{upgradectl_flasher_nonce\}"\n  fi\n  set upgradectl_flasher_nonce=\n  save_env upgradectl_flasher_nonce\nfi\nexport upgradectl_flasher_boot\n/, 'the nonce reaches the flasher on its one-shot only, and is cleared at that boot whatever boots');
      t.ok(cfg.indexOf('upgradectl_flasher_nonce') < cfg.indexOf('set next_entry='), 'read before the one-shot is cleared');
      t.match(cfg, /linux \/boot\/upgradectl\/flasher\/vmlinuz panic=10 upgradectl.host=\S+ .*"upgradectl.flasher=\$\{upgradectl_flasher_boot\}"\n/);
    }
    t.equal(cfg.includes('upgradectl_default_tries'), counted, counted ? 'the default is counted' : 'no counting without a previous image or save_env');
  });
}

t.test('adopted machine: the distribution menu ends every fallback list, before the reboot entry', async (t) => {
  const ids = (cfg: string) => [...cfg.matchAll(/^menuentry .*--id[ =]'?([^\s'{]+)'?/gm)].map((m) => m[1]);
  // First commit: one image, armed as a trial; no image is the default yet.
  const first = renderGrubConfig({ ...base, entries: [base.entries[0]!], fallbackVersion: undefined, distro: { isDefault: true } });
  t.same(ids(first), ['upgradectl-2026.11.1', 'upgradectl-distro', 'upgradectl-reboot']);
  t.match(first, /--id upgradectl-distro \{\n  configfile "\$\{prefix\}\/distro.cfg"\n\}/, "the distribution's menu, kept beside grub.cfg");
  t.match(first, /\nelse\n  set default="upgradectl-distro"\nfi/, 'nothing saved: the distribution boots, never the unconfirmed image');
  t.match(first, /\n  elif \[ "\$\{saved_entry\}" = "upgradectl-distro" \]; then\n    set fallback="1 2"\n  else\n    set fallback="1 2"\n  fi/, 'a trial falls back to the distribution, then the reboot entry');
  t.match(first, /\nelse\n  set fallback="1 2"\nfi/, 'a normal boot too');
  // Later: 2026.11.1 current, 2026.10.9~rc1 previous, the flasher installed.
  const later = renderGrubConfig({ ...base, distro: { isDefault: false }, flasher: { kernel: '/f/vmlinuz', initrd: '/f/initrd.img', cmdline: '' } });
  t.same(ids(later).slice(3), ['upgradectl-flasher', 'upgradectl-distro', 'upgradectl-reboot']);
  t.match(later, /\nelse\n  set fallback="2 4 5"\nfi/, 'previous image, then the distribution, then reboot');
  t.match(later, /\nelse\n  set default="upgradectl-2026.11.1"\nfi/, 'with an image confirmed, the first image is the last resort');
  // With a rescue job too: the distribution (local, no network) first, then rescue, then reboot.
  const rescued = renderGrubConfig({ ...base, distro: { isDefault: false }, flasher: { kernel: '/f/vmlinuz', initrd: '/f/initrd.img', cmdline: '', rescue: true } });
  t.same(ids(rescued).slice(3), ['upgradectl-flasher', 'upgradectl-rescue', 'upgradectl-distro', 'upgradectl-reboot']);
  t.match(rescued, /\nelse\n  set fallback="2 5 4 6"\nfi/, 'previous image, the distribution, rescue, reboot');
  await checkGrubScript(rescued);
  t.equal(versionOfEntry('upgradectl-distro'), undefined, 'never a version');
  t.notMatch(renderGrubFragment({ ...base, distro: { isDefault: true } }), /distro/, 'the update-grub fragment has no such entry');
});

t.test('trial attempts are a chain of literal flags', async (t) => {
  const cfg = renderGrubConfig({ ...base, trialAttempts: 3 });
  t.match(cfg, /if \[ "\$\{next_entry\}" \]; then\n  set default="\$\{next_entry\}"\n  set next_entry=\n  save_env next_entry/);
  t.match(cfg, /elif \[ "\$\{upgradectl_tries\}" = "2" -a "\$\{upgradectl_trial\}" \]; then\n  set default="\$\{upgradectl_trial\}"\n  set upgradectl_tries=1\n  save_env upgradectl_tries/);
  t.match(cfg, /elif \[ "\$\{upgradectl_tries\}" = "1" -a "\$\{upgradectl_trial\}" \]; then\n  set default="\$\{upgradectl_trial\}"\n  set upgradectl_tries=\n/);
  // GRUB takes only entry numbers for fallback: the saved default's id is mapped to its position.
  t.match(cfg, /if \[ "\$\{upgradectl_not_default\}" \]; then\n  if \[ "\$\{saved_entry\}" = "upgradectl-2026.11.1" \]; then\n    set fallback="0 3"\n  elif \[ "\$\{saved_entry\}" = "upgradectl-2026.11.2" \]; then\n    set fallback="1 3"\n/);
  t.match(cfg, /\nelse\n  set fallback="2 3"\nfi/, 'outside a trial: the previous image by number, then the reboot entry');
  t.notMatch(cfg, /set fallback="[^"]*[^\d "]/, 'never an id or a title');
  t.notMatch(renderGrubConfig(base), /upgradectl_tries/, 'one attempt: no chain');
});

t.test('starts of the default are a chain of literal counts; used up, the previous image boots', async (t) => {
  const cfg = renderGrubConfig({ ...base, defaultAttempts: 3 });
  const count = cfg.slice(cfg.indexOf('# Boot counting of the default'), cfg.indexOf('if [ "${upgradectl_not_default}" ]; then'));
  t.equal(
    count,
    [
      '# Boot counting of the default (docs/grub.md): GRUB counts starts, the booted OS clears the count.',
      'if [ -z "${upgradectl_not_default}" ]; then',
      '  if [ -z "${upgradectl_default_tries}" ]; then',
      '    set upgradectl_default_tries=1',
      '    save_env upgradectl_default_tries',
      '  elif [ "${upgradectl_default_tries}" = "1" ]; then',
      '    set upgradectl_default_tries=2',
      '    save_env upgradectl_default_tries',
      '  elif [ "${upgradectl_default_tries}" = "2" ]; then',
      '    set upgradectl_default_tries=3',
      '    save_env upgradectl_default_tries',
      '  else',
      '    set default=2',
      '    set upgradectl_not_default=1',
      '  fi',
      'fi',
      '',
    ].join('\n'),
    'counted only outside a trial; the previous image (entry 2) by number once used up',
  );
  t.ok(cfg.indexOf('# Boot counting') > cfg.indexOf('set default="${saved_entry}"'), 'after the default is chosen');
  t.match(cfg, /\nelse\n  set fallback="2 3"\nfi/, 'the fallback is the same previous image');
  t.same(defaultCountOf(cfg), { attempts: 3, instead: 'upgradectl-2026.10.9~rc1' });
  const fragment = renderGrubFragment({ ...base, defaultAttempts: 3 });
  t.match(fragment, /if \[ "\$\{boot_once\}" = "true" \]; then\n  set upgradectl_not_default=1\n/, 'update-grub: 00_header\'s one-shot is not counted either');
  t.same(defaultCountOf(fragment), { attempts: 3, instead: 'upgradectl-2026.10.9~rc1' });
  t.notMatch(renderGrubConfig({ ...base, fallbackVersion: undefined }), /upgradectl_default_tries/, 'no previous image: nothing to count for');
  t.notMatch(renderGrubConfig({ ...base, saveEnv: false }), /upgradectl_default_tries/, 'no save_env: GRUB cannot count');
});

t.test('a count GRUB has given up on is exactly what sends it to the previous image', async (t) => {
  for (const [value, attempts, exhausted] of [
    [undefined, 2, false], ['', 2, false], ['1', 2, false], ['2', 2, true], ['3', 2, true], ['x', 2, true],
    ['1', 1, true], ['4', 5, false], ['5', 5, true], ['01', 3, true],
  ] as const) {
    t.equal(defaultTriesExhausted(value, attempts), exhausted, `${JSON.stringify(value)} of ${attempts}`);
  }
});

t.test('trial deadline: only the entry booted as a trial gets the trial arguments', { skip }, async (t) => {
  const input: GrubConfigInput = { ...base, trialAttempts: 2, trialDeadline: 900, flasher: { kernel: '/f/vmlinuz', initrd: '/f/initrd.img', cmdline: '' } };
  const cfg = renderGrubConfig(input);
  await checkGrubScript(cfg);
  // Which entry is the trial is decided in the selection and never read from grubenv.
  t.match(cfg, /\nset upgradectl_trial_boot=\nif \[ "\$\{next_entry\}" \]; then\n  set default="\$\{next_entry\}"\n  set upgradectl_trial_boot="\$\{next_entry\}"\n  set next_entry=\n/, 'the one-shot, read before GRUB clears it');
  t.match(cfg, /= "1" -a "\$\{upgradectl_trial\}" \]; then\n  set default="\$\{upgradectl_trial\}"\n  set upgradectl_trial_boot="\$\{upgradectl_trial\}"\n/, 'an extra attempt too');
  t.match(cfg, /\nfi\nexport upgradectl_trial_boot\n/, 'exported: a menu entry sees only exported variables');
  t.notMatch(cfg.slice(0, cfg.indexOf('menuentry')), /saved_entry\}"\n  set upgradectl_trial_boot/, 'the default is no trial');
  // Every image entry: the trial arguments in its own branch only, right after panic=.
  for (const [i, e] of input.entries.entries()) {
    const entry = cfg.slice(cfg.indexOf(`--id ${entryId(e.version)} {`), cfg.indexOf('\n}\n', cfg.indexOf(`--id ${entryId(e.version)} {`)));
    const lines = entry.split('\n');
    const at = lines.findIndex((l) => l.startsWith('  if [ "${upgradectl_trial_boot}" = '));
    t.equal(lines[at], `  if [ "\${upgradectl_trial_boot}" = ${entryId(e.version)} ]; then`, `${e.version}: its own id`);
    t.match(lines[at + 1], new RegExp(`^    linux \\(ucl${i}\\)\\S+ root=UUID=\\S+ upgradectl.loop=\\S+ ro panic=10 upgradectl.trial=1 upgradectl.trial_deadline=900 softlockup_panic=1 `));
    t.equal(lines[at + 2], '  else');
    t.equal(lines[at + 3], lines[at + 1]!.replace(' upgradectl.trial=1 upgradectl.trial_deadline=900 softlockup_panic=1', ''), `${e.version}: the same line without them`);
    t.equal(lines[at + 4], '  fi');
  }
  t.equal(cfg.match(/upgradectl\.trial=1/g)?.length, input.entries.length, 'once per image entry, none for the flasher');
  t.match(renderGrubFragment(input), /if \[ "\$\{boot_once\}" = "true" \]; then\n  set upgradectl_trial_boot="\$\{default\}"\n/, "update-grub: 00_header's one-shot is the trial");
  await checkGrubScript(renderGrubFragment(input));

  for (const off of [{ ...base }, { ...base, trialDeadline: 0 }, { ...base, trialDeadline: 900, saveEnv: false }]) {
    // save_env off: GRUB cannot consume a one-shot, a "trial" is the default and a reset would boot it again.
    t.notMatch(renderGrubConfig(off), /upgradectl_trial_boot|upgradectl\.trial|softlockup_panic/, `nothing rendered: ${JSON.stringify({ d: off.trialDeadline, s: off.saveEnv })}`);
  }
  for (const bad of [-1, 1.5, 65536]) t.throws(() => renderGrubConfig({ ...base, trialDeadline: bad }), /trialDeadline must be 0 \(off\) or 1–65535 seconds/);

  const layout = makeMachine(t.testdir(), { images: ['1.0', '2.0'], current: '1.0', next: '2.0' });
  const state = { schema: 1 as const, phase: 'committed' as const, current: '1.0', next: '2.0', bad: {}, history: [] };
  t.match(await renderForState(layout, parseConfig(`[boot]\nhost_uuid = ${HOST_UUID}\n`), state), 'upgradectl.trial_deadline=900 ', 'default [boot] trial_deadline: 15 min');
  t.match(await renderForState(layout, parseConfig(`[boot]\nhost_uuid = ${HOST_UUID}\ntrial_deadline = 2m\n`), state), 'upgradectl.trial_deadline=120 ');
  t.notMatch(await renderForState(layout, parseConfig(`[boot]\nhost_uuid = ${HOST_UUID}\ntrial_deadline = 0\n`), state), /upgradectl\.trial/);
});

t.test('kernel arguments are quoted for GRUB; plain ones stay bare', async (t) => {
  const cfg = renderGrubConfig({ ...base, serialConsole: 'ttyS0,115200' });
  t.match(cfg, `'dyndbg="file x.c +p"' net.ifnames=0`);
  t.match(cfg, `console=ttyS1 '$notavar'`);
  t.match(cfg, 'console=tty0 console=ttyS0,115200');
  t.match(cfg, "menuentry 'it'\\''s new' --id upgradectl-2026.11.2");
  t.match(cfg, 'linux (ucl1)/boot/vmlinuz-6.1.0-28-amd64 ');
  t.match(cfg, 'serial --unit=0 --speed=115200');
});

t.test('input that would inject GRUB commands is refused', async (t) => {
  t.throws(() => renderGrubConfig({ ...base, hostUuid: 'x; reboot' }), /host UUID/);
  t.throws(() => renderGrubConfig({ ...base, entries: [{ ...base.entries[0]!, version: '1.0 }' }] }), /not a valid version/);
  t.throws(() => renderGrubConfig({ ...base, entries: [{ ...base.entries[0]!, kernel: '/vmlinuz; halt' }] }), /plain path/);
  t.throws(() => renderGrubConfig({ ...base, trialAttempts: 4 }), /1–3/);
  t.throws(() => renderGrubConfig({ ...base, defaultAttempts: 0 }), /defaultAttempts must be 1–5/);
  t.throws(() => renderGrubConfig({ ...base, defaultAttempts: 6 }), /defaultAttempts must be 1–5/);
  t.throws(() => renderGrubConfig({ ...base, entries: [base.entries[0]!, base.entries[0]!] }), /twice/);
});

t.test('a broken config is refused by grub-script-check and the old grub.cfg is kept', { skip }, async (t) => {
  const layout = new Layout(t.testdir());
  await installGrubConfig(layout, renderGrubConfig(base));
  const good = readFileSync(layout.grubCfg, 'utf8');
  await t.rejects(installGrubConfig(layout, `${good}\nmenuentry 'broken' {\n  linux /vmlinuz\n`), {
    code: 'GRUB',
    message: /does not pass grub-script-check/,
  });
  t.equal(readFileSync(layout.grubCfg, 'utf8'), good);
  await t.rejects(installGrubConfig(layout, 'if [ x ]; then\n'), { code: 'GRUB' });
  t.equal(readFileSync(layout.grubCfg, 'utf8'), good);
});

t.test('entries from the images on disk: manifests give paths and dates, missing files drop entries', { skip }, async (t) => {
  const layout = makeMachine(t.testdir(), { images: ['1.0', '2.0', '0.9'], current: '1.0', previous: '0.9', next: '2.0' });
  mkdirSync(layout.stagingDir, { recursive: true });
  writeFileSync(`${layout.stagingDir}/3.0.img`, 'partial');
  const config = parseConfig(`[boot]\nhost_uuid = ${HOST_UUID}\n`);
  const state = { schema: 1 as const, phase: 'prepared' as const, current: '1.0', previous: '0.9', next: '2.0', bad: {}, history: [] };
  t.same(orderEntries(await bootImages(layout), state, layout).map((e) => e.version), ['1.0', '2.0', '0.9'], 'current, next, previous');
  const cfg = await renderForState(layout, config, state);
  t.match(cfg, "menuentry 'upgradectl image 1.0 (built 2026-11-02)' --id upgradectl-1.0");
  t.notMatch(cfg, /3\.0/, 'staging downloads get no entry');
  rmSync(layout.manifestFile('2.0'));
  rmSync(layout.imageFile('0.9'));
  const cfg2 = await renderForState(layout, config, state);
  t.notMatch(cfg2, /upgradectl-0\.9/, 'missing image: no entry and no fallback to it');
  t.match(cfg2, "menuentry 'upgradectl image 2.0' --id upgradectl-2.0", 'no manifest: standard paths, no date');
  t.match(cfg2, 'linux (ucl1)/vmlinuz ');
  await checkGrubScript(cfg2);
});

t.test('which image booted, from the kernel command line', async (t) => {
  t.equal(parseBootedVersion('BOOT_IMAGE=(ucl0)/vmlinuz root=UUID=x upgradectl.loop=/images/2026.11.1.img ro panic=10\n'), '2026.11.1');
  t.equal(parseBootedVersion('root=/dev/sda1 ro quiet'), undefined);
  t.equal(versionOfEntry('upgradectl-1.2'), '1.2');
  t.equal(versionOfEntry('upgradectl-flasher'), undefined);
  t.equal(versionOfEntry('gnulinux-simple'), undefined);
});

t.test('EFI: a video driver is loaded, on EFI only', { skip }, async (t) => {
  const cfg = renderGrubConfig(base);
  t.match(cfg, /\nif \[ "\$\{grub_platform\}" = efi \]; then\n  insmod all_video\nfi\n/, 'guarded by the platform');
  t.ok(cfg.indexOf('insmod all_video') < cfg.indexOf('menuentry'), 'before any entry boots');
  t.equal(cfg.match(/all_video/g)?.length, 1, 'nowhere else');
  await checkGrubScript(cfg);
});

t.test('when no image can be loaded, the last entry says so, waits and reboots', { skip }, async (t) => {
  const flasher = { kernel: '/f/vmlinuz', initrd: '/f/initrd.img', cmdline: 'upgradectl.flasher=1' };
  const cases: Array<[string, GrubConfigInput, number]> = [
    ['three images', base, 3],
    ['with the flasher', { ...base, flasher }, 4],
    ['a single image, no previous', { ...base, entries: [base.entries[0]!], fallbackVersion: undefined }, 1],
  ];
  for (const [name, input, reboot] of cases) {
    const cfg = renderGrubConfig(input);
    await checkGrubScript(cfg);
    const ids = [...cfg.matchAll(/^menuentry .*--id ([^\s{]+)/gm)].map((m) => m[1]);
    t.equal(ids.indexOf('upgradectl-reboot'), reboot, `${name}: the last entry`);
    t.equal(ids.length, reboot + 1);
    const entry = cfg.slice(cfg.indexOf('--id upgradectl-reboot {'));
    t.match(entry, /\n  echo 'upgradectl: no image could be loaded from the host partition'\n  echo 'upgradectl: UUID=\S+; rebooting in 10 s'\n[^]*\n  sleep 10\n  reboot\n\}/, `${name}: message, pause, reboot`);
    t.ok(entry.split('\n').filter((l) => l.startsWith('  echo ')).every((l) => l.length - "  echo ''".length < 80), `${name}: each line fits a serial console`);
    const fallbacks = [...cfg.matchAll(/set fallback=("?)([\d ]+)\1\n/g)].map((m) => m[2]!);
    t.ok(fallbacks.length > 0 && fallbacks.every((f) => f.split(' ').at(-1) === String(reboot)), `${name}: every fallback list ends with it (${fallbacks.join(' | ')})`);
  }
  t.notMatch(renderGrubFragment(base), /upgradectl-reboot|set fallback="/, "update-grub: Debian's own entries follow ours, no reboot entry");
  t.equal(versionOfEntry('upgradectl-reboot'), undefined, 'not an image');
  t.notMatch(renderGrubConfig({ ...base, entries: [], fallbackVersion: undefined }), /upgradectl-reboot/, 'no images, no entry');
});

t.test('with a rescue job, the flasher in rescue mode comes before the reboot entry in every fallback list', { skip }, async (t) => {
  const flasher = { kernel: '/f/vmlinuz', initrd: '/f/initrd.img', cmdline: '', rescue: true };
  const cases: Array<[string, GrubConfigInput]> = [
    ['three images', { ...base, flasher }],
    ['a single image, no previous', { ...base, flasher, entries: [base.entries[0]!], fallbackVersion: undefined }],
  ];
  for (const [name, input] of cases) {
    const cfg = renderGrubConfig(input);
    await checkGrubScript(cfg);
    const ids = [...cfg.matchAll(/^menuentry .*--id ([^\s{]+)/gm)].map((m) => m[1]);
    const n = input.entries.length;
    t.same(ids.slice(n), ['upgradectl-flasher', 'upgradectl-rescue', 'upgradectl-reboot'], `${name}: flasher, rescue, reboot`);
    const fallbacks = [...cfg.matchAll(/set fallback=("?)([\d ]+)\1\n/g)].map((m) => m[2]!);
    t.ok(fallbacks.length > 0 && fallbacks.every((f) => ` ${f}`.endsWith(` ${n + 1} ${n + 2}`)), `${name}: every list ends rescue, reboot (${fallbacks.join(' | ')})`);
    const entry = cfg.slice(cfg.indexOf('--id upgradectl-rescue {'));
    t.match(entry, /\n  linux \/f\/vmlinuz panic=10 upgradectl\.host=\S+ upgradectl\.rescue=1[^\n]*\n  initrd \/f\/initrd\.img\n\}/, `${name}: the flasher kernel in rescue mode`);
    t.notMatch(entry.slice(0, entry.indexOf('}')), /upgradectl\.flasher=/, `${name}: never the flash job's nonce`);
  }
  t.equal(versionOfEntry('upgradectl-rescue'), undefined, 'not an image');
  t.notMatch(renderGrubConfig({ ...base, flasher: { ...flasher, rescue: false } }), /upgradectl-rescue/, 'no rescue job, no entry');
});

t.test("a reflashed system's first boot that does not confirm: the reboot entry boots the flasher in hold mode, when its files and the trial marker exist", { skip }, async (t) => {
  const single = { ...base, entries: [base.entries[0]!], fallbackVersion: undefined };
  for (const [name, input] of [['three images', { ...base, hold: HOLD }], ['a single image', { ...single, hold: HOLD }]] as Array<[string, GrubConfigInput]>) {
    const cfg = renderGrubConfig(input);
    await checkGrubScript(cfg);
    const ids = [...cfg.matchAll(/^menuentry .*--id ([^\s{]+)/gm)].map((m) => m[1]);
    const reboot = ids.indexOf('upgradectl-reboot');
    t.equal(reboot, ids.length - 1, `${name}: still the last entry; no entry is added, so no number moves`);
    const entry = cfg.slice(cfg.indexOf('--id upgradectl-reboot {'));
    t.match(
      entry,
      /\n  if \[ -f \/boot\/upgradectl\/flasher\/trial -a -f \/boot\/upgradectl\/flasher\/vmlinuz -a -f \/boot\/upgradectl\/flasher\/initrd\.img \]; then\n[^]*\n    linux \/boot\/upgradectl\/flasher\/vmlinuz panic=10 upgradectl\.host=\S+ upgradectl\.hold=1[^\n]*\n    initrd \/boot\/upgradectl\/flasher\/initrd\.img\n    boot\n  fi\n  echo 'upgradectl: no image could be loaded from the host partition'[^]*\n  sleep 10\n  reboot\n\}/,
      `${name}: guarded by the files at boot time; without them (or when linux fails) the reboot as before`,
    );
    t.notMatch(entry, /upgradectl\.flasher=/, `${name}: never the flash job's nonce`);
    // The flasher arms saved_entry=upgradectl-reboot: a trial that fails to load goes straight to it.
    t.match(cfg, new RegExp(`\\n  elif \\[ "\\$\\{saved_entry\\}" = "upgradectl-reboot" \\]; then\\n    set fallback=${reboot}\\n`), `${name}: a saved_entry naming the reboot entry falls back to it`);
  }
  t.notMatch(renderGrubConfig(base), /upgradectl\.hold|"upgradectl-reboot"/, 'without hold paths: the reboot entry as before');
  t.notMatch(renderGrubFragment({ ...base, hold: HOLD }), /upgradectl\.hold/, 'update-grub fragment: no reboot entry, no hold');
  t.throws(() => renderGrubConfig({ ...base, hold: { ...HOLD, marker: '/x; reboot' } }), /hold paths/);
});
