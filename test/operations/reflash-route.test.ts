import t from 'tap';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Layout } from '../../src/core/layout.js';
import { run } from '../../src/core/exec.js';
import { RAM_RESERVE } from '../../src/flasher/job.js';
import { upgradectl } from '../helpers/cli.js';
import { installFlasherFiles, makeMachine, makePublisher } from '../helpers/release-fixture.js';
import { s3Fleet } from '../helpers/s3-server.js';
import { skipUnless } from '../helpers/requirements.js';

/**
 * A release marked `reflash` (its payload is a whole host partition) through the real CLI: prepare never
 * stages it as an image, commit boots the RAM flasher for it (as commit --reflash) or says how to install
 * the flasher, and a manifest whose signature does not verify is refused before any job is written.
 */

const skip = skipUnless({ root: true, commands: ['mke2fs', 'grub-editenv', 'grub-script-check'] });
const HOST_UUID = '0c6d2a3e-6f3b-4a5e-9a41-2b7c1d9e8f10';
const CONFIG = `[boot]\nhost_uuid = ${HOST_UUID}\n[flasher]\nurl = http://127.0.0.1:9/releases-over-http\n`;

t.test('a reflash release: prepare downloads nothing, commit routes to the flasher or says how to get it', { skip }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  await pub.publish('2.0', ['--reflash', '--channel', 'stable']);
  const layout = new Layout(makeMachine(dir, 'm', `file://${pub.releases}`, pub.pub, CONFIG));

  const p = await upgradectl(['--root', layout.root, '--json', 'prepare']);
  t.equal(p.code, 0, p.stderr);
  t.equal(p.json.action, 'needs-reflash');
  t.equal(p.json.flasherInstalled, false);
  t.match(p.json.hint, /flasher install/);
  t.same(readdirSync(layout.imagesDir).filter((f) => !f.startsWith('.')), [], 'no image made of a host partition');
  t.notOk(existsSync(layout.stagingDir) && readdirSync(layout.stagingDir).length, 'nothing staged');

  const refused = await upgradectl(['--root', layout.root, 'commit', '--no-reboot']);
  t.not(refused.code, 0, 'commit refuses without the flasher');
  t.match(refused.stderr, /release 2\.0 rewrites the whole host partition and needs the RAM flasher, which is not installed/);
  t.match(refused.stderr, /upgradectl flasher install/);
  t.notOk(existsSync(path.join(layout.flasherDir, 'job')));

  installFlasherFiles(layout);
  const p2 = await upgradectl(['--root', layout.root, '--json', 'prepare']);
  t.equal(p2.json.action, 'needs-reflash');
  t.match(p2.json.hint, /run upgradectl commit/, 'with the flasher: commit is the next step');
  const c = await upgradectl(['--root', layout.root, 'commit', '--no-reboot']);
  t.equal(c.code, 0, c.stderr);
  t.match(c.stdout, /release 2\.0 rewrites the whole host partition: flash job for 2\.0 written/);
  const job = readFileSync(path.join(layout.flasherDir, 'job'), 'utf8');
  t.match(job, /^upgradectl-flash-job 1\nnonce [0-9a-f]{32}\nversion 2\.0\nurl http:\/\/127\.0\.0\.1:9\/releases-over-http\/releases\/2\.0\/image\.lz4\n/);
  const env = readFileSync(layout.grubEnv, 'utf8');
  t.match(env, /\nnext_entry=upgradectl-flasher\n/, 'the flasher is the next boot');
});

t.test('commit --reflash refuses a manifest whose signature does not verify, before any job is written', { skip }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  await pub.publish('2.0', ['--reflash', '--channel', 'stable']);
  const layout = new Layout(makeMachine(dir, 'm', `file://${pub.releases}`, pub.pub, CONFIG));
  installFlasherFiles(layout);
  const manifest = path.join(pub.releases, 'releases/2.0/manifest.json');
  // One byte of the signed manifest changed: a bigger image than the signer published.
  writeFileSync(manifest, readFileSync(manifest, 'utf8').replace(/"size": (\d)/, '"size": 9$1'));
  const r = await upgradectl(['--root', layout.root, 'commit', '--reflash', '2.0', '--no-reboot']);
  t.not(r.code, 0);
  t.match(r.stderr, /signature/i);
  t.notOk(existsSync(path.join(layout.flasherDir, 'job')), 'no job');
  t.notOk(existsSync(layout.grubEnv) && /next_entry=upgradectl-flasher/.test(readFileSync(layout.grubEnv, 'utf8')), 'the flasher is not armed');
});

t.test('an S3 source without [flasher] url: the job carries a GET pre-signed with this machine\'s credentials, which the flasher\'s busybox wget fetches; the signature is never printed', { skip: skipUnless({ root: true, commands: ['mke2fs', 'grub-editenv', 'grub-script-check', 'busybox'] }) }, async (t) => {
  const dir = t.testdir();
  const { s3, pub, url: source, publishArgs, sourceConfig } = await s3Fleet(t, dir);
  await pub.publish('2.0', ['--reflash', '--channel', 'stable', ...publishArgs]);
  const layout = new Layout(makeMachine(dir, 'm', source, pub.pub, `${sourceConfig}[boot]\nhost_uuid = ${HOST_UUID}\n`));
  installFlasherFiles(layout);

  const c = await upgradectl(['--root', layout.root, '--json', 'commit', '--reflash', '2.0', '--no-reboot']);
  t.equal(c.code, 0, c.stderr);
  const job = readFileSync(path.join(layout.flasherDir, 'job'), 'utf8');
  const url = /^url (\S+)$/m.exec(job)![1]!;
  t.match(url, new RegExp(`^${s3.endpoint}/releases/fleet/releases/2\\.0/image\\.lz4\\?`), 'the object itself, path style as configured');
  t.match(url, /[?&]X-Amz-Expires=86400(&|$)/, 'valid for a day at most');
  const signature = /[?&]X-Amz-Signature=([0-9a-f]{64})/.exec(url)?.[1];
  t.ok(signature, 'signed in the query');
  t.notOk(`${c.stdout}${c.stderr}`.includes(signature!), 'the signature (a bearer token for the object) is never printed');
  t.equal(c.json.url, `${s3.endpoint}/releases/fleet/releases/2.0/image.lz4 (pre-signed for 24 h)`);

  // What the flasher runs: busybox wget, no SDK, no credentials. The bytes are the payload the job names.
  const payload = path.join(dir, 'payload');
  await run('busybox', ['wget', '-q', '-O', payload, url]);
  t.equal(createHash('sha256').update(readFileSync(payload)).digest('hex'), /^payload_sha256 (\w+)$/m.exec(job)![1], 'the payload the job names');
  t.ok(s3.served.some((q) => q.signed === 'query' && q.path.endsWith('/releases/2.0/image.lz4')), 'served on the strength of the query signature');
  // s3rver checks the access key of a signature (not its HMAC, FACTS.md): a key it does not know is refused.
  await t.rejects(run('busybox', ['wget', '-q', '-O', `${payload}.2`, url.replace('X-Amz-Credential=S3RVER', 'X-Amz-Credential=INTRUDER')]), 'a URL signed by someone else is refused');
});

t.test("commit --reflash counts the flasher's own kernel and initrd, kept in RAM for the new partition, in the RAM it needs", { skip }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  await pub.publish('2.0', ['--reflash', '--channel', 'stable']);
  const layout = new Layout(makeMachine(dir, 'm', `file://${pub.releases}`, pub.pub, CONFIG));
  installFlasherFiles(layout);
  truncateSync(layout.flasherKernel, 8 << 20);
  const manifest = JSON.parse(readFileSync(path.join(pub.releases, 'releases/2.0/manifest.json'), 'utf8')) as { payload: { size: number } };
  // Room for the payload and the reserve (what the flasher needed before), not for its 8 MiB kernel too.
  const memTotalKb = Math.ceil((manifest.payload.size + RAM_RESERVE) / 1024) + 1024;
  mkdirSync(path.join(layout.root, 'proc'), { recursive: true });
  writeFileSync(path.join(layout.root, 'proc/meminfo'), `MemTotal:       ${memTotalKb} kB\n`);
  const r = await upgradectl(['--root', layout.root, 'commit', '--reflash', '2.0', '--no-reboot']);
  t.not(r.code, 0);
  t.match(r.stderr, /the flasher would need \d+ MiB of RAM \(payload \d+ MiB \+ 48 MiB \+ its own kernel and initrd 9 MiB\)/);
  t.notOk(existsSync(path.join(layout.flasherDir, 'job')), 'no job');
});

t.test("commit --reflash keeps the machine's files: packed root-only beside the job, which names their size and hash; [flasher] keep = no keeps nothing", { skip: skipUnless({ root: true, commands: ['mke2fs', 'grub-editenv', 'grub-script-check', 'tar'] }) }, async (t) => {
  const dir = t.testdir();
  const pub = await makePublisher(dir);
  await pub.publish('2.0', ['--reflash', '--channel', 'stable']);
  for (const [name, keep] of [['kept', ''], ['reset', 'keep = no\n']] as const) {
    const layout = new Layout(makeMachine(dir, name, `file://${pub.releases}`, pub.pub, CONFIG + keep));
    installFlasherFiles(layout);
    mkdirSync(path.join(layout.root, 'etc/ssh'), { recursive: true });
    writeFileSync(path.join(layout.root, 'etc/hostname'), `${name}\n`);
    writeFileSync(path.join(layout.root, 'etc/ssh/ssh_host_ed25519_key'), 'private\n', { mode: 0o600 });
    writeFileSync(path.join(layout.root, 'etc/motd'), 'not on the whitelist\n');
    const r = await upgradectl(['--root', layout.root, 'commit', '--reflash', '2.0', '--no-reboot']);
    t.equal(r.code, 0, r.stderr);
    const job = readFileSync(path.join(layout.flasherDir, 'job'), 'utf8');
    const archive = path.join(layout.flasherDir, 'machine-files.tar');
    if (keep) {
      t.match(r.stdout, /keeps nothing \(\[flasher\] keep = no\)/, `${name}: says so`);
      t.notMatch(job, /^keep /m, `${name}: no keep line`);
      t.notOk(existsSync(archive), `${name}: no archive`);
      continue;
    }
    t.match(r.stdout, /keeps this machine's files: \d+ entries of the migration whitelist/);
    const [, size, sha] = /^keep (\d+) ([0-9a-f]{64})$/m.exec(job) ?? [];
    const bytes = readFileSync(archive);
    t.equal(bytes.length, Number(size), 'the job names the archive\'s size');
    t.equal(createHash('sha256').update(bytes).digest('hex'), sha, 'and its hash');
    const { stdout } = await run('tar', ['--list', '--file', archive]);
    t.ok(stdout.split('\n').includes('./etc/hostname') && stdout.split('\n').includes('./etc/ssh/ssh_host_ed25519_key'), 'identity and host keys packed');
    t.notMatch(stdout, /etc\/motd/, 'nothing the whitelist does not name');
  }
});
