import { createRequire } from 'node:module';
import type { Agent as AgentClass, Dispatcher } from 'undici';

/**
 * The two parts of undici that HttpSource uses (a keep-alive Agent and `request`), loaded from their
 * own files instead of undici's index, which also loads fetch, WebSocket, the cache, mocks and proxy
 * agents: ~100 ms of start-up per thread against ~30 ms (measured on the 2-core machine). Loaded on
 * first use: a prepare whose requests all go through range-socket.ts never loads undici at all.
 * undici is pinned to an exact version in package.json (these paths are not a public API: check them
 * when upgrading it); test/release/sources/http.test.ts exercises what HttpSource does through them.
 */
const require = createRequire(import.meta.url);

let loaded:
  | {
      Agent: typeof AgentClass;
      dispatchRequest: (this: Dispatcher, opts: Dispatcher.RequestOptions) => Promise<Dispatcher.ResponseData>;
    }
  | undefined;
const undici = () =>
  (loaded ??= {
    Agent: require('undici/lib/dispatcher/agent') as typeof AgentClass,
    dispatchRequest: require('undici/lib/api/api-request'),
  });

/** A keep-alive undici Agent. */
export function newAgent(opts: AgentClass.Options): Dispatcher {
  return new (undici().Agent)(opts);
}

/** undici's `request(url, { dispatcher, method, headers })`, as its index builds it from the same parts. */
export function request(url: URL, opts: { dispatcher: Dispatcher; method: 'GET' | 'HEAD'; headers: Record<string, string> }): Promise<Dispatcher.ResponseData> {
  return undici().dispatchRequest.call(opts.dispatcher, { origin: url.origin, path: `${url.pathname}${url.search}`, method: opts.method, headers: opts.headers });
}
