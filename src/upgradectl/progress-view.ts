import { Progress } from '../release/progress.js';

/**
 * A progress line on stderr when it is a terminal (bytes, rate, ETA), at most a few times a second;
 * nothing otherwise, so logs and pipes stay clean.
 */
export function terminalProgress(label: string, total: number): Progress {
  const p = new Progress(label, total);
  if (!process.stderr.isTTY) return p;
  let last = 0;
  p.onChange(() => {
    const now = Date.now();
    if (now - last < 200 && p.done < p.total) return;
    last = now;
    const eta = p.etaSeconds;
    const line = `${label}: ${fmtBytes(p.done)} / ${fmtBytes(p.total)} (${(p.fraction * 100).toFixed(0)}%) ${fmtBytes(p.rate)}/s${eta === undefined ? '' : ` ETA ${Math.ceil(eta)} s`}`;
    process.stderr.write(`\r\x1b[K${line}${p.done >= p.total ? '\n' : ''}`);
  });
  return p;
}

export function fmtBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
