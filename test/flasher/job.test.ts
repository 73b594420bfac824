import t from 'tap';
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { run } from '../../src/core/exec.js';
import { FLASHER_SCRIPTS } from '../../src/flasher/initrd.js';
import { KEPT_FILES_HASH, KEPT_FILES_NAME, newNonce, renderJob, writeJob, type FlashJob } from '../../src/flasher/job.js';
import { skipUnless } from '../helpers/requirements.js';

// The flasher's own check (flasher/flasher.sh check_job), run with busybox sh on real files: the refusals
// are the flasher's, not a TypeScript copy of them.
const skip = skipUnless({ root: true, commands: ['busybox'] });
const UUID = '5ca1ab1e-0000-4000-8000-00000000b007';

function job(nonce: string): FlashJob {
  return {
    nonce, version: '2', url: 'http://10.0.2.100/releases/2/image.lz4', payloadSize: 100, payloadSha256: 'a'.repeat(64),
    imageSize: 4096, imageSha256: 'b'.repeat(64), targetUuid: UUID, ramReserve: 1 << 20,
    frames: [{ offset: 0, length: 100, rawLength: 4096, sha256: 'c'.repeat(64) }],
  };
}

async function checkJob(dir: string, file: string, nonce: string, kind: 'flash' | 'rescue' = 'flash', show = 'OK $job_version $job_frames $(cat $FLASHER_DIR/frames) disk=$job_target_disk'): Promise<{ ok: boolean; out: string }> {
  const script = `. ${path.join(FLASHER_SCRIPTS, 'flasher.sh')}; check_job "$1" "$2" "$3" && echo "${show}"`;
  try {
    const { stdout } = await run('busybox', ['sh', '-c', script, 'sh', file, nonce, UUID], { env: { ...process.env, FLASHER_DIR: path.join(dir, 'run'), JOB_KIND: kind } });
    return { ok: stdout.startsWith('OK '), out: stdout.trim() };
  } catch (err) {
    return { ok: false, out: String((err as { stdout?: string }).stdout ?? err).trim() };
  }
}

t.test('the flasher runs a root-only job written for this boot, and refuses every other', { skip }, async (t) => {
  const dir = t.testdir();
  const nonce = newNonce();
  const flasherDir = path.join(dir, 'boot/upgradectl/flasher');
  const file = await writeJob(flasherDir, job(nonce));
  const good = await checkJob(dir, file, nonce);
  t.ok(good.ok, good.out);
  t.match(good.out, `OK 2 1 0 100 4096 ${'c'.repeat(64)}`, 'fields and the frame list as written');

  const refused = async (what: string, re: RegExp, nonceArg = nonce) => {
    const r = await checkJob(dir, file, nonceArg);
    t.notOk(r.ok, what);
    t.match(r.out, re, what);
  };
  await refused('stale: the job of another boot', /for another boot.*stale/, newNonce());
  await refused('no nonce: the flasher booted by hand', /no upgradectl.flasher nonce/, '');
  chownSync(file, 65534, 65534);
  await refused('not owned by root', /owned by uid 65534, not root/);
  chownSync(file, 0, 0);
  chmodSync(file, 0o602);
  await refused('world-writable', /mode 602: writable by group or others/);
  chmodSync(file, 0o600);
  chmodSync(flasherDir, 0o775);
  await refused('a directory others can write (they could replace the file)', /flasher has mode 775/);
  chmodSync(flasherDir, 0o755);
  writeFileSync(file, renderJob(job(nonce)).replace('url http://', 'url ftp://'), { mode: 0o600 });
  await refused('not http(s)', /url must be http/);
  writeFileSync(file, renderJob(job(nonce)).replace(/\nframe .*\n/, '\n'), { mode: 0o600 });
  await refused('a frame missing', /lists 0 frames, it says 1/);
  writeFileSync(file, renderJob(job(nonce)).replace(`target_uuid ${UUID}`, 'target_uuid 0000-1111'), { mode: 0o600 });
  await refused('another target than the host partition', /not the host partition/);
  const other = path.join(dir, 'elsewhere');
  mkdirSync(other);
  writeFileSync(path.join(other, 'job'), renderJob(job(nonce)), { mode: 0o600 });
  const link = path.join(dir, 'link');
  symlinkSync(path.join(other, 'job'), link);
  const r = await checkJob(dir, link, nonce);
  t.notOk(r.ok);
  t.match(r.out, /symbolic link/);
});

t.test('the job writer refuses values the flasher could misread', async (t) => {
  t.throws(() => renderJob({ ...job(newNonce()), url: "http://x/a'b c" }), /URL/);
  t.throws(() => renderJob({ ...job('xyz') }), /nonce/);
  t.throws(() => renderJob({ ...job(newNonce()), version: '../2' }), /version/);
  t.throws(() => renderJob({ ...job(newNonce()), imageSize: -1 }), /sizes/);
});

t.test('the network line: DHCP by default, the machine\'s static address read by the flasher as written, malformed ones refused', { skip }, async (t) => {
  const dir = t.testdir();
  const nonce = newNonce();
  const flasherDir = path.join(dir, 'boot/upgradectl/flasher');
  const net = 'OK $job_net|$job_net_mac|$job_net_addr|$job_net_gw|$job_net_dns';
  const dhcp = await checkJob(dir, await writeJob(flasherDir, job(nonce)), nonce, 'flash', net);
  t.equal(dhcp.out, 'OK dhcp||||', dhcp.out);
  t.match(renderJob(job(nonce)), /\nnetwork dhcp\n/);
  const fixed: FlashJob = { ...job(nonce), network: { mode: 'static', mac: '52:54:00:12:34:56', address: '192.0.2.10', prefix: 24, gateway: '192.0.2.1', dns: ['192.0.2.53', '198.51.100.53'] } };
  const file = await writeJob(flasherDir, fixed);
  const ok = await checkJob(dir, file, nonce, 'flash', net);
  t.equal(ok.out, 'OK static|52:54:00:12:34:56|192.0.2.10/24|192.0.2.1|192.0.2.53,198.51.100.53', ok.out);
  const bareNet = { mode: 'static', mac: undefined, address: '10.0.2.15', prefix: 24, gateway: undefined, dns: [] } as const;
  const bare: FlashJob = { ...job(nonce), network: { ...bareNet, dns: [] } };
  const anyCard = await checkJob(dir, await writeJob(flasherDir, bare), nonce, 'flash', net);
  t.equal(anyCard.out, 'OK static|any|10.0.2.15/24|none|none', 'no MAC: the first card; no gateway or name servers');
  // What root could put in the file by hand; the flasher refuses it before using the network.
  for (const [line, why] of [
    ['network static 52:54:00:12:34:56 192.0.2.300/24 192.0.2.1 none', /bad network address/],
    ['network static 52:54:00:12:34:56 192.0.2.10/33 192.0.2.1 none', /bad network address/],
    ['network static 52:54:00:12:34:56 192.0.2.10 192.0.2.1 none', /bad network address/],
    ['network static 52:54:00:12:34 192.0.2.10/24 192.0.2.1 none', /bad network MAC/],
    ['network static any 192.0.2.10/24 gw;reboot none', /bad network gateway/],
    ['network static any 192.0.2.10/24 none 192.0.2.53,$(reboot)', /bad name server/],
    ['network static any 192.0.2.10/24 none 192.0.2.53 extra', /bad name server/],
    ['network static any 192.0.2.10/24 none 192.0.2.53,', /bad name server list/],
    ['network bootp', /dhcp or static/],
  ] as const) {
    writeFileSync(file, renderJob(fixed).replace(/^network .*$/m, line), { mode: 0o600 });
    const r = await checkJob(dir, file, nonce, 'flash', net);
    t.notOk(r.ok, line);
    t.match(r.out, why, line);
  }
  t.throws(() => renderJob({ ...fixed, network: { ...bareNet, dns: [], address: '10.0.2' } }), /network: address/);
  t.throws(() => renderJob({ ...fixed, network: { ...bareNet, dns: [], mac: '52-54-00-12-34-56' } }), /network: .*MAC/);
  t.throws(() => renderJob({ ...fixed, network: { ...bareNet, dns: ['::1'] } }), /name server/);
});

t.test('a whole-disk job names the disk; both sides refuse a disk name the flasher could misread, and a rescue job that names one', { skip }, async (t) => {
  const dir = t.testdir();
  const nonce = newNonce();
  const flasherDir = path.join(dir, 'boot/upgradectl/flasher');
  const file = await writeJob(flasherDir, { ...job(nonce), targetDisk: 'nvme0n1' });
  t.match(readFileSync(file, 'utf8'), `\ntarget_uuid ${UUID}\ntarget_disk nvme0n1\n`);
  const ok = await checkJob(dir, file, nonce);
  t.ok(ok.ok, ok.out);
  t.match(ok.out, / disk=nvme0n1$/, 'the flasher read the disk');
  const partition = await checkJob(dir, await writeJob(flasherDir, job(nonce)), nonce);
  t.match(partition.out, / disk=$/, 'no target_disk: the partition is the target, as before');
  for (const bad of ['../sda', 'sda;reboot', 'SDA', '1sda', 'a'.repeat(33)]) {
    t.throws(() => renderJob({ ...job(nonce), targetDisk: bad }), /not a disk's kernel name/, `writer refuses '${bad}'`);
    writeFileSync(file, renderJob(job(nonce)).replace(`target_uuid ${UUID}\n`, `target_uuid ${UUID}\ntarget_disk ${bad}\n`), { mode: 0o600 });
    const r = await checkJob(dir, file, nonce);
    t.notOk(r.ok, `flasher refuses '${bad}'`);
    t.match(r.out, /bad target_disk/);
  }
  const { nonce: _unused, ...rest } = job(nonce);
  t.throws(() => renderJob({ ...rest, targetDisk: 'vda' }, 'rescue'), /never targets a disk/);
  const rescue = path.join(flasherDir, 'rescue-job');
  writeFileSync(rescue, renderJob(rest, 'rescue').replace(`target_uuid ${UUID}\n`, `target_uuid ${UUID}\ntarget_disk vda\n`), { mode: 0o600 });
  const r = await checkJob(dir, rescue, '', 'rescue');
  t.notOk(r.ok);
  t.match(r.out, /a rescue job never targets a disk/);
});

t.test('a rescue job has no nonce and is valid at any boot that reaches rescue; the two kinds never stand in for each other', { skip }, async (t) => {
  const dir = t.testdir();
  const flasherDir = path.join(dir, 'boot/upgradectl/flasher');
  const { nonce: _unused, ...rest } = job(newNonce());
  const rescue: FlashJob = rest;
  const file = await writeJob(flasherDir, rescue, path.join(flasherDir, 'rescue-job'), 'rescue');
  const ok = await checkJob(dir, file, '', 'rescue');
  t.ok(ok.ok, ok.out);
  t.match(ok.out, `OK 2 1 0 100 4096 ${'c'.repeat(64)}`);
  const asFlash = await checkJob(dir, file, newNonce(), 'flash');
  t.notOk(asFlash.ok, 'a rescue job is not a flash job: it could otherwise write the partition');
  t.match(asFlash.out, /not a flash job/);
  const flash = await writeJob(flasherDir, job(newNonce()));
  const asRescue = await checkJob(dir, flash, '', 'rescue');
  t.notOk(asRescue.ok, 'a flash job is not a rescue job');
  t.match(asRescue.out, /not a rescue job/);
  chmodSync(file, 0o644 | 0o002);
  const r = await checkJob(dir, file, '', 'rescue');
  t.notOk(r.ok, 'root-only like the flash job');
  t.throws(() => renderJob(job(newNonce()), 'rescue'), /no nonce/);
});

t.test('rescue rewrites grubenv in place: the restored image is the default, no trial or count left, other variables kept', { skip: skipUnless({ root: true, commands: ['busybox', 'grub-editenv'] }) }, async (t) => {
  const dir = t.testdir();
  const env = path.join(dir, 'boot/grub/grubenv');
  mkdirSync(path.dirname(env), { recursive: true });
  mkdirSync(path.join(dir, 'run'));
  await run('grub-editenv', [env, 'create']);
  await run('grub-editenv', [env, 'set', 'saved_entry=upgradectl-0', 'next_entry=upgradectl-3', 'upgradectl_default_tries=2', 'other_tool=keep']);
  const inode = statSync(env).ino;
  const script = `. ${path.join(FLASHER_SCRIPTS, 'flasher.sh')}; HOST_MNT=$1 FLASHER_DIR=$1/run LOG=$1/run/log; set_default_entry upgradectl-1`;
  await run('busybox', ['sh', '-c', script, 'sh', dir]);
  t.equal(statSync(env).size, 1024, 'still a 1024-byte block');
  t.equal(statSync(env).ino, inode, 'the same file, overwritten in place (GRUB does not replay the journal)');
  const { stdout } = await run('grub-editenv', [env, 'list']);
  t.same(stdout.trim().split('\n').sort(), ['other_tool=keep', 'saved_entry=upgradectl-1']);
});

t.test("what to keep: the job names the machine files' size and hash; the flasher holds only that archive and puts it on the new partition with the hash file", { skip }, async (t) => {
  const dir = t.testdir();
  const nonce = newNonce();
  const flasherDir = path.join(dir, 'boot/upgradectl/flasher');
  const archive = path.join(flasherDir, KEPT_FILES_NAME);
  mkdirSync(flasherDir, { recursive: true });
  writeFileSync(archive, 'the machine files\n', { mode: 0o600 });
  const sha = createHash('sha256').update('the machine files\n').digest('hex');
  const keep = { size: statSync(archive).size, sha256: sha };
  const file = await writeJob(flasherDir, { ...job(nonce), keep });
  t.match(readFileSync(file, 'utf8'), `\nkeep ${keep.size} ${sha}\n`);
  const read = await checkJob(dir, file, nonce, 'flash', 'OK keep=$job_keep_size:$job_keep_sha256');
  t.equal(read.out, `OK keep=${keep.size}:${sha}`, 'the flasher read the keep line');
  t.throws(() => renderJob({ ...job(nonce), keep: { size: 1, sha256: 'x' } }), /keep: a size and a SHA-256/);
  const { nonce: _n, ...rest } = job(nonce);
  t.throws(() => renderJob({ ...rest, keep }, 'rescue'), /a rescue job keeps nothing/);
  writeFileSync(file, renderJob(job(nonce)).replace('\nframes ', `\nkeep ${keep.size} ${sha.slice(1)}\nframes `), { mode: 0o600 });
  t.match((await checkJob(dir, file, nonce)).out, /bad keep line/, 'a malformed hash is refused');

  // keep_machine_files (into RAM, before anything is written) and place_kept_files (onto the new partition).
  const ram = path.join(dir, 'ram');
  const host = path.join(dir, 'newhost');
  mkdirSync(ram);
  mkdirSync(host);
  const carry = async (size = keep.size, hash = sha) => {
    const script = `. ${path.join(FLASHER_SCRIPTS, 'flasher.sh')}; job_keep_size=${size} job_keep_sha256=${hash}; why=$(keep_machine_files "$1") || { echo "REFUSED $why"; exit 0; }; place_kept_files; echo PLACED`;
    const { stdout } = await run('busybox', ['sh', '-c', script, 'sh', archive], { env: { ...process.env, FLASHER_DIR: path.join(dir, 'run'), KEEP: ram, HOST_MNT: host } });
    return stdout.trim().split('\n').pop() ?? '';
  };
  t.match(await carry(keep.size + 1), /REFUSED .* has 18 bytes, the job says 19/, 'another size: refused before writing');
  t.match(await carry(keep.size, 'd'.repeat(64)), /REFUSED .*not the archive the job names/, 'another hash: refused before writing');
  t.notOk(existsSync(path.join(ram, KEPT_FILES_NAME)), 'a refused archive is not left in RAM');
  chmodSync(archive, 0o644);
  t.match(await carry(), /REFUSED .*not root-only/, 'readable by others: refused');
  chmodSync(archive, 0o600);
  t.equal(await carry(), 'PLACED');
  const placed = path.join(host, 'boot/upgradectl/flasher');
  t.equal(readFileSync(path.join(placed, KEPT_FILES_NAME), 'utf8'), 'the machine files\n', 'the archive is on the new partition');
  t.equal(readFileSync(path.join(placed, KEPT_FILES_HASH), 'utf8').trim(), sha, 'with the hash file only the flasher writes');
  for (const f of [KEPT_FILES_NAME, KEPT_FILES_HASH]) t.equal(statSync(path.join(placed, f)).mode & 0o777, 0o600, `${f} is root-only`);
});
