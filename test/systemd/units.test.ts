import t from 'tap';
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { REPO } from '../helpers/cli.js';
import { skipUnless } from '../helpers/requirements.js';

/**
 * Every unit in systemd/ passes `systemd-analyze verify`, and the confirm unit gates boot-complete.target
 * as systemd's boot assessment expects (RequiredBy=, not Requires=).
 *
 * verify insists that ExecStart's /usr/bin/upgradectl exists and that every unit referred to can be
 * loaded, so it runs against a temporary root (--root) holding the units, a stand-in executable and a
 * copy of this machine's own system units.
 */

const UNITS = path.join(REPO, 'systemd');
const unitFiles = readdirSync(UNITS).filter((f) => /\.(service|timer|target|socket|path)$/.test(f));
const skip = skipUnless({ commands: ['systemd-analyze'] });

/** The value(s) of `key` in `[section]` of a unit file. */
function directives(text: string, section: string, key: string): string[] {
  const out: string[] = [];
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const head = /^\[(.+)\]$/.exec(line);
    if (head) current = head[1]!;
    else if (current === section && line.startsWith(`${key}=`)) out.push(...line.slice(key.length + 1).split(/\s+/).filter(Boolean));
  }
  return out;
}

t.test('systemd-analyze verify accepts every unit without a warning', { skip }, async (t) => {
  const root = t.testdir();
  const unitDir = path.join(root, 'etc/systemd/system');
  mkdirSync(unitDir, { recursive: true });
  for (const f of unitFiles) cpSync(path.join(UNITS, f), path.join(unitDir, f));
  mkdirSync(path.join(root, 'usr/bin'), { recursive: true });
  mkdirSync(path.join(root, 'bin'), { recursive: true });
  // verify only checks that the programs the units run exist and are executable.
  for (const program of ['usr/bin/upgradectl', 'bin/sh', 'bin/kill']) {
    writeFileSync(path.join(root, program), '#!/bin/true\n');
    chmodSync(path.join(root, program), 0o755);
  }
  // The targets and services our units name (sysinit.target, boot-complete.target, …), as this systemd ships them.
  cpSync('/usr/lib/systemd/system', path.join(root, 'usr/lib/systemd/system'), { recursive: true, verbatimSymlinks: true });

  t.same([...unitFiles].sort(), ['upgradectl-confirm.service', 'upgradectl-kept-files.service', 'upgradectl.service'], `units found: ${unitFiles.join(' ')}`);
  for (const f of unitFiles) {
    const r = spawnSync('systemd-analyze', [`--root=${root}`, 'verify', '--man=no', path.join(unitDir, f)], { encoding: 'utf8' });
    // verify exits 0 on unknown keys and unparsable values; it only says so on stderr.
    t.equal(r.status, 0, `${f}: systemd-analyze verify exit status`);
    t.equal(`${r.stdout}${r.stderr}`.trim(), '', `${f}: systemd-analyze verify says nothing`);
  }
});

t.test('upgradectl-confirm.service gates boot-complete.target (RequiredBy=, Before=), never Requires= it', async (t) => {
  const text = readFileSync(path.join(UNITS, 'upgradectl-confirm.service'), 'utf8');
  t.ok(directives(text, 'Install', 'RequiredBy').includes('boot-complete.target'), '[Install] RequiredBy=boot-complete.target');
  t.ok(directives(text, 'Unit', 'Before').includes('boot-complete.target'), '[Unit] Before=boot-complete.target');
  t.notOk(directives(text, 'Unit', 'Requires').includes('boot-complete.target'), 'no Requires=boot-complete.target');
  t.ok(directives(text, 'Install', 'WantedBy').includes('multi-user.target'), 'still started on every boot (WantedBy=multi-user.target)');
});

t.test('upgradectl.service: notify with NotifyAccess for the systemd-notify CLI, a watchdog, low priority, reload by SIGHUP', async (t) => {
  const text = readFileSync(path.join(UNITS, 'upgradectl.service'), 'utf8');
  const one = (section: string, key: string) => directives(text, section, key).join(' ');
  t.equal(one('Service', 'Type'), 'notify');
  // READY=1 and STATUS= are sent by the systemd-notify CLI, a child process: only NotifyAccess=all lets them in.
  t.equal(one('Service', 'NotifyAccess'), 'all');
  t.ok(one('Service', 'WatchdogSec'), 'WatchdogSec= set');
  t.equal(one('Service', 'IOSchedulingClass'), 'idle');
  t.ok(Number(one('Service', 'Nice')) > 0, 'niced');
  t.match(one('Service', 'ExecReload'), /kill -HUP \$MAINPID/);
  t.equal(one('Service', 'KillSignal'), 'SIGTERM');
});
