import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { upgradectl } from './cli.js';
import { startHttpServer } from './http-server.js';
import { loadPrivateKey, signBytes } from '../../src/release/signing.js';

export const sha256File = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

/**
 * A small but realistic OS tree: a kernel and initrd, text-like and random files, and room left
 * empty (zero blocks that must become holes).
 */
export function makeTree(dir: string, seed: string, randomMiB = 6): string {
  const tree = path.join(dir, `tree-${seed}`);
  for (const d of ['host', 'boot', 'etc', 'usr/lib', 'var/log']) mkdirSync(path.join(tree, d), { recursive: true });
  writeFileSync(path.join(tree, 'boot/vmlinuz-6.1'), `kernel ${seed}\n`);
  symlinkSync('boot/vmlinuz-6.1', path.join(tree, 'vmlinuz'));
  writeFileSync(path.join(tree, 'initrd.img'), `initrd ${seed}\n`);
  writeFileSync(path.join(tree, 'etc/os-release'), `VERSION=${seed}\n`);
  writeFileSync(path.join(tree, 'usr/lib/text.txt'), `release ${seed}: ${'all work and no play makes jack a dull boy\n'.repeat(60000)}`);
  writeFileSync(path.join(tree, 'usr/lib/blob.bin'), randomBytes(randomMiB << 20));
  return tree;
}

export interface Publisher {
  key: string;
  pub: string;
  releases: string;
  /** Build an image of a fresh tree (or reuse `image`) and publish it as `version`; returns the image path. */
  publish(version: string, extra?: string[], image?: string): Promise<string>;
}

export async function makePublisher(dir: string, to = `file://${path.join(dir, 'releases')}`): Promise<Publisher> {
  mkdirSync(dir, { recursive: true });
  const key = path.join(dir, 'key');
  const kg = await upgradectl(['keygen', '--out', key]);
  if (kg.code !== 0) throw new Error(`keygen failed: ${kg.stderr}`);
  return {
    key,
    pub: `${key}.pub`,
    releases: path.join(dir, 'releases'),
    async publish(version, extra = [], reuse) {
      const image = reuse ?? path.join(dir, `${version}.img`);
      if (!reuse) {
        const b = await upgradectl(['image', 'build', makeTree(dir, version), image, '--size', '48M']);
        if (b.code !== 0) throw new Error(`image build failed: ${b.stderr}`);
      }
      const p = await upgradectl(['publish', image, '--version', version, '--to', to, '--key', key, '--frame-size', '1M', ...extra]);
      if (p.code !== 0) throw new Error(`publish failed: ${p.stderr}`);
      return image;
    },
  };
}

/** A machine root that trusts `pub` and reads releases from `url`. */
export function makeMachine(dir: string, name: string, url: string, pub: string | undefined, extraConfig = ''): string {
  const root = path.join(dir, name);
  mkdirSync(path.join(root, 'etc/upgradectl/keys.d'), { recursive: true });
  mkdirSync(path.join(root, 'images'), { recursive: true });
  if (pub) writeFileSync(path.join(root, 'etc/upgradectl/keys.d/release.pub'), readFileSync(pub));
  writeFileSync(path.join(root, 'etc/upgradectl/upgradectl.conf'), `[source]\nurl = ${url}\nchannel = stable\n${extraConfig}`);
  return root;
}

/** The manifest publish wrote for `version` under a publisher's `releases` directory. */
export const manifestOf = (releases: string, version: string) => JSON.parse(readFileSync(path.join(releases, 'releases', version, 'manifest.json'), 'utf8'));

/** Re-sign a manifest after changing it: a publisher bug or a deliberate test case, validly signed. */
export async function resign(releases: string, version: string, key: string, change: (m: any) => void): Promise<void> {
  const file = path.join(releases, 'releases', version, 'manifest.json');
  const m = JSON.parse(readFileSync(file, 'utf8'));
  change(m);
  const bytes = Buffer.from(JSON.stringify(m));
  writeFileSync(file, bytes);
  writeFileSync(`${file}.sig`, signBytes(bytes, await loadPrivateKey(key)));
}

/**
 * A publisher with `version` published and served by a real HTTP server on 127.0.0.1 (closed at the
 * end of the test): what the prepare tests over HTTP start from.
 */
export async function servedRelease(t: { teardown: (fn: () => unknown) => void }, dir: string, version: string) {
  const pub = await makePublisher(dir);
  const image = await pub.publish(version);
  const server = await startHttpServer(pub.releases);
  t.teardown(() => server.close());
  return { pub, image, server, url: server.url.replace(/\/$/, ''), payloadPath: `/releases/${version}/image.lz4`, manifest: manifestOf(pub.releases, version) };
}

/** The flasher's files as `flasher install` leaves them (their content only matters to GRUB and the VM tests). */
export function installFlasherFiles(layout: { flasherDir: string }): void {
  mkdirSync(layout.flasherDir, { recursive: true });
  writeFileSync(path.join(layout.flasherDir, 'vmlinuz'), 'kernel\n');
  writeFileSync(path.join(layout.flasherDir, 'initrd.img'), 'initrd\n');
}
