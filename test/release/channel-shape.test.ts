import t from 'tap';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { readChannel } from '../../src/release/resolve.js';
import { loadPrivateKey, signBytes } from '../../src/release/signing.js';
import { openSource } from '../../src/release/sources/index.js';
import { upgradectl } from '../helpers/cli.js';

// A signed (or allowed unsigned) channel body that is valid JSON but not an object: refused as not a
// channel file, never a TypeError (found by fuzzing the parsers).
t.test('a channel body of null, a number, a string or an array is not a channel', async (t) => {
  const dir = t.testdir();
  const key = path.join(dir, 'key');
  t.equal((await upgradectl(['keygen', '--out', key])).code, 0);
  const keysDir = path.join(dir, 'keys.d');
  mkdirSync(keysDir);
  writeFileSync(path.join(keysDir, 'release.pub'), await import('node:fs/promises').then((fs) => fs.readFile(`${key}.pub`)));
  const priv = await loadPrivateKey(key);
  mkdirSync(path.join(dir, 'rel/channels'), { recursive: true });
  const source = openSource(`file://${path.join(dir, 'rel')}`);
  for (const body of ['null', '5', '"stable"', '[]', 'true']) {
    const bytes = Buffer.from(`${body}\n`);
    writeFileSync(path.join(dir, 'rel/channels/stable.json'), bytes);
    writeFileSync(path.join(dir, 'rel/channels/stable.json.sig'), signBytes(bytes, priv));
    await t.rejects(readChannel(source, 'stable', { keysDir, revoked: new Map() }, { allowUnsigned: false, allowExpired: false }, 'upgradectl.conf'), { code: 'MANIFEST', message: /is not an upgradectl channel file/ }, body);
  }
  await source.close();
});
