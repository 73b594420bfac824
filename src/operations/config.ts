import { promises as fs } from 'node:fs';
import ini from 'ini';
import { UpgradeError } from '../core/errors.js';
import type { Layout } from '../core/layout.js';
import { testSwitch } from '../core/test-switches.js';

/** `DIR/etc/upgradectl/upgradectl.conf` (INI). Every key has a default; unknown keys are kept for later sections. */
export interface Config {
  source: {
    /** s3://bucket/prefix, https://host/prefix, http://127.0.0.1/… (loopback only) or file:///dir */
    url: string | undefined;
    channel: string;
    /** S3: region, custom endpoint and path-style addressing (MinIO, s3rver, Ceph). */
    region: string | undefined;
    endpoint: string | undefined;
    forcePathStyle: boolean;
  };
  prepare: {
    /** Payload frames fetched at once. */
    parallel: number;
    retries: number;
    /** Seconds without a byte before a transfer counts as stalled and is retried. */
    stallTimeout: number;
    allowUnsigned: boolean;
    allowDowngrade: boolean;
  };
  boot: {
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
    kernelArgs: string;
    /** e.g. `ttyS0,115200`; empty for none. */
    serialConsole: string;
    menuTimeout: number;
    /** Filesystem UUID of the host partition; detected (findmnt/blkid) when unset. */
    hostUuid: string | undefined;
    /** GRUB can write grubenv (save_env) on the host filesystem; false on md RAID, LVM, LUKS, btrfs (docs/grub.md). */
    saveEnv: boolean;
    /** The command that reboots the machine (argv, split on spaces); on a test machine UPGRADECTL_REBOOT_COMMAND overrides it (loadConfig). */
    rebootCommand: string;
  };
  health: { timeout: number };
  hooks: { timeout: number };
  raw: Record<string, unknown>;
}

export async function loadConfig(layout: Layout): Promise<Config> {
  let text = '';
  try {
    text = await fs.readFile(layout.configFile, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new UpgradeError('CONFIG', `cannot read ${layout.configFile}: ${(err as Error).message}`, { cause: err });
    }
  }
  const config = parseConfig(text, layout.configFile);
  // Tests and demos point the reboot at a harmless command; only on a test machine (core/test-switches.ts).
  config.boot.rebootCommand = testSwitch(layout.host, 'UPGRADECTL_REBOOT_COMMAND') ?? config.boot.rebootCommand;
  return config;
}

export function parseConfig(text: string, file = 'upgradectl.conf'): Config {
  const raw = ini.parse(text) as Record<string, Record<string, unknown>>;
  const get = (section: string, key: string): unknown => raw[section]?.[key];
  const str = (section: string, key: string): string | undefined => {
    const v = get(section, key);
    if (v === undefined || v === '') return undefined;
    return String(v).trim();
  };
  const bool = (section: string, key: string, dflt: boolean): boolean => {
    const v = get(section, key);
    if (v === undefined || v === '') return dflt;
    if (v === true || v === false) return v;
    const s = String(v).toLowerCase();
    if (['1', 'yes', 'true', 'on'].includes(s)) return true;
    if (['0', 'no', 'false', 'off'].includes(s)) return false;
    throw badValue(file, section, key, v, 'true or false');
  };
  const int = (section: string, key: string, dflt: number, min: number, max: number): number => {
    const v = get(section, key);
    if (v === undefined || v === '') return dflt;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw badValue(file, section, key, v, `a whole number from ${min} to ${max}`);
    return n;
  };

  return {
    source: {
      url: str('source', 'url'),
      channel: str('source', 'channel') ?? 'stable',
      region: str('source', 'region'),
      endpoint: str('source', 'endpoint'),
      forcePathStyle: bool('source', 'force_path_style', false),
    },
    prepare: {
      parallel: int('prepare', 'parallel', 4, 1, 32),
      retries: int('prepare', 'retries', 5, 0, 100),
      stallTimeout: int('prepare', 'stall_timeout', 30, 1, 3600),
      allowUnsigned: bool('prepare', 'allow_unsigned', false),
      allowDowngrade: bool('prepare', 'allow_downgrade', false),
    },
    boot: {
      panicTimeout: int('boot', 'panic_timeout', 10, 1, 3600),
      trialAttempts: int('boot', 'trial_attempts', 1, 1, 3),
      defaultAttempts: int('boot', 'default_attempts', 2, 1, 5),
      kernelArgs: str('boot', 'kernel_args') ?? '',
      serialConsole: str('boot', 'serial_console') ?? '',
      menuTimeout: int('boot', 'menu_timeout', 0, 0, 600),
      hostUuid: str('boot', 'host_uuid'),
      saveEnv: bool('boot', 'save_env', true),
      rebootCommand: str('boot', 'reboot_command') ?? 'systemctl reboot',
    },
    health: { timeout: int('health', 'timeout', 300, 1, 86400) },
    hooks: { timeout: int('hooks', 'timeout', 120, 1, 86400) },
    raw,
  };
}

function badValue(file: string, section: string, key: string, value: unknown, want: string): UpgradeError {
  return new UpgradeError('CONFIG', `${file}: [${section}] ${key} = ${String(value)} is not valid`, {
    hint: `set ${key} to ${want} in the [${section}] section of ${file}`,
  });
}
