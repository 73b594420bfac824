import t, { type Test } from 'tap';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { setLogLevel } from '../../src/core/log.js';
import { buildImage } from '../../src/release/image-build.js';
import { upgradectl } from '../helpers/cli.js';
import { cacheDir } from '../helpers/debian-root.js';
import { packagedDeb } from '../helpers/package-deb.js';
import { startHttpServer } from '../helpers/http-server.js';
import { skipUnless } from '../helpers/requirements.js';
import { makeTestCertificate } from '../helpers/tls.js';
import { buildBusyboxTree } from './busybox-image.js';
import { FW_CFG_RUN, FW_CFG_SCRIPT, buildDebianImage } from './debian-image.js';
import { readHostFile, type HostDisk } from './disk.js';
import { BOOT_CONFIG, RELEASE_ADDR } from './fleet.js';
import { bootKernel } from './kernel.js';
import { HOST_UUID, envOnDisk, secs } from './machine.js';
import { buildPlainInstallTree, plainInstallDisk } from './plain-install.js';
import { serialLogPath, Vm } from './qemu.js';
import { BOOT_REQUIREMENTS } from './requirements.js';

/**
 * Adopting a running, traditionally installed machine (docs/operators-guide.md, "Adopt"), in QEMU: a
 * disk that starts as a plain Debian 12 install (one ext4 root partition with /boot, GRUB on the disk,
 * no image), upgradectl installed from its .deb with dpkg. Inside the VM the distribution's own
 * update-grub writes the menu, then `upgradectl adopt`, `prepare` from an HTTPS release server on the
 * host's 127.0.0.1 (QEMU user networking), and `commit`.
 *
 * One tree, two disks:
 *   BIOS: the trial of a Debian + upgradectl image boots, confirm-on-boot confirms it, and the menu on
 *         disk still ends its fallback list with the distribution's kept menu.
 *   UEFI: the trial of an image whose init dies panics, and GRUB's fallback lands on the distribution,
 *         through upgradectl's menu and the kept distro.cfg: the old system is bootable from there,
 *         and its upgradectl records the failed trial.
 */

t.setTimeout(30 * 60_000);

const skip = skipUnless({
  ...BOOT_REQUIREMENTS,
  commands: [...BOOT_REQUIREMENTS.commands!, 'openssl', 'debootstrap', 'depmod', 'modprobe', 'dpkg', 'dpkg-deb', 'mkfs.vfat', 'mcopy', 'mmd'],
  files: ['/usr/share/OVMF/OVMF_CODE_4M.fd', '/usr/lib/grub/x86_64-efi/linux.mod'],
});

const RUN_TIMEOUT_MS = 10 * 60_000;


/** Boot 1 on the plain install: the distribution's update-grub, then what an operator types. */
const ADOPT_STEPS = `grub-mkconfig -o /boot/grub/grub.cfg &&
	save dry-run upgradectl adopt --dry-run &&
	save adopt upgradectl adopt &&
	save prepare upgradectl prepare &&
	save commit upgradectl commit --no-reboot &&
	systemctl reboot`;

const BIOS_SCRIPT = `
case $BOOT:$VERSION in
1:distro)
	${ADOPT_STEPS}
	;;
2:2)
	save status upgradectl --json status && systemctl poweroff
	;;
*)
	marker unexpected boot=$BOOT version=$VERSION
	exit 1
	;;
esac`;

const UEFI_SCRIPT = `
case $BOOT:$VERSION in
1:distro)
	${ADOPT_STEPS}
	;;
2:distro)
	save status upgradectl --json status && systemctl poweroff
	;;
*)
	marker unexpected boot=$BOOT version=$VERSION
	exit 1
	;;
esac`;

t.test('adopt a plain Debian 12 install: BIOS (trial confirmed) and UEFI (failed trial lands on the distribution)', { skip }, async (t) => {
  if (!process.env.UPGRADECTL_LOG_LEVEL) setLogLevel('warn');
  const work = t.testdir();
  let started = performance.now();
  const kernel = await bootKernel();
  const tls = await makeTestCertificate(path.join(work, 'tls'), [RELEASE_ADDR]);
  const key = path.join(work, 'release.key');
  t.equal((await upgradectl(['keygen', '--out', key])).code, 0, 'keygen');
  const www = path.join(work, 'www');
  await fs.mkdir(path.join(www, 'fleet'), { recursive: true });
  const server = await startHttpServer(www, { tls });
  t.teardown(() => server.close());
  const base = { kernel, config: BOOT_CONFIG, trustedKey: await fs.readFile(`${key}.pub`, 'utf8'), caCert: tls.cert };

  // npm run package's .deb of this checkout (cached by content, the same file the image installs).
  const { deb, buildSeconds } = await packagedDeb();
  const debSeconds = (performance.now() - started) / 1000;

  started = performance.now();
  const tree = path.join(work, 'installed');
  await buildPlainInstallTree(tree, { ...base, deb, hostUuid: HOST_UUID });
  // Room for the distribution (~0.5 GiB), the image and its staging file; sparse on the host.
  const disks = {
    bios: await plainInstallDisk(tree, path.join(work, 'bios.img'), 'bios', HOST_UUID, 2560),
    uefi: await plainInstallDisk(tree, path.join(work, 'uefi.img'), 'uefi', HOST_UUID, 2560),
  };
  await fs.rm(tree, { recursive: true, force: true });
  const diskSeconds = (performance.now() - started) / 1000;

  started = performance.now();
  await publish(work, key, '2', () => buildDebianImage(work, path.join(work, 'release-2.img'), { ...base, version: '2' }).then(() => path.join(work, 'release-2.img')));
  t.comment(`package ${buildSeconds === undefined ? 'reused' : 'built'} ${debSeconds.toFixed(1)} s; plain install + two disks ${diskSeconds.toFixed(1)} s; release 2 (Debian) ${((performance.now() - started) / 1000).toFixed(1)} s`);

  const powerOn = async (tt: Test, name: string, disk: HostDisk, script: string, maxBoots: number): Promise<Vm> => {
    const dir = path.join(work, 'runs', name);
    await fs.mkdir(dir, { recursive: true });
    await fs.writeFile(path.join(dir, 'script.sh'), `${script.trim()}\n`);
    await fs.writeFile(path.join(dir, 'run-id'), name);
    const vm = await Vm.start({
      disk: disk.file,
      logFile: await serialLogPath(cacheDir(), name),
      allowReboot: true,
      maxBoots,
      memoryMiB: 1024,
      efi: disk.efi,
      guestfwd: [{ guestAddr: RELEASE_ADDR, guestPort: 443, hostPort: server.port }],
      fwCfg: { [FW_CFG_SCRIPT]: path.join(dir, 'script.sh'), [FW_CFG_RUN]: path.join(dir, 'run-id') },
    });
    tt.teardown(() => vm.kill('test teardown'));
    const exit = await vm.waitForExit(RUN_TIMEOUT_MS);
    tt.equal(exit.killedBecause, undefined, `${name}: the machine powered itself off (no boot loop, no hang)`);
    tt.comment(`${name}: ${vm.boots().length} boots in ${secs(vm.elapsedMs())} s: ${vm.boots().map((b) => b.image ?? 'distro').join(' -> ')}`);
    return vm;
  };
  const saved = async (disk: HostDisk, run: string, name: string) => {
    const out = await readHostFile(disk, `/.upgradectl-test/out/${run}/${name}`);
    const rc = await readHostFile(disk, `/.upgradectl-test/out/${run}/${name}.rc`);
    return { out: out?.toString('utf8') ?? '', rc: rc ? Number(rc.toString('utf8').trim()) : undefined };
  };
  const adoptedOnBoot1 = async (tt: Test, disk: HostDisk, name: string, version: string) => {
    const dry = await saved(disk, name, 'dry-run');
    tt.equal(dry.rc, 0, `adopt --dry-run found nothing blocking: ${dry.out}`);
    tt.match(dry.out, /upgradectl adopt would:/);
    tt.equal((await saved(disk, name, 'adopt')).rc, 0, 'adopt');
    const prepare = await saved(disk, name, 'prepare');
    tt.equal(prepare.rc, 0, `prepare over QEMU's network: ${prepare.out}`);
    tt.match(prepare.out, new RegExp(`prepared ${version}`));
    const commit = await saved(disk, name, 'commit');
    tt.equal(commit.rc, 0, `commit from the running distribution: ${commit.out}`);
    const kept = (await readHostFile(disk, '/boot/grub/distro.cfg'))?.toString('utf8') ?? '';
    tt.match(kept, /### BEGIN \/etc\/grub.d\/10_linux ###/, "the kept menu is update-grub's");
    tt.match(kept, new RegExp(`linux\\s+/boot/vmlinuz-${kernel.release.replace(/[.]/g, '\\.')} root=UUID=${HOST_UUID}`), 'and boots the distribution kernel');
    tt.notMatch(kept, /09_upgradectl/, "without upgradectl's update-grub fragment");
  };

  await t.test('BIOS: adopt, prepare, commit; the trial boots the image and confirms; the distribution stays the last fallback', async (t) => {
    const s0 = performance.now();
    const vm = await powerOn(t, 'adopt-bios', disks.bios, BIOS_SCRIPT, 3);
    const boots = vm.boots();
    t.same(boots.map((b) => b.image), [undefined, '/images/2.img'], 'the distribution, then the trial of 2');
    t.match(boots[1]?.cmdline, /upgradectl\.trial=1/, 'booted as a trial');
    await adoptedOnBoot1(t, disks.bios, 'adopt-bios', '2');
    const status = JSON.parse((await saved(disks.bios, 'adopt-bios', 'status')).out || '{}');
    t.match(status, { booted: '2', current: '2', phase: 'idle' }, 'confirm-on-boot confirmed the trial');
    const cfg = (await readHostFile(disks.bios, '/boot/grub/grub.cfg'))?.toString('utf8') ?? '';
    const ids = [...cfg.matchAll(/^menuentry .*--id[ =]'?([^\s'{]+)'?/gm)].map((m) => m[1]);
    t.same(ids, ['upgradectl-2', 'upgradectl-distro', 'upgradectl-reboot'], 'menu: the image, the distribution, the reboot entry');
    t.match(cfg, /\nelse\n  set fallback="1 2"\nfi/, 'a normal boot of 2 falls back to the distribution');
    t.match(await envOnDisk({ disk: disks.bios }), { saved_entry: 'upgradectl-2' });
    t.comment(`adopt-bios scenario ${secs(performance.now() - s0)} s`);
  });

  await t.test('UEFI: adopt, prepare, commit; the trial panics and GRUB falls back to the distribution', async (t) => {
    const s0 = performance.now();
    await publish(work, key, '3', async () => {
      const rootfs = path.join(work, 'root-3');
      await buildBusyboxTree(rootfs, { version: '3', action: 'panic', kernel });
      await buildImage({ rootfs, out: path.join(work, 'release-3.img') });
      await fs.rm(rootfs, { recursive: true, force: true });
      return path.join(work, 'release-3.img');
    });
    const vm = await powerOn(t, 'adopt-uefi', disks.uefi, UEFI_SCRIPT, 4);
    const boots = vm.boots();
    t.same(boots.map((b) => b.image), [undefined, '/images/3.img', undefined], 'the distribution, the trial of 3, the distribution');
    t.match(boots[1]?.text, /Kernel panic/, 'the trial panicked');
    t.match(boots[2]?.cmdline, new RegExp(`BOOT_IMAGE=/boot/vmlinuz-${kernel.release.replace(/[.]/g, '\\.')} root=UUID=${HOST_UUID}`), "GRUB booted the distribution's own entry, from the kept menu");
    await adoptedOnBoot1(t, disks.uefi, 'adopt-uefi', '3');
    const status = JSON.parse((await saved(disks.uefi, 'adopt-uefi', 'status')).out || '{}');
    t.match(status, { booted: null, phase: 'rolled-back' }, 'the distribution runs; the trial is over');
    t.match(status.bad?.['3']?.reason, /the machine booted the distribution's own system/, 'and recorded as failed');
    const env = await envOnDisk({ disk: disks.uefi });
    t.match(env, { saved_entry: 'upgradectl-distro' }, 'the distribution stays the default');
    t.notOk(env.next_entry, 'no one-shot left');
    t.comment(`adopt-uefi scenario ${secs(performance.now() - s0)} s`);
  });
});

/** Build a release image and publish it to the stable channel, as a release engineer does. */
async function publish(work: string, key: string, version: string, build: () => Promise<string>): Promise<void> {
  const image = await build();
  const p = await upgradectl(['publish', image, '--version', version, '--to', `file://${path.join(work, 'www/fleet')}`, '--key', key, '--channel', 'stable']);
  if (p.code !== 0) throw new Error(`publish ${version} failed: ${p.stderr}`);
  await fs.rm(image, { force: true });
}
