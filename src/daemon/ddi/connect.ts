import { promises as fs } from 'node:fs';
import path from 'node:path';
import { UpgradeError } from '../../core/errors.js';
import type { Layout } from '../../core/layout.js';
import { readConfiguredFile, type Config } from '../../operations/config.js';
import { DdiClient, type DdiClientOptions } from './client.js';

/**
 * The DDI client as `[hawkbit]` configures it. Files are named as the machine sees them and read
 * under `--root`, like every other path. Secrets (the token, the client key) must be root-only: a
 * token readable by any local user lets that user impersonate the machine to the fleet server.
 */
export async function openDdiClient(layout: Layout, config: Config, extra: Pick<DdiClientOptions, 'jsonCap' | 'timeoutMs'> = {}): Promise<DdiClient> {
  const h = config.hawkbit;
  if (!h.url) {
    throw new UpgradeError('CONFIG', `no hawkBit server configured in ${layout.configFile}`, { hint: 'add a [hawkbit] section with url = https://HOST and token_file or cert_file/key_file' });
  }
  if (!h.tokenFile && !h.certFile) {
    throw new UpgradeError('CONFIG', `[hawkbit] in ${layout.configFile} names no credentials`, {
      hint: 'set token_file (with token_kind = target or gateway) or cert_file and key_file: upgradectl never talks to the server unauthenticated',
    });
  }
  if (Boolean(h.certFile) !== Boolean(h.keyFile)) {
    throw new UpgradeError('CONFIG', `[hawkbit] cert_file and key_file go together (${layout.configFile})`, { hint: 'set both, or neither' });
  }
  const under = (file: string) => path.join(layout.root, file);
  const token = h.tokenFile ? { kind: h.tokenKind, value: await readToken(under(h.tokenFile)) } : undefined;
  const tls = {
    ca: h.caFile ? readConfiguredFile(under(h.caFile), 'hawkbit', 'ca_file') : undefined,
    cert: h.certFile ? readConfiguredFile(under(h.certFile), 'hawkbit', 'cert_file') : undefined,
    key: h.keyFile ? (await readSecret(under(h.keyFile), 'key_file')).toString('utf8') : undefined,
  };
  const controllerId = h.controllerId ?? (await machineId(layout));
  return new DdiClient({ url: h.url, tenant: h.tenant, controllerId, token, tls, ...extra });
}

/** The machine-id: the default controller id, stable across images (the whitelist carries it over). */
export async function machineId(layout: Layout): Promise<string> {
  const file = path.join(layout.root, 'etc/machine-id');
  const id = (await fs.readFile(file, 'utf8').catch(() => '')).trim();
  if (!id) {
    throw new UpgradeError('CONFIG', `no controller id: [hawkbit] controller_id is unset and ${file} is missing or empty`, {
      hint: 'set [hawkbit] controller_id, or create the machine id with systemd-machine-id-setup',
    });
  }
  return id;
}

async function readToken(file: string): Promise<string> {
  const token = (await readSecret(file, 'token_file')).toString('utf8').trim();
  if (!token || /\s/.test(token)) {
    throw new UpgradeError('CONFIG', `${file} does not hold one token`, { hint: 'write the target or gateway token from hawkBit into it, alone on one line' });
  }
  return token;
}

/** A file only root (the daemon's user) may read: owned by us, no group or other bits. */
export async function readSecret(file: string, key: string): Promise<Buffer> {
  const fh = await fs.open(file, 'r').catch((err: unknown) => {
    throw new UpgradeError('CONFIG', `cannot read [hawkbit] ${key} ${file}: ${(err as Error).message}`, { cause: err, hint: `check [hawkbit] ${key}` });
  });
  try {
    // fstat on the opened file: what is checked is what is read.
    const st = await fh.stat();
    if ((st.mode & 0o077) !== 0 || (process.getuid !== undefined && st.uid !== process.getuid())) {
      throw new UpgradeError('CONFIG', `${file} ([hawkbit] ${key}) is readable by others (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}, owner uid ${st.uid})`, {
        hint: `it is a secret: chown root:root ${file} && chmod 600 ${file}`,
      });
    }
    return await fh.readFile();
  } finally {
    await fh.close();
  }
}
