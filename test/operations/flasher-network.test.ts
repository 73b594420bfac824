import t from 'tap';
import { run } from '../../src/core/exec.js';
import { Layout } from '../../src/core/layout.js';
import { parseConfig } from '../../src/operations/config.js';
import { flasherNetwork, networkFromIp } from '../../src/operations/flasher-network.js';
import { skipUnless } from '../helpers/requirements.js';

// The running system's set-up as `ip` reports it, made for real in a network namespace of its own
// (unshare -n: this machine's own network is never touched; a bridge stands for the card, as this kernel has no dummy driver), then read as the job writer reads it.
const skip = skipUnless({ root: true, commands: ['ip', 'unshare'] });
const MAC = '52:54:00:ab:cd:01';

async function ipInNamespace(setup: string): Promise<{ routes: unknown; addrs: unknown; links: unknown }> {
  const { stdout } = await run('unshare', ['-n', 'sh', '-ec', `
    ip link set lo up
    ip link add eth7 address ${MAC} type bridge
    ip link set eth7 up
    ${setup}
    ip -j -4 route show default; echo '#'
    ip -j -4 addr show dev eth7; echo '#'
    ip -j link show dev eth7`]);
  const [routes, addrs, links] = stdout.split('#\n').map((part) => JSON.parse(part.trim() || '[]') as unknown);
  return { routes, addrs, links };
}

const RESOLV = 'search example.net\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n';

t.test('a configured address (valid forever) is copied into the job: card by MAC, prefix, gateway, name servers without the local stub', { skip }, async (t) => {
  const ip = await ipInNamespace('ip addr add 192.0.2.10/24 dev eth7; ip route add default via 192.0.2.1');
  t.same(networkFromIp(ip.routes, ip.addrs, ip.links, RESOLV), {
    mode: 'static', mac: MAC, address: '192.0.2.10', prefix: 24, gateway: '192.0.2.1', dns: ['192.0.2.53'],
  });
});

t.test('a leased address (a lifetime, as DHCP clients set it) means DHCP in the flasher too', { skip }, async (t) => {
  const ip = await ipInNamespace('ip addr add 192.0.2.10/24 dev eth7 valid_lft 3600 preferred_lft 3600; ip route add default via 192.0.2.1');
  t.same(networkFromIp(ip.routes, ip.addrs, ip.links, RESOLV), { mode: 'dhcp' });
});

t.test('no default route: nothing to copy, DHCP', { skip }, async (t) => {
  const ip = await ipInNamespace('ip addr add 192.0.2.10/24 dev eth7');
  t.same(networkFromIp(ip.routes, ip.addrs, ip.links, RESOLV), { mode: 'dhcp' });
});

t.test('[flasher] network: dhcp and static from the config; auto under a temporary root is DHCP', async (t) => {
  const layout = new Layout(t.testdir());
  const config = (text: string) => parseConfig(`[flasher]\n${text}`, 'test config');
  t.same(await flasherNetwork(layout, config('network = dhcp\n')), { mode: 'dhcp' });
  t.same(await flasherNetwork(layout, config('')), { mode: 'dhcp' }, 'auto reads the machine it runs on only when --root is /');
  t.same(await flasherNetwork(layout, config('network = static\naddress = 198.51.100.7/25\ngateway = 198.51.100.1\ndns = 198.51.100.2, 198.51.100.3\nmac = 52:54:00:12:34:56\n')), {
    mode: 'static', mac: '52:54:00:12:34:56', address: '198.51.100.7', prefix: 25, gateway: '198.51.100.1', dns: ['198.51.100.2', '198.51.100.3'],
  });
  await t.rejects(flasherNetwork(layout, config('network = static\n')), { code: 'CONFIG', message: /needs \[flasher\] address/ });
  t.throws(() => config('network = static\naddress = 198.51.100.7\n'), { message: /address = 198.51.100.7 is not valid/, hint: /prefix length/ });
  t.throws(() => config('gateway = gw.example\n'), { message: /gateway = gw.example is not valid/, hint: /IPv4/ });
  t.throws(() => config('mac = 52-54-00-12-34-56\n'), { message: /mac = 52-54-00-12-34-56 is not valid/, hint: /MAC address/ });
  t.throws(() => config('network = bootp\n'), { message: /network = bootp is not valid/, hint: /auto, dhcp or static/ });
});
