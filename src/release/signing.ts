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

/** Writes PREFIX (private key, PKCS#8 PEM, 0600) and PREFIX.pub (SPKI PEM); never overwrites. */
export async function generateKeyPair(prefix: string): Promise<{ privateKey: string; publicKey: string; keyid: string }> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const privPath = path.resolve(prefix);
  const pubPath = `${privPath}.pub`;
  await writeNew(privPath, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 0o600);
  try {
    await writeNew(pubPath, publicKey.export({ type: 'spki', format: 'pem' }) as string, 0o644);
  } catch (err) {
    await fs.rm(privPath, { force: true });
    throw err;
  }
  return { privateKey: privPath, publicKey: pubPath, keyid: keyIdOf(publicKey) };
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

/** The public keys a machine trusts: every `*.pub` in DIR/etc/upgradectl/keys.d, by key id. */
export async function loadTrustedKeys(keysDir: string): Promise<Map<string, { key: KeyObject; file: string }>> {
  const keys = new Map<string, { key: KeyObject; file: string }>();
  let names: string[] = [];
  try {
    names = (await fs.readdir(keysDir)).filter((n) => n.endsWith('.pub')).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  for (const name of names) {
    const file = path.join(keysDir, name);
    let key: KeyObject;
    try {
      key = createPublicKey(await fs.readFile(file, 'utf8'));
    } catch (err) {
      throw new UpgradeError('SIGNATURE', `trusted key ${file} is not a PEM public key`, { cause: err, hint: `replace it with a .pub file from upgradectl keygen, or remove it` });
    }
    if (key.asymmetricKeyType !== 'ed25519') {
      throw new UpgradeError('SIGNATURE', `trusted key ${file} is ${key.asymmetricKeyType}, not ed25519`, { hint: 'remove it from keys.d' });
    }
    keys.set(keyIdOf(key), { key, file });
  }
  return keys;
}

/**
 * Verify `data` (the exact bytes fetched) against its detached signature. Returns the key file that
 * signed it. `what` names the object (its URL) in every error.
 */
export function verifySignature(
  what: string,
  data: Uint8Array,
  sigBytes: Uint8Array | undefined,
  keys: Map<string, { key: KeyObject; file: string }>,
  keysDir: string,
): string {
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
  if (keys.size === 0) {
    throw new UpgradeError('SIGNATURE', `no trusted keys in ${keysDir} to check ${what}`, {
      hint: `copy the publisher's public key (KEYPREFIX.pub from upgradectl keygen) into ${keysDir}/`,
    });
  }
  const trusted = keys.get(parsed.keyid);
  if (!trusted) {
    throw new UpgradeError('SIGNATURE', `${what} is signed by unknown key ${parsed.keyid}`, {
      hint: `if you trust this publisher, add its .pub key to ${keysDir}/ (trusted: ${[...keys.keys()].join(', ')})`,
    });
  }
  if (!verify(null, data, trusted.key, Buffer.from(parsed.sig, 'base64'))) {
    throw new UpgradeError('SIGNATURE', `${what} has a bad signature (key ${parsed.keyid}, ${trusted.file})`, {
      hint: 'the file was altered or corrupted after signing: do not install it; re-publish it from a trusted publisher',
    });
  }
  return trusted.file;
}
