/**
 * Merge the machine's account database into the image's (DESIGN.md §7). Pure: text in, text out.
 *
 * - The image's system accounts and groups stay exactly as the image defines them: a new release may
 *   add, drop or renumber them, and the packages in the image expect its numbering.
 * - The machine's human accounts (UID_MIN ≤ UID ≤ UID_MAX of the IMAGE's login.defs) and human groups
 *   are added, with their memberships in the image's groups of the same name.
 * - Password hashes (the whole shadow entry: hash and ageing) carry over for every account present in
 *   both, root's too; gshadow group passwords likewise for groups present in both.
 * - A clash (the same name with another number, or the same number under another name, on a human
 *   account or group) is reported by name; with policy `stop` it stops the migration, with `skip` the
 *   machine's clashing account or group is left out.
 */

export interface AccountTexts {
  passwd: string;
  shadow?: string;
  group: string;
  gshadow?: string;
}

export interface LoginDefs {
  uidMin: number;
  uidMax: number;
  gidMin: number;
  gidMax: number;
}

export interface AccountsReport {
  range: LoginDefs;
  /** Human accounts added to the image. */
  usersAdded: string[];
  /** Human accounts present in both whose passwd entry (GECOS, home, shell) came from the machine. */
  usersUpdated: string[];
  groupsAdded: string[];
  /** `user → group` memberships added to groups of the image. */
  membershipsAdded: string[];
  /** Accounts present in both whose shadow entry came from the machine. */
  hashesCarried: string[];
  clashes: string[];
  skipped: Array<{ name: string; reason: string }>;
  warnings: string[];
}

export interface AccountsMergeResult {
  files: AccountTexts;
  report: AccountsReport;
  /** Clashes under policy `stop`, or a database too broken to merge: the migration must not go on. */
  problems: string[];
}

export function parseLoginDefs(text: string | undefined): LoginDefs {
  const get = (key: string, dflt: number): number => {
    const m = text?.match(new RegExp(`^\\s*${key}\\s+(\\d+)\\s*$`, 'm'));
    return m ? Number(m[1]) : dflt;
  };
  return { uidMin: get('UID_MIN', 1000), uidMax: get('UID_MAX', 60000), gidMin: get('GID_MIN', 1000), gidMax: get('GID_MAX', 60000) };
}

interface Line {
  /** The line as written; entries keep it unless they change. */
  text: string;
  fields: string[] | null;
}

/** A colon file: comments, blank and NIS (+/-) lines are kept verbatim and never treated as entries. */
class ColonFile {
  readonly lines: Line[];
  constructor(
    readonly name: string,
    text: string,
    readonly width: number,
  ) {
    this.lines = text
      .split('\n')
      .filter((l, i, all) => !(l === '' && i === all.length - 1))
      .map((l, i) => {
        if (l.trim() === '' || l.startsWith('#') || l.startsWith('+') || l.startsWith('-')) return { text: l, fields: null };
        const fields = l.split(':');
        if (fields.length !== width || fields[0] === '') throw new Error(`${name} line ${i + 1}: expected ${width} fields, found ${fields.length}`);
        return { text: l, fields };
      });
  }
  get(name: string): string[] | undefined {
    return this.lines.find((l) => l.fields?.[0] === name)?.fields ?? undefined;
  }
  entries(): string[][] {
    return this.lines.flatMap((l) => (l.fields ? [l.fields] : []));
  }
  set(fields: string[]): void {
    const line = this.lines.find((l) => l.fields?.[0] === fields[0]);
    if (line) {
      line.fields = fields;
      line.text = fields.join(':');
    } else this.lines.push({ text: fields.join(':'), fields });
  }
  toString(): string {
    return `${this.lines.map((l) => l.text).join('\n')}\n`;
  }
}

export function mergeAccounts(machine: AccountTexts, image: AccountTexts, loginDefs: LoginDefs, onClash: 'stop' | 'skip'): AccountsMergeResult {
  const report: AccountsReport = {
    range: loginDefs,
    usersAdded: [],
    usersUpdated: [],
    groupsAdded: [],
    membershipsAdded: [],
    hashesCarried: [],
    clashes: [],
    skipped: [],
    warnings: [],
  };
  const problems: string[] = [];
  let m: { passwd: ColonFile; shadow?: ColonFile; group: ColonFile; gshadow?: ColonFile };
  let img: typeof m;
  try {
    m = parseAll(machine, 'this machine');
    img = parseAll(image, 'the image');
  } catch (err) {
    return { files: image, report, problems: [(err as Error).message] };
  }
  const humanUid = (id: number) => id >= loginDefs.uidMin && id <= loginDefs.uidMax;
  const humanGid = (id: number) => id >= loginDefs.gidMin && id <= loginDefs.gidMax;
  const clash = (text: string, name: string, kind: 'account' | 'group') => {
    report.clashes.push(text);
    if (onClash === 'stop') problems.push(text);
    else report.skipped.push({ name, reason: `${kind} left out by on_clash = skip: ${text}` });
  };

  // Users. `carried` are the machine's human accounts that exist in the merged image.
  const carried = new Set<string>();
  for (const mu of m.passwd.entries()) {
    const [name, , uidText] = mu as [string, string, string];
    const uid = Number(uidText);
    const iu = img.passwd.get(name);
    if (iu) {
      const imageUid = Number(iu[2]);
      if (imageUid !== uid && (humanUid(uid) || humanUid(imageUid))) {
        clash(`account ${name} is UID ${uid} on this machine but UID ${imageUid} in the image`, name, 'account');
        continue;
      }
      if (humanUid(uid)) {
        carried.add(name);
        if (mu.join(':') !== iu.join(':')) {
          img.passwd.set(mu);
          report.usersUpdated.push(name);
        }
      }
      carryShadow(name);
      continue;
    }
    if (!humanUid(uid)) {
      report.skipped.push({ name, reason: `system account (UID ${uid}) not in the image: system accounts come from the image` });
      continue;
    }
    const holder = img.passwd.entries().find((e) => Number(e[2]) === uid);
    if (holder) {
      clash(`UID ${uid} is ${name} on this machine but ${holder[0]} in the image`, name, 'account');
      continue;
    }
    img.passwd.set(mu);
    report.usersAdded.push(name);
    carried.add(name);
    if (img.shadow) {
      const ms = m.shadow?.get(name);
      if (ms) img.shadow.set(ms);
      else {
        img.shadow.set([name, '!', '', '', '', '', '', '', '']);
        report.warnings.push(`${name} has no shadow entry on this machine: added locked (!) in the image`);
      }
    }
  }

  function carryShadow(name: string): void {
    const ms = m.shadow?.get(name);
    const is = img.shadow?.get(name);
    if (!ms || !img.shadow) return;
    if (!is || ms.join(':') !== is.join(':')) {
      img.shadow.set(ms);
      report.hashesCarried.push(name);
    }
  }

  // Groups: human groups are added or updated; the machine's humans join the image's groups by name.
  for (const mg of m.group.entries()) {
    const [name, , gidText, membersText] = mg as [string, string, string, string];
    const gid = Number(gidText);
    const humansIn = splitMembers(membersText).filter((u) => carried.has(u));
    const ig = img.group.get(name);
    if (ig) {
      const imageGid = Number(ig[2]);
      if (imageGid !== gid && (humanGid(gid) || humanGid(imageGid))) {
        clash(`group ${name} is GID ${gid} on this machine but GID ${imageGid} in the image`, name, 'group');
        continue;
      }
      addMembers(name, humansIn);
      if (humanGid(gid)) carryGshadow(name);
      continue;
    }
    if (!humanGid(gid)) {
      for (const u of humansIn) report.warnings.push(`${u}'s membership in ${name} is dropped: the image has no group ${name}`);
      continue;
    }
    const holder = img.group.entries().find((e) => Number(e[2]) === gid);
    if (holder) {
      clash(`GID ${gid} is group ${name} on this machine but ${holder[0]} in the image`, name, 'group');
      continue;
    }
    // Members that are not accounts of the merged image would be dangling names.
    const kept = splitMembers(membersText).filter((u) => img.passwd.get(u));
    for (const u of splitMembers(membersText).filter((x) => !img.passwd.get(x))) {
      report.warnings.push(`${u}'s membership in ${name} is dropped: the image has no account ${u}`);
    }
    img.group.set([name, mg[1] as string, gidText, kept.join(',')]);
    report.groupsAdded.push(name);
    if (img.gshadow) {
      const mgs = m.gshadow?.get(name);
      img.gshadow.set(mgs ? [name, mgs[1] as string, filterMembers(mgs[2] as string, img), kept.join(',')] : [name, '!', '', kept.join(',')]);
    }
  }

  function addMembers(group: string, users: string[]): void {
    const ig = img.group.get(group) as string[];
    const have = splitMembers(ig[3] as string);
    const add = users.filter((u) => !have.includes(u));
    if (add.length === 0) return;
    img.group.set([ig[0] as string, ig[1] as string, ig[2] as string, [...have, ...add].join(',')]);
    const igs = img.gshadow?.get(group);
    if (igs) {
      const gsHave = splitMembers(igs[3] as string);
      img.gshadow?.set([igs[0] as string, igs[1] as string, igs[2] as string, [...gsHave, ...add.filter((u) => !gsHave.includes(u))].join(',')]);
    }
    for (const u of add) report.membershipsAdded.push(`${u} → ${group}`);
  }

  function carryGshadow(name: string): void {
    const mgs = m.gshadow?.get(name);
    const igs = img.gshadow?.get(name);
    if (!mgs || !igs || !img.gshadow) return;
    // Password and administrators from the machine; members as merged into group.
    img.gshadow.set([name, mgs[1] as string, filterMembers(mgs[2] as string, img), igs[3] as string]);
  }

  // Every account added or updated must have its primary group in the merged image.
  for (const name of [...carried]) {
    const pw = img.passwd.get(name) as string[];
    const gid = Number(pw[3]);
    if (!img.group.entries().some((g) => Number(g[2]) === gid)) {
      const text = `account ${name}'s primary group GID ${gid} is not in the image (and was not migrated)`;
      report.clashes.push(text);
      problems.push(text);
    }
  }
  return {
    files: {
      passwd: img.passwd.toString(),
      shadow: img.shadow?.toString(),
      group: img.group.toString(),
      gshadow: img.gshadow?.toString(),
    },
    report,
    problems,
  };
}

function parseAll(t: AccountTexts, where: string) {
  const named = (f: string) => `${f} of ${where}`;
  return {
    passwd: new ColonFile(named('/etc/passwd'), t.passwd, 7),
    shadow: t.shadow === undefined ? undefined : new ColonFile(named('/etc/shadow'), t.shadow, 9),
    group: new ColonFile(named('/etc/group'), t.group, 4),
    gshadow: t.gshadow === undefined ? undefined : new ColonFile(named('/etc/gshadow'), t.gshadow, 4),
  };
}

function splitMembers(text: string): string[] {
  return text.split(',').map((s) => s.trim()).filter(Boolean);
}

function filterMembers(text: string, img: { passwd: ColonFile }): string {
  return splitMembers(text).filter((u) => img.passwd.get(u)).join(',');
}
