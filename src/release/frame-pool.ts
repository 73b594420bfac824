import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { UpgradeError, type ErrorCode } from '../core/errors.js';
import { log } from '../core/log.js';
import type { FrameOutcome, FrameResult, FrameTask } from './frame-worker.js';

type Pending = { resolve: (r: FrameResult) => void; reject: (e: Error) => void; outcome?: (o: FrameOutcome) => void };

// Under the test runner the sources are .ts (its loader is inherited by workers through execArgv);
// installed, they are compiled .js. The worker is a sibling file either way.
const WORKER_URL = new URL(`./frame-worker${import.meta.url.endsWith('.ts') ? '.ts' : '.js'}`, import.meta.url);

class FrameWorker {
  readonly worker: Worker;
  private nextId = 0;
  private pending = new Map<number, Pending>();
  busy = 0;
  /** Why the thread is gone, once it is: every later task fails with it instead of waiting forever. */
  private dead: Error | undefined;

  constructor() {
    // A small young generation: decoded frames are native buffers V8 barely sees, so without frequent
    // scavenges their garbage piles up (hundreds of MB) before anything collects it.
    this.worker = new Worker(WORKER_URL, { resourceLimits: { maxYoungGenerationSizeMb: 2 } });
    this.worker.on('message', (msg: { id: number; result?: FrameResult; error?: WorkerError; outcome?: FrameOutcome }) => {
      const p = this.pending.get(msg.id);
      if (!p) return;
      if (msg.outcome) {
        // One frame of a task settled; the task goes on.
        p.outcome?.(msg.outcome);
        return;
      }
      this.pending.delete(msg.id);
      this.busy--;
      if (msg.error) p.reject(rebuild(msg.error));
      else p.resolve(msg.result!);
    });
    this.worker.on('error', (err) => this.failAll(err));
    this.worker.on('exit', (code) => {
      this.dead ??= new Error(`frame worker exited with code ${code}`);
      this.failAll(this.dead);
    });
  }

  run(task: FrameTask, transfer: ArrayBuffer[] = [], outcome?: (o: FrameOutcome) => void, signal?: AbortSignal): Promise<FrameResult> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    this.busy++;
    const cancel = () => this.worker.postMessage({ cancel: id });
    signal?.addEventListener('abort', cancel, { once: true });
    return new Promise<FrameResult>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, outcome });
      this.worker.postMessage({ id, task }, transfer);
    }).finally(() => signal?.removeEventListener('abort', cancel));
  }

  get alive(): boolean {
    return !this.dead;
  }

  private failAll(err: Error): void {
    this.dead ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.busy = 0;
  }
}

interface WorkerError {
  message: string;
  code?: string;
  hint?: string;
  upgrade?: boolean;
}

/** A worker's error as the caller would have seen it had the work run here (code, message, hint). */
function rebuild(e: WorkerError): Error {
  if (e.upgrade && e.code) return new UpgradeError(e.code as ErrorCode, e.message, { hint: e.hint });
  return Object.assign(new Error(e.message), { code: e.code });
}

/**
 * Worker threads for compression, decode+verify+write and hashing; least busy worker first. The
 * threads start on `start()` or the first task, not with the pool: each costs ~0.2 s of CPU to start
 * and load its modules, which a prepare that finds nothing to download must not pay.
 */
export class FramePool {
  private workers: FrameWorker[] = [];
  readonly size: number;

  constructor(size = availableParallelism()) {
    this.size = Math.max(1, size);
  }

  /** Start the threads now (idempotent), e.g. as soon as a download is certain, so they load meanwhile. */
  start(): void {
    if (this.workers.length) return;
    this.workers = Array.from({ length: this.size }, () => new FrameWorker());
    // After the threads, not before: the first log line loads winston (~40 ms), which would hold them back.
    log.debug(`started ${this.size} frame worker threads`);
  }

  /**
   * `outcome`: called as each frame of a fetch-frames task is settled, before the task's own result.
   * `signal`: on abort, a fetch-frames task stops at its next frame (INTERRUPTED).
   */
  run<T extends FrameResult['op']>(task: FrameTask & { op: T }, transfer: ArrayBuffer[] = [], outcome?: (o: FrameOutcome) => void, signal?: AbortSignal): Promise<Extract<FrameResult, { op: T }>> {
    this.start();
    // A thread that died failed its own tasks; the others go on (a lost thread never takes new work).
    const live = this.workers.filter((w) => w.alive);
    const w = (live.length ? live : this.workers).reduce((a, b) => (b.busy < a.busy ? b : a));
    return w.run(task, transfer, outcome, signal) as Promise<Extract<FrameResult, { op: T }>>;
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.worker.terminate()));
  }
}

/** A slice of the image for the in-order hash: bytes in memory, zeros, or bytes already in the file. */
export type HashSlice = { data: Uint8Array } | { zero: number } | { file: { start: number; end: number } };

/** Decoded frames held for the hash while an earlier one is late; beyond this they are read back from the file. */
const MAX_HELD = 4;
/** Bytes queued for the hash worker before downloads wait for it (backpressure keeps memory flat). */
export const HASH_BACKLOG = 24 << 20;

/**
 * One dedicated worker that hashes the whole image in order while frames land out of order. Decoded
 * frames are handed over in memory (no read-back); zero frames are hashed from a zero buffer.
 */
export class OrderedHasher {
  private worker = new FrameWorker();
  private chain: Promise<unknown> = Promise.resolve();
  private hashedTo = 0;
  private nextSlice = 0;
  private held = new Map<number, HashSlice>();

  constructor(private readonly fd: number) {}

  /** Slice number `index` (frames: the frame index) is final; slices are hashed in index order. */
  add(index: number, slice: HashSlice): void {
    this.held.set(index, slice);
    let inMemory = 0;
    for (const s of this.held.values()) if ('data' in s) inMemory++;
    if (inMemory > MAX_HELD) {
      // A late frame (a stalled request) must not make memory grow with the image: drop the copies.
      for (const [i, s] of this.held) if ('data' in s) this.held.set(i, { file: this.rangeOf(i, s) });
    }
    for (let s = this.held.get(this.nextSlice); s; s = this.held.get(this.nextSlice)) {
      this.held.delete(this.nextSlice++);
      this.feed(s);
    }
  }

  private ranges = new Map<number, { start: number; end: number }>();

  /** The image range of slice `index`, so that a held slice can be re-read from the file. */
  setRange(index: number, start: number, end: number): void {
    this.ranges.set(index, { start, end });
  }

  private rangeOf(index: number, s: { data: Uint8Array }): { start: number; end: number } {
    const r = this.ranges.get(index);
    if (!r || r.end - r.start !== s.data.byteLength) throw new Error(`no file range for image slice ${index}`);
    return r;
  }

  private queued = 0;
  private waiters: Array<() => void> = [];

  /** Resolves once the hash worker's backlog of in-memory bytes is below `limit`. */
  async belowBacklog(limit = HASH_BACKLOG): Promise<void> {
    while (this.queued >= limit) await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  private feed(slice: HashSlice): void {
    if ('data' in slice) {
      const data = slice.data;
      const bytes = data.byteLength;
      this.queued += bytes;
      this.chain = this.chain
        .then(() => this.worker.run({ op: 'hash-data', data }, transferable(data)))
        .finally(() => {
          this.queued -= bytes;
          for (const w of this.waiters.splice(0)) w();
        });
    } else if ('zero' in slice) {
      const length = slice.zero;
      this.chain = this.chain.then(() => this.worker.run({ op: 'hash-zero', length }));
    } else {
      const { start, end } = slice.file;
      this.chain = this.chain.then(() => this.worker.run({ op: 'hash-feed', fd: this.fd, start, end }));
    }
  }

  /** Sequential use (plain LZ4 streams): hash the file up to `end`, everything before it being final. */
  advanceTo(end: number): void {
    if (end <= this.hashedTo) return;
    const start = this.hashedTo;
    this.hashedTo = end;
    this.chain = this.chain.then(() => this.worker.run({ op: 'hash-feed', fd: this.fd, start, end }));
  }

  async digest(): Promise<string> {
    if (this.held.size) throw new Error(`image hash is missing slice ${this.nextSlice}`);
    await this.chain;
    const r = (await this.worker.run({ op: 'hash-digest' })) as Extract<FrameResult, { op: 'hash-digest' }>;
    return r.sha256;
  }

  async close(): Promise<void> {
    await this.chain.catch(() => undefined);
    await this.worker.worker.terminate();
  }
}

/** A buffer's memory can be handed to another thread without a copy when the buffer owns all of it. */
export function transferable(b: Uint8Array): ArrayBuffer[] {
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer ? [b.buffer] : [];
}
