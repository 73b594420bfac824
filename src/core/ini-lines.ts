import ini from 'ini';

/**
 * A line-by-line check of an INI file against the sections and keys a reader knows, run before
 * `ini.parse`. The `ini` package is lenient in ways that hurt an operator: a dotted section
 * (`[source.url]`) is nested into an object that later crashes a reader, `key[]` makes an array, a
 * repeated key silently wins, and a typo (`[sorce]`, `chanel =`) is just ignored. This check reads each
 * line the way `ini` does (same line grammar, same key decoding) and refuses all of that, naming the line.
 */

/** Section name → the keys it may hold, or `'any'` when the reader checks the keys itself. */
export type IniSchema = Readonly<Record<string, readonly string[] | 'any'>>;

/** One problem on one line: `what` for the message, `hint` for the fix. */
export class IniLineError extends Error {
  override name = 'IniLineError';
  constructor(
    readonly line: number,
    readonly what: string,
    readonly hint: string,
  ) {
    super(`line ${line}: ${what}`);
  }
}

export interface IniLines {
  /** The line a key was set on, for messages about its value. */
  lineOf(section: string, key: string): number | undefined;
}

// ini's own grammar (ini 6 decode): a section only when `[` starts the line and `]` ends it.
const LINE_RE = /^\[([^\]]*)\]\s*$|^([^=]+)(=(.*))?$/;

/** Throws IniLineError at the first line that `schema` does not allow. */
export function checkIniLines(text: string, schema: IniSchema): IniLines {
  const known = Object.keys(schema);
  const sectionLine = new Map<string, number>();
  const keyLine = new Map<string, number>();
  const id = (section: string, key: string) => `${section}\0${key}`;
  let section: string | undefined;
  const lines = text.split(/\r\n|\r|\n/);
  for (let i = 0; i < lines.length; i++) {
    const n = i + 1;
    const line = lines[i]!;
    if (/^\s*([;#]|$)/.test(line)) continue;
    const m = LINE_RE.exec(line);
    if (!m) throw new IniLineError(n, `"${line.trim()}" has no key before "="`, 'write key = value');
    if (m[1] !== undefined) {
      const name = ini.unsafe(m[1]);
      if (name.includes('.')) {
        throw new IniLineError(n, `section [${name}] has a dot in its name`, `dotted sections are not supported: ${suggest(name.split('.')[0]!, known, 'section')}`);
      }
      if (!Object.hasOwn(schema, name)) throw new IniLineError(n, `unknown section [${name}]`, suggest(name, known, 'section'));
      const first = sectionLine.get(name);
      if (first !== undefined) throw new IniLineError(n, `section [${name}] appears again (first at line ${first})`, `merge both into one [${name}] section`);
      sectionLine.set(name, n);
      section = name;
      continue;
    }
    const rawKey = m[2]!;
    if (/^\s*\[/.test(rawKey)) {
      throw new IniLineError(n, `"${line.trim()}" is not a section header`, 'a section header is alone on its line, unindented, with any comment on the line before: [name]');
    }
    if (m[3] === undefined) throw new IniLineError(n, `"${line.trim()}" has no "="`, 'write key = value');
    const key = ini.unsafe(rawKey);
    if (key.endsWith('[]')) throw new IniLineError(n, `"${key}" uses array syntax`, `give ${key.slice(0, -2)} once, as ${key.slice(0, -2)} = value`);
    if (section === undefined) throw new IniLineError(n, `key "${key}" is outside any section`, `put it under its section, e.g. ${nearestSectionFor(key, schema)}`);
    const keys = schema[section]!;
    if (keys !== 'any' && !keys.includes(key)) throw new IniLineError(n, `unknown key "${key}" in [${section}]`, suggest(key, keys, `key in [${section}]`));
    const first = keyLine.get(id(section, key));
    if (first !== undefined) throw new IniLineError(n, `[${section}] ${key} is set again (first at line ${first})`, 'keep one of the two lines');
    keyLine.set(id(section, key), n);
  }
  return { lineOf: (s, k) => keyLine.get(id(s, k)) };
}

/** "did you mean `channel`?" when a known word is a typo away, else the list of known words. */
export function suggest(word: string, known: readonly string[], what: string): string {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const k of known) {
    const d = editDistance(word.toLowerCase(), k.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [k, d];
  }
  const list = `known: ${known.join(', ')}`;
  // A third of the word's length (at least 2) is a typo; further away is a different word.
  if (best !== undefined && bestDistance <= Math.max(2, Math.floor(word.length / 3))) return `did you mean \`${best}\`? (${list})`;
  return `no such ${what} (${list})`;
}

function nearestSectionFor(key: string, schema: IniSchema): string {
  const owner = Object.entries(schema).find(([, keys]) => keys !== 'any' && keys.includes(key));
  return `[${owner?.[0] ?? Object.keys(schema)[0]}]`;
}

/** Optimal string alignment distance: Levenshtein plus swapped neighbours (`chnanel`). */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}
