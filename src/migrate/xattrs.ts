import { run } from '../core/exec.js';
import { ExecError } from '../core/exec.js';

/**
 * Extended attributes (and with them POSIX ACLs, stored as system.posix_acl_*), read and written in
 * one batch of `getfattr` / `setfattr --restore` each: Node has no xattr API, and a process per file
 * would cost more than the whole copy. Symlinks are never dereferenced (-h).
 */

export type Xattrs = Array<[name: string, hexValue: string]>;

const BATCH = 500;

/** The xattrs of each path that has any; paths without attributes are absent from the map. */
export async function readXattrs(paths: readonly string[]): Promise<Map<string, Xattrs>> {
  const found = new Map<string, Xattrs>();
  for (let i = 0; i < paths.length; i += BATCH) {
    const batch = paths.slice(i, i + BATCH);
    let stdout: string;
    try {
      ({ stdout } = await run('getfattr', ['--absolute-names', '-h', '-d', '-m', '-', '-e', 'hex', '--', ...batch]));
    } catch (err) {
      // A filesystem without xattr support answers "Operation not supported": nothing to carry.
      if (err instanceof ExecError && /not supported/i.test(err.stderr) && !/No such file/.test(err.stderr)) {
        ({ stdout } = { stdout: err.stdout });
      } else throw err;
    }
    let current: Xattrs | undefined;
    for (const line of stdout.split('\n')) {
      if (line.startsWith('# file: ')) {
        current = [];
        found.set(unquote(line.slice('# file: '.length)), current);
      } else if (current && line.includes('=')) {
        const eq = line.indexOf('=');
        current.push([line.slice(0, eq), line.slice(eq + 1)]);
      }
    }
  }
  return found;
}

/** Set the given attributes on each path (which must exist). */
export async function writeXattrs(items: ReadonlyArray<{ path: string; attrs: Xattrs }>): Promise<void> {
  const withAttrs = items.filter((i) => i.attrs.length > 0);
  for (let i = 0; i < withAttrs.length; i += BATCH) {
    const dump = withAttrs
      .slice(i, i + BATCH)
      .map((it) => `# file: ${quote(it.path)}\n${it.attrs.map(([n, v]) => `${n}=${v}`).join('\n')}\n`)
      .join('\n');
    await run('setfattr', ['-h', '--restore=-'], { input: dump });
  }
}

/** getfattr's path quoting: backslash, control and non-ASCII bytes as \ooo. */
function quote(p: string): string {
  let out = '';
  for (const b of Buffer.from(p, 'utf8')) {
    out += b < 0x20 || b > 0x7e || b === 0x5c ? `\\${b.toString(8).padStart(3, '0')}` : String.fromCharCode(b);
  }
  return out;
}

function unquote(q: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < q.length; i++) {
    if (q[i] === '\\' && /^[0-7]{3}$/.test(q.slice(i + 1, i + 4))) {
      bytes.push(parseInt(q.slice(i + 1, i + 4), 8));
      i += 3;
    } else bytes.push(...Buffer.from(q[i] as string, 'utf8'));
  }
  return Buffer.from(bytes).toString('utf8');
}
