import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UpgradeError } from '../../src/core/errors.js';
import { log } from '../../src/core/log.js';
import { MARKER } from './busybox-image.js';

/**
 * One QEMU machine booting a raw disk, its serial console captured line by line.
 *
 * TCG only: KVM does not work on these machines (FACTS.md), and CI runners often lack it too. One VM
 * at a time (tap jobs=1): two TCG guests on two cores double every boot time and make the timeouts lie.
 *
 * QEMU is spawned directly rather than through exec.ts's run(): run() is for commands that finish and
 * are judged by their exit status, while a VM is watched while it runs and stopped by its PID.
 */

export interface VmOptions {
  disk: string;
  /** The serial console is copied here as it arrives (kept after the test for debugging). */
  logFile: string;
  /**
   * true: a guest reboot (panic=N, reboot -f) resets the machine, as on real hardware: what fallback
   * scenarios need. false: QEMU exits on reboot (-no-reboot), so a boot that should not reboot ends fast.
   */
  allowReboot: boolean;
  /** Kernel starts after which the VM is killed: a boot loop must not eat the suite's time budget. */
  maxBoots: number;
  memoryMiB?: number;
  /**
   * Boot this kernel and initrd with this command line directly (QEMU's loader), skipping BIOS and
   * GRUB: for initramfs cases that need a command line GRUB would never write. ~7 s faster per boot.
   */
  directKernel?: { kernel: string; initrd: string; append: string };
  /**
   * QEMU user networking, restricted: the guest reaches nothing but these forwards, each of which
   * connects to a port on the host's 127.0.0.1. Without it the VM has no network card at all.
   */
  guestfwd?: GuestForward[];
  /** Host 127.0.0.1:hostPort carried to the guest's guestPort (e.g. SSH into the guest); needs guestfwd's network. */
  hostfwd?: Array<{ hostPort: number; guestPort: number }>;
  /** Blobs the guest reads under /sys/firmware/qemu_fw_cfg/by_name/<name>/raw: name -> host file. */
  fwCfg?: Record<string, string>;
  /**
   * Boot with UEFI firmware (OVMF) instead of SeaBIOS: its code read-only, and this machine's own copy
   * of the variable store, which the firmware writes.
   */
  efi?: { code: string; vars: string; secureBoot: boolean };
  /** Also copy each serial console line here as it arrives (the demo streams the console to a terminal). */
  echo?: (line: string) => void;
  /**
   * A QEMU blkdebug rules file for the disk (real I/O errors the guest sees, e.g. one EIO on a write
   * to a given sector): the disk is opened through the blkdebug driver.
   */
  blkdebug?: string;
}

/** Guest connections to guestAddr:guestPort are carried to 127.0.0.1:hostPort on the host. */
export interface GuestForward {
  guestAddr: string;
  guestPort: number;
  hostPort: number;
}

/**
 * QEMU runs this once per guest connection (guestfwd=...-cmd:) with the connection on its stdin and
 * stdout. A `tcp:` chardev target would be opened once, at QEMU's start, and carry one connection only.
 */
const TCP_PIPE = fileURLToPath(new URL('./tcp-pipe.mjs', import.meta.url));

function networkArgs(forwards: GuestForward[] | undefined, inbound: Array<{ hostPort: number; guestPort: number }> = []): string[] {
  if (!forwards) return ['-nic', 'none'];
  // restrict=on: no packet leaves for the outside world or the host; only the explicit forwards work.
  // Commas inside an option value are doubled for QEMU's option parser.
  const fwd = forwards.map((f) => `,guestfwd=tcp:${f.guestAddr}:${f.guestPort}-cmd:${process.execPath} ${TCP_PIPE} ${f.hostPort}`.replace(/(?<=cmd:.*),/g, ',,'));
  // Inbound forwards listen on the host's loopback only.
  const hostfwd = inbound.map((f) => `,hostfwd=tcp:127.0.0.1:${f.hostPort}-:${f.guestPort}`);
  return ['-nic', `user,model=virtio-net-pci,restrict=on${fwd.join('')}${hostfwd.join('')}`];
}

/** One kernel start on the serial console and what followed it until the next one. */
export interface KernelBoot {
  /** The kernel command line as the kernel printed it. */
  cmdline: string;
  /** The image from upgradectl.loop=, e.g. /images/2.img. */
  image: string | undefined;
  markers: Marker[];
  /** Milliseconds from VM start to this kernel's first line. */
  startedMs: number;
  text: string;
}

export interface Marker {
  kind: string;
  fields: Record<string, string>;
  /** Everything after the kind, for free-form markers (cmdline). */
  rest: string;
  /** Milliseconds from VM start. */
  atMs: number;
}

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Why the harness stopped it, when it did. */
  killedBecause: string | undefined;
}

const KERNEL_START = /Linux version \d/;

/**
 * Lines after which the machine waits for a keyboard forever: a wait for a marker would only run into
 * its timeout, minutes later, so it fails at once and says why.
 */
const STUCK = [/Failed to boot both default and fallback entries/, /^grub rescue>/, /^grub>/];

export class Vm {
  private readonly child: ChildProcess;
  /** Bytes of the serial log already turned into lines. */
  private logOffset = 0;
  private logHandle: fs.FileHandle | undefined;
  private reader: Promise<void> = Promise.resolve();
  private readonly poller: NodeJS.Timeout;
  private readonly startedAt = performance.now();
  private readonly lines: Array<{ atMs: number; text: string }> = [];
  private partial = '';
  private stderr = '';
  private kernelStarts = 0;
  private exitInfo: VmExit | undefined;
  private killReason: string | undefined;
  private readonly exited: Promise<VmExit>;

  private constructor(readonly opts: VmOptions) {
    const args = [
      '-accel', 'tcg',
      // OVMF built for Secure Boot keeps its variables in SMM-protected flash: q35 with SMM, and the
      // flash marked secure (below). Every other run keeps the i440fx machine the timings were taken on.
      '-machine', opts.efi?.secureBoot ? 'q35,smm=on' : 'pc',
      ...(opts.efi?.secureBoot ? ['-global', 'driver=cfi.pflash01,property=secure,value=on'] : []),
      '-m', String(opts.memoryMiB ?? 768),
      // One vCPU: a second one buys ~10% under TCG (FACTS.md) and costs a host core other jobs need.
      '-smp', '1',
      '-display', 'none',
      '-monitor', 'none',
      // A file, not a pipe: the kernel's console driver waits at most ~10 ms for the UART to drain and
      // then overwrites it. With a pipe QEMU drains only when its I/O thread gets to it, and on a loaded
      // host kernel lines lost characters (seen: a UUID with 10 characters missing). A file write
      // never waits, so the log is exact; it is read back as it grows.
      '-serial', `file:${opts.logFile}`,
      // GRUB has no virtio driver but reads the disk through BIOS int13 (or OVMF's virtio block I/O
      // under UEFI); Linux uses virtio_blk.
      '-drive', `file=${opts.blkdebug ? `blkdebug:${opts.blkdebug}:` : ''}${opts.disk},format=raw,if=virtio,cache=writeback`,
      ...networkArgs(opts.guestfwd, opts.hostfwd),
      ...(opts.efi
        ? ['-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${opts.efi.code}`, '-drive', `if=pflash,format=raw,unit=1,file=${opts.efi.vars}`]
        : []),
      ...Object.entries(opts.fwCfg ?? {}).flatMap(([name, file]) => ['-fw_cfg', `name=${name},file=${file}`]),
      ...(opts.allowReboot ? [] : ['-no-reboot']),
      ...(opts.directKernel
        ? ['-kernel', opts.directKernel.kernel, '-initrd', opts.directKernel.initrd, '-append', opts.directKernel.append]
        : []),
    ];
    log.debug(`qemu: qemu-system-x86_64 ${args.join(' ')}`);
    // A previous run's log must not be read as this run's first lines before QEMU truncates it.
    rmSync(opts.logFile, { force: true });
    this.child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child.stderr?.on('data', (chunk: Buffer) => {
      this.stderr += chunk.toString('utf8');
    });
    this.poller = setInterval(() => this.readSerial(), 100);
    this.exited = new Promise((resolve) => {
      this.child.on('error', (err) => {
        this.stderr += `\n${err.message}`;
      });
      this.child.on('close', (code, signal) => {
        clearInterval(this.poller);
        // QEMU has written everything it will: read the rest, then report the exit.
        this.readSerial();
        void this.reader.then(async () => {
          this.flushPartial();
          await this.logHandle?.close();
          this.exitInfo = { code, signal, killedBecause: this.killReason };
          resolve(this.exitInfo);
        });
      });
    });
  }

  /** Queue one read of whatever the serial log gained since the last one. */
  private readSerial(): void {
    this.reader = this.reader.then(async () => {
      if (!this.logHandle) {
        try {
          this.logHandle = await fs.open(this.opts.logFile, 'r');
        } catch {
          return; // QEMU has not created it yet.
        }
      }
      const buf = Buffer.alloc(1 << 16);
      for (;;) {
        const { bytesRead } = await this.logHandle.read(buf, 0, buf.length, this.logOffset);
        if (bytesRead === 0) return;
        this.logOffset += bytesRead;
        this.onSerial(buf.subarray(0, bytesRead));
      }
    }).catch((err: unknown) => {
      // Keep the chain alive for the next read; the failure shows in every wait's error message.
      this.stderr += `\nreading ${this.opts.logFile}: ${(err as Error).message}`;
    });
  }

  static start(opts: VmOptions): Vm {
    return new Vm(opts);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exitInfo === undefined;
  }

  /** The serial console so far. */
  get serial(): string {
    return this.lines.map((l) => l.text).join('\n');
  }

  get qemuStderr(): string {
    return this.stderr;
  }

  elapsedMs(): number {
    return performance.now() - this.startedAt;
  }

  /** The kernel boots seen so far, in order. */
  boots(): KernelBoot[] {
    const boots: KernelBoot[] = [];
    let current: KernelBoot | undefined;
    for (const line of this.lines) {
      if (KERNEL_START.test(line.text)) {
        current = { cmdline: '', image: undefined, markers: [], startedMs: line.atMs, text: '' };
        boots.push(current);
      }
      if (!current) continue;
      current.text += `${line.text}\n`;
      const cmd = /Command line: (.*)$/.exec(line.text);
      if (cmd && !current.cmdline) {
        current.cmdline = cmd[1]!.trim();
        current.image = /(?:^|\s)upgradectl\.loop=(\S+)/.exec(current.cmdline)?.[1];
      }
      const marker = parseMarker(line.text, line.atMs);
      if (marker) current.markers.push(marker);
    }
    return boots;
  }

  /** Resolves with the first line matching `re` (seen before or after the call); rejects on timeout or exit. */
  async waitForLine(re: RegExp, timeoutMs: number, what = re.source): Promise<string> {
    let found: string | undefined;
    await this.waitUntil(() => (found = this.lines.find((l) => re.test(l.text))?.text) !== undefined, timeoutMs, what);
    return found!;
  }

  /**
   * Resolves when `done()` holds, checked as console lines arrive; rejects on timeout, on QEMU's exit,
   * and at once when GRUB is stuck waiting for a key.
   */
  async waitUntil(done: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    let checked = 0;
    for (;;) {
      if (done()) return;
      for (; checked < this.lines.length; checked++) {
        const text = this.lines[checked]!.text;
        if (STUCK.some((stuck) => stuck.test(text))) throw this.failure(`GRUB is stuck waiting for a key ("${text.trim()}") instead of ${what}`);
      }
      if (!this.running) {
        if (done()) return;
        throw this.failure(`QEMU exited (${this.exitInfo?.killedBecause ?? `status ${String(this.exitInfo?.code)}`}) before ${what}`);
      }
      if (performance.now() > deadline) throw this.failure(`no ${what} within ${Math.round(timeoutMs / 1000)} s`);
      await sleep(200);
    }
  }

  /** Waits for QEMU to exit by itself (guest poweroff, or reboot under -no-reboot). */
  async waitForExit(timeoutMs: number): Promise<VmExit> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
    });
    const result = await Promise.race([this.exited, timeout]);
    clearTimeout(timer);
    if (result === 'timeout') {
      await this.kill(`still running after ${Math.round(timeoutMs / 1000)} s`);
      throw this.failure(`QEMU did not exit within ${Math.round(timeoutMs / 1000)} s`);
    }
    return result;
  }

  /** Stop the VM the hard way (no shutdown: a power cut) and wait until it is gone. */
  async kill(reason: string): Promise<VmExit> {
    if (this.running && this.child.pid !== undefined) {
      this.killReason ??= reason;
      try {
        process.kill(this.child.pid, 'SIGKILL');
      } catch {
        // Already gone between the check and the kill: the close event still arrives.
      }
    }
    return this.exited;
  }

  /** An error whose message carries the end of the serial console, where the reason usually is. */
  failure(message: string): UpgradeError {
    const tail = this.lines.slice(-25).map((l) => `  | ${l.text}`).join('\n');
    const qemu = this.stderr.trim() ? `\nqemu stderr: ${this.stderr.trim()}` : '';
    return new UpgradeError('INTERNAL', `${message} (serial log: ${this.opts.logFile})\n${tail}${qemu}`);
  }

  private onSerial(chunk: Buffer): void {
    const text = this.partial + chunk.toString('latin1');
    const parts = text.split('\n');
    this.partial = parts.pop() ?? '';
    for (const part of parts) this.addLine(part);
  }

  private flushPartial(): void {
    if (this.partial) this.addLine(this.partial);
    this.partial = '';
  }

  private addLine(raw: string): void {
    // Strip CR and the ANSI sequences GRUB's serial terminal and systemd's status lines emit (CSI
    // sequences and two-byte ones like ESC M), so lines compare as plain text. The bytes were kept as
    // latin1 until the line was whole, so a UTF-8 character split across reads decodes intact here.
    // eslint-disable-next-line no-control-regex
    const clean = Buffer.from(raw, 'latin1').toString('utf8').replace(/\x1b(?:\[[0-9;?]*[A-Za-z]|[@-Z\\-_])/g, '');
    const text = clean.replace(/\r/g, '');
    this.lines.push({ atMs: this.elapsedMs(), text });
    // A terminal would show only what the last carriage return left (progress bars redraw one line).
    if (this.opts.echo) this.opts.echo(clean.split('\r').filter(Boolean).at(-1) ?? '');
    if (KERNEL_START.test(text)) {
      this.kernelStarts += 1;
      if (this.kernelStarts > this.opts.maxBoots) void this.kill(`more than ${this.opts.maxBoots} kernel boots (boot loop?)`);
    }
  }
}

export function parseMarker(line: string, atMs = 0): Marker | undefined {
  const at = line.indexOf(`${MARKER} `);
  if (at < 0) return undefined;
  const body = line.slice(at + MARKER.length + 1).trim();
  const [kind = '', ...words] = body.split(/\s+/);
  const fields: Record<string, string> = {};
  for (const w of kind.includes('=') ? [kind, ...words] : words) {
    const eq = w.indexOf('=');
    if (eq > 0) fields[w.slice(0, eq)] = w.slice(eq + 1);
  }
  return { kind: kind.includes('=') ? kind.slice(0, kind.indexOf('=')) : kind, fields, rest: body.slice(kind.length).trim(), atMs };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Where the serial logs of the last run are kept (gitignored), one file per scenario. */
export async function serialLogPath(cacheRoot: string, name: string): Promise<string> {
  const dir = path.join(cacheRoot, 'boot', 'logs');
  await fs.mkdir(dir, { recursive: true });
  return path.join(dir, `${name}.serial.log`);
}
