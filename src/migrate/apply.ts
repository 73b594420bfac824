import { randomBytes } from 'node:crypto';
import { promises as fs, constants as C } from 'node:fs';
import path from 'node:path';
import type { Plan, PlanItem } from './plan.js';
import { readXattrs, writeXattrs } from './xattrs.js';

/**
 * Carry out a checked plan inside the mounted image. Every file is written under a temporary name in
 * its final directory, created 0600 so a secret is never readable by others even for a moment, given
 * the machine's owner, mode and times, then renamed over the image's: a symlink of the image at the
 * final name is replaced, never written through. Directories get their metadata last, deepest first,
 * because creating their entries changes their mtime.
 */

/** Which file a failure happened on, so that the error can name it. */
export class ApplyError extends Error {
  override name = 'ApplyError';
  constructor(
    readonly path: string,
    readonly errno: string | undefined,
    message: string,
    cause: unknown,
  ) {
    super(message, { cause });
  }
}

const COPY_CHUNK = 1024 * 1024;

export async function applyPlan(plan: Plan, imageRoot: string): Promise<void> {
  const dest = (it: { destRel: string }) => path.join(imageRoot, it.destRel);
  const step = async (p: string, fn: () => Promise<void>) => {
    try {
      await fn();
    } catch (err) {
      if (err instanceof ApplyError) throw err;
      const e = err as NodeJS.ErrnoException;
      throw new ApplyError(p, e.code, `${p}: ${e.message}`, err);
    }
  };

  const attrs = await readXattrs(plan.items.map((it) => it.srcAbs));

  for (const it of plan.items) {
    await step(it.path, async () => {
      if (it.kind === 'dir') {
        if (it.action === 'create') await fs.mkdir(dest(it), { mode: 0o700 });
      } else if (it.kind === 'symlink') {
        await placeSymlink(it, dest(it));
      } else {
        await placeFile(it, dest(it));
      }
    });
  }

  for (const w of plan.accounts?.writes ?? []) {
    await step(w.path, () => writeReplacing(path.join(imageRoot, w.destRel), w.text, w.uid, w.gid, w.mode));
  }

  await step('extended attributes', () =>
    writeXattrs(plan.items.flatMap((it) => (attrs.has(it.srcAbs) ? [{ path: dest(it), attrs: attrs.get(it.srcAbs) ?? [] }] : []))),
  );

  const dirs = plan.items.filter((it) => it.kind === 'dir').reverse();
  for (const it of dirs) {
    await step(it.path, async () => {
      await fs.lchown(dest(it), it.uid, it.gid);
      await fs.chmod(dest(it), it.permBits);
      await fs.utimes(dest(it), it.atimeS, it.mtimeS);
    });
  }
}

function tempBeside(file: string): string {
  return path.join(path.dirname(file), `.upgradectl-migrate.${randomBytes(6).toString('hex')}`);
}

async function placeFile(it: PlanItem, to: string): Promise<void> {
  // O_NOFOLLOW + the identity check: the running system may have changed the path since the plan.
  const src = await fs.open(it.srcAbs, C.O_RDONLY | C.O_NOFOLLOW | noAtime());
  const tmp = tempBeside(to);
  try {
    const st = await src.stat({ bigint: true });
    if (!st.isFile() || st.ino !== it.ino || st.dev !== it.dev) {
      throw new ApplyError(it.path, undefined, `${it.srcAbs} changed on this machine while it was being migrated`, null);
    }
    const out = await fs.open(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
    try {
      const buf = Buffer.allocUnsafe(COPY_CHUNK);
      for (;;) {
        const { bytesRead } = await src.read(buf, 0, COPY_CHUNK, null);
        if (bytesRead === 0) break;
        let off = 0;
        while (off < bytesRead) off += (await out.write(buf, off, bytesRead - off)).bytesWritten;
      }
      // chown clears set-id bits, so the mode comes after it.
      await out.chown(it.uid, it.gid);
      await out.chmod(it.permBits);
      await out.utimes(it.atimeS, it.mtimeS);
    } finally {
      await out.close();
    }
    await fs.rename(tmp, to);
  } catch (err) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  } finally {
    await src.close();
  }
}

async function placeSymlink(it: PlanItem, to: string): Promise<void> {
  const tmp = tempBeside(to);
  await fs.symlink(it.target ?? '', tmp);
  try {
    await fs.lchown(tmp, it.uid, it.gid);
    await fs.lutimes(tmp, it.atimeS, it.mtimeS);
    await fs.rename(tmp, to);
  } catch (err) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
}

/** Replace an account file of the image, keeping the owner and mode the image gave it (shadow: root:shadow 0640). */
async function writeReplacing(file: string, text: string, uid: number, gid: number, mode: number): Promise<void> {
  const tmp = tempBeside(file);
  const out = await fs.open(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
  try {
    await out.writeFile(text);
    await out.chown(uid, gid);
    await out.chmod(mode);
    await out.close();
    await fs.rename(tmp, file);
  } catch (err) {
    await out.close().catch(() => undefined);
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
}

/** O_NOATIME keeps reading the running system from touching its atimes; only the owner or root may use it. */
function noAtime(): number {
  return process.getuid?.() === 0 ? (C.O_NOATIME ?? 0) : 0;
}
