import { promises as fs, readFileSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import ini from 'ini';
import { UpgradeError } from '../core/errors.js';
import { checkIniLines, IniLineError, type IniLines, type IniSchema } from '../core/ini-lines.js';
import type { Layout } from '../core/layout.js';
import type { BootSettings } from '../grub/render.js';
import { kernelArgsProblem } from '../core/boot-data.js';
import { isVersion } from '../core/version.js';
import { parseSize } from '../core/size.js';
import { isWindow } from '../core/commit-window.js';
import { testSwitch } from '../core/test-switches.js';
import { isMac, parseCidr4 } from '../flasher/job.js';

import { MAX_TRIAL_DEADLINE } from '../grub/render.js';

/**
 * `DIR/etc/upgradectl/upgradectl.conf` (INI). Every key has a default. Unknown sections and keys are
 * refused with the nearest known one: a typo silently ignored would leave a default in force.
 */
export interface Config {
  source: {
    /** s3://bucket/prefix, https://host/prefix, http://127.0.0.1/… (loopback only) or file:///dir */
    url: string | undefined;
    channel: string;
    /** Operator's version floor (RAUC min-bundle-version, sysupdate MinVersion=); a signed channel may raise it. */
    minVersion: string | undefined;
    /** S3: region, custom endpoint and path-style addressing (MinIO, s3rver, Ceph). */
    region: string | undefined;
    endpoint: string | undefined;
    forcePathStyle: boolean;
    /** PEM file (as the machine sees it) of the CAs that sign the release server's certificate; instead of the system's. */
    caFile: string | undefined;
  };
  prepare: {
    /** Payload frames fetched at once. */
    parallel: number;
    retries: number;
    /** Seconds without a byte before a transfer counts as stalled and is retried. */
    stallTimeout: number;
    allowUnsigned: boolean;
    allowDowngrade: boolean;
    /** Bytes per second the payload download may use (0: no limit); `20M` in the file. */
    maxRate: number;
    /**
     * Bytes one ranged GET may carry, several frames in one request (0: the source's choice, S3 16 MiB,
     * HTTP(S) one frame); `16M` in the file. Larger: fewer requests; smaller: less lost to a kill.
     */
    requestSize: number;
  };
  /** The resident service (upgradectl daemon). */
  daemon: {
    /** Seconds between checks of the channel for a new release (±20 % jitter). */
    checkInterval: number;
    /** The first check after the service starts waits a random part of this many seconds. */
    startupDelay: number;
  };
  window: {
    /** `HH:MM-HH:MM` local time in which the daemon may commit and reboot, or `never`. */
    commit: string;
  };
  metrics: {
    /** node_exporter textfile collector file, under the root; empty: none. */
    textfile: string;
  };
  /** [boot]: what GRUB gets (src/grub/render.ts BootSettings), and how the machine reboots. */
  boot: BootSettings & {
    /** The command that reboots the machine (argv, split on spaces); on a test machine UPGRADECTL_REBOOT_COMMAND overrides it (loadConfig). */
    rebootCommand: string;
  };
  health: { timeout: number };
  hooks: { timeout: number };
  /** The RAM flasher (docs/flasher.md). */
  flasher: {
    /**
     * http(s) prefix the flasher downloads the release from: the same releases as [source] url, reached
     * without an SDK (busybox wget). Unset: [source] url when that is http(s).
     */
    url: string | undefined;
    /**
     * The flasher's network: `auto` copies the running system's static IPv4 set-up when its default
     * route's address is static (no lease), else DHCP; `dhcp`; `static` with `address` (CIDR),
     * `gateway`, `dns` and optionally `mac` given here (src/operations/flasher-network.ts).
     */
    network: 'auto' | 'dhcp' | 'static';
    address: string | undefined;
    gateway: string | undefined;
    dns: string[];
    mac: string | undefined;
    /**
     * Carry the machine's own files (the migration whitelist) across a reflash (src/operations/kept-files.ts).
     * Off: the reflashed system is the release exactly as published (a factory reset).
     */
    keep: boolean;
  };
  /** Remote check-in over Eclipse hawkBit's DDI API (src/daemon/ddi/); off while `url` is unset. */
  hawkbit: {
    url: string | undefined;
    tenant: string;
    /** Defaults to the machine-id (resolved by the daemon, which reads the machine). */
    controllerId: string | undefined;
    /** Root-only file holding the TargetToken or GatewayToken. */
    tokenFile: string | undefined;
    tokenKind: 'target' | 'gateway';
    caFile: string | undefined;
    certFile: string | undefined;
    keyFile: string | undefined;
    /**
     * An action that waits for this machine's consent (hawkBit's confirmation flow): `auto` confirms
     * it (what is installed is still decided by the signed manifest and keys.d); `server` leaves it
     * waiting until it is confirmed on the server's side (Management API auto-confirm).
     */
    confirm: 'auto' | 'server';
  };
}

/** Every section and key a config may hold (the file's keys, as written). */
export const CONFIG_SCHEMA: IniSchema = {
  source: ['url', 'channel', 'min_version', 'region', 'endpoint', 'force_path_style', 'ca_file'],
  prepare: ['parallel', 'retries', 'stall_timeout', 'allow_unsigned', 'allow_downgrade', 'max_rate', 'request_size'],
  daemon: ['check_interval', 'startup_delay'],
  window: ['commit'],
  metrics: ['textfile'],
  boot: ['panic_timeout', 'trial_attempts', 'default_attempts', 'kernel_args', 'serial_console', 'menu_timeout', 'host_uuid', 'save_env', 'reboot_command', 'trial_deadline'],
  health: ['timeout'],
  hooks: ['timeout'],
  flasher: ['url', 'network', 'address', 'gateway', 'dns', 'mac', 'keep'],
  hawkbit: ['url', 'tenant', 'controller_id', 'token_file', 'token_kind', 'ca_file', 'cert_file', 'key_file', 'confirm'],
};

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

/**
 * A file named by `[section] key` (certificates and the like, not secrets: see readSecret), read at
 * `where` (under --root); unreadable is a CONFIG error naming the key, with `hint` or "check it".
 */
export function readConfiguredFile(where: string, section: string, key: string, hint = `check [${section}] ${key}`): string {
  try {
    return readFileSync(where, 'utf8');
  } catch (err) {
    throw new UpgradeError('CONFIG', `cannot read [${section}] ${key} ${where}: ${(err as Error).message}`, { cause: err, hint });
  }
}

function checkLines(text: string, file: string): IniLines {
  try {
    return checkIniLines(text, CONFIG_SCHEMA);
  } catch (err) {
    if (!(err instanceof IniLineError)) throw err;
    throw new UpgradeError('CONFIG', `${file}:${err.line}: ${err.what}`, { hint: err.hint });
  }
}

export function parseConfig(text: string, file = 'upgradectl.conf'): Config {
  const lines = checkLines(text, file);
  // Only known sections and keys are left (checked above), so lookups below never reach a prototype.
  const raw = ini.parse(text) as Record<string, Record<string, unknown>>;
  const badValue = (section: string, key: string, value: unknown, want: string): UpgradeError => {
    const at = `${file}:${lines.lineOf(section, key) ?? '?'}`;
    return new UpgradeError('CONFIG', `${at}: [${section}] ${key} = ${String(value)} is not valid`, {
      hint: `set ${key} to ${want} in the [${section}] section of ${file}`,
    });
  };
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
    throw badValue(section, key, v, 'true or false');
  };
  const int = (section: string, key: string, dflt: number, min: number, max: number): number => {
    const v = get(section, key);
    if (v === undefined || v === '') return dflt;
    // Plain decimal only: Number() would also take 0x10, 1e1 and whitespace.
    const n = /^\d{1,15}$/.test(String(v).trim()) ? Number(String(v).trim()) : NaN;
    if (!Number.isInteger(n) || n < min || n > max) throw badValue(section, key, v, `a whole number from ${min} to ${max}`);
    return n;
  };
  const size = (section: string, key: string, dflt: number): number => {
    const v = str(section, key);
    if (v === undefined || v === '0') return v === '0' ? 0 : dflt;
    try {
      return parseSize(v, `[${section}] ${key}`);
    } catch {
      throw badValue(section, key, v, 'a size in bytes, or with K, M, G (e.g. 20M), or 0 for no limit');
    }
  };
  // Seconds, or a whole number of minutes or hours (`15m`); a unit-less value is seconds.
  const duration = (section: string, key: string, dflt: number, min: number, max: number): number => {
    const v = get(section, key);
    if (v === undefined || v === '') return dflt;
    const m = /^(\d{1,9})\s*(s|m|min|h)?$/.exec(String(v).trim());
    const n = m ? Number(m[1]) * (m[2] === 'h' ? 3600 : m[2] === 'm' || m[2] === 'min' ? 60 : 1) : NaN;
    if (!(n >= min && n <= max)) throw badValue(section, key, v, `seconds from ${min} to ${max}, or with a unit: 900, 900s, 15m, 1h`);
    return n;
  };
  const checked = (section: string, key: string, ok: (v: string) => boolean, want: string): string | undefined => {
    const v = str(section, key);
    if (v !== undefined && !ok(v)) throw badValue(section, key, v, want);
    return v;
  };

  return {
    source: {
      url: str('source', 'url'),
      channel: str('source', 'channel') ?? 'stable',
      minVersion: checked('source', 'min_version', isVersion, 'a version, e.g. 2026.11.1'),
      region: str('source', 'region'),
      endpoint: str('source', 'endpoint'),
      forcePathStyle: bool('source', 'force_path_style', false),
      caFile: str('source', 'ca_file'),
    },
    prepare: {
      parallel: int('prepare', 'parallel', 4, 1, 32),
      retries: int('prepare', 'retries', 5, 0, 100),
      stallTimeout: int('prepare', 'stall_timeout', 30, 1, 3600),
      allowUnsigned: bool('prepare', 'allow_unsigned', false),
      allowDowngrade: bool('prepare', 'allow_downgrade', false),
      maxRate: size('prepare', 'max_rate', 0),
      requestSize: size('prepare', 'request_size', 0),
    },
    daemon: {
      checkInterval: duration('daemon', 'check_interval', 6 * 3600, 60, 30 * 86400),
      startupDelay: duration('daemon', 'startup_delay', 900, 0, 86400),
    },
    window: { commit: checked('window', 'commit', (v) => v === 'never' || isWindow(v), 'HH:MM-HH:MM in local time, or never') ?? '03:00-05:00' },
    metrics: { textfile: str('metrics', 'textfile') ?? '/var/lib/prometheus/node-exporter/upgradectl.prom' },
    boot: {
      panicTimeout: int('boot', 'panic_timeout', 10, 1, 3600),
      trialAttempts: int('boot', 'trial_attempts', 1, 1, 3),
      defaultAttempts: int('boot', 'default_attempts', 2, 1, 5),
      kernelArgs: checked('boot', 'kernel_args', (v) => !kernelArgsProblem(v), 'kernel arguments without root=, panic=, loop= or upgradectl.*') ?? '',
      serialConsole: str('boot', 'serial_console') ?? '',
      menuTimeout: int('boot', 'menu_timeout', 0, 0, 600),
      hostUuid: str('boot', 'host_uuid'),
      saveEnv: bool('boot', 'save_env', true),
      rebootCommand: str('boot', 'reboot_command') ?? 'systemctl reboot',
      // 0 turns it off; the upper bound is softdog's largest soft_margin.
      trialDeadline: duration('boot', 'trial_deadline', 900, 0, MAX_TRIAL_DEADLINE),
    },
    health: { timeout: int('health', 'timeout', 300, 1, 86400) },
    hooks: { timeout: int('hooks', 'timeout', 120, 1, 86400) },
    flasher: {
      url: checked('flasher', 'url', (v) => /^https?:\/\/[^\s'"\\]+$/.test(v), 'an http:// or https:// URL'),
      network: (checked('flasher', 'network', (v) => ['auto', 'dhcp', 'static'].includes(v), 'auto, dhcp or static') ?? 'auto') as 'auto' | 'dhcp' | 'static',
      address: checked('flasher', 'address', (v) => parseCidr4(v) !== undefined, 'an IPv4 address with its prefix length, e.g. 192.0.2.10/24'),
      gateway: checked('flasher', 'gateway', isIPv4, 'an IPv4 address'),
      dns: (checked('flasher', 'dns', (v) => v.split(/[\s,]+/).filter(Boolean).every(isIPv4), 'IPv4 addresses separated by commas') ?? '').split(/[\s,]+/).filter(Boolean),
      mac: checked('flasher', 'mac', isMac, 'a MAC address in lower case, e.g. 52:54:00:12:34:56'),
      keep: bool('flasher', 'keep', true),
    },
    hawkbit: {
      url: str('hawkbit', 'url'),
      tenant: str('hawkbit', 'tenant') ?? 'DEFAULT',
      controllerId: str('hawkbit', 'controller_id'),
      tokenFile: str('hawkbit', 'token_file'),
      tokenKind: checked('hawkbit', 'token_kind', (v) => v === 'target' || v === 'gateway', 'target or gateway') === 'gateway' ? 'gateway' : 'target',
      caFile: str('hawkbit', 'ca_file'),
      certFile: str('hawkbit', 'cert_file'),
      keyFile: str('hawkbit', 'key_file'),
      confirm: checked('hawkbit', 'confirm', (v) => v === 'auto' || v === 'server', 'auto or server') === 'server' ? 'server' : 'auto',
    },
  };
}
