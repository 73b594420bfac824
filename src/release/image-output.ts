import { promises as fs, type Stats } from 'node:fs';
import path from 'node:path';
import { UpgradeError, errnoOf } from '../core/errors.js';
import { ExecError, run } from '../core/exec.js';
import { log } from '../core/log.js';

/**
 * Where `image build` may write. Never inside the tree it packs (mke2fs -d would pack its own output
 * as it grows); never over an image in use — the booted one (`protect`) or any file a loop device is
 * backed by (a mounted image, the running root) — not even with --force, because replacing it under a
 * running system corrupts what is running; and not over any other existing file without --force.
 */
export async function checkImageOutput(rootfs: string, out: string, opts: { force?: boolean; protect?: string[] }): Promise<void> {
  const tree = await fs.realpath(rootfs);
  const outDir = await fs.realpath(path.dirname(out)).catch((err: unknown) => {
    throw new UpgradeError('USAGE', `cannot write ${out}: ${(err as Error).message}`, { cause: err, hint: 'create its directory first' });
  });
  const rel = path.relative(tree, outDir);
  if (rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel))) {
    throw new UpgradeError('USAGE', `output ${out} is inside the tree being imaged (${tree})`, {
      hint: 'write the image outside ROOTFS_DIR, e.g. next to it',
    });
  }
  let st: Stats;
  try {
    st = await fs.stat(out);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return;
    throw err;
  }
  for (const p of opts.protect ?? []) {
    const other = await fs.stat(p).catch(() => undefined);
    if (other && other.dev === st.dev && other.ino === st.ino) {
      throw new UpgradeError('USAGE', `${out} is the image this machine is running (${p})`, {
        hint: 'overwriting it would corrupt the running system: write the new image under another name (--force does not change this)',
      });
    }
  }
  const loop = await loopDeviceBackedBy(st);
  if (loop) {
    throw new UpgradeError('USAGE', `${out} is in use: ${loop} is attached to it`, {
      hint: `a mounted or booted image must not be replaced: write another file, or detach it first (umount, losetup -d ${loop}); --force does not change this`,
    });
  }
  if (!opts.force) {
    throw new UpgradeError('USAGE', `${out} already exists`, { hint: 'choose another OUT.img, or pass --force to replace it' });
  }
}

/** The loop device whose backing file is this inode, by device and inode number (paths differ per namespace). */
async function loopDeviceBackedBy(st: Stats): Promise<string | undefined> {
  let stdout: string;
  try {
    ({ stdout } = await run('losetup', ['--list', '--noheadings', '--raw', '--output', 'NAME,BACK-INO,BACK-MAJ:MIN']));
  } catch (err) {
    // No losetup (a build host without util-linux): no loop device this program set up can exist.
    if (!(err instanceof ExecError && errnoOf(err.cause) === 'ENOENT')) throw err;
    log.debug('losetup is not installed; not checking loop devices');
    return undefined;
  }
  const major = Number((BigInt(st.dev) >> 8n) & 0xfffn) | Number((BigInt(st.dev) >> 32n) & ~0xfffn);
  const minor = Number(BigInt(st.dev) & 0xffn) | Number((BigInt(st.dev) >> 12n) & ~0xffn);
  for (const line of stdout.split('\n')) {
    const [name, ino, majmin] = line.trim().split(/\s+/);
    if (name && Number(ino) === st.ino && majmin === `${major}:${minor}`) return name;
  }
  return undefined;
}
