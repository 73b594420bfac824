/**
 * Shell-style patterns for one path component, matched without backtracking blow-up: the whitelist is
 * operator input and names come from the machine, so a pattern like `*a*a*a*a*a*a*c` must not take
 * seconds (a RegExp translation did: 4.8 s on a 60-character name, 152 s with eight stars).
 *
 * Syntax, as fnmatch(3) without escapes (a backslash is an ordinary character):
 *   `*` any run of characters, `?` one character, `[abc]`, `[a-z]`, `[!abc]` (or `[^abc]`) one
 *   character of (not of) a set. A `]` right after `[` or `[!` is a member (`[]a]`), a `-` first or
 *   last is a member, and a `[` with no closing `]` is a literal. A reversed range (`[z-a]`) is refused.
 */

export type Token =
  | { kind: 'star' }
  | { kind: 'any' }
  | { kind: 'char'; cp: number }
  | { kind: 'set'; negate: boolean; ranges: Array<[number, number]> };

export class GlobError extends Error {
  override name = 'GlobError';
}

export function compileGlob(glob: string): Token[] {
  const p = Array.from(glob, (c) => c.codePointAt(0)!);
  const tokens: Token[] = [];
  for (let i = 0; i < p.length; i++) {
    const c = p[i]!;
    if (c === STAR) {
      // Runs of stars mean one star; keeping one keeps the matcher's restart point unique.
      if (tokens.at(-1)?.kind !== 'star') tokens.push({ kind: 'star' });
    } else if (c === QUESTION) tokens.push({ kind: 'any' });
    else if (c === OPEN) {
      const set = readSet(p, i, glob);
      if (set) {
        tokens.push(set.token);
        i = set.end;
      } else tokens.push({ kind: 'char', cp: c });
    } else tokens.push({ kind: 'char', cp: c });
  }
  return tokens;
}

/** The set starting at p[start] (`[`) and the index of its `]`, or undefined when it is never closed. */
function readSet(p: number[], start: number, glob: string): { token: Token; end: number } | undefined {
  let i = start + 1;
  const negate = p[i] === BANG || p[i] === CARET;
  if (negate) i++;
  const ranges: Array<[number, number]> = [];
  let first = true;
  let reversed: string | undefined;
  for (; i < p.length; i++) {
    const c = p[i]!;
    if (c === CLOSE && !first) {
      // Only a set that closes has ranges; in an unclosed one the `[` and the rest are literals.
      if (reversed) throw new GlobError(`"${glob}": the range ${reversed} in […] is reversed (it would match nothing)`);
      return { token: { kind: 'set', negate, ranges }, end: i };
    }
    first = false;
    if (p[i + 1] === DASH && i + 2 < p.length && p[i + 2] !== CLOSE) {
      const hi = p[i + 2]!;
      if (hi < c) reversed ??= String.fromCodePoint(c, DASH, hi);
      ranges.push([c, hi]);
      i += 2;
    } else ranges.push([c, c]);
  }
  return undefined;
}

function matchesOne(t: Token, cp: number): boolean {
  switch (t.kind) {
    case 'any':
      return true;
    case 'char':
      return t.cp === cp;
    case 'set':
      return t.ranges.some(([lo, hi]) => cp >= lo && cp <= hi) !== t.negate;
    case 'star':
      return false;
  }
}

/**
 * Greedy matching with one restart point: every token but `*` takes exactly one character, so when a
 * later part fails, only the most recent `*` needs to take one character more; earlier stars never
 * need to be revisited. At most (name length × pattern length) steps, whatever the pattern.
 */
export function matchTokens(tokens: Token[], name: string): boolean {
  const s = Array.from(name, (c) => c.codePointAt(0)!);
  let p = 0;
  let n = 0;
  let starP = -1;
  let starN = 0;
  while (n < s.length) {
    const t = tokens[p];
    if (t?.kind === 'star') {
      starP = p++;
      starN = n;
    } else if (t && matchesOne(t, s[n]!)) {
      p++;
      n++;
    } else if (starP >= 0) {
      p = starP + 1;
      n = ++starN;
    } else return false;
  }
  while (tokens[p]?.kind === 'star') p++;
  return p === tokens.length;
}

const STAR = 0x2a;
const QUESTION = 0x3f;
const OPEN = 0x5b;
const CLOSE = 0x5d;
const BANG = 0x21;
const CARET = 0x5e;
const DASH = 0x2d;
