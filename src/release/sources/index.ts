import { UpgradeError } from '../../upgradectl/errors.js';
import { FileStore } from './file.js';
import { HttpSource } from './http.js';
import { S3Store } from './s3.js';
import type { Source, SourceOptions, Target } from './source.js';

export type { ObjectInfo, RetryPolicy, Source, SourceOptions, Target } from './source.js';
export { DEFAULT_RETRY } from './source.js';

const SOURCE_FORMS = 's3://BUCKET/PREFIX, https://HOST/PREFIX, http://127.0.0.1/PREFIX (loopback only) or file:///DIR';
const TARGET_FORMS = 's3://BUCKET/PREFIX or file:///DIR';

/** Where releases are read from, chosen by the URL's scheme. Nothing is contacted until the first call. */
export function openSource(url: string, opts: SourceOptions = {}): Source {
  const parsed = parseUrl(url, SOURCE_FORMS);
  switch (parsed.protocol) {
    case 'file:':
      return new FileStore(parsed);
    case 'http:':
    case 'https:':
      return new HttpSource(parsed, opts);
    case 's3:':
      return new S3Store(parsed, opts);
    default:
      throw unknownScheme(parsed, SOURCE_FORMS);
  }
}

/** Where `publish` writes releases. HTTP servers are read-only to us: publish to their backing store. */
export function openTarget(url: string, opts: SourceOptions = {}): Target {
  const parsed = parseUrl(url, TARGET_FORMS);
  switch (parsed.protocol) {
    case 'file:':
      return new FileStore(parsed);
    case 's3:':
      return new S3Store(parsed, opts);
    case 'http:':
    case 'https:':
      throw new UpgradeError('USAGE', `cannot publish to ${redact(parsed)}: HTTP sources are read-only`, {
        hint: `publish to the directory or bucket the web server serves (${TARGET_FORMS})`,
      });
    default:
      throw unknownScheme(parsed, TARGET_FORMS);
  }
}

function parseUrl(url: string, forms: string): URL {
  try {
    return new URL(url);
  } catch (err) {
    throw new UpgradeError('USAGE', `"${url}" is not a URL`, {
      hint: `write the release location as ${forms}${url.startsWith('/') ? ` (here: file://${url})` : ''}`,
      cause: err,
    });
  }
}

function unknownScheme(parsed: URL, forms: string): UpgradeError {
  return new UpgradeError('USAGE', `unsupported URL scheme "${parsed.protocol}" in ${redact(parsed)}`, {
    hint: `write the release location as ${forms}`,
  });
}

/** Never echo a password from a URL into a message. */
function redact(url: URL): string {
  if (url.password === '') return url.href;
  const shown = new URL(url.href);
  shown.password = '***';
  return shown.href;
}
