import { existsSync } from 'node:fs';
import path from 'node:path';

/**
 * Every path upgradectl touches, derived from one root (`--root DIR`, default `/`), so the whole
 * program runs against a temporary tree in tests and in the demo (DESIGN.md §2, §11).
 */
export class Layout {
  /** The running image's root. */
  readonly root: string;
  /** The host partition: `root/host` inside a loop-booted image, else `root` itself. */
  readonly host: string;

  constructor(root: string) {
    this.root = path.resolve(root);
    const inImage = path.join(this.root, 'host');
    this.host = existsSync(path.join(inImage, 'images')) ? inImage : this.root;
  }

  // Running image: configuration and kernel view.
  get etc(): string { return path.join(this.root, 'etc/upgradectl'); }
  get configFile(): string { return path.join(this.etc, 'upgradectl.conf'); }
  get keysDir(): string { return path.join(this.etc, 'keys.d'); }
  get cmdlineFile(): string { return path.join(this.root, 'proc/cmdline'); }
  /** What the initramfs hook did this boot (initramfs-hooks/scripts/local-bottom/upgradectl). */
  get initramfsEnv(): string { return path.join(this.root, 'run/upgradectl/initramfs.env'); }
  hookDir(name: string): string { return path.join(this.etc, `${name}.d`); }

  // Host partition: images, state, boot files.
  get imagesDir(): string { return path.join(this.host, 'images'); }
  get stagingDir(): string { return path.join(this.imagesDir, '.staging'); }
  get stateDir(): string { return path.join(this.imagesDir, '.upgradectl'); }
  get stateFile(): string { return path.join(this.stateDir, 'state.json'); }
  get lockFile(): string { return path.join(this.stateDir, 'lock'); }
  /** Verified manifests of the images on disk: boot data for GRUB entries, sizes, build dates. */
  get manifestsDir(): string { return path.join(this.stateDir, 'manifests'); }
  get grubDir(): string { return path.join(this.host, 'boot/grub'); }
  get grubCfg(): string { return path.join(this.grubDir, 'grub.cfg'); }
  get grubEnv(): string { return path.join(this.grubDir, 'grubenv'); }
  get flasherDir(): string { return path.join(this.host, 'boot/upgradectl/flasher'); }
  /** The RAM flasher's kernel and initrd (upgradectl flasher install; GRUB's flasher and rescue entries boot them). */
  get flasherKernel(): string { return path.join(this.flasherDir, 'vmlinuz'); }
  get flasherInitrd(): string { return path.join(this.flasherDir, 'initrd.img'); }
  /** What the flasher in rescue mode restores when no image can be loaded (docs/flasher.md, "Rescue"). */
  get rescueJobFile(): string { return path.join(this.flasherDir, 'rescue-job'); }
  /**
   * Written by the flasher on a host partition it just flashed: that system's first boot is a trial, with
   * the flasher in hold mode as its fallback (docs/flasher.md, "The first boot after a flash").
   */
  get flashTrialFile(): string { return path.join(this.flasherDir, 'trial'); }

  imageFile(version: string): string { return path.join(this.imagesDir, `${version}.img`); }
  manifestFile(version: string): string { return path.join(this.manifestsDir, `${version}.json`); }
  /** The image path as GRUB and the initramfs see it, relative to the host partition. */
  imagePathOnHost(version: string): string { return `/images/${version}.img`; }
}
