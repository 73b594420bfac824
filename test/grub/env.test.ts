import t from 'tap';
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { skipUnless } from '../helpers/requirements.js';
import { GRUBENV_SIZE, formatGrubEnv, parseGrubEnv, readGrubEnvFile, writeGrubEnvFile } from '../../src/grub/env.js';
import { updateBootEnv } from '../../src/grub/boot-files.js';
import { parseConfig } from '../../src/operations/config.js';
import { Layout } from '../../src/core/layout.js';
import { isUpgradeError } from '../../src/core/errors.js';

const skip = skipUnless({ commands: ['grub-editenv'] });
const editenv = (file: string, ...args: string[]) => execFileSync('grub-editenv', [file, ...args], { encoding: 'utf8' });

t.test('we write, grub-editenv reads', { skip }, async (t) => {
  const file = path.join(t.testdir(), 'grubenv');
  const env = { saved_entry: 'upgradectl-2026.11.1', next_entry: 'upgradectl-2026.11.2', odd: 'a=b c\\d' };
  await writeGrubEnvFile(file, env);
  t.equal(statSync(file).size, GRUBENV_SIZE);
  t.same(editenv(file, 'list').trim().split('\n'), ['saved_entry=upgradectl-2026.11.1', 'next_entry=upgradectl-2026.11.2', 'odd=a=b c\\d']);
});

t.test('grub-editenv writes, we read; a fresh block is byte-identical to grub-editenv\'s', { skip }, async (t) => {
  const dir = t.testdir();
  const theirs = path.join(dir, 'theirs');
  editenv(theirs, 'create');
  editenv(theirs, 'set', 'saved_entry=upgradectl-1.0', 'upgradectl_tries=2', 'back=x\\y');
  const r = await readGrubEnvFile(theirs);
  t.equal(r.kind, 'ok');
  t.same(r.kind === 'ok' && r.env, { saved_entry: 'upgradectl-1.0', upgradectl_tries: '2', back: 'x\\y' });
  t.ok(formatGrubEnv({ saved_entry: 'upgradectl-1.0', upgradectl_tries: '2', back: 'x\\y' }).equals(readFileSync(theirs)));
  // grub-editenv unset leaves its own layout; we still read it.
  editenv(theirs, 'unset', 'upgradectl_tries');
  const again = await readGrubEnvFile(theirs);
  t.same(again.kind === 'ok' && again.env, { saved_entry: 'upgradectl-1.0', back: 'x\\y' });
});

t.test('an existing block is overwritten in place: same inode, never truncated', { skip }, async (t) => {
  const file = path.join(t.testdir(), 'grubenv');
  editenv(file, 'create');
  const before = statSync(file);
  const r = await writeGrubEnvFile(file, { saved_entry: 'upgradectl-2.0' });
  t.equal(r.inPlace, true);
  const after = statSync(file);
  t.equal(after.ino, before.ino, 'same inode');
  t.equal(after.size, GRUBENV_SIZE);
  t.match(editenv(file, 'list'), /saved_entry=upgradectl-2.0/);
});

t.test('a write that would not fit is refused and the block is left alone', { skip }, async (t) => {
  const file = path.join(t.testdir(), 'grubenv');
  editenv(file, 'create');
  editenv(file, 'set', 'saved_entry=upgradectl-1.0');
  const before = readFileSync(file);
  await t.rejects(writeGrubEnvFile(file, { saved_entry: 'upgradectl-1.0', big: 'x'.repeat(1000) }), { code: 'GRUB', message: /more than the 1024 of/ });
  t.ok(readFileSync(file).equals(before));
  t.throws(() => formatGrubEnv({ 'bad name': 'x' }), { code: 'GRUB' });
});

t.test('parse rejects what is not an environment block', async (t) => {
  t.throws(() => parseGrubEnv(Buffer.alloc(512, '#')), /512 bytes, not 1024/);
  t.throws(() => parseGrubEnv(Buffer.alloc(1024, '#')), /header line is missing/);
  const block = formatGrubEnv({ a: '1' });
  t.same(parseGrubEnv(block), { a: '1' });
});

t.test('a corrupt or wrong-size grubenv is rebuilt from the roles, with the default kept', { skip }, async (t) => {
  const dir = t.testdir({ boot: { grub: { grubenv: 'garbage, not 1024 bytes' } } });
  const layout = new Layout(dir);
  const config = parseConfig('[boot]\ntrial_attempts = 2\n');
  const r0 = await readGrubEnvFile(layout.grubEnv);
  t.equal(r0.kind, 'corrupt');
  t.ok(r0.kind === 'corrupt' && isUpgradeError(r0.error, 'CORRUPT'));
  const ctx = { layout, settings: config.boot, roles: { current: '1.0', next: '2.0', armed: '2.0' } };
  await updateBootEnv(ctx, {});
  t.equal(statSync(layout.grubEnv).size, GRUBENV_SIZE);
  const listed = editenv(layout.grubEnv, 'list');
  t.match(listed, /saved_entry=upgradectl-1.0/);
  t.match(listed, /next_entry=upgradectl-2.0/);
  t.match(listed, /upgradectl_tries=1/);
  // The next write to the repaired block is in place again.
  const ino = statSync(layout.grubEnv).ino;
  await updateBootEnv({ ...ctx, roles: { current: '1.0' } }, { next_entry: null });
  t.equal(statSync(layout.grubEnv).ino, ino);
  writeFileSync(layout.grubEnv, Buffer.alloc(1024, 0));
  t.equal((await readGrubEnvFile(layout.grubEnv)).kind, 'corrupt');
});

t.test('names that are Object.prototype members round-trip byte-identically with grub-editenv', { skip }, async (t) => {
  const dir = t.testdir();
  const theirs = path.join(dir, 'theirs');
  editenv(theirs, 'create');
  editenv(theirs, 'set', '__proto__=x', 'constructor=y', 'saved_entry=upgradectl-1.0');
  const r = await readGrubEnvFile(theirs);
  t.equal(r.kind, 'ok');
  const env = r.kind === 'ok' ? r.env : {};
  t.same(Object.entries(env), [['__proto__', 'x'], ['constructor', 'y'], ['saved_entry', 'upgradectl-1.0']], '__proto__ is a variable, not dropped');
  t.equal(env.toString, undefined, 'nothing is inherited');
  t.ok(formatGrubEnv(env).equals(readFileSync(theirs)), 'written back byte for byte');

  // Through the boot contract: a change leaves the odd names as grub-editenv wrote them.
  const layout = new Layout(path.join(dir, 'root'));
  await writeGrubEnvFile(layout.grubEnv, env);
  await updateBootEnv({ layout, settings: parseConfig('').boot, roles: { current: '1.0' } }, { saved_entry: 'upgradectl-2.0' });
  t.same(editenv(layout.grubEnv, 'list').trim().split('\n'), ['__proto__=x', 'constructor=y', 'saved_entry=upgradectl-2.0']);
  editenv(theirs, 'set', 'saved_entry=upgradectl-2.0');
  t.ok(readFileSync(layout.grubEnv).equals(readFileSync(theirs)), 'the same bytes grub-editenv writes');
});
