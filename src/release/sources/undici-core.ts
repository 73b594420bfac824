import { createRequire } from 'node:module';
import type { Agent as AgentClass, Dispatcher } from 'undici';

/**
 * The two parts of undici that HttpSource uses (a keep-alive Agent and `request`), loaded from their
 * own files instead of undici's index, which also loads fetch, WebSocket, the cache, mocks and proxy
 * agents: ~100 ms of start-up per thread against ~30 ms (measured on the 2-core machine), paid by the
 * main thread and by each frame worker before its first frame. undici is pinned to an exact version in
 * package.json (these paths are not a public API: check them when upgrading it);
 * test/release/sources/http.test.ts exercises what HttpSource does through them.
 */
const require = createRequire(import.meta.url);

/**
 * Loaded on first use: a frame worker whose ranges all go through range-socket.ts never needs undici
 * (~30 ms of start-up per thread).
 */
let loaded:
  | {
      Agent: typeof AgentClass;
      dispatchRequest: (this: Dispatcher, opts: Dispatcher.RequestOptions) => Promise<Dispatcher.ResponseData>;
      parseHeaders: (raw: Buffer[]) => Record<string, string | string[] | undefined>;
    }
  | undefined;
const undici = () =>
  (loaded ??= {
    Agent: require('undici/lib/dispatcher/agent') as typeof AgentClass,
    dispatchRequest: require('undici/lib/api/api-request'),
    parseHeaders: (require('undici/lib/core/util') as { parseHeaders: (raw: Buffer[]) => Record<string, string | string[] | undefined> }).parseHeaders,
  });

/** A keep-alive undici Agent. */
export function newAgent(opts: AgentClass.Options): Dispatcher {
  return new (undici().Agent)(opts);
}

/** undici's `request(url, { dispatcher, method, headers })`, as its index builds it from the same parts. */
export function request(url: URL, opts: { dispatcher: Dispatcher; method: 'GET' | 'HEAD'; headers: Record<string, string> }): Promise<Dispatcher.ResponseData> {
  return undici().dispatchRequest.call(opts.dispatcher, { origin: url.origin, path: `${url.pathname}${url.search}`, method: opts.method, headers: opts.headers });
}

/**
 * A response whose body is handed to the caller chunk by chunk as undici parses it, without the
 * Readable stream `request` wraps it in (whose push/read/async-iterator steps per 64 KiB chunk were
 * a visible share of a frame worker's time: docs/performance.md).
 */
export interface DirectResponse {
  statusCode: number;
  headers: Record<string, string | string[] | undefined>;
  /**
   * Feed the body to `sink` (chunks that arrived before this call first) and resolve when it has
   * ended. A chunk is only valid during the call. If `sink` throws, the request is aborted (its
   * connection closed) and the promise rejects with what it threw.
   */
  drain(sink: (chunk: Buffer) => void): Promise<void>;
}

/** The dispatcher handler behind `requestDirect` (undici's handler protocol: onConnect … onComplete/onError). */
class DirectHandler implements DirectResponse {
  statusCode = 0;
  headers: Record<string, string | string[] | undefined> = {};
  private abort: ((err: Error) => void) | undefined;
  /** Chunks that came before a sink was attached (the same socket read as the headers, typically). */
  private early: Buffer[] = [];
  private sink: ((chunk: Buffer) => void) | undefined;
  private ended = false;
  private failure: Error | undefined;
  private settle: { resolve: () => void; reject: (err: Error) => void } | undefined;

  constructor(
    private readonly onHead: (res: DirectResponse) => void,
    private readonly onHeadError: (err: Error) => void,
  ) {}

  onConnect(abort: (err: Error) => void): void {
    this.abort = abort;
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[]): boolean {
    // 1xx (100 Continue and the like) precede the real answer.
    if (statusCode < 200) return true;
    this.statusCode = statusCode;
    this.headers = undici().parseHeaders(rawHeaders);
    this.onHead(this);
    return true;
  }

  onData(chunk: Buffer): boolean {
    // After a failure (the sink threw, the request is being aborted) nothing more is handed on.
    if (this.failure) return false;
    if (!this.sink) {
      this.early.push(chunk);
      return true;
    }
    try {
      this.sink(chunk);
      return true;
    } catch (err) {
      this.fail(err as Error);
      this.abort?.(err as Error);
      return false;
    }
  }

  onComplete(): void {
    this.ended = true;
    this.settle?.resolve();
  }

  onError(err: Error): void {
    if (this.statusCode === 0) this.onHeadError(err);
    else this.fail(err);
  }

  drain(sink: (chunk: Buffer) => void): Promise<void> {
    try {
      for (const chunk of this.early) if (!this.failure) sink(chunk);
    } catch (err) {
      this.fail(err as Error);
      this.abort?.(err as Error);
    }
    this.early = [];
    this.sink = sink;
    if (this.failure) return Promise.reject(this.failure);
    if (this.ended) return Promise.resolve();
    return new Promise((resolve, reject) => (this.settle = { resolve, reject }));
  }

  private fail(err: Error): void {
    // The first failure is the one to report (an abort we asked for comes back as a second one).
    if (this.failure) return;
    this.failure = err;
    this.settle?.reject(err);
  }
}

/** Like `request`, but the body comes through `drain` (see DirectResponse) instead of a Readable. */
export function requestDirect(url: URL, opts: { dispatcher: Dispatcher; method: 'GET'; headers: Record<string, string> }): Promise<DirectResponse> {
  return new Promise((resolve, reject) => {
    const handler = new DirectHandler(resolve, reject);
    opts.dispatcher.dispatch({ origin: url.origin, path: `${url.pathname}${url.search}`, method: opts.method, headers: opts.headers }, handler as unknown as Dispatcher.DispatchHandler);
  });
}
