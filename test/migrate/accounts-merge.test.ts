import t from 'tap';
import { mergeAccounts, parseLoginDefs, type AccountTexts } from '../../src/migrate/accounts-merge.js';

const defs = parseLoginDefs('# comment\nUID_MIN\t\t\t 1000\nUID_MAX\t\t\t60000\nGID_MIN 1000\nGID_MAX 60000\n');

const image: AccountTexts = {
  passwd: [
    'root:x:0:0:root:/root:/bin/bash',
    'daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin',
    '_svc:x:998:998::/nonexistent:/usr/sbin/nologin',
    'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin',
    '',
  ].join('\n'),
  shadow: ['root:*:19000:0:99999:7:::', 'daemon:*:19000:0:99999:7:::', '_svc:!:19000::::::', 'nobody:*:19000:0:99999:7:::', ''].join('\n'),
  group: ['# local groups', 'root:x:0:', 'daemon:x:1:', 'sudo:x:27:', 'users:x:100:', '_svc:x:998:', 'nogroup:x:65534:', ''].join('\n'),
  gshadow: ['root:*::', 'daemon:*::', 'sudo:*::', 'users:*::', '_svc:!::', 'nogroup:*::', ''].join('\n'),
};

const machine: AccountTexts = {
  passwd: [
    'root:x:0:0:root:/root:/bin/bash',
    'daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin',
    'postgres:x:110:65534::/var/lib/postgresql:/bin/bash',
    'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin',
    'alice:x:1000:1000:Alice:/home/alice:/bin/bash',
    'bob:x:1001:1001::/home/bob:/bin/sh',
    '',
  ].join('\n'),
  shadow: [
    'root:$y$rootHASH:19500:0:99999:7:::',
    'daemon:*:19000:0:99999:7:::',
    'postgres:!:19500::::::',
    'nobody:*:19000:0:99999:7:::',
    'alice:$y$aliceHASH:19600:0:99999:7:::',
    '',
  ].join('\n'),
  group: ['root:x:0:', 'daemon:x:1:', 'sudo:x:27:alice', 'docker:x:120:alice,bob', 'users:x:100:alice,postgres', 'alice:x:1000:', 'bob:x:1001:', 'ops:x:1500:alice,bob,ghost', ''].join('\n'),
  gshadow: ['root:*::', 'sudo:*::alice', 'docker:!::alice,bob', 'alice:!::', 'bob:!::', 'ops:$6$grouppw:alice:alice,bob,ghost', ''].join('\n'),
};

t.test('login.defs: the human range, with defaults', async (t) => {
  t.same(defs, { uidMin: 1000, uidMax: 60000, gidMin: 1000, gidMax: 60000 });
  t.same(parseLoginDefs('UID_MIN 500\n#GID_MIN 7\n'), { uidMin: 500, uidMax: 60000, gidMin: 1000, gidMax: 60000 });
  t.same(parseLoginDefs(undefined).uidMin, 1000);
});

t.test('merge: image system accounts stay, humans added, hashes carried', async (t) => {
  const r = mergeAccounts(machine, image, defs, 'stop');
  t.same(r.problems, []);
  const passwd = r.files.passwd.split('\n');
  t.equal(passwd[2], '_svc:x:998:998::/nonexistent:/usr/sbin/nologin', "image's system account stays in place");
  t.ok(passwd.includes('alice:x:1000:1000:Alice:/home/alice:/bin/bash'));
  t.ok(passwd.includes('bob:x:1001:1001::/home/bob:/bin/sh'));
  t.notOk(r.files.passwd.includes('postgres'), "machine's system account not carried");
  t.same(r.report.skipped.map((s) => s.name), ['postgres']);
  t.match(r.files.shadow, /^root:\$y\$rootHASH:19500:/m, "root's hash carried");
  t.match(r.files.shadow, /^alice:\$y\$aliceHASH:/m);
  t.match(r.files.shadow, /^bob:!:::::::$/m, 'an account without a shadow entry is added locked');
  t.ok(r.report.warnings.some((w) => /bob has no shadow entry/.test(w)));
  t.same(r.report.hashesCarried, ['root']);
  t.same(r.report.usersAdded, ['alice', 'bob']);
  const group = r.files.group.split('\n');
  t.equal(group[0], '# local groups', 'comments kept');
  t.ok(group.includes('sudo:x:27:alice'));
  t.ok(group.includes('users:x:100:alice'), 'only migrated humans join system groups (not postgres)');
  t.ok(group.includes('ops:x:1500:alice,bob'), 'dangling member ghost dropped');
  t.notOk(r.files.group.includes('docker'), 'system group absent from the image is not created');
  t.ok(r.report.warnings.some((w) => /alice's membership in docker is dropped/.test(w)));
  t.match(r.files.gshadow, /^sudo:\*::alice$/m);
  t.match(r.files.gshadow, /^ops:\$6\$grouppw:alice:alice,bob$/m, 'group password and admins carried');
  t.same(r.report.membershipsAdded, ['alice → sudo', 'alice → users']);
  t.same(r.report.groupsAdded, ['alice', 'bob', 'ops']);
});

t.test('merge is idempotent: migrating twice changes nothing more', async (t) => {
  const once = mergeAccounts(machine, image, defs, 'stop');
  const twice = mergeAccounts(machine, once.files, defs, 'stop');
  t.same(twice.problems, []);
  t.equal(twice.files.passwd, once.files.passwd);
  t.equal(twice.files.group, once.files.group);
  t.equal(twice.files.shadow, once.files.shadow);
  t.equal(twice.files.gshadow, once.files.gshadow);
});

t.test('clashes are reported by name and stop, or are skipped by policy', async (t) => {
  const img: AccountTexts = {
    ...image,
    passwd: `${image.passwd}builder:x:1001:1001::/home/builder:/bin/sh\n`,
    group: `${image.group}builder:x:1001:\n`,
  };
  const stop = mergeAccounts(machine, img, defs, 'stop');
  t.same(stop.problems, ['UID 1001 is bob on this machine but builder in the image', 'GID 1001 is group bob on this machine but builder in the image']);
  const skip = mergeAccounts(machine, img, defs, 'skip');
  t.same(skip.problems, []);
  t.notMatch(skip.files.passwd, /^bob:/m);
  t.match(skip.files.group, /^ops:x:1500:alice$/m, 'a skipped account joins nothing');
  t.same(skip.report.clashes.length, 2);
});

t.test('a human account with another number in the image is a clash; system ones follow the image', async (t) => {
  const img: AccountTexts = { ...image, passwd: image.passwd.replace('_svc:x:998', 'daemon2:x:2') + 'alice:x:1002:1002::/home/alice:/bin/sh\n', group: `${image.group}alice:x:1002:\n` };
  const r = mergeAccounts(machine, img, defs, 'stop');
  t.ok(r.problems.includes('account alice is UID 1000 on this machine but UID 1002 in the image'));
  t.ok(r.problems.includes('group alice is GID 1000 on this machine but GID 1002 in the image'));
  const sys: AccountTexts = { ...image, passwd: image.passwd.replace('daemon:x:1:1', 'daemon:x:3:1') };
  t.same(mergeAccounts(machine, sys, defs, 'stop').problems, [], 'a renumbered system account is the image\'s business');
});

t.test('a primary group that exists nowhere is a problem', async (t) => {
  const m: AccountTexts = { ...machine, passwd: `${machine.passwd}carol:x:1002:4242::/home/carol:/bin/sh\n` };
  t.ok(mergeAccounts(m, image, defs, 'stop').problems.some((p) => /carol's primary group GID 4242/.test(p)));
});

t.test('a malformed line is refused with its file and line number', async (t) => {
  const m: AccountTexts = { ...machine, passwd: `${machine.passwd}broken:x:1003\n` };
  t.same(mergeAccounts(m, image, defs, 'stop').problems, ['/etc/passwd of this machine line 7: expected 7 fields, found 3']);
});
