import { Writable } from 'node:stream';
import winston from 'winston';
import { log } from '../../src/core/log.js';

/** The lines upgradectl logs while `fn` runs (every level), for tests that assert on a warning. */
export async function captureLog<T>(fn: () => T | Promise<T>): Promise<{ result: T; lines: string[] }> {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(chunk.toString().trimEnd());
      done();
    },
  });
  const transport = new winston.transports.Stream({ stream, level: 'debug' });
  log.add(transport);
  try {
    return { result: await fn(), lines };
  } finally {
    log.remove(transport);
  }
}
