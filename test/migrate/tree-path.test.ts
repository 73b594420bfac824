import { promises as fs } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { componentMatcher, expandPattern, linkTargetEscapes, resolveInTree, UnsafePathError } from '../../src/migrate/tree-path.js';

t.test('resolveInTree confines every component to the tree', async (t) => {
  const root = t.testdir({
    etc: { ssh: { ssh_host_rsa_key: 'k', ssh_host_rsa_key_pub: 'p' }, hostname: 'h' },
    usr: { lib: { netcfg: { 'a.yaml': 'a' } } },
  });
  await fs.symlink('/usr/lib/netcfg', path.join(root, 'etc/netplan'));
  await fs.symlink('../usr/lib/netcfg', path.join(root, 'etc/rel-netplan'));
  await fs.symlink('../../../../../../../../../../etc', path.join(root, 'etc/escape'));
  await fs.symlink('/../../../../etc', path.join(root, 'etc/abs-escape'));
  await fs.symlink('loop2', path.join(root, 'etc/loop1'));
  await fs.symlink('loop1', path.join(root, 'etc/loop2'));

  const r = await resolveInTree(root, '/etc/ssh/ssh_host_rsa_key');
  t.equal(r.rel, 'etc/ssh/ssh_host_rsa_key');
  t.ok(r.stat?.isFile());
  t.equal((await resolveInTree(root, '/etc/netplan/a.yaml')).rel, 'usr/lib/netcfg/a.yaml', 'an absolute link starts at the tree root, not at /');
  t.equal((await resolveInTree(root, '/etc/rel-netplan/a.yaml')).rel, 'usr/lib/netcfg/a.yaml');
  t.ok((await resolveInTree(root, '/etc/netplan')).stat?.isSymbolicLink(), 'the last component is not followed');
  t.ok((await resolveInTree(root, '/etc/netplan', { followLast: true })).stat?.isDirectory(), 'unless asked');
  t.same(await resolveInTree(root, '/etc/nope/deeper'), { rel: 'etc/nope/deeper', stat: undefined });
  await t.rejects(resolveInTree(root, '/etc/escape/shadow'), UnsafePathError);
  await t.rejects(resolveInTree(root, '/etc/escape/shadow'), { message: /etc\/escape is a symlink to .*which leads out of/ });
  await t.rejects(resolveInTree(root, '/etc/abs-escape/shadow'), { message: /leads out of/ });
  await t.rejects(resolveInTree(root, '/etc/loop1/x'), { message: /too many levels of symbolic links/ });
  await t.rejects(resolveInTree(root, '/etc/hostname/x'), { message: /is not a directory/ });
});

t.test('linkTargetEscapes: from where the link sits', async (t) => {
  t.equal(linkTargetEscapes('etc/localtime', '/usr/share/zoneinfo/UTC'), false);
  t.equal(linkTargetEscapes('etc/localtime', '../usr/share/zoneinfo/UTC'), false);
  t.equal(linkTargetEscapes('etc/localtime', '../../usr/share/zoneinfo/UTC'), true);
  t.equal(linkTargetEscapes('etc/a/b', '../../x'), false);
  t.equal(linkTargetEscapes('etc/a/b', '../../../x'), true);
  t.equal(linkTargetEscapes('etc/x', '/../etc/shadow'), true);
});

t.test('glob matching: one component, shell rules', async (t) => {
  const m = componentMatcher('ssh_host_*');
  t.ok(m('ssh_host_rsa_key'));
  t.notOk(m('sshd_config'));
  t.ok(componentMatcher('ssh_host_[er]*_key')('ssh_host_ed25519_key'));
  t.notOk(componentMatcher('ssh_host_[!er]*_key')('ssh_host_ed25519_key'));
  t.notOk(componentMatcher('*')('.hidden'), 'a leading dot is not matched by *');
  t.ok(componentMatcher('.*')('.hidden'));
  t.ok(componentMatcher('a?c')('abc'));
  t.notOk(componentMatcher('a.c')('abc'), 'a dot is literal');
});

t.test('expandPattern finds what exists, sorted', async (t) => {
  const root = t.testdir({ etc: { ssh: { ssh_host_rsa_key: '', ssh_host_ed25519_key: '', sshd_config: '' }, 'a.d': { x: '' }, 'b.d': { x: '' } } });
  t.same(await expandPattern(root, '/etc/ssh/ssh_host_*'), ['/etc/ssh/ssh_host_ed25519_key', '/etc/ssh/ssh_host_rsa_key']);
  t.same(await expandPattern(root, '/etc/*.d/x'), ['/etc/a.d/x', '/etc/b.d/x']);
  t.same(await expandPattern(root, '/etc/none/*'), []);
  t.same(await expandPattern(root, '/etc/ssh/sshd_config'), ['/etc/ssh/sshd_config']);
  t.same(await expandPattern(root, '/etc/ssh/missing'), []);
});
