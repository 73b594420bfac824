import t from 'tap';
import { UpgradeError } from '../../../src/core/errors.js';
import { setLogLevel } from '../../../src/core/log.js';
import {
  Retrier,
  TransientError,
  backoffDelay,
  resolvePolicy,
  resumingStream,
  transientReason,
  withRetry,
} from '../../../src/release/sources/retry.js';

/** The shared retry loop: what is retried, how long it waits, what it says at the end. */

setLogLevel('error');

const POLICY = { retries: 3, baseDelayMs: 1, stallTimeoutMs: 100 };

const errno = (code: string, message = code) => Object.assign(new Error(message), { code });

t.test('transient failures are retried until success', async (t) => {
  let calls = 0;
  const result = await withRetry(
    async () => {
      calls += 1;
      if (calls === 1) throw errno('ECONNRESET');
      if (calls === 2) throw new TransientError('HTTP 503');
      return 'ok';
    },
    POLICY,
    'GET http://127.0.0.1/x',
  );
  t.equal(result, 'ok');
  t.equal(calls, 3);
});

t.test('UpgradeErrors pass through at once', async (t) => {
  let calls = 0;
  const err = await withRetry(
    async () => {
      calls += 1;
      throw new UpgradeError('NOT_FOUND', 'x does not exist');
    },
    POLICY,
    'GET x',
  ).catch((e: unknown) => e);
  t.equal((err as UpgradeError).code, 'NOT_FOUND');
  t.equal(calls, 1);
});

t.test('an unknown error is final: NETWORK naming the operation, the cause kept', async (t) => {
  const cause = new Error('self-signed certificate');
  const err = (await withRetry(
    async () => {
      throw cause;
    },
    POLICY,
    'GET https://mirror/x',
  ).catch((e: unknown) => e)) as UpgradeError;
  t.equal(err.code, 'NETWORK');
  t.match(err.message, 'GET https://mirror/x failed: self-signed certificate');
  t.equal(err.cause, cause);
});

t.test('after the last retry: NETWORK with the attempts and the last cause', async (t) => {
  let calls = 0;
  const err = (await withRetry(
    async () => {
      calls += 1;
      throw errno('UND_ERR_BODY_TIMEOUT', 'Body Timeout Error');
    },
    POLICY,
    'GET http://127.0.0.1/y',
    'is the mirror up?',
  ).catch((e: unknown) => e)) as UpgradeError;
  t.equal(calls, 4);
  t.equal(err.code, 'NETWORK');
  t.match(err.message, 'GET http://127.0.0.1/y failed after 4 attempts; last error: stalled');
  t.equal(err.hint, 'is the mirror up?');
});

t.test('classification looks through causes', async (t) => {
  t.match(transientReason(new Error('fetch failed', { cause: errno('ECONNREFUSED') })) ?? '', /ECONNREFUSED/);
  t.equal(transientReason(new Error('plain')), undefined);
  t.equal(transientReason(new UpgradeError('CHANGED', 'changed', { cause: errno('ECONNRESET') })), undefined, 'an UpgradeError is final whatever its cause');
  t.ok(transientReason(Object.assign(new Error('socket timed out'), { name: 'TimeoutError' })));
});

t.test('backoff doubles with jitter, honours Retry-After, and is capped at 30 s', async (t) => {
  const policy = { retries: 10, baseDelayMs: 100, stallTimeoutMs: 1000 };
  for (let failure = 1; failure <= 5; failure++) {
    const full = 100 * 2 ** (failure - 1);
    const d = backoffDelay(policy, failure);
    t.ok(d >= full / 2 && d <= full, `failure ${failure}: ${d} ms within [${full / 2}, ${full}]`);
  }
  t.ok(backoffDelay(policy, 40) <= 30_000, 'capped');
  t.ok(backoffDelay(policy, 1, 5000) >= 5000, 'Retry-After is a floor');
  t.equal(backoffDelay(policy, 1, 120_000), 30_000, 'but not beyond the cap');
});

t.test('policies are checked', async (t) => {
  t.same(resolvePolicy({ retries: 1, stallTimeoutMs: undefined }), { retries: 1, stallTimeoutMs: 30_000, baseDelayMs: 500 });
  t.throws(() => resolvePolicy({ retries: -1 }), { code: 'CONFIG' });
  t.throws(() => resolvePolicy({ stallTimeoutMs: 0 }), { code: 'CONFIG' });
  t.throws(() => resolvePolicy({ baseDelayMs: Number.NaN }), { code: 'CONFIG' });
});

t.test('a resuming stream reopens at the byte reached, pinned to the first version seen', async (t) => {
  const data = Buffer.from('abcdefghijklmnopqrstuvwxyz');
  const opens: { position: number; etag: string | undefined }[] = [];
  const open = async (position: number, etag: string | undefined) => {
    opens.push({ position, etag });
    const attempt = opens.length;
    return {
      etag: '"v1"',
      chunks: (async function* () {
        for (let i = position; i < data.length; i += 4) {
          // The first two bodies break after one chunk each.
          if (attempt <= 2 && i > position) throw errno('ECONNRESET');
          yield data.subarray(i, Math.min(data.length, i + 4));
        }
      })(),
    };
  };
  const parts: Buffer[] = [];
  for await (const chunk of resumingStream(open, 2, undefined, new Retrier({ ...POLICY, retries: 1 }, 'GET z'))) parts.push(chunk);
  t.equal(Buffer.concat(parts).toString(), data.subarray(2).toString());
  t.same(opens, [
    { position: 2, etag: undefined },
    { position: 6, etag: '"v1"' },
    { position: 10, etag: '"v1"' },
  ]);
});

t.test('a resuming stream without progress uses up its budget', async (t) => {
  let opens = 0;
  const open = async () => {
    opens += 1;
    throw errno('ECONNREFUSED');
  };
  const stream = resumingStream(open, 0, undefined, new Retrier(POLICY, 'GET w'));
  const err = (await (async () => {
    for await (const _ of stream) t.fail('no data expected');
  })().catch((e: unknown) => e)) as UpgradeError;
  t.equal(err.code, 'NETWORK');
  t.equal(opens, 4);
});
