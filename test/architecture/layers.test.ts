import t from 'tap';
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The walls of docs/architecture.md, kept true: which folder under src/ may import which. Arrows point
 * down only; a lower layer never reaches up into the lifecycle, the daemon or the CLI. A new folder
 * under src/ must be given its place here before it can hold code.
 */
export const LAYERS: Record<string, readonly string[]> = {
  core: [],
  release: ['core'],
  grub: ['core'],
  migrate: ['core'],
  flasher: ['core', 'release'],
  operations: ['core', 'release', 'grub', 'migrate', 'flasher'],
  daemon: ['core', 'release', 'operations'],
  upgradectl: ['core', 'release', 'grub', 'migrate', 'flasher', 'operations', 'daemon'],
};

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function sourceFiles(dir: string, out: string[] = []): string[] {
  for (const name of readdirSync(dir)) {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) sourceFiles(p, out);
    else if (/\.(ts|mts|js|mjs)$/.test(name)) out.push(p);
  }
  return out;
}

/** Every module specifier a file names: static imports and re-exports, side-effect imports, import(). */
export function specifiers(text: string): string[] {
  const found: string[] = [];
  const patterns = [/\bfrom\s*['"]([^'"]+)['"]/g, /\bimport\s*['"]([^'"]+)['"]/g, /\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g];
  for (const re of patterns) for (const m of text.matchAll(re)) found.push(m[1]!);
  return found;
}

/** The imports under `srcDir` that break the table, as "file: imports target (layer a may not import layer b)". */
export function violations(srcDir: string, layers: Record<string, readonly string[]>): string[] {
  const out: string[] = [];
  const layerOf = (file: string) => path.relative(srcDir, file).split(path.sep)[0]!;
  for (const file of sourceFiles(srcDir)) {
    const from = layerOf(file);
    const rel = path.relative(srcDir, file);
    if (!(from in layers)) {
      out.push(`${rel}: folder '${from}' has no place in the layer table (test/architecture/layers.test.ts, docs/architecture.md)`);
      continue;
    }
    for (const spec of specifiers(readFileSync(file, 'utf8'))) {
      if (!spec.startsWith('.')) continue;
      const target = path.resolve(path.dirname(file), spec);
      if (!target.startsWith(srcDir + path.sep)) {
        out.push(`${rel}: imports ${spec}, outside src/`);
        continue;
      }
      const to = layerOf(target);
      if (to !== from && !layers[from]!.includes(to)) out.push(`${rel}: imports ${spec} (${from} may not import ${to})`);
    }
  }
  return out;
}

t.test('every import under src/ follows the layer table', async (t) => {
  const found = violations(path.join(repo, 'src'), LAYERS);
  t.same(found, [], found.join('\n'));
});

t.test('the table itself points down only (no two layers import each other)', async (t) => {
  for (const [a, deps] of Object.entries(LAYERS)) {
    for (const b of deps) t.notOk(LAYERS[b]?.includes(a), `${a} and ${b} import each other`);
  }
});

t.test('the check catches an upward import, a dynamic one and an unknown folder', async (t) => {
  const src = path.join(t.testdir(), 'src');
  for (const d of ['core', 'grub', 'upgradectl', 'stray']) mkdirSync(path.join(src, d), { recursive: true });
  writeFileSync(path.join(src, 'upgradectl/cli.ts'), "export const x = 1;\n");
  writeFileSync(path.join(src, 'core/log.ts'), "import { x } from '../upgradectl/cli.js';\nexport const y = x;\n");
  writeFileSync(path.join(src, 'grub/env.ts'), "export async function f() { return import('../upgradectl/cli.js'); }\n");
  writeFileSync(path.join(src, 'stray/a.ts'), "export const z = 1;\n");
  const found = violations(src, LAYERS);
  t.match(found, [/core\/log\.ts: imports .*core may not import upgradectl/, /grub\/env\.ts: imports .*grub may not import upgradectl/, /stray\/a\.ts: folder 'stray'/].sort());
  t.equal(found.length, 3);
});
