import { UpgradeError } from '../../core/errors.js';
import { FileStore } from './file.js';
import { HttpSource } from './http.js';
import { LazyS3 } from './s3-lazy.js';
import type { Source, SourceOptions, SourceSpec, Target } from './source.js';

export type { ObjectInfo, RetryPolicy, Source, SourceOptions, SourceSpec, Target } from './source.js';
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
      return new LazyS3(parsed, opts);
    default:
      throw unknownScheme(parsed, SOURCE_FORMS);
  }
}

/**
 * A source opened again in another thread from its `workerSpec`. A pre-signed S3 object is plain
 * HTTP(S): the worker needs neither the SDK (~27 MB and its start-up per thread) nor credentials.
 */
export function openSpec(spec: SourceSpec): Source {
  if (spec.signedKey !== undefined) return new HttpSource(parseUrl(spec.url, SOURCE_FORMS), spec.opts, spec.signedKey, spec.store);
  return openSource(spec.url, spec.opts);
}

/** Where `publish` writes releases. HTTP servers are read-only to us: publish to their backing store. */
export function openTarget(url: string, opts: SourceOptions = {}): Target {
  const parsed = parseUrl(url, TARGET_FORMS);
  switch (parsed.protocol) {
    case 'file:':
      return new FileStore(parsed);
    case 's3:':
      return new LazyS3(parsed, opts);
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
