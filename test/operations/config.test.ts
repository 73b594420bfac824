import t from 'tap';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseConfig } from '../../src/operations/config.js';
import { REPO } from '../helpers/cli.js';

const FILE = '/r/etc/upgradectl/upgradectl.conf';

t.test('the README example config and the configs the tests write stay valid', async (t) => {
  const readme = readFileSync(path.join(REPO, 'README.md'), 'utf8');
  const example = /```ini\n(# \/etc\/upgradectl\/upgradectl\.conf\n[\s\S]*?)```/.exec(readme)?.[1];
  t.ok(example, 'README has the example');
  const c = parseConfig(example!, FILE);
  t.equal(c.source.url, 's3://fleet-releases/appliance');
  t.equal(c.source.region, 'eu-west-1');
  t.equal(c.prepare.stallTimeout, 30);
  t.equal(c.boot.defaultAttempts, 2);
  t.equal(c.boot.kernelArgs, '');
  const all = parseConfig(
    [
      '; comment',
      '[source]',
      'url = file:///srv/releases',
      'channel = beta',
      'endpoint = http://127.0.0.1:9000',
      'force_path_style = true',
      '',
      '[prepare]',
      'parallel = 3',
      'allow_unsigned = no',
      '[boot]',
      '  host_uuid = 5ca1ab1e-0000-4000-8000-00000000b007   # indented, with a comment',
      'save_env = false',
      'reboot_command = /sbin/reboot -f',
      '[health]\r',
      'timeout = 5\r',
      '[hooks]',
      'timeout = 7',
    ].join('\n'),
    FILE,
  );
  t.equal(all.source.channel, 'beta');
  t.equal(all.source.forcePathStyle, true);
  t.equal(all.prepare.parallel, 3);
  t.equal(all.boot.hostUuid, '5ca1ab1e-0000-4000-8000-00000000b007');
  t.equal(all.boot.saveEnv, false);
  t.equal(all.health.timeout, 5);
  t.equal(all.hooks.timeout, 7);
  t.equal(parseConfig('', FILE).source.channel, 'stable', 'no file: defaults');
});

t.test('typos are named with their line and the nearest known word', async (t) => {
  const cases: Array<[string, RegExp, RegExp]> = [
    ['[sorce]\nurl = file:///x\n', /:1: unknown section \[sorce\]$/, /did you mean `source`\?/],
    ['[source]\nurl = file:///x\nchanel = beta\n', /:3: unknown key "chanel" in \[source\]$/, /did you mean `channel`\?/],
    ['[prepare]\n\nparalel = 4\n', /:3: unknown key "paralel" in \[prepare\]$/, /did you mean `parallel`\?/],
    ['[boot]\npanic_timeout = 1\n[boot]\n', /:3: section \[boot\] appears again \(first at line 1\)$/, /merge/],
    ['[boot]\npanic_timeout = 1\nmenu_timeout = 0\npanic_timeout = 2\n', /:4: \[boot\] panic_timeout is set again \(first at line 2\)$/, /keep one/],
    ['[source]\nurl[] = a\nurl[] = b\n', /:2: "url\[\]" uses array syntax$/, /url = value/],
    ['url = file:///x\n', /:1: key "url" is outside any section$/, /\[source\]/],
    ['[boot]\nwhatever_this_is = 1\n', /unknown key "whatever_this_is"/, /^no such key in \[boot\] \(known: panic_timeout, /],
    ['[source] ; main source\nurl = x\n', /:1: "\[source\] ; main source" is not a section header$/, /alone on its line/],
    ['[source]\nurl\n', /:2: "url" has no "="$/, /key = value/],
    ['[source]\n= x\n', /:2: "= x" has no key/, /key = value/],
    ['[prepare]\nparallel = 0x10\n', /:2: \[prepare\] parallel = 0x10 is not valid$/, /whole number from 1 to 32/],
    ['[prepare]\nparallel = 1e1\n', /:2: \[prepare\] parallel = 1e1 is not valid$/, /whole number/],
    ['[boot]\nsave_env = maybe\n', /:2: \[boot\] save_env = maybe is not valid$/, /true or false/],
  ];
  for (const [text, message, hint] of cases) {
    t.throws(() => parseConfig(text, FILE), { code: 'CONFIG', message, hint }, JSON.stringify(text));
    t.throws(() => parseConfig(text, FILE), { message: /^\/r\/etc\/upgradectl\/upgradectl\.conf:\d+: / }, 'names file:line');
  }
});

t.test('dotted sections are refused clearly, never a TypeError', async (t) => {
  for (const [text, hint] of [
    ['[source.url]\nx = 1\n', /`source`/],
    ['[prepare.parallel]\nx = 1\n', /`prepare`/],
    ['[boot.save_env]\nx = 1\n', /`boot`/],
    ['[options.defaults]\nx = 1\n', /no such section/],
    ['[source]\nurl = a\n[source.url]\nb = 1\n', /`source`/],
  ] as const) {
    t.throws(() => parseConfig(text, FILE), { code: 'CONFIG', message: /has a dot in its name/, hint }, text);
  }
});

t.test('keys that are Object.prototype names are unknown keys, not lookups', async (t) => {
  for (const key of ['__proto__', 'constructor', 'toString', 'hasOwnProperty']) {
    t.throws(() => parseConfig(`[source]\n${key} = x\n`, FILE), { code: 'CONFIG', message: new RegExp(`unknown key "${key}"`) });
    t.throws(() => parseConfig(`[${key}]\n`, FILE), { code: 'CONFIG', message: /unknown section/ });
  }
});

t.test('[boot] trial_deadline: seconds, minutes or hours; 0 turns it off; at most softdog\'s 65535 s', async (t) => {
  t.equal(parseConfig('', FILE).boot.trialDeadline, 900, 'default 15 min');
  for (const [value, seconds] of [['20', 20], ['20s', 20], ['15m', 900], ['15 min', 900], ['1h', 3600], ['0', 0], ['65535', 65535]] as const) {
    t.equal(parseConfig(`[boot]\ntrial_deadline = ${value}\n`, FILE).boot.trialDeadline, seconds, value);
  }
  for (const value of ['-1', '15x', '1.5m', '65536', '19h', 'soon']) {
    t.throws(() => parseConfig(`[boot]\ntrial_deadline = ${value}\n`, FILE), { code: 'CONFIG', message: /:2: \[boot\] trial_deadline = .* is not valid$/, hint: /15m/ }, value);
  }
});

t.test('[window] commit is checked at load by the same parser the daemon uses', async (t) => {
  for (const ok of ['02:00-04:00', '23:00-01:30', '0:00-24:00', 'never']) t.equal(parseConfig(`[window]\ncommit = ${ok}\n`, FILE).window.commit, ok, ok);
  for (const bad of ['02:00-24:30', '25:00-01:00', '2-4', 'nightly', '02:00-04:60']) {
    t.throws(() => parseConfig(`[window]\ncommit = ${bad}\n`, FILE), { code: 'CONFIG', message: /\[window\] commit = .* is not valid$/, hint: /HH:MM-HH:MM/ }, bad);
  }
});
