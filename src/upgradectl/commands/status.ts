import type { Command } from '../cli.js';
import { machineStatus } from '../../operations/status.js';
import { fmtBytes } from '../progress-view.js';

export const statusCommand: Command = {
  summary: 'phase, booted/current/previous/next, progress, last result and its reason',
  usage: 'status',
  async run({ layout }) {
    const s = await machineStatus(layout);
    const lines = [
      `phase:    ${s.phase}`,
      `booted:   ${s.booted ?? '(not booted from an image)'}${s.untracked ? ' (untracked)' : ''}`,
      `current:  ${s.current ?? '-'}`,
      `previous: ${s.previous ?? '-'}`,
      `next:     ${s.next ?? '-'}`,
    ];
    for (const d of s.downloads) {
      lines.push(`download: ${d.version} ${fmtBytes(d.bytesDone)} of ${fmtBytes(d.total)} (${d.total ? ((d.bytesDone / d.total) * 100).toFixed(0) : 0}%), last progress ${d.updatedAt}`);
    }
    if (s.images.length) lines.push(`images:   ${s.images.map((i) => `${i.version} (${fmtBytes(i.allocated)})`).join(', ')}`);
    const bad = Object.entries(s.bad);
    if (bad.length) lines.push(`failed:   ${bad.map(([v, b]) => `${v}: ${b.reason}`).join('; ')}`);
    const last = s.last;
    if (last) lines.push(`last:     ${last.at} ${last.event} ${last.ok ? 'ok' : 'FAILED'}${last.version ? ` (${last.version})` : ''}${last.reason ? `: ${last.reason}` : ''}`);
    if (s.untracked) lines.push(`note:     ${s.untracked.reason}`, `          ${s.untracked.hint}`);
    const svc = s.service;
    if (svc) {
      if (svc.lastCheck) lines.push(`checked:  ${svc.lastCheck.at} ${svc.lastCheck.ok ? 'ok' : 'FAILED'}: ${svc.lastCheck.result}${svc.lastCheck.hint ? ` (${svc.lastCheck.hint})` : ''}`);
      if (svc.download) {
        const eta = svc.download.etaSeconds === null ? '' : `, about ${Math.ceil(svc.download.etaSeconds / 60)} min left`;
        lines.push(`fetching: ${fmtBytes(svc.download.bytesDone)} of ${fmtBytes(svc.download.total)} at ${fmtBytes(svc.download.bytesPerSecond)}/s${eta}`);
      }
      if (svc.window) lines.push(`window:   ${svc.window.text} (${svc.window.open ? `open until ${svc.window.closes}` : `this machine's turn at ${svc.window.next}`})`);
      if (svc.next) lines.push(`plan:     ${svc.next.action} at ${svc.next.at}`);
      if (svc.lastError) lines.push(`error:    ${svc.lastError.at} ${svc.lastError.message}${svc.lastError.hint ? `\n          ${svc.lastError.hint}` : ''}`);
    }
    return { data: s, text: lines.join('\n') };
  },
};
