import { isVersion } from '../core/version.js';

/**
 * The whole grub.cfg, rendered from plain data (no I/O): one menu entry per image plus the logic that
 * picks the entry to boot from the GRUB environment block.
 *
 * Environment variables (grubenv) the config reads:
 *   saved_entry        the default image's entry id (upgradectl-<version>)
 *   next_entry         one-shot: the trial image; cleared with save_env BEFORE it boots, so a trial that
 *                      never comes back leaves GRUB on saved_entry at the next reset
 *   upgradectl_trial   the trial entry id, for extra attempts
 *   upgradectl_tries   extra attempts left, as a chain of literal values "2" -> "1" -> "" (GRUB has no
 *                      arithmetic; each boot rewrites the flag to the next link, then boots the trial)
 *   upgradectl_default_tries
 *                      starts of the default that its OS has not cleared yet: "" -> "1" -> ... -> "<N>",
 *                      written before the default boots. At "<N>" (or any value off the chain) GRUB boots
 *                      the previous image instead, until the OS clears the count (reconcile.ts).
 *
 * Set by the config itself, never taken from grubenv:
 *   upgradectl_trial_boot
 *                      the entry id this boot runs as a trial (one-shot or extra attempt), exported so the
 *                      menu entries see it: only that entry adds the trial kernel arguments (trialKernelArgs).
 */
export interface GrubEntry {
  version: string;
  title: string;
  /** Paths inside the image. */
  kernel: string;
  initrd: string;
  /** The release's kernel arguments (from its manifest). */
  cmdline: string;
}

/** The [boot] settings the bootloader side needs. */
export interface BootSettings {
  /** Seconds the kernel waits after a panic before it reboots (and GRUB falls back). */
  panicTimeout: number;
  /** Trial boots of a new image before GRUB falls back to the previous one (1–3). */
  trialAttempts: number;
  /**
   * Starts of the default image that may go by without the booted OS clearing GRUB's count before
   * GRUB boots the previous image instead (1–5). 2 so that one power cut during a normal boot does not
   * roll the machine back (docs/grub.md, "Boot counting of the default").
   */
  defaultAttempts: number;
  /** The operator's kernel arguments, appended to every image entry (src/core/boot-data.ts rules). */
  kernelArgs: string;
  /** e.g. `ttyS0,115200`; empty for none. */
  serialConsole: string;
  menuTimeout: number;
  /** Filesystem UUID of the host partition; detected (findmnt/blkid) when unset. */
  hostUuid: string | undefined;
  /** GRUB can write grubenv (save_env) on the host filesystem; false on md RAID, LVM, LUKS, btrfs (docs/grub.md). */
  saveEnv: boolean;
  /** Seconds a trial boot has before softdog resets it unless confirmed; 0 = off (docs/grub.md, "Trial deadline"). */
  trialDeadline: number;
}

export interface GrubConfigInput
  extends Omit<BootSettings, 'hostUuid' | 'saveEnv' | 'trialDeadline'>,
    Partial<Pick<BootSettings, 'saveEnv' | 'trialDeadline'>> {
  /** Filesystem UUID of the host partition that holds /images (resolved: detected or configured). */
  hostUuid: string;
  /** In boot-menu order; the first is also GRUB's last resort when saved_entry names nothing. */
  entries: GrubEntry[];
  /** The image GRUB falls back to when the default entry fails to load (the previous image). */
  fallbackVersion?: string;
  /**
   * The RAM flasher entry, when its files are installed (paths on the host partition). `rescue`: a
   * rescue job is installed too, so the flasher is also a fallback, in rescue mode.
   */
  flasher?: { kernel: string; initrd: string; cmdline: string; rescue?: boolean };
  /**
   * Where the flasher's files and a reflash's trial marker would be (paths on the host partition),
   * whether or not they exist now: the reboot entry boots the flasher in hold mode when all three
   * exist at boot time (renderRebootEntry). A reflash release's host partition is rendered before any
   * flasher is put into it, so the test happens in GRUB, not here.
   */
  hold?: { kernel: string; initrd: string; marker: string };
  /**
   * An adopted machine: the distribution's own menu, kept as `$prefix/distro.cfg`, comes after the
   * images, the flasher and rescue, and is the first of the fallbacks when no image loads. `isDefault`:
   * no image is the default yet (none confirmed), so the distribution is what GRUB boots when grubenv
   * names nothing.
   */
  distro?: { isDefault: boolean };
}

export const ENTRY_PREFIX = 'upgradectl-';
export const FLASHER_ENTRY_ID = 'upgradectl-flasher';
/**
 * grubenv: the nonce of the flash job written for the next boot (docs/flasher.md). GRUB hands it to the
 * flasher only when the flasher is that boot's one-shot, and clears it at that boot whatever it boots,
 * so a job can be run once and only at the boot right after it was written.
 */
export const FLASHER_NONCE_VAR = 'upgradectl_flasher_nonce';
/** The kernel argument that carries the nonce to the flasher's /init. */
export const FLASHER_ARG = 'upgradectl.flasher';
/** An adopted machine's entry that loads the distribution's kept menu (grub/distro-config.ts). */
export const DISTRO_ENTRY_ID = 'upgradectl-distro';
/** The flasher in rescue mode: GRUB's fallback when no image could be loaded (docs/flasher.md, "Rescue"). */
export const RESCUE_ENTRY_ID = 'upgradectl-rescue';
/** The kernel argument that starts the flasher in rescue mode. */
export const RESCUE_ARG = 'upgradectl.rescue=1';
/**
 * The kernel argument that starts the flasher in hold mode: the first boot of a reflashed system did
 * not confirm, and there is no old system left (docs/flasher.md, "The first boot after a flash").
 */
export const HOLD_ARG = 'upgradectl.hold=1';
/** The last entry of a full grub.cfg: reached only when no image could be loaded (see renderRebootEntry). */
export const REBOOT_ENTRY_ID = 'upgradectl-reboot';

/** grubenv: GRUB's count of starts of the default that the booted OS has not cleared. */
export const DEFAULT_TRIES_VAR = 'upgradectl_default_tries';

/**
 * Whether a count means GRUB has given up on the default: any value off the chain "", "1" … "<N-1>"
 * that the rendered config advances, so exactly what sends GRUB to its last `else`.
 */
export function defaultTriesExhausted(value: string | undefined, attempts: number): boolean {
  if (!value) return false;
  for (let n = 1; n < attempts; n++) if (value === String(n)) return false;
  return true;
}

/** softdog's soft_margin is 1–65535 s: a longer deadline could not be armed. */
export const MAX_TRIAL_DEADLINE = 65535;

/** Marks a trial boot on the kernel command line; `confirm` ends the deadline only on such a boot. */
export const TRIAL_ARG = 'upgradectl.trial=1';
/** Carries the deadline in seconds to the initramfs, which arms softdog with it. */
export const TRIAL_DEADLINE_ARG = 'upgradectl.trial_deadline';

/**
 * Kernel arguments of a trial boot, none when the deadline is off. softlockup_panic=1 turns a CPU stuck
 * in the kernel into a panic (and panic= into a reset) after ~20 s instead of the whole deadline.
 * hung_task_panic is left out on purpose: it fires after 120 s of one task in D state, which a slow or
 * busy disk reaches in a healthy boot, and the deadline already ends a boot that is really stuck.
 */
export function trialKernelArgs(deadlineSeconds: number | undefined): string[] {
  if (!deadlineSeconds) return [];
  return [TRIAL_ARG, `${TRIAL_DEADLINE_ARG}=${deadlineSeconds}`, 'softlockup_panic=1'];
}

/** Whether a config renders trial arguments: a deadline, and a one-shot GRUB can consume (save_env). */
function trialDeadlineOn(input: GrubConfigInput): boolean {
  return Boolean(input.trialDeadline) && input.saveEnv !== false;
}

export function entryId(version: string): string {
  return `${ENTRY_PREFIX}${version}`;
}

/** The version an entry id names, or undefined for ids that are not ours. */
export function versionOfEntry(id: string | undefined): string | undefined {
  if (!id || !id.startsWith(ENTRY_PREFIX) || [FLASHER_ENTRY_ID, RESCUE_ENTRY_ID, REBOOT_ENTRY_ID, DISTRO_ENTRY_ID].includes(id)) return undefined;
  return id.slice(ENTRY_PREFIX.length);
}

/** The kernel argument that names the image to loop-mount; the initramfs hook and `bootedVersion` read it. */
export function loopArg(version: string): string {
  return `upgradectl.loop=/images/${version}.img`;
}

export function renderGrubConfig(input: GrubConfigInput): string {
  validateInput(input);
  return [
    '# Generated by upgradectl (upgradectl grub-config). Do not edit: it is rewritten on every commit,',
    '# confirm and rollback. Settings live in /etc/upgradectl/upgradectl.conf, section [boot].',
    '',
    ...renderHead(input),
    '',
    ...renderSelection(input, true),
    '',
    ...input.entries.flatMap((e, i) => renderEntry(input, e, i)),
    ...renderFlasher(input),
    ...renderRescueEntry(input),
    ...renderDistroEntry(input),
    ...renderRebootEntry(input),
  ].join('\n');
}

/**
 * For an /etc/grub.d script on distributions that run update-grub: Debian's 00_header already loads
 * the environment and consumes next_entry (setting default to it and boot_once=true), so this part only
 * adds the extra-attempt chain, the fallback and the entries. Needs GRUB_DEFAULT=saved.
 */
export function renderGrubFragment(input: GrubConfigInput): string {
  validateInput(input);
  return [
    '# upgradectl entries (upgradectl grub-config --fragment)',
    ...renderSelection(input, false),
    '',
    ...input.entries.flatMap((e, i) => renderEntry(input, e, i)),
    ...renderFlasher(input),
  ].join('\n');
}

function renderHead(input: GrubConfigInput): string[] {
  const lines = [
    'insmod part_msdos',
    'insmod part_gpt',
    'insmod ext2',
    'insmod loopback',
    `search --no-floppy --fs-uuid --set=root ${input.hostUuid}`,
  ];
  const serial = parseSerial(input.serialConsole);
  if (serial) {
    lines.push(`serial --unit=${serial.unit} --speed=${serial.speed}`, 'terminal_input serial console', 'terminal_output serial console');
  }
  // EFI GRUB has no video driver loaded unless told: linux then prints "no suitable video mode found" /
  // "Booting in blind mode" and the kernel gets no framebuffer (no console on a screen). BIOS GRUB
  // hands the kernel VGA text mode by itself, and has no efi_gop, so only EFI loads them. all_video is
  // efi_gop + efi_uga + the bochs/cirrus drivers; signed GRUB has it built in (insmod is then a no-op).
  lines.push('if [ "${grub_platform}" = efi ]; then', '  insmod all_video', 'fi');
  lines.push(`set timeout=${input.menuTimeout}`);
  if (input.menuTimeout > 0) lines.push('set timeout_style=menu');
  return lines;
}

function renderSelection(input: GrubConfigInput, full: boolean): string[] {
  const saveEnv = input.saveEnv !== false;
  const save = (name: string) => (saveEnv ? [`  save_env ${name}`] : []);
  const first = input.entries[0];
  const lastResort = full && input.distro?.isDefault ? DISTRO_ENTRY_ID : first ? entryId(first.version) : undefined;
  const lines: string[] = [];
  if (full) {
    lines.push('if [ -s $prefix/grubenv ]; then', '  load_env', 'fi');
  }
  // Never taken from grubenv: it only says whether this boot runs something other than the default
  // (a trial, or the previous image after the default used up its starts).
  lines.push('set upgradectl_not_default=');
  // Which entry runs as a trial, for the trial kernel arguments; never taken from grubenv either.
  const deadline = trialDeadlineOn(input);
  const trialBoot = (from: string) => (deadline ? [`  set upgradectl_trial_boot="${from}"`] : []);
  lines.push(...renderFlasherNonce(input, full));
  if (deadline) lines.push('set upgradectl_trial_boot=');
  if (full) {
    // The one-shot: cleared and saved before booting, so a trial that hangs or panics is not retried
    // by this flag at the next reset.
    lines.push('if [ "${next_entry}" ]; then', '  set default="${next_entry}"', ...trialBoot('${next_entry}'), '  set next_entry=', ...save('next_entry'), '  set upgradectl_not_default=1');
  } else {
    // Debian's 00_header has already moved next_entry into default.
    lines.push('if [ "${boot_once}" = "true" ]; then', ...trialBoot('${default}'), '  set upgradectl_not_default=1');
  }
  // Extra trial attempts: "2" -> "1" -> "", each link rewritten before the trial boots.
  for (let left = input.trialAttempts - 1; left >= 1; left--) {
    const nextValue = left - 1 === 0 ? '' : String(left - 1);
    lines.push(
      `elif [ "\${upgradectl_tries}" = "${left}" -a "\${upgradectl_trial}" ]; then`,
      '  set default="${upgradectl_trial}"',
      ...trialBoot('${upgradectl_trial}'),
      `  set upgradectl_tries=${nextValue}`,
      ...save('upgradectl_tries'),
      '  set upgradectl_not_default=1',
    );
  }
  lines.push('elif [ "${saved_entry}" ]; then', '  set default="${saved_entry}"');
  if (lastResort) lines.push('else', `  set default="${lastResort}"`);
  lines.push('fi');
  // A menu entry runs in a new context that sees only exported variables.
  if (deadline) lines.push('export upgradectl_trial_boot');
  if (input.entries.length === 0) return lines;
  const previous = previousEntryNumber(input);
  lines.push(...renderDefaultCount(input, previous));
  // fallback: GRUB boots it when the chosen entry fails to load (missing kernel, bad loopback).
  // Upstream GRUB (Debian's too) takes only entry NUMBERS here; ids and titles work in `default` but
  // not in `fallback` (matching them is a Fedora patch): "Failed to boot both default and fallback
  // entries". So the saved default's id is mapped to its position, which this config fixes.
  // A full config ends the list with the reboot entry: GRUB tries each number in turn, and without it
  // a machine whose default and fallback both fail to load waits at GRUB's menu for a key, forever.
  // Before it, in this order: an adopted machine's distribution (a whole local system, no network
  // needed), then the flasher in rescue mode when a rescue job exists (it puts a good image back).
  const distro = full ? distroEntryNumber(input) : undefined;
  const tail = full
    ? [...(distro !== undefined ? [distro] : []), ...(hasRescue(input) ? [rescueEntryNumber(input)] : []), rebootEntryNumber(input)]
    : [];
  const fallback = (n: number) => {
    const list = [...new Set([n, ...tail])];
    return list.length > 1 ? `set fallback="${list.join(' ')}"` : `set fallback=${n}`;
  };
  const savedIds: Array<[string, number]> = input.entries.map((e, i) => [entryId(e.version), i]);
  if (distro !== undefined) savedIds.push([DISTRO_ENTRY_ID, distro]);
  // The flasher arms a reflashed system's first boot with the reboot entry as saved_entry (its hold
  // mode is the fallback): a one-shot that fails to load goes straight there, not to entry 0.
  if (full && input.hold) savedIds.push([REBOOT_ENTRY_ID, rebootEntryNumber(input)]);
  lines.push('if [ "${upgradectl_not_default}" ]; then');
  savedIds.forEach(([id, n], i) => {
    lines.push(`  ${i === 0 ? 'if' : 'elif'} [ "\${saved_entry}" = "${id}" ]; then`, `    ${fallback(n)}`);
  });
  lines.push('  else', `    ${fallback(distro !== undefined && input.distro?.isDefault ? distro : 0)}`, '  fi');
  if (previous !== undefined) lines.push('else', `  ${fallback(previous)}`);
  else if (tail.length > 0) lines.push('else', `  ${tail.length > 1 ? `set fallback="${tail.join(' ')}"` : `set fallback=${tail[0]}`}`);
  lines.push('fi');
  return lines;
}

/** The previous image's entry number: GRUB's fallback for the default, and where a failing default goes. */
function previousEntryNumber(input: GrubConfigInput): number | undefined {
  if (input.fallbackVersion === undefined) return undefined;
  const i = input.entries.findIndex((e) => e.version === input.fallbackVersion);
  return i >= 0 ? i : undefined;
}

/**
 * Boot counting of the default. GRUB's `fallback` only catches an entry that fails to LOAD; a default
 * that loads and then dies (initramfs e2fsck refuses it, kernel panic, an OS that never comes up)
 * would be started again at every reset, forever. So before a normal boot GRUB advances a count in
 * grubenv ("" -> "1" -> ... -> "<N>", literal links: GRUB has no arithmetic), and the booted default's
 * upgradectl clears it (reconcile). A count at N means N starts never came up: GRUB boots the previous
 * image instead, and keeps doing so without writing until the OS clears it. N >= 2 by default, so one
 * power cut in the middle of a good boot is not a rollback.
 *
 * Not rendered without a previous image (nothing better to boot: the default is started whatever the
 * count says, so counting would only write grubenv at every boot) nor without save_env (GRUB could
 * not record a start).
 */
function renderDefaultCount(input: GrubConfigInput, previous: number | undefined): string[] {
  if (previous === undefined || input.saveEnv === false) return [];
  const v = `\${${DEFAULT_TRIES_VAR}}`;
  const lines = [
    `# Boot counting of the default (docs/grub.md): GRUB counts starts, the booted OS clears the count.`,
    'if [ -z "${upgradectl_not_default}" ]; then',
  ];
  for (let done = 0; done < input.defaultAttempts; done++) {
    lines.push(
      done === 0 ? `  if [ -z "${v}" ]; then` : `  elif [ "${v}" = "${done}" ]; then`,
      `    set ${DEFAULT_TRIES_VAR}=${done + 1}`,
      `    save_env ${DEFAULT_TRIES_VAR}`,
    );
  }
  lines.push(
    '  else',
    // Started N times and never cleared: the default does not come up. The roles swap, as on a
    // trial boot: the previous image boots, and the default is its fallback (upgradectl_not_default).
    `    set default=${previous}`,
    '    set upgradectl_not_default=1',
    '  fi',
    'fi',
  );
  return lines;
}

function renderEntry(input: GrubConfigInput, entry: GrubEntry, index: number): string[] {
  // A distinct loop device name per entry: after a failed entry GRUB falls back to the next one, and
  // reusing a name fails with "device name already exists" (FACTS.md).
  const loop = `ucl${index}`;
  const serial = parseSerial(input.serialConsole);
  // Trial arguments come right after panic=, so the release's and the operator's arguments can
  // override softlockup_panic (the kernel keeps the last value).
  const args = (trial: string[]) => [
    `root=UUID=${input.hostUuid}`,
    loopArg(entry.version),
    'ro',
    `panic=${input.panicTimeout}`,
    ...trial,
    ...splitArgs(entry.cmdline),
    ...splitArgs(input.kernelArgs),
    ...(serial ? [`console=tty0`, `console=${input.serialConsole}`] : []),
  ];
  const linux = (indent: string, trial: string[]) => `${indent}linux (${loop})${imagePath(entry.kernel)} ${args(trial).map(grubQuote).join(' ')}`;
  const id = entryId(entry.version);
  // Two literal linux lines rather than a variable spliced into one: what each boot gets is readable
  // here and does not depend on GRUB's word splitting. Only the entry chosen as the trial gets the
  // arguments; the same image booted as the default, or as the fallback of a trial, gets none.
  const kernel = trialDeadlineOn(input)
    ? [`  if [ "\${upgradectl_trial_boot}" = ${grubQuote(id)} ]; then`, linux('    ', trialKernelArgs(input.trialDeadline)), '  else', linux('    ', []), '  fi']
    : [linux('  ', [])];
  return [
    `menuentry ${grubQuote(entry.title)} --id ${grubQuote(id)} {`,
    `  search --no-floppy --fs-uuid --set=root ${input.hostUuid}`,
    `  loopback ${loop} /images/${entry.version}.img`,
    ...kernel,
    `  initrd (${loop})${imagePath(entry.initrd)}`,
    '}',
    '',
  ];
}

/**
 * The flash job's nonce, read before the one-shot is cleared: it reaches the flasher only when the
 * flasher is this boot's one-shot, and it is cleared (saved) at this boot whatever boots, so a job left
 * on disk is stale from the next boot on. Not rendered without the flasher or without save_env (GRUB
 * could not consume it; reflash refuses to run there).
 */
function renderFlasherNonce(input: GrubConfigInput, full: boolean): string[] {
  if (!input.flasher || input.saveEnv === false) return [];
  const armed = full ? `[ "\${next_entry}" = ${FLASHER_ENTRY_ID} ]` : `[ "\${boot_once}" = "true" -a "\${default}" = ${FLASHER_ENTRY_ID} ]`;
  return [
    'set upgradectl_flasher_boot=',
    `if [ "\${${FLASHER_NONCE_VAR}}" ]; then`,
    `  if ${armed}; then`,
    `    set upgradectl_flasher_boot="\${${FLASHER_NONCE_VAR}}"`,
    '  fi',
    `  set ${FLASHER_NONCE_VAR}=`,
    `  save_env ${FLASHER_NONCE_VAR}`,
    'fi',
    // A menu entry runs in a new context that sees only exported variables.
    'export upgradectl_flasher_boot',
  ];
}

/**
 * The kernel words of the flasher's three entries (flash, rescue, hold), quoted for GRUB: its mode's
 * words between the host partition's UUID (the flasher finds its job there by UUID, as GRUB does) and
 * the machine's own kernel arguments and console.
 */
function flasherKernelWords(input: GrubConfigInput, mode: string[]): string[] {
  const serial = parseSerial(input.serialConsole);
  return [
    `panic=${input.panicTimeout}`,
    `upgradectl.host=${input.hostUuid}`,
    ...mode,
    ...splitArgs(input.kernelArgs),
    ...(serial ? ['console=tty0', `console=${input.serialConsole}`] : []),
  ].map(grubQuote);
}

function renderFlasher(input: GrubConfigInput): string[] {
  const f = input.flasher;
  if (!f) return [];
  const words = flasherKernelWords(input, splitArgs(f.cmdline));
  // The one variable spliced into a kernel line: the nonce is a fresh random value per job, so it cannot
  // be a literal of this config. Empty when the flasher is booted by hand: the flasher then runs no job.
  words.push(`"${FLASHER_ARG}=\${upgradectl_flasher_boot}"`);
  return [
    `menuentry 'upgradectl RAM flasher' --id ${FLASHER_ENTRY_ID} {`,
    `  search --no-floppy --fs-uuid --set=root ${input.hostUuid}`,
    `  linux ${imagePath(f.kernel)} ${words.join(' ')}`,
    `  initrd ${imagePath(f.initrd)}`,
    '}',
    '',
  ];
}

const hasRescue = (input: GrubConfigInput) => Boolean(input.flasher?.rescue);

/** The rescue entry comes right after the flasher's. */
function rescueEntryNumber(input: GrubConfigInput): number {
  return input.entries.length + 1;
}

/** The distribution's kept menu comes after the images, the flasher and rescue (adopted machines only). */
function distroEntryNumber(input: GrubConfigInput): number | undefined {
  return input.distro ? input.entries.length + (input.flasher ? 1 : 0) + (hasRescue(input) ? 1 : 0) : undefined;
}

/** The reboot entry comes after the images, the flasher, rescue and the distribution's menu. */
function rebootEntryNumber(input: GrubConfigInput): number {
  return input.entries.length + (input.flasher ? 1 : 0) + (hasRescue(input) ? 1 : 0) + (input.distro ? 1 : 0);
}

/**
 * The flasher in rescue mode (docs/flasher.md, "Rescue"): reached only through `fallback`, when neither
 * the default nor the previous image could be loaded. It fetches the release named by the rescue job
 * (the current image's, verified when it was prepared) into /images and reboots into it; when it
 * cannot, it stays up and retries, so it never becomes a reboot loop. No nonce: the rescue job is valid
 * for any boot that gets here, and it only puts back the image GRUB already has an entry for.
 */
function renderRescueEntry(input: GrubConfigInput): string[] {
  const f = input.flasher;
  if (!f?.rescue || input.entries.length === 0) return [];
  const words = flasherKernelWords(input, [RESCUE_ARG, ...splitArgs(f.cmdline)]);
  return [
    `menuentry 'upgradectl rescue: no image could be loaded, re-download the current release' --id ${RESCUE_ENTRY_ID} {`,
    `  echo 'upgradectl: no image could be loaded; starting the rescue flasher'`,
    `  search --no-floppy --fs-uuid --set=root ${input.hostUuid}`,
    `  linux ${imagePath(f.kernel)} ${words.join(' ')}`,
    `  initrd ${imagePath(f.initrd)}`,
    '}',
    '',
  ];
}

/**
 * The old system of an adopted machine: its own menu, as update-grub last wrote it, loaded from where
 * upgradectl kept it. `$prefix` is GRUB's own directory, where grub.cfg and grubenv are. The kept menu
 * runs its own selection (its GRUB_DEFAULT, its timeout); a missing file fails the entry, and GRUB
 * goes on to the next fallback.
 */
function renderDistroEntry(input: GrubConfigInput): string[] {
  if (!input.distro || input.entries.length === 0) return [];
  return [
    `menuentry 'The system installed before upgradectl (its own boot menu)' --id ${DISTRO_ENTRY_ID} {`,
    '  configfile "${prefix}/distro.cfg"',
    '}',
    '',
  ];
}

/**
 * The end of every fallback list of a full config. With no image GRUB can load (the only image gone or
 * unreadable, no previous one), GRUB would print "Failed to boot both default and fallback entries"
 * and wait for a key: a machine in a rack stays there until someone walks up to it. This entry says
 * what happened on the console, waits panic_timeout seconds (the same pause a failed kernel gets, so
 * the console can be read or captured), and resets: a disk that comes back (a slow SAN LUN, a cable)
 * or firmware that boots something else (PXE, the next disk) gets its chance.
 */
function renderRebootEntry(input: GrubConfigInput): string[] {
  if (input.entries.length === 0) return [];
  return [
    `menuentry 'upgradectl: no image could be booted, rebooting' --id ${REBOOT_ENTRY_ID} {`,
    ...renderHoldBranch(input),
    // Lines under 80 columns: a serial console wraps longer ones, and log searches miss the wrapped text.
    `  echo 'upgradectl: no image could be loaded from the host partition'`,
    `  echo 'upgradectl: UUID=${input.hostUuid}; rebooting in ${input.panicTimeout} s'`,
    `  echo 'upgradectl: from a rescue system: upgradectl --root <mounted root> doctor'`,
    `  sleep ${input.panicTimeout}`,
    '  reboot',
    '}',
    '',
  ];
}

/**
 * The first boot of a reflashed system did not confirm (docs/flasher.md, "The first boot after a flash"):
 * the flasher left its files and a trial marker on the new host partition and made this entry GRUB's
 * saved_entry, so a trial that fails to load, panics, hangs or is not confirmed ends here. There is no
 * old system to reset into: instead of rebooting, boot the flasher in hold mode (network, SSH, a
 * console message every minute, never a reboot). Tested when GRUB runs: the files appear after this
 * config was rendered. A failed `linux` or `initrd` falls through to the reboot below.
 */
function renderHoldBranch(input: GrubConfigInput): string[] {
  const h = input.hold;
  if (!h) return [];
  const words = flasherKernelWords(input, [HOLD_ARG]);
  const [kernel, initrd, marker] = [h.kernel, h.initrd, h.marker].map(imagePath);
  return [
    `  search --no-floppy --fs-uuid --set=root ${input.hostUuid}`,
    `  if [ -f ${marker} -a -f ${kernel} -a -f ${initrd} ]; then`,
    `    echo 'upgradectl: the reflashed system did not confirm its first boot'`,
    `    echo 'upgradectl: starting the flasher in hold mode (no reboot)'`,
    `    linux ${kernel} ${words.join(' ')}`,
    `    initrd ${initrd}`,
    '    boot',
    '  fi',
  ];
}

/** Quote a word for GRUB's shell-like parser: bare when it is plain, else single quotes as in sh. */
export function grubQuote(word: string): string {
  if (/^[A-Za-z0-9_.,:=/+@%~-]+$/.test(word)) return word;
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/** Kernel-command-line words: whitespace separates, double quotes group (as the kernel parses them). */
function splitArgs(args: string): string[] {
  return args.match(/(?:[^\s"]+|"[^"]*")+/g) ?? [];
}

function imagePath(p: string): string {
  return p.startsWith('/') ? p : `/${p}`;
}

function parseSerial(spec: string): { unit: number; speed: number } | undefined {
  if (!spec) return undefined;
  const m = /^ttyS(\d+)(?:,(\d+))?/.exec(spec);
  if (!m) return undefined;
  return { unit: Number(m[1]), speed: Number(m[2] ?? 115200) };
}

const UUID_RE = /^[0-9A-Fa-f-]{4,64}$/;
const PATH_RE = /^\/?[A-Za-z0-9._+~/-]+$/;

/** Names that end up unquoted in GRUB commands must be plain; anything else is a bug or an attack. */
function validateInput(input: GrubConfigInput): void {
  const bad = (what: string) => {
    throw new Error(`renderGrubConfig: ${what}`);
  };
  if (!UUID_RE.test(input.hostUuid)) bad(`host UUID '${input.hostUuid}' is not a filesystem UUID`);
  if (!Number.isInteger(input.trialAttempts) || input.trialAttempts < 1 || input.trialAttempts > 3) bad('trialAttempts must be 1–3');
  if (!Number.isInteger(input.defaultAttempts) || input.defaultAttempts < 1 || input.defaultAttempts > 5) bad('defaultAttempts must be 1–5');
  if (!Number.isInteger(input.panicTimeout) || input.panicTimeout < 1) bad('panicTimeout must be a positive whole number');
  if (!Number.isInteger(input.menuTimeout) || input.menuTimeout < 0) bad('menuTimeout must be a whole number ≥ 0');
  const deadline = input.trialDeadline ?? 0;
  if (!Number.isInteger(deadline) || deadline < 0 || deadline > MAX_TRIAL_DEADLINE) bad(`trialDeadline must be 0 (off) or 1–${MAX_TRIAL_DEADLINE} seconds`);
  if (input.serialConsole && !parseSerial(input.serialConsole)) bad(`serial console '${input.serialConsole}' is not ttySN[,speed]`);
  const seen = new Set<string>();
  for (const e of input.entries) {
    if (!isVersion(e.version)) bad(`version '${e.version}' is not a valid version`);
    if (seen.has(e.version)) bad(`version ${e.version} appears twice`);
    seen.add(e.version);
    if (!PATH_RE.test(e.kernel) || !PATH_RE.test(e.initrd)) bad(`kernel or initrd path of ${e.version} is not a plain path`);
  }
  if (input.fallbackVersion !== undefined && !isVersion(input.fallbackVersion)) bad('fallbackVersion is not a valid version');
  if (input.flasher && (!PATH_RE.test(input.flasher.kernel) || !PATH_RE.test(input.flasher.initrd))) bad('flasher paths are not plain');
  if (input.hold && ![input.hold.kernel, input.hold.initrd, input.hold.marker].every((p) => PATH_RE.test(p))) bad('hold paths are not plain');
}
