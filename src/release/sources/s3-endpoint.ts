import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { isLoopbackHost, type SourceOptions } from './source.js';

/** Bucket and key prefix of an s3://BUCKET/PREFIX source, and how messages name the prefix. */
export function s3Location(url: URL): { bucket: string; prefix: string; shown: string } {
  const bucket = url.hostname;
  const prefix = decodeURIComponent(url.pathname).replace(/^\/+|\/+$/g, '');
  return { bucket, prefix, shown: `s3://${bucket}${prefix === '' ? '' : `/${prefix}`}` };
}

/** Where a bucket's objects are when the common rules suffice: `base` + the encoded object key. */
export interface DirectEndpoint {
  base: URL;
  region: string;
}

/**
 * The bucket's URL as @aws-sdk/client-s3 would build it, for the set-ups whose answer is plain: an
 * S3-compatible endpoint with path-style addressing ([source] endpoint + force_path_style, MinIO,
 * Ceph, s3rver), or AWS's regional endpoints in the commercial and China partitions. Anything else
 * (FIPS or dual-stack endpoints, endpoint overrides in the environment or ~/.aws/config, buckets
 * named with dots or as access points, an unusual region, a region only the profile names) returns
 * why, and the SDK, which knows every rule, reads the release instead. Reads are still checked: a
 * URL built here that the store refuses sends that source back to the SDK too (s3-lazy.ts).
 */
export function directEndpoint(bucket: string, opts: SourceOptions, env: NodeJS.ProcessEnv = process.env): DirectEndpoint | { sdk: string } {
  const region = opts.region || env.AWS_REGION;
  if (!region) return { sdk: 'no region in [source] region or AWS_REGION' };
  for (const name of ['AWS_USE_FIPS_ENDPOINT', 'AWS_USE_DUALSTACK_ENDPOINT', 'AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_S3']) {
    const value = env[name];
    if (value && value !== 'false') return { sdk: `${name} is set` };
  }
  const overridden = sharedConfigOverride(env);
  if (overridden) return { sdk: overridden };
  if (opts.endpoint) {
    const endpoint = new URL(opts.endpoint);
    // Refused with its own message by the SDK's side (S3Store), as a plain-http endpoint always was.
    if (endpoint.protocol !== 'https:' && !(endpoint.protocol === 'http:' && isLoopbackHost(endpoint.hostname))) return { sdk: 'not an https endpoint' };
    if (!opts.forcePathStyle) return { sdk: 'virtual-hosted addressing on a custom endpoint' };
    if (endpoint.pathname !== '/' || endpoint.search !== '' || endpoint.username !== '') return { sdk: 'an endpoint with a path, query or user' };
    return { base: new URL(`${endpoint.origin}/${encodeURIComponent(bucket)}/`), region };
  }
  const domain = /^(?:af|ap|ca|eu|il|me|mx|sa|us)-[a-z]+-\d$/.test(region)
    ? 'amazonaws.com'
    : /^cn-[a-z]+-\d$/.test(region)
      ? 'amazonaws.com.cn'
      : undefined;
  if (!domain || region.startsWith('us-gov-')) return { sdk: `region ${region} is not a commercial or China AWS region` };
  if (opts.forcePathStyle) return { base: new URL(`https://s3.${region}.${domain}/${encodeURIComponent(bucket)}/`), region };
  // Virtual-hosted names only for plain bucket names; "--" marks directory buckets, access point and
  // Object Lambda aliases, which have endpoints (and auth) of their own.
  if (!/^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$/.test(bucket) || bucket.includes('--')) return { sdk: `bucket name ${bucket}` };
  return { base: new URL(`https://${bucket}.s3.${region}.${domain}/`), region };
}

/**
 * The AWS shared config file can move S3 elsewhere (endpoint_url, FIPS, dual-stack, per-service
 * sections); when it says any of that, for any profile, the SDK decides. Read bounded: it is a small file.
 */
function sharedConfigOverride(env: NodeJS.ProcessEnv): string | undefined {
  const file = env.AWS_CONFIG_FILE || path.join(env.HOME || homedir(), '.aws', 'config');
  let text: string;
  try {
    text = readFileSync(file, { encoding: 'utf8', flag: 'r' }).slice(0, 1 << 20);
  } catch {
    return undefined;
  }
  const key = /^\s*(endpoint_url|use_fips_endpoint|use_dualstack_endpoint|s3|services)\s*=/m.exec(text)?.[1];
  return key ? `${file} sets ${key}` : undefined;
}
