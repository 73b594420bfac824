import t from 'tap';
import { mkdirSync, statSync, writeFileSync, readFileSync } from 'node:fs';
import { Layout } from '../../src/core/layout.js';
import { initialState, loadState, saveState, type State } from '../../src/operations/state.js';

const PROTO_NAMES = ['constructor', 'toString', 'valueOf', 'hasOwnProperty', '__proto__'];

function withState(dir: string, text: string): Layout {
  const layout = new Layout(dir);
  mkdirSync(layout.stateDir, { recursive: true });
  writeFileSync(layout.stateFile, text);
  return layout;
}

const good = (): State => ({
  schema: 1,
  phase: 'trying',
  current: '1.0',
  previous: '0.9',
  next: '2.0',
  bad: { '1.5': { reason: 'health check web failed', at: '2026-11-01T00:00:00.000Z' } },
  reentries: { event: 'commit', count: 1 },
  pending: { event: 'commit', step: 'arm', version: '2.0', since: '2026-11-02T00:00:00.000Z', bootId: 'b1' },
  phaseBootId: 'b1',
  trialKind: 'upgrade',
  history: [{ at: '2026-11-02T00:00:00.000Z', event: 'commit', from: 'prepared', to: 'committed', version: '2.0', ok: true, detail: { hooks: [] } }],
});

t.test('a valid state round-trips, root-only, with the same JSON', async (t) => {
  const layout = new Layout(t.testdir());
  await saveState(layout, good());
  t.equal(statSync(layout.stateFile).mode & 0o777, 0o600, 'state.json is 0600: it holds hook output');
  const loaded = await loadState(layout);
  t.same(loaded, good());
  t.equal(JSON.stringify(loaded), JSON.stringify(good()), 'the file format is unchanged');
  await saveState(layout, loaded);
  t.same(JSON.parse(readFileSync(layout.stateFile, 'utf8')), good());
});

t.test('versions named like Object.prototype members are not "bad"', async (t) => {
  const fresh = initialState();
  const layout = withState(t.testdir(), JSON.stringify(good()));
  const loaded = await loadState(layout);
  for (const v of PROTO_NAMES) {
    t.equal(fresh.bad[v], undefined, `fresh: ${v}`);
    t.equal(loaded.bad[v], undefined, `loaded: ${v}`);
  }
  t.equal(loaded.bad['1.5']?.reason, 'health check web failed');
  loaded.bad['constructor'] = { reason: 'a real version called constructor', at: 'now' };
  t.equal(loaded.bad['constructor']?.reason, 'a real version called constructor');
  t.equal(Object.keys(loaded.bad).length, 2);
});

t.test('a missing file is a fresh machine', async (t) => {
  t.same(await loadState(new Layout(t.testdir())), initialState());
});

t.test('a state of the wrong shape is refused, naming the field, with mv as the fix', async (t) => {
  const base = good() as unknown as Record<string, unknown>;
  const cases: Array<[string, unknown, RegExp]> = [
    ['history 5', { ...base, history: 5 }, /: history is 5, expected a list$/],
    ['history an object', { ...base, history: { push: 1 } }, /: history is an object, expected a list$/],
    ['bad a list', { ...base, bad: ['1.0'] }, /: bad is a list, expected an object$/],
    ['current a list', { ...base, current: ['1.0'] }, /: current is a list, expected a version/],
    ['next escapes', { ...base, next: '../../../tmp/x' }, /: next is "..\/..\/..\/tmp\/x", expected a version/],
    ['previous with a slash', { ...base, previous: 'a/b' }, /: previous is "a\/b", expected a version/],
    ['phase unknown', { ...base, phase: 'flying' }, /: phase is "flying", expected one of idle, prepared, committed, trying, rolled-back$/],
    ['bad key', { ...base, bad: { '../x': { reason: 'r', at: 'a' } } }, /: bad key "..\/x" is "..\/x", expected a version/],
    ['bad entry', { ...base, bad: { '1.0': 'yes' } }, /: bad\["1.0"\] is "yes", expected an object$/],
    ['bad reason', { ...base, bad: { '1.0': { at: 'a' } } }, /: bad\["1.0"\]\.reason is missing, expected a string$/],
    ['pending version', { ...base, pending: { event: 'commit', step: 's', since: 'x', version: '../x' } }, /: pending\.version is "..\/x"/],
    ['pending step', { ...base, pending: { event: 'commit', since: 'x' } }, /: pending\.step is missing/],
    ['reentries count', { ...base, reentries: { event: 'commit', count: -1 } }, /: reentries\.count is -1/],
    ['trialKind', { ...base, trialKind: 'sideways' }, /: trialKind is "sideways", expected upgrade or rollback$/],
    ['history entry', { ...base, history: [{ at: 'x', event: 'commit', from: 'idle', to: 'prepared' }] }, /: history\[0\]\.ok is missing, expected true or false$/],
    ['history phase', { ...base, history: [{ at: 'x', event: 'e', from: 'idle', to: 'nowhere', ok: true }] }, /: history\[0\]\.to is "nowhere"/],
    ['a list', [], /: the file is a list, expected an object$/],
    ['a string', 'x', /: the file is "x", expected an object$/],
  ];
  for (const falsy of [0, false, '', null]) cases.push([`${JSON.stringify(falsy)}`, falsy, new RegExp(`: the file is ${JSON.stringify(falsy)}, expected an object$`)]);
  for (const [name, doc, message] of cases) {
    const layout = withState(t.testdir(), JSON.stringify(doc));
    const f = layout.stateFile;
    await t.rejects(loadState(layout), { code: 'STATE', message, hint: `move it aside (mv ${f} ${f}.broken); upgradectl then rebuilds the state from the image that booted` }, name);
    await t.rejects(loadState(layout), { message: new RegExp(`^${f.replace(/[.]/g, '\\.')}: `) }, `${name}: names the file`);
  }
});

t.test('an unknown schema still says a newer upgradectl wrote it', async (t) => {
  const layout = withState(t.testdir(), JSON.stringify({ ...good(), schema: 2 }));
  await t.rejects(loadState(layout), { code: 'STATE', message: /has an unknown schema \(2\)/, hint: /newer upgradectl/ });
});
