import type { Command } from '../cli.js';
import { loadConfig } from '../../operations/config.js';
import { adopt, finishAdoption } from '../../operations/adopt.js';

const MARK = { ok: 'ok     ', note: 'note   ', blocker: 'BLOCKER' } as const;

export const adoptCommand: Command = {
  summary: 'take over this running, traditionally installed machine (its root filesystem becomes the host partition)',
  usage: 'adopt [--dry-run] | adopt --finish',
  options: {
    'dry-run': { type: 'boolean' },
    finish: { type: 'boolean' },
  },
  async run({ layout, options }) {
    const config = await loadConfig(layout);
    if (options.finish) {
      const r = await finishAdoption(layout, config);
      return { data: r, text: `the distribution's boot entry is gone (${r.removed} removed); ${r.current} is the only system GRUB boots, with its previous image as fallback` };
    }
    const r = await adopt(layout, config, { dryRun: Boolean(options['dry-run']), uid: process.getuid?.() });
    const lines = r.findings.map((f) => `${MARK[f.level]} ${f.check}: ${f.message}${f.fix && f.level !== 'ok' ? `\n        fix: ${f.fix}` : ''}`);
    if (r.blocked) {
      lines.push('', `adoption is blocked: fix each BLOCKER above, then run upgradectl adopt${r.dryRun ? ' --dry-run' : ''} again (nothing was changed)`);
    } else {
      lines.push('', r.dryRun ? 'upgradectl adopt would:' : 'adopted:', ...r.actions.map((a) => `  - ${a}`));
    }
    return { data: r, text: lines.join('\n'), exitCode: r.blocked ? 1 : 0 };
  },
};
