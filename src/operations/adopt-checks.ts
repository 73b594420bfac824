import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { messageOf } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { parseBootedVersion } from '../grub/boot-control.js';
import { distroConfigFile, isOurConfig } from '../grub/distro-config.js';
import { firmwareOf, imageKernelSignature } from '../grub/firmware.js';
import { findMount, saveEnvCapability } from '../grub/host-fs.js';
import { freeBytes } from '../release/space.js';
import { bootImages } from './boot.js';
import type { Config } from './config.js';
import type { State } from './state.js';

/**
 * What `upgradectl adopt` checks before it takes over a traditional install (docs/operators-guide.md,
 * "Adopt"). Each check reads the machine only. A blocker names the thing and its fix; a note is
 * something the operator should know but that does not stop the adoption.
 *
 * Supported: a root filesystem of ext2/3/4 on a plain partition (or a whole disk), holding /boot, that
 * GRUB (BIOS or UEFI, with or without Secure Boot) boots. Not supported: a separate /boot partition
 * (GRUB's menu and grubenv would live on another filesystem than the images, and upgradectl checkpoints
 * only the host filesystem for GRUB), and a root on LVM, LUKS, md RAID, btrfs or ZFS (GRUB's save_env
 * cannot write grubenv there, and upgradectl's entries load no lvm/cryptodisk/mdraid module).
 */
export interface AdoptFinding {
  check: string;
  level: 'ok' | 'note' | 'blocker';
  message: string;
  fix?: string;
}

/** Room beyond the image for the boot files, the state and ext4's metadata of a large file. */
const ROOM_BEYOND_IMAGE = 64 << 20;

export async function adoptionFindings(layout: Layout, config: Config, state: State, uid: number | undefined): Promise<AdoptFinding[]> {
  const out: AdoptFinding[] = [];
  out.push(
    uid === 0
      ? { check: 'root', level: 'ok', message: 'running as root' }
      : { check: 'root', level: 'blocker', message: 'adopt writes the boot menu and the state on the root filesystem: it must run as root', fix: 'sudo upgradectl adopt' },
  );
  const system = await systemFinding(layout, state);
  out.push(system);
  if (system.level === 'blocker') return out;
  out.push(await grubFinding(layout, state));
  out.push(...(await filesystemFindings(layout, config)));
  out.push(await spaceFinding(layout, state));
  out.push(await secureBootFinding(layout, state));
  if (!config.source.url) {
    out.push({ check: 'source', level: 'note', message: `no release source in ${layout.configFile}: prepare needs one`, fix: 'add [source] url = https://HOST/PREFIX (and channel = stable)' });
  }
  return out;
}

async function systemFinding(layout: Layout, state: State): Promise<AdoptFinding> {
  let cmdline = '';
  try {
    cmdline = await fs.readFile(layout.cmdlineFile, 'utf8');
  } catch {
    // No /proc under --root (a tree, not a running system): nothing says an image runs.
  }
  const booted = parseBootedVersion(cmdline);
  if (booted || layout.host !== layout.root) {
    return { check: 'system', level: 'blocker', message: `this machine already runs an upgradectl image${booted ? ` (${booted})` : ''}: there is no traditional install to adopt`, fix: 'nothing to do: upgradectl status shows the machine' };
  }
  if (state.adopted) return { check: 'system', level: 'ok', message: `adopted on ${state.adopted.at}; running again keeps the distribution's menu up to date` };
  return { check: 'system', level: 'ok', message: `a traditional install: its root filesystem ${layout.host} becomes the host partition` };
}

async function grubFinding(layout: Layout, state: State): Promise<AdoptFinding> {
  if (!existsSync(layout.grubCfg)) {
    return {
      check: 'grub',
      level: 'blocker',
      message: `no GRUB menu at ${layout.grubCfg}: this machine does not boot GRUB from its root filesystem`,
      fix: 'install GRUB from the distribution (apt-get install grub-pc, or grub-efi-amd64 on UEFI), grub-install, update-grub',
    };
  }
  const platforms = ['i386-pc', 'x86_64-efi'].filter((p) => existsSync(path.join(layout.grubDir, p)));
  const ours = isOurConfig(await fs.readFile(layout.grubCfg, 'utf8'));
  if (ours && !state.adopted && !existsSync(distroConfigFile(layout))) {
    return { check: 'grub', level: 'blocker', message: `${layout.grubCfg} was written by upgradectl, and no distribution menu is kept: nothing to fall back to`, fix: 'run update-grub to restore the distribution menu, then adopt again' };
  }
  return {
    check: 'grub',
    level: 'ok',
    message: `GRUB reads ${layout.grubCfg}${platforms.length ? ` (modules: ${platforms.join(', ')})` : ''}; the distribution's menu is kept as ${distroConfigFile(layout)}, the last fallback entry`,
  };
}

async function filesystemFindings(layout: Layout, config: Config): Promise<AdoptFinding[]> {
  const out: AdoptFinding[] = [];
  try {
    const bootDir = path.join(layout.host, 'boot');
    // No /boot at all is the grub check's blocker; here it only must not read as a findmnt failure.
    const [host, boot] = await Promise.all([findMount(layout.host), existsSync(bootDir) ? findMount(bootDir) : undefined]);
    if (boot && boot.target !== host.target) {
      out.push({
        check: 'boot-partition',
        level: 'blocker',
        message: `/boot is a separate filesystem (${boot.source} at ${boot.target}): GRUB's menu and grubenv would live apart from the images, which upgradectl does not support`,
        fix: `copy /boot onto the root filesystem (${host.source}), reinstall GRUB (grub-install; update-grub) and remove the /boot line from /etc/fstab, then adopt again`,
      });
    }
    if (!/^ext[234]$/.test(host.fstype)) {
      out.push({ check: 'filesystem', level: 'blocker', message: `the root filesystem is ${host.fstype} (${host.source}): upgradectl's GRUB entries read images from ext2/3/4 only`, fix: 'adopt is for ext4 roots; install the machine anew on ext4 (or use the flasher of an adopted machine)' });
    }
    const verdict = await saveEnvCapability(layout.host);
    if (!verdict.ok) {
      out.push({
        check: 'save_env',
        level: 'blocker',
        message: `the root filesystem sits on ${verdict.layers.join(', ')}: GRUB cannot write grubenv there (save_env) and upgradectl's entries load no module to read it`,
        fix: 'adopt needs the root on a plain partition; move it off LVM/LUKS/RAID, or install the machine anew from an upgradectl image',
      });
    }
    if (out.length === 0) out.push({ check: 'filesystem', level: 'ok', message: `${host.fstype} on ${host.source}, /boot on it, GRUB can write grubenv${config.boot.saveEnv ? '' : ' (save_env = false is set: fallback mode)'}` });
  } catch (err) {
    out.push({ check: 'filesystem', level: 'blocker', message: `cannot tell which filesystem holds ${layout.host}: ${messageOf(err)}`, fix: 'install util-linux (findmnt, lsblk) and run adopt again' });
  }
  return out;
}

/**
 * The first image has to fit beside the running system. Before prepare its size is unknown; an image
 * of this system is about as large as what the system uses now, so that is the estimate.
 */
async function spaceFinding(layout: Layout, state: State): Promise<AdoptFinding> {
  const free = await freeBytes(layout.host);
  const mib = (n: number) => `${Math.round(n / 1048576)} MiB`;
  if (state.next && existsSync(layout.imageFile(state.next))) {
    return free >= ROOM_BEYOND_IMAGE
      ? { check: 'space', level: 'ok', message: `${state.next} is prepared; ${mib(free)} free` }
      : { check: 'space', level: 'blocker', message: `only ${mib(free)} free on ${layout.host}: the boot files cannot be rewritten safely`, fix: 'free some space on the root filesystem' };
  }
  const s = await fs.statfs(layout.host);
  const used = (s.blocks - s.bfree) * s.bsize;
  const need = used + ROOM_BEYOND_IMAGE;
  if (free >= need) return { check: 'space', level: 'ok', message: `${mib(free)} free on ${layout.host}; an image of this system needs about ${mib(used)}` };
  return {
    check: 'space',
    level: 'blocker',
    message: `${mib(free)} free on ${layout.host}, and an image of this system needs about ${mib(need)} (what it uses now, ${mib(used)}, plus room for the boot files)`,
    fix: `free ${mib(need - free)} on the root filesystem (apt-get clean, old logs), or grow the partition`,
  };
}

async function secureBootFinding(layout: Layout, state: State): Promise<AdoptFinding> {
  const fw = await firmwareOf(layout.root);
  if (!fw.secureBoot) {
    return { check: 'secure-boot', level: 'ok', message: fw.mode === 'bios' ? 'BIOS boot' : fw.secureBoot === undefined ? 'UEFI; Secure Boot state unreadable (efivarfs not mounted)' : 'UEFI, Secure Boot off' };
  }
  const next = state.next;
  if (!next || !existsSync(layout.imageFile(next))) {
    return { check: 'secure-boot', level: 'note', message: 'Secure Boot is on: the image you prepare must carry a signed kernel (signed GRUB refuses others)', fix: 'after prepare, run upgradectl adopt --dry-run again: it checks the prepared image' };
  }
  const kernel = (await bootImages(layout)).find((i) => i.version === next)?.kernel ?? '/vmlinuz';
  const signature = await imageKernelSignature(layout.imageFile(next), kernel);
  if (signature === 'signed') return { check: 'secure-boot', level: 'ok', message: `Secure Boot is on and ${next}'s kernel carries a signature` };
  return {
    check: 'secure-boot',
    level: 'blocker',
    message: `Secure Boot is on and ${next}'s kernel ${signature === 'missing' ? 'is missing' : signature === 'not-pe' ? 'is not an EFI (PE) kernel' : 'has no signature'}: signed GRUB refuses to load it`,
    fix: 'prepare an image built with a signed kernel (Debian: linux-image-amd64), or turn Secure Boot off in the firmware',
  };
}
