// Realistic ext4 images for the benchmarks, built once and cached under the bench directory:
//   a.img        ~700 MiB of real files (binaries, libraries, docs, locales) + a kernel and initrd, in 1 GiB
//   b.img        a "package upgrade" of a: 160 binaries rebuilt (bytes inserted, so everything after
//                the insertion shifts, as in a new build), ~30 MiB of new libraries, ~5 MiB of docs removed
//   c.img        a "large addition" to a: ~140 MiB of new files (a compiler and perl), nothing changed
// All three come from `mke2fs -d` with the same UUID, hash seed and fake time and normalised file times,
// so that the only differences are the ones made on purpose (FACTS.md: mke2fs -d determinism).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const sh = (cmd, args, opts = {}) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 26, ...opts }).toString();
const UUID = '5f1c2a9e-6f0b-4c55-9d2e-0a1b2c3d4e5f';

function copyInto(tree, src, budget) {
  if (!existsSync(src)) return 0;
  const size = Number(sh('du', ['-sb', src]).split('\t')[0]);
  if (size > budget) return 0;
  const dst = path.join(tree, src);
  mkdirSync(path.dirname(dst), { recursive: true });
  sh('cp', ['-a', src, dst]);
  return size;
}

function kernel(tree) {
  const boot = readdirSync('/boot');
  const v = boot.find((n) => n.startsWith('vmlinuz-'));
  const i = boot.find((n) => n.startsWith('initrd.img-'));
  if (!v || !i) throw new Error('no kernel/initrd in /boot to put in the bench image');
  mkdirSync(path.join(tree, 'boot'), { recursive: true });
  mkdirSync(path.join(tree, 'host'), { recursive: true });
  sh('cp', [path.join('/boot', v), path.join(tree, 'vmlinuz')]);
  sh('cp', [path.join('/boot', i), path.join(tree, 'initrd.img')]);
}

function build(tree, image) {
  // Every file time the same: reading a tree updates atimes, which mke2fs -d would copy.
  sh('find', [tree, '-exec', 'touch', '-h', '-d', '@1700000000', '{}', '+']);
  sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-U', UUID, '-E', `hash_seed=${UUID}`, '-d', tree, image, '1G'], { env: { ...process.env, E2FSPROGS_FAKE_TIME: '1700000000' } });
}

function files(dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...files(p));
    else if (e.isFile()) out.push(p);
  }
  return out.sort();
}

/** A rebuilt binary: 64 bytes inserted a third of the way in (everything after it moves), header changed. */
function rebuild(file) {
  const data = readFileSync(file);
  const salt = createHash('sha256').update(file).digest();
  const at = Math.floor(data.length / 3);
  const out = Buffer.concat([data.subarray(0, at), salt, salt, data.subarray(at)]);
  out[20] ^= 0x5a;
  writeFileSync(file, out);
}

export function benchImages(work) {
  mkdirSync(work, { recursive: true });
  const a = path.join(work, 'a.img');
  const b = path.join(work, 'b.img');
  const c = path.join(work, 'c.img');
  if (existsSync(a) && existsSync(b) && existsSync(c)) return { a, b, c };
  const tree = path.join(work, 'tree');
  rmSync(tree, { recursive: true, force: true });
  mkdirSync(tree, { recursive: true });
  kernel(tree);
  let budget = 680 << 20;
  for (const d of ['/usr/bin', '/usr/share/locale', '/usr/share/doc', '/usr/lib/python3', '/usr/lib/python3.11', '/usr/sbin', '/usr/share/man']) {
    budget -= copyInto(tree, d, budget);
  }
  build(tree, a);

  // c: a + a compiler and perl (large addition).
  const added = [];
  for (const d of ['/usr/lib/gcc', '/usr/share/perl']) if (copyInto(tree, d, 1 << 30)) added.push(path.join(tree, d));
  build(tree, c);
  for (const d of added) rmSync(d, { recursive: true, force: true });

  // b: a with 160 rebuilt binaries, ~30 MiB of new libraries, ~5 MiB of docs gone.
  const bins = files(path.join(tree, 'usr/bin')).filter((f) => {
    const s = statSync(f).size;
    return s > 20_000 && s < 4_000_000;
  });
  const step = Math.max(1, Math.floor(bins.length / 160));
  for (let i = 0; i < bins.length && i / step < 160; i += step) rebuild(bins[i]);
  const libs = files('/usr/lib/gcc');
  let add = 30 << 20;
  for (const f of libs) {
    const s = statSync(f).size;
    if (s > add) continue;
    const dst = path.join(tree, 'usr/lib/x86_64-linux-gnu/new', path.relative('/usr/lib/gcc', f));
    mkdirSync(path.dirname(dst), { recursive: true });
    sh('cp', ['-a', f, dst]);
    add -= s;
    if (add < 1 << 20) break;
  }
  let remove = 5 << 20;
  for (const f of files(path.join(tree, 'usr/share/doc')).filter((_, i) => i % 7 === 3)) {
    if (remove <= 0) break;
    remove -= statSync(f).size;
    rmSync(f);
  }
  build(tree, b);
  rmSync(tree, { recursive: true, force: true });
  return { a, b, c };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(benchImages(process.argv[2] ?? process.env.BENCH_DIR ?? '/var/tmp/upgradectl-bench'));
}
