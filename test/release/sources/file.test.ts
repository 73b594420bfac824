import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { openSource, openTarget } from '../../../src/release/sources/index.js';
import { failure, sha256 } from '../../helpers/assert.js';

/** The file:// transport: durable writes for publish, version-pinned reads. */



/** Every file under `dir`, relative, sorted: to see that no temporary is left behind. */
async function tree(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort();
}

t.test('putBytes creates the key with its parents, and replaces it atomically', async (t) => {
  const dir = t.testdir();
  const target = openTarget(pathToFileURL(path.join(dir, 'pub')).href);
  await target.putBytes('channels/stable.json', Buffer.from('{"version":"1"}'));
  await target.putBytes('channels/stable.json', Buffer.from('{"version":"2"}'));
  t.equal(await fs.readFile(path.join(dir, 'pub/channels/stable.json'), 'utf8'), '{"version":"2"}');
  t.same(await tree(dir), ['pub/channels/stable.json'], 'no temporary left');
  t.equal((await fs.stat(path.join(dir, 'pub/channels/stable.json'))).mode & 0o777, 0o644);
  await target.close();
});

t.test('putFile copies the file (the caller keeps its own) and leaves no temporary', async (t) => {
  const dir = t.testdir({ 'image.lz4': '' });
  const local = path.join(dir, 'image.lz4');
  const payload = randomBytes(5 * 1024 * 1024 + 7);
  await fs.writeFile(local, payload);
  const target = openTarget(pathToFileURL(path.join(dir, 'pub')).href);
  await target.putFile('releases/5.0/image.lz4', local);
  t.equal(sha256(await fs.readFile(path.join(dir, 'pub/releases/5.0/image.lz4'))), sha256(payload));
  t.equal(sha256(await fs.readFile(local)), sha256(payload), 'the source file is untouched');
  t.same(await tree(dir), ['image.lz4', 'pub/releases/5.0/image.lz4']);
});

t.test('a failed putFile leaves no temporary and names the destination', async (t) => {
  const dir = t.testdir({ 'file.bin': 'data', pub: { releases: { 'blocked.bin': { 'occupant.txt': 'x' } } } });
  const target = openTarget(pathToFileURL(path.join(dir, 'pub')).href);
  // The key is a non-empty directory: the final rename cannot replace it.
  const err = await failure(target.putFile('releases/blocked.bin', path.join(dir, 'file.bin')));
  t.ok(err.message.includes('blocked.bin'), err.message);
  t.same(await tree(path.join(dir, 'pub')), ['releases/blocked.bin/occupant.txt']);
});

t.test('putFile of a missing local file is NOT_FOUND naming it', async (t) => {
  const dir = t.testdir();
  const target = openTarget(pathToFileURL(dir).href);
  const err = await failure(target.putFile('x/y.img', path.join(dir, 'missing.img')));
  t.equal(err.code, 'NOT_FOUND');
  t.match(err.message, 'missing.img');
});

t.test('a stream keeps reading the version it opened when a new one is renamed over it', async (t) => {
  const dir = t.testdir();
  const v1 = randomBytes(3 * 1024 * 1024);
  await fs.writeFile(path.join(dir, 'image.lz4'), v1);
  const source = openSource(pathToFileURL(dir).href);
  const parts: Buffer[] = [];
  for await (const chunk of source.stream('image.lz4', 0)) {
    if (parts.length === 0) {
      await fs.writeFile(path.join(dir, 'image.lz4.new'), randomBytes(v1.length));
      await fs.rename(path.join(dir, 'image.lz4.new'), path.join(dir, 'image.lz4'));
    }
    parts.push(chunk);
  }
  t.equal(sha256(Buffer.concat(parts)), sha256(v1));
});

t.test('file URLs that are not a local directory are refused', async (t) => {
  for (const url of ['file://fileserver/share/releases']) {
    try {
      openSource(url);
      t.fail(`${url} should be refused`);
    } catch (err) {
      t.equal((err as { code?: string }).code, 'USAGE', (err as Error).message);
      t.match((err as { hint?: string }).hint ?? '', /file:\/\/\//);
    }
  }
  const missingRoot = openSource(pathToFileURL(path.join(t.testdir(), 'nowhere')).href);
  const err = await failure(missingRoot.get('channels/stable.json'));
  t.equal(err.code, 'NOT_FOUND');
  t.match(err.message, /nowhere\/channels\/stable\.json/);
});
