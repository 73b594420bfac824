import t from 'tap';
import { DEFAULT_WHITELIST } from '../../src/migrate/default-whitelist.js';
import { parseWhitelist } from '../../src/migrate/whitelist.js';

t.test('no migrate.conf: the default list, accounts merged, clashes stop', async (t) => {
  const w = parseWhitelist('', null);
  t.equal(w.file, null);
  t.equal(w.accounts, true);
  t.equal(w.onClash, 'stop');
  t.equal(w.entries.length, DEFAULT_WHITELIST.filter(([, m]) => m !== 'accounts').length);
  t.ok(w.entries.find((e) => e.pattern === '/etc/ssh/ssh_host_*' && e.mode === 'copy'));
  t.ok(w.entries.find((e) => e.pattern === '/etc/netplan' && e.dirOnly));
  t.ok(w.entries.find((e) => e.pattern === '/root/.ssh' && e.dirOnly));
});

t.test('migrate.conf adds, changes, drops', async (t) => {
  const w = parseWhitelist(
    [
      '[paths]',
      '/srv/app/config/ = keep-if-absent',
      '/etc/hosts = keep-if-absent ; the image manages hosts',
      '/etc/netplan/ = skip',
      '[accounts]',
      'on_clash = skip',
    ].join('\n'),
    '/x/migrate.conf',
  );
  t.equal(w.onClash, 'skip');
  t.ok(w.entries.find((e) => e.pattern === '/srv/app/config' && e.mode === 'keep-if-absent' && e.from === 'migrate.conf'));
  t.equal(w.entries.find((e) => e.pattern === '/etc/hosts')?.mode, 'keep-if-absent');
  t.notOk(w.entries.find((e) => e.pattern === '/etc/netplan'));
});

t.test('defaults = no: only the file', async (t) => {
  const w = parseWhitelist('[options]\ndefaults = no\n[paths]\n/etc/hostname = copy\n', 'm.conf');
  t.same(w.entries.map((e) => e.pattern), ['/etc/hostname']);
  t.equal(w.accounts, false);
});

t.test('refused: with the file, the entry and a hint', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['[paths]\netc/hostname = copy\n', /"etc\/hostname" is not a valid whitelist path/],
    ['[paths]\n/etc/../shadow = copy\n', /not a valid whitelist path/],
    ['[paths]\n/etc/** = copy\n', /\*\* is not supported/],
    ['[paths]\n/etc/hostname = move\n', /unknown mode/],
    ['[paths]\n/etc/hostname = accounts\n', /only \/etc\/passwd.*can be merged/],
    ['[paths]\n/etc/shadow = copy\n', /copying the account database would throw away/],
    ['[accounts]\non_clash = merge\n', /on_clash = merge is not valid/],
    ['[options]\ndefaults = maybe\n', /defaults = maybe is not valid/],
    ['[whitelist]\n/etc/x = copy\n', /unknown section/],
    ['[paths]\n/etc/ssh/ssh_host_[z-a]* = copy\n', /:2: "ssh_host_\[z-a\]\*": the range z-a in \[…\] is reversed/],
    ['[paths.etc]\nhostname = copy\n', /:1: section \[paths\.etc\] has a dot in its name/],
    ['[paths./etc/hostname]\nx = copy\n', /:1: section \[paths\.\/etc\/hostname\] has a dot in its name/],
    ['[options.defaults]\nx = 1\n', /:1: section \[options\.defaults\] has a dot/],
    ['[paths]\n/etc/x[] = copy\n', /:2: "\/etc\/x\[\]" uses array syntax/],
    ['[paths]\n/etc/x = copy\n/etc/x = skip\n', /:3: \[paths\] \/etc\/x is set again \(first at line 2\)/],
    ['[options]\ndefualts = no\n', /:2: unknown key "defualts" in \[options\]/],
    ['[acounts]\n', /:1: unknown section \[acounts\]/],
    ['/etc/x = copy\n', /:1: key "\/etc\/x" is outside any section/],
    ['[paths]\n/etc/hostname = move\n', /:2: \[paths\] \/etc\/hostname = move: unknown mode/],
  ];
  for (const [text, re] of cases) {
    t.throws(() => parseWhitelist(text, '/r/etc/upgradectl/migrate.conf'), { code: 'MIGRATE', message: re }, re.source);
    try {
      parseWhitelist(text, '/r/etc/upgradectl/migrate.conf');
    } catch (err) {
      t.match((err as Error).message, /^\/r\/etc\/upgradectl\/migrate\.conf:\d+: /, 'names file:line');
      t.match((err as { hint?: string }).hint, /docs\/migration\.md/);
    }
  }
});

t.test('nearest known section or key as the hint', async (t) => {
  t.throws(() => parseWhitelist('[acounts]\n', 'm.conf'), { message: /unknown section/, hint: /did you mean `accounts`\?/ });
  t.throws(() => parseWhitelist('[options]\ndefualts = no\n', 'm.conf'), { message: /unknown key/, hint: /did you mean `defaults`\?/ });
});

t.test('valid globs with ] and - members are accepted', async (t) => {
  const w = parseWhitelist('[options]\ndefaults = no\n[paths]\n/etc/[]a]x = copy\n/etc/[!]-]y = copy\n/etc/a[ = copy\n', 'm.conf');
  t.same(w.entries.map((e) => e.pattern), ['/etc/[]a]x', '/etc/[!]-]y', '/etc/a[']);
});
