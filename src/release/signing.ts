import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { promises as fs, constants as C } from 'node:fs';
import path from 'node:path';
import { UpgradeError } from '../core/errors.js';

/**
 * Detached ed25519 signatures over the exact bytes of a manifest or channel file. The `.sig` file is
 * JSON: {"alg":"ed25519","keyid":"<16 hex>","sig":"<base64>"}; the key id is the start of the SHA-256
 * of the public key's DER (SPKI) form, so a machine can say which key it was asked to trust.
 */
export interface SignatureFile {
  alg: 'ed25519';
  keyid: string;
  sig: string;
}

export function keyIdOf(key: KeyObject): string {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  return createHash('sha256').update(pub.export({ type: 'spki', format: 'der' })).digest('hex').slice(0, 16);
}

/**
 * Writes PREFIX (private key, PKCS#8 PEM, 0600) and PREFIX.pub (SPKI PEM); never overwrites. With
 * `expires`, the .pub carries an `upgradectl-expires:` line: machines refuse its signatures after that.
 */
export async function generateKeyPair(prefix: string, expires?: Date): Promise<{ privateKey: string; publicKey: string; keyid: string; expires?: string }> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const privPath = path.resolve(prefix);
  const pubPath = `${privPath}.pub`;
  await writeNew(privPath, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 0o600);
  try {
    const header = expires ? `upgradectl-expires: ${expires.toISOString()}\n` : '';
    await writeNew(pubPath, header + (publicKey.export({ type: 'spki', format: 'pem' }) as string), 0o644);
  } catch (err) {
    await fs.rm(privPath, { force: true });
    throw err;
  }
  return { privateKey: privPath, publicKey: pubPath, keyid: keyIdOf(publicKey), expires: expires?.toISOString() };
}

async function writeNew(file: string, text: string, mode: number): Promise<void> {
  let fh;
  try {
    fh = await fs.open(file, C.O_WRONLY | C.O_CREAT | C.O_EXCL, mode);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new UpgradeError('USAGE', `${file} already exists`, { hint: 'choose another --out prefix; upgradectl never overwrites a key' });
    }
    throw err;
  }
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function loadPrivateKey(file: string): Promise<KeyObject> {
  let pem: string;
  try {
    pem = await fs.readFile(file, 'utf8');
  } catch (err) {
    throw new UpgradeError('USAGE', `cannot read signing key ${file}: ${(err as Error).message}`, {
      cause: err,
      hint: 'make one with: upgradectl keygen --out KEYPREFIX',
    });
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (err) {
    throw new UpgradeError('USAGE', `${file} is not a PEM private key`, { cause: err, hint: 'pass the private key written by upgradectl keygen (not the .pub)' });
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new UpgradeError('USAGE', `${file} is a ${key.asymmetricKeyType} key, not ed25519`, { hint: 'make one with: upgradectl keygen --out KEYPREFIX' });
  }
  return key;
}

export function signBytes(data: Uint8Array, key: KeyObject): Buffer {
  const file: SignatureFile = { alg: 'ed25519', keyid: keyIdOf(key), sig: sign(null, data, key).toString('base64') };
  return Buffer.from(`${JSON.stringify(file)}\n`);
}

/** A key id as the `.sig` files and revocation lists name keys: 16 hex digits (a full 64-digit fingerprint is shortened). */
export function normalKeyId(text: string): string | undefined {
  const t = text.trim().toLowerCase();
  return /^[0-9a-f]{16}(?:[0-9a-f]{48})?$/.test(t) ? t.slice(0, 16) : undefined;
}

export interface TrustedKey {
  key: KeyObject;
  file: string;
  /** ISO 8601 time after which signatures by this key are refused (the key file's expiry line). */
  expires?: string;
}

/**
 * What a machine trusts right now: the keys in keys.d (the image's, the vendor's) and keys.d/local (the
 * operator's, migrated with the machine), minus every revoked key id. `revoked` maps a key id to where
 * the revocation came from, for messages: a `revoked` list file, a signed channel, or the machine's
 * memory of channels it has seen (src/operations/trust-memory.ts).
 */
export interface TrustStore {
  dir: string;
  keys: Map<string, TrustedKey>;
  revoked: Map<string, string>;
}

/** keys.d/local: the operator's own keys and revocations; the rest of keys.d belongs to the image. */
export const LOCAL_KEYS_DIR = 'local';
/** keys.d/revoked, keys.d/local/revoked: one key id per line, `#` comments. */
export const REVOKED_FILE = 'revoked';
/** A line before the PEM block of a .pub file (RFC 7468 lets explanatory text precede it). */
const EXPIRES_RE = /^[ \t]*#?[ \t]*upgradectl-expires:[ \t]*(\S+)[ \t]*$/im;

export async function loadTrustStore(keysDir: string, revoked: Iterable<[keyid: string, where: string]> = []): Promise<TrustStore> {
  const store: TrustStore = { dir: keysDir, keys: new Map(), revoked: new Map(revoked) };
  for (const dir of [keysDir, path.join(keysDir, LOCAL_KEYS_DIR)]) {
    for (const name of await listDir(dir)) {
      if (name.endsWith('.pub')) {
        const file = path.join(dir, name);
        const key = await loadPublicKey(file);
        store.keys.set(keyIdOf(key.key), key);
      } else if (name === REVOKED_FILE) {
        for (const id of await readRevokedList(path.join(dir, name))) if (!store.revoked.has(id)) store.revoked.set(id, path.join(dir, name));
      }
    }
  }
  return store;
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return (await fs.readdir(dir)).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

async function loadPublicKey(file: string): Promise<TrustedKey> {
  const text = await fs.readFile(file, 'utf8');
  let key: KeyObject;
  try {
    key = createPublicKey(text);
  } catch (err) {
    throw new UpgradeError('SIGNATURE', `trusted key ${file} is not a PEM public key`, { cause: err, hint: `replace it with a .pub file from upgradectl keygen, or remove it` });
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new UpgradeError('SIGNATURE', `trusted key ${file} is ${key.asymmetricKeyType}, not ed25519`, { hint: 'remove it from keys.d' });
  }
  const header = text.slice(0, Math.max(0, text.indexOf('-----BEGIN')));
  const expires = EXPIRES_RE.exec(header)?.[1];
  if (expires !== undefined && Number.isNaN(Date.parse(expires))) {
    // A typo must not make a key valid forever: refuse the whole file until the line is fixed.
    throw new UpgradeError('SIGNATURE', `trusted key ${file} has an invalid expiry '${expires}'`, { hint: 'write it as an ISO 8601 time: upgradectl-expires: 2027-12-31T00:00:00Z' });
  }
  return { key, file, expires };
}

async function readRevokedList(file: string): Promise<string[]> {
  const ids: string[] = [];
  const lines = (await fs.readFile(file, 'utf8')).split('\n');
  lines.forEach((line, i) => {
    const text = line.replace(/#.*/, '').trim();
    if (!text) return;
    const id = normalKeyId(text);
    if (!id) {
      // An unreadable revocation must not be skipped: the key it meant to revoke would stay trusted.
      throw new UpgradeError('SIGNATURE', `${file}:${i + 1}: '${text}' is not a key id`, { hint: 'write one key id per line: the 16 hex digits upgradectl keygen prints (or the full SHA-256 of the key)' });
    }
    ids.push(id);
  });
  return ids;
}

/**
 * Verify `data` (the exact bytes fetched) against its detached signature. Returns the key that signed
 * it. `what` names the object (its URL) in every error.
 */
export function verifySignature(what: string, data: Uint8Array, sigBytes: Uint8Array | undefined, trust: TrustStore): { keyid: string; file: string } {
  const keysDir = trust.dir;
  if (!sigBytes) {
    throw new UpgradeError('SIGNATURE', `${what} is not signed (no ${what}.sig)`, {
      hint: 'publish it with upgradectl publish --key, or allow unsigned releases explicitly with --allow-unsigned',
    });
  }
  let parsed: SignatureFile;
  try {
    parsed = JSON.parse(Buffer.from(sigBytes).toString('utf8')) as SignatureFile;
    if (parsed.alg !== 'ed25519' || typeof parsed.keyid !== 'string' || typeof parsed.sig !== 'string') throw new Error('missing alg, keyid or sig');
  } catch (err) {
    throw new UpgradeError('SIGNATURE', `${what}.sig is malformed: ${(err as Error).message}`, { cause: err, hint: 're-publish the release' });
  }
  const revokedBy = trust.revoked.get(parsed.keyid);
  if (revokedBy) {
    throw new UpgradeError('SIGNATURE', `${what} is signed by key ${parsed.keyid}, which is revoked (by ${revokedBy})`, {
      hint: 'do not install it: a revoked key may be in the wrong hands; the publisher must sign with a current key (upgradectl keygen) whose .pub is in keys.d/',
    });
  }
  if (trust.keys.size === 0) {
    throw new UpgradeError('SIGNATURE', `no trusted keys in ${keysDir} to check ${what}`, {
      hint: `copy the publisher's public key (KEYPREFIX.pub from upgradectl keygen) into ${keysDir}/`,
    });
  }
  const trusted = trust.keys.get(parsed.keyid);
  if (!trusted) {
    throw new UpgradeError('SIGNATURE', `${what} is signed by unknown key ${parsed.keyid}`, {
      hint: `if you trust this publisher, add its .pub key to ${keysDir}/${LOCAL_KEYS_DIR}/ (trusted: ${[...trust.keys.keys()].join(', ')})`,
    });
  }
  if (trusted.expires && Date.parse(trusted.expires) < Date.now()) {
    throw new UpgradeError('SIGNATURE', `${what} is signed by key ${parsed.keyid} (${trusted.file}), which expired on ${trusted.expires}`, {
      hint: 'the publisher must sign with its current key; install that key (an image that ships it, or keys.d/local/) — extend the expiry line only if you know the old key is still safe',
    });
  }
  if (!verify(null, data, trusted.key, Buffer.from(parsed.sig, 'base64'))) {
    throw new UpgradeError('SIGNATURE', `${what} has a bad signature (key ${parsed.keyid}, ${trusted.file})`, {
      hint: 'the file was altered or corrupted after signing: do not install it; re-publish it from a trusted publisher',
    });
  }
  return { keyid: parsed.keyid, file: trusted.file };
}
