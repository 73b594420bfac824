import { accessSync, constants, statSync } from 'node:fs';
import path from 'node:path';

/** Whether `tool` is an executable file in a PATH directory: to say what to install before running it. */
export function onPath(tool: string): boolean {
  const dirs = (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':').filter(Boolean);
  return dirs.some((d) => isExecutable(path.join(d, tool)));
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return statSync(file).isFile();
  } catch {
    return false;
  }
}
