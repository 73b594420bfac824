/**
 * What a fresh image needs to come up as *this* machine (issue 4, DESIGN.md §7): identity, network,
 * SSH host keys, time zone, upgradectl's machine-owned configuration (source and channel, the
 * operator's own keys, fleet credentials), root's SSH access and the accounts.
 * Everything else comes fresh from the image. `DIR/etc/upgradectl/migrate.conf` adds to this list,
 * changes a mode, or drops an entry with `skip`; `[options] defaults = no` starts from nothing.
 *
 * A trailing slash marks a directory: its whole tree is copied (merged over the image's).
 * docs/migration.md shows the same list as a migrate.conf.
 */
export const DEFAULT_WHITELIST: ReadonlyArray<readonly [pattern: string, mode: 'copy' | 'keep-if-absent' | 'accounts']> = [
  // Identity
  ['/etc/hostname', 'copy'],
  ['/etc/hosts', 'copy'],
  ['/etc/machine-id', 'copy'],
  ['/etc/ssh/ssh_host_*', 'copy'],
  // Network: ifupdown, netplan, systemd-networkd, NetworkManager
  ['/etc/network/interfaces', 'copy'],
  ['/etc/network/interfaces.d/', 'copy'],
  ['/etc/netplan/', 'copy'],
  ['/etc/systemd/network/', 'copy'],
  ['/etc/NetworkManager/system-connections/', 'copy'],
  // Time zone: /etc/localtime is a symlink into /usr/share/zoneinfo and is copied as the link
  ['/etc/timezone', 'copy'],
  ['/etc/localtime', 'copy'],
  // upgradectl: only what the machine owns (docs/security.md, "Who owns /etc/upgradectl"). The image owns
  // keys.d (the vendor's trusted keys and revoked list) and the hook directories: copying the old ones
  // over the new image's would keep a revoked key trusted and an old hook running.
  ['/etc/upgradectl/upgradectl.conf', 'copy'],
  ['/etc/upgradectl/migrate.conf', 'copy'],
  ['/etc/upgradectl/keys.d/local/', 'copy'],
  ['/etc/upgradectl/credentials.d/', 'copy'],
  // Remote access for root
  ['/root/.ssh/', 'copy'],
  // Accounts are merged, never copied (see accounts-merge.ts)
  ['/etc/passwd', 'accounts'],
  ['/etc/shadow', 'accounts'],
  ['/etc/group', 'accounts'],
  ['/etc/gshadow', 'accounts'],
];
