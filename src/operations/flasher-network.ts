import { promises as fs } from 'node:fs';
import path from 'node:path';
import { UpgradeError, messageOf } from '../core/errors.js';
import { run } from '../core/exec.js';
import type { Layout } from '../core/layout.js';
import { log } from '../core/log.js';
import { parseCidr4, staticNetworkProblem, type FlasherNetwork } from '../flasher/job.js';
import type { Config } from './config.js';

/**
 * How the flasher brings its network up, written into every flash and rescue job (docs/flasher.md,
 * "Network"). A machine on a network without DHCP has a static address in its own configuration; the
 * flasher cannot read that configuration (ifupdown, networkd, NetworkManager, netplan: each its own
 * format), so the running system's *effective* set-up is copied instead: what `ip` shows is what works.
 */
export async function flasherNetwork(layout: Layout, config: Config): Promise<FlasherNetwork> {
  const f = config.flasher;
  if (f.network === 'dhcp') return { mode: 'dhcp' };
  if (f.network === 'static') return configuredStatic(config);
  // A temporary --root has no network of its own: the machine running the command is not the one
  // the job is for.
  if (path.resolve(layout.root) !== '/') return { mode: 'dhcp' };
  try {
    const ip = async (...args: string[]) => JSON.parse((await run('ip', ['-j', '-4', ...args])).stdout || '[]') as unknown;
    const routes = await ip('route', 'show', 'default');
    const dev = defaultRoute(routes)?.dev;
    if (!dev) return { mode: 'dhcp' };
    return networkFromIp(routes, await ip('addr', 'show', 'dev', dev), await ip('link', 'show', 'dev', dev), await resolvConf(layout));
  } catch (err) {
    log.warn(`flasher network: cannot read this machine's address with ip (${messageOf(err)}); the flasher will use DHCP`);
    return { mode: 'dhcp' };
  }
}

function configuredStatic(config: Config): FlasherNetwork {
  const f = config.flasher;
  const cidr = f.address === undefined ? undefined : parseCidr4(f.address);
  if (!cidr) {
    throw new UpgradeError('CONFIG', '[flasher] network = static needs [flasher] address', { hint: 'set [flasher] address = 192.0.2.10/24 (and gateway, dns), or network = auto' });
  }
  return { mode: 'static', mac: f.mac, address: cidr.address, prefix: cidr.prefix, gateway: f.gateway, dns: f.dns };
}

interface IpRoute { dst?: string; gateway?: string; dev?: string }
interface IpAddr { family?: string; local?: string; prefixlen?: number; scope?: string; dynamic?: boolean; valid_life_time?: number }

function defaultRoute(routes: unknown): IpRoute | undefined {
  return (Array.isArray(routes) ? (routes as IpRoute[]) : []).find((r) => r.dst === 'default' && typeof r.dev === 'string');
}

/** `valid_lft forever`: the kernel's "never expires", which only a configured (not leased) address has. */
const FOREVER = 4294967295;

/**
 * The flasher's network from `ip -j -4 route show default`, `ip -j -4 addr show dev D`, `ip -j link show
 * dev D` and resolv.conf: static when the default route's card has a global IPv4 address that never
 * expires (DHCP clients set the lease as its lifetime, and the kernel marks it dynamic); DHCP otherwise.
 */
export function networkFromIp(routes: unknown, addrs: unknown, links: unknown, resolv = ''): FlasherNetwork {
  const route = defaultRoute(routes);
  if (!route) return { mode: 'dhcp' };
  const infos = (Array.isArray(addrs) ? (addrs as Array<{ addr_info?: IpAddr[] }>) : []).flatMap((a) => a.addr_info ?? []);
  const addr = infos.find((a) => a.family === 'inet' && a.scope === 'global' && a.local && a.prefixlen);
  if (!addr || addr.dynamic || (addr.valid_life_time !== undefined && addr.valid_life_time !== FOREVER)) return { mode: 'dhcp' };
  const mac = (Array.isArray(links) ? (links as Array<{ address?: string }>) : [])[0]?.address?.toLowerCase();
  // A local stub resolver (systemd-resolved's 127.0.0.53) does not exist in the flasher.
  const dns = [...resolv.matchAll(/^\s*nameserver\s+(\S+)/gm)].map((m) => m[1]!).filter((d) => /^[0-9.]+$/.test(d) && !d.startsWith('127.'));
  const network: FlasherNetwork = { mode: 'static', mac, address: addr.local!, prefix: addr.prefixlen!, gateway: route.gateway, dns };
  const problem = staticNetworkProblem(network);
  if (problem) {
    log.warn(`flasher network: this machine's static set-up cannot be copied (${problem}); the flasher will use DHCP`);
    return { mode: 'dhcp' };
  }
  return network;
}

async function resolvConf(layout: Layout): Promise<string> {
  return fs.readFile(path.join(layout.root, 'etc/resolv.conf'), 'utf8').catch(() => '');
}
