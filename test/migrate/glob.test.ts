import t from 'tap';
import fc from 'fast-check';
import { compileGlob, GlobError, matchTokens } from '../../src/migrate/glob.js';
import { componentMatcher } from '../../src/migrate/tree-path.js';

const match = (glob: string, name: string) => matchTokens(compileGlob(glob), name);

t.test('bracket sets as fnmatch reads them', async (t) => {
  t.ok(match('[]a]', ']'), '] first in a set is a member');
  t.ok(match('[]a]', 'a'));
  t.notOk(match('[]a]', 'b'));
  t.ok(match('[](]', '('));
  t.ok(match('[](]', ']'));
  t.ok(match('[!]]', 'x'));
  t.notOk(match('[!]]', ']'));
  t.ok(match('[^a]', 'b'), '^ negates like !');
  t.ok(match('[a-]', '-'), 'a trailing - is a member');
  t.ok(match('[-a]', '-'));
  t.ok(match('[a-c]', 'b'));
  t.notOk(match('[a-c]', 'd'));
  t.ok(match('a[', 'a['), 'an unclosed [ is literal');
  t.ok(match('[!]', '[!]'), '[!] never closes: all literal');
  t.ok(match('[z-a', '[z-a'), 'a reversed range in an unclosed set is literal text');
  t.ok(match('a\\b', 'a\\b'), 'a backslash is an ordinary character');
  t.ok(match('?', '🔑'), '? takes one character, not one UTF-16 unit');
  t.ok(match('*.conf', '.conf'));
  t.notOk(match('a*b', 'a'));
});

t.test('reversed ranges are refused', async (t) => {
  t.throws(() => compileGlob('[z-a]'), GlobError);
  t.throws(() => compileGlob('x[b-a]*'), { message: /"x\[b-a\]\*": the range b-a in \[…\] is reversed/ });
  t.doesNotThrow(() => compileGlob('[](]'));
});

t.test('pathological patterns finish at once', async (t) => {
  const name = 'a'.repeat(60);
  for (const glob of ['*a*a*a*a*a*a*c', '*a*a*a*a*a*a*a*a*c', `${'*a'.repeat(30)}*c`, '*?*?*?*?*?*?*?*?*c', '*[a]*[a]*[a]*[a]*[a]*[a]*[a]*c']) {
    const m = componentMatcher(glob);
    const start = process.hrtime.bigint();
    t.equal(m(name), false, glob);
    t.equal(m(`${name}c`), true, `${glob} on a match`);
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    t.ok(ms < 20, `${glob}: ${ms.toFixed(2)} ms`);
  }
  const long = 'ab'.repeat(2000);
  const start = process.hrtime.bigint();
  t.equal(match(`${'*a'.repeat(100)}*c`, long), false);
  t.ok(Number(process.hrtime.bigint() - start) / 1e6 < 100, '4000 characters, 100 stars');
});

/**
 * Reference: the definition read literally, recursion over (pattern position, name position) with no
 * cleverness; exponential in general, fine for the small inputs below. Sets are parsed here on their own.
 */
function reference(glob: string, name: string): boolean | 'invalid' {
  const p = Array.from(glob);
  const s = Array.from(name);
  let invalid = false;
  const set = (i: number): { end: number; has: (c: string) => boolean } | undefined => {
    let j = i + 1;
    const neg = p[j] === '!' || p[j] === '^';
    if (neg) j++;
    const members: Array<(c: string) => boolean> = [];
    for (let k = j; k < p.length; k++) {
      if (p[k] === ']' && k > j) return { end: k, has: (c) => members.some((f) => f(c)) !== neg };
      const lo = p[k]!;
      if (p[k + 1] === '-' && k + 2 < p.length && p[k + 2] !== ']') {
        const hi = p[k + 2]!;
        if (hi.codePointAt(0)! < lo.codePointAt(0)!) invalid = true;
        members.push((c) => c.codePointAt(0)! >= lo.codePointAt(0)! && c.codePointAt(0)! <= hi.codePointAt(0)!);
        k += 2;
      } else members.push((c) => c === lo);
    }
    return undefined;
  };
  // Validate every set first (a set's validity does not depend on the name).
  for (let i = 0; i < p.length; i++) {
    if (p[i] !== '[') continue;
    const before: boolean = invalid;
    const r = set(i);
    if (!r) invalid = before;
    else i = r.end;
  }
  if (invalid) return 'invalid';
  const go = (i: number, j: number): boolean => {
    if (i === p.length) return j === s.length;
    if (p[i] === '*') return go(i + 1, j) || (j < s.length && go(i, j + 1));
    if (j === s.length) return false;
    if (p[i] === '?') return go(i + 1, j + 1);
    if (p[i] === '[') {
      const r = set(i);
      if (r) return r.has(s[j]!) && go(r.end + 1, j + 1);
    }
    return p[i] === s[j] && go(i + 1, j + 1);
  };
  return go(0, 0);
}

t.test('agrees with the reference on small inputs', async (t) => {
  const patternChar = fc.constantFrom('a', 'b', 'c', '.', '*', '*', '?', '[', ']', '!', '^', '-', '\\');
  const nameChar = fc.constantFrom('a', 'b', 'c', '.', ']', '[', '-', '!');
  fc.assert(
    fc.property(fc.array(patternChar, { maxLength: 9 }), fc.array(nameChar, { maxLength: 8 }), (pc, nc) => {
      const glob = pc.join('');
      const name = nc.join('');
      const want = reference(glob, name);
      let got: boolean | 'invalid';
      try {
        got = match(glob, name);
      } catch (err) {
        if (!(err instanceof GlobError)) throw err;
        got = 'invalid';
      }
      if (got !== want) throw new Error(`${JSON.stringify(glob)} on ${JSON.stringify(name)}: got ${got}, reference ${want}`);
    }),
    { numRuns: 20000 },
  );
  t.pass('20000 random pattern/name pairs');
});
