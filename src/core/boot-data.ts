import path from 'node:path';

/**
 * The one definition of valid boot data: the kernel and initrd paths a release names inside its image,
 * and the kernel arguments a release (`boot.cmdline`) or the operator (`[boot] kernel_args`) adds to
 * every GRUB entry. Publish, manifest validation and the config all check against it, so a value that
 * passes publish cannot fail later at commit, where GRUB's renderer would refuse it as an internal error.
 *
 * The functions return the problem as text (or undefined): each caller wraps it in its own error with
 * its own hint, because the fix differs (re-publish, edit the config, pass another --kernel).
 */

/**
 * GRUB loads these from `(loop)PATH` unquoted: absolute, already normalised (no `.`/`..`/empty segments,
 * so what is checked is what GRUB opens), and of an alphabet that needs no quoting in grub.cfg.
 */
const BOOT_PATH_RE = /^(\/[A-Za-z0-9._+~-]+)+$/;

export function bootPathProblem(p: unknown): string | undefined {
  if (typeof p !== 'string' || p === '') return 'it is empty';
  if (!p.startsWith('/')) return `'${p}' is not absolute (write /${p})`;
  if (p.length > 255) return `'${p.slice(0, 40)}…' is longer than 255 characters`;
  if (path.posix.normalize(p) !== p || p.endsWith('/')) {
    return `'${p}' is not a normalised path (no ., .. or // segments)`;
  }
  if (!BOOT_PATH_RE.test(p)) return `'${p}' has characters other than letters, digits and . _ + ~ - /`;
  return undefined;
}

/**
 * Parameters that are upgradectl's boot contract (DESIGN.md §5, §6): which host partition (`root=`),
 * which image (`upgradectl.loop=`, and Ubuntu's `loop=` that its initramfs would act on instead), and
 * `panic=` whose timeout is what turns a failed trial into a fallback (`panic=0` never reboots). The
 * kernel takes the last occurrence, and extra arguments come after ours: allowing them here would let a
 * release or a config line boot another image or disable the fallback. Of upgradectl's own parameters
 * only `upgradectl.ro` (boot the image immutable, docs/initramfs.md) is the operator's to set; the
 * trial's (`upgradectl.trial`, `upgradectl.trial_deadline`) and the flasher's are GRUB's alone.
 */
const RESERVED = /^(root|loop|panic)$|^upgradectl\.(?!ro$)/;

/** Kernel command-line words, split as the kernel does: whitespace separates, double quotes group. */
export function splitKernelArgs(args: string): string[] {
  return args.match(/(?:[^\s"]+|"[^"]*")+/g) ?? [];
}

export function kernelArgsProblem(args: unknown): string | undefined {
  if (typeof args !== 'string') return 'it is not text';
  // A newline or another control character would end the GRUB `linux` line and start a new command.
  if (/[\x00-\x1f\x7f]/.test(args)) return 'it contains a control character (newline, tab, …)';
  if ((args.match(/"/g) ?? []).length % 2) return 'it has an unbalanced double quote';
  for (const word of splitKernelArgs(args)) {
    // The kernel strips quotes before it matches a name: "root=/dev/sda" is root=.
    const name = word.replace(/"/g, '').split('=')[0]!;
    if (RESERVED.test(name)) return `'${word}' overrides ${name}=, which upgradectl sets itself to boot and fall back safely`;
  }
  return undefined;
}
