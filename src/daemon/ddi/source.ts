import { createHash } from 'node:crypto';
import type { Dispatcher } from 'undici';
import { UpgradeError } from '../../core/errors.js';
import { byteWindow, collect } from '../../release/sources/body.js';
import { checkRange, rangeTooLong } from '../../release/sources/keys.js';
import { Retrier, TransientError, resolvePolicy, resumingStream, withRetry, type OpenedBody } from '../../release/sources/retry.js';
import type { ObjectInfo, RetryPolicy, Source } from '../../release/sources/source.js';
import type { DdiClient } from './client.js';
import { isDdiError } from './errors.js';
import { shown } from './links.js';
import type { ArtifactRef, DdiRelease } from './release.js';

/** `get` is for the manifest and its signature; a payload-sized "small object" is a server's mistake. */
const SMALL_OBJECT_CAP = 16 << 20;
const HINT = 'check the network and the hawkBit server; the check-in tries again at its next poll';

/**
 * A release Source backed by a deployment's artifact links, so that prepare verifies a hawkBit
 * deployment exactly as it verifies a release from S3: our keys (`releases/<v>/manifest.json`, its
 * `.sig`, the payload) map to the release module's artifacts by file name. The server's size and
 * SHA-256 are a transport check (a wrong download fails early, with the server named); the trust root
 * stays keys.d, checked by prepare on the manifest and its frame hashes.
 */
export class DdiSource implements Source {
  readonly url: string;
  private readonly policy: RetryPolicy;

  constructor(
    private readonly client: DdiClient,
    private readonly release: DdiRelease,
    retry: Partial<RetryPolicy> = {},
  ) {
    this.policy = resolvePolicy(retry);
    this.url = `${client.url}/deploymentBase/${release.actionId}`;
  }

  async get(key: string): Promise<Buffer> {
    const ref = this.artifact(key);
    if (ref.size > SMALL_OBJECT_CAP) throw new UpgradeError('CORRUPT', `${this.where(ref)} is ${ref.size} bytes, too large for a ${ref.filename}`, { hint: 're-publish the release' });
    const bytes = await withRetry(
      async () => collect(await this.open(ref, 0, undefined), ref.size, () => mismatch(ref, `more than the ${ref.size} bytes the server announced arrived`)),
      this.policy,
      `GET ${this.where(ref)}`,
      HINT,
    );
    if (bytes.length !== ref.size) throw mismatch(ref, `${bytes.length} bytes arrived, the server announced ${ref.size}`);
    if (ref.sha256 !== undefined && createHash('sha256').update(bytes).digest('hex') !== ref.sha256) {
      throw mismatch(ref, 'its SHA-256 is not the one the server announced');
    }
    return bytes;
  }

  async head(key: string): Promise<ObjectInfo> {
    const ref = this.artifact(key);
    // The deployment already says what the artifact is; the tag pins a resumed download to it.
    return { size: ref.size, etag: tagOf(ref) };
  }

  async range(key: string, start: number, end: number, etag?: string): Promise<Buffer> {
    const ref = this.artifact(key, etag);
    checkRange(this.where(ref), start, end);
    if (end > ref.size) throw mismatch(ref, `bytes up to ${end} were asked of ${ref.size}`);
    if (start === end) return Buffer.alloc(0);
    return withRetry(
      async () => {
        const bytes = await collect(await this.open(ref, start, end), end - start, () => rangeTooLong(this.where(ref), start, end));
        if (bytes.length !== end - start) throw new TransientError(`short body: ${bytes.length} of ${end - start} bytes`);
        return bytes;
      },
      this.policy,
      `GET ${this.where(ref)} bytes ${start}-${end - 1}`,
      HINT,
    );
  }

  async *stream(key: string, start: number, etag?: string): AsyncIterable<Buffer> {
    const ref = this.artifact(key, etag);
    checkRange(this.where(ref), start);
    const retrier = new Retrier(this.policy, `GET ${this.where(ref)}`, HINT);
    const tag = tagOf(ref);
    let position = start;
    const opened = (at: number): Promise<OpenedBody> => this.open(ref, at, undefined).then((chunks) => ({ chunks, etag: tag }));
    for await (const chunk of resumingStream(opened, start, tag, retrier)) {
      position += chunk.length;
      yield chunk;
    }
    if (position !== ref.size) throw mismatch(ref, `the download ended at byte ${position} of ${ref.size}`);
  }

  /** The client (its connections) belongs to the check-in loop, which outlives this deployment. */
  async close(): Promise<void> {}

  private artifact(key: string, etag?: string): ArtifactRef {
    const prefix = `releases/${this.release.version}/`;
    const name = key.startsWith(prefix) ? key.slice(prefix.length) : undefined;
    const ref = name === undefined ? undefined : this.release.artifacts.get(name);
    if (ref === undefined) {
      throw new UpgradeError('NOT_FOUND', `${this.url} has no artifact for ${key}`, {
        hint: `the release module of action ${this.release.actionId} must hold the files upgradectl publish wrote for ${this.release.version}`,
      });
    }
    if (etag !== undefined && etag !== tagOf(ref)) {
      throw new UpgradeError('CHANGED', `${this.where(ref)} is not the artifact the download began with`, { hint: 'the deployment changed; prepare starts it again' });
    }
    return ref;
  }

  private where(ref: ArtifactRef): string {
    return shown(ref.url);
  }

  /** The body of bytes [start, end) (end undefined: to the artifact's end), whatever the server did with the Range. */
  private async open(ref: ArtifactRef, start: number, end: number | undefined): Promise<AsyncIterable<Buffer>> {
    const ranged = start > 0 || end !== undefined;
    let res: Dispatcher.ResponseData;
    try {
      res = await this.client.getArtifact(ref.url, ranged ? `bytes=${start}-${end === undefined ? '' : end - 1}` : undefined);
    } catch (err) {
      throw asTransport(err, ref);
    }
    const last = (end ?? ref.size) - 1;
    if (res.statusCode === 416 && end === undefined && start === ref.size) {
      // A finished download resumed from its very end: nothing left.
      await res.body.dump();
      return collectNothing();
    }
    if (res.statusCode === 206) {
      const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(res.headers['content-range'] ?? ''));
      const total = range?.[3] === '*' ? ref.size : Number(range?.[3]);
      if (!range || Number(range[1]) !== start || Number(range[2]) !== last || total !== ref.size) {
        res.body.dump().catch(() => undefined);
        throw mismatch(ref, `asked bytes ${start}-${last} of ${ref.size}, got "Content-Range: ${String(res.headers['content-range'])}"`);
      }
      return res.body as AsyncIterable<Buffer>;
    }
    if (res.statusCode === 200) {
      const length = res.headers['content-length'];
      if (length !== undefined && Number(length) !== ref.size) {
        res.body.dump().catch(() => undefined);
        throw mismatch(ref, `the server sends ${String(length)} bytes, it announced ${ref.size}`);
      }
      // A server that ignores Range sends the whole artifact: skip to `start`. Without a Content-Length,
      // read one byte past the announced size at most, enough to tell that it is too long.
      return byteWindow(res.body as AsyncIterable<Buffer>, ranged ? start : 0, ranged ? last - start + 1 : ref.size + 1);
    }
    res.body.dump().catch(() => undefined);
    throw mismatch(ref, `unexpected HTTP ${res.statusCode} to a range request`);
  }
}

/** The artifact's identity as the deployment states it: what a resumed download must still be. */
function tagOf(ref: ArtifactRef): string {
  return ref.sha256 !== undefined ? `sha256:${ref.sha256}` : `size:${ref.size}`;
}

/** Map the client's failures onto the Source contract: transient ones retried, 404 NOT_FOUND, the rest final. */
function asTransport(err: unknown, ref: ArtifactRef): unknown {
  if (isDdiError(err, 'unavailable') || isDdiError(err, 'rate-limited')) {
    return new TransientError(err.message, { cause: err, retryAfterMs: err.retryAfterMs });
  }
  if (isDdiError(err, 'rejected') && err.status === 404) {
    return new UpgradeError('NOT_FOUND', `${shown(ref.url)} does not exist (HTTP 404)`, { cause: err, hint: 'the artifact was removed from the software module; check the deployment in hawkBit' });
  }
  return err;
}

function mismatch(ref: ArtifactRef, what: string): UpgradeError {
  return new UpgradeError('CORRUPT', `artifact ${ref.filename} at ${shown(ref.url)}: ${what}`, {
    hint: 'the server does not serve the artifact it announced; check the software module in hawkBit (the release itself was not trusted yet)',
  });
}

async function* collectNothing(): AsyncGenerator<Buffer> {}
