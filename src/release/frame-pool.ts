import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { FrameResult, FrameTask } from './frame-worker.js';

type Pending = { resolve: (r: FrameResult) => void; reject: (e: Error) => void };

// Under the test runner the sources are .ts (its loader is inherited by workers through execArgv);
// installed, they are compiled .js. The worker is a sibling file either way.
const WORKER_URL = new URL(`./frame-worker${import.meta.url.endsWith('.ts') ? '.ts' : '.js'}`, import.meta.url);

class FrameWorker {
  readonly worker: Worker;
  private nextId = 0;
  private pending = new Map<number, Pending>();
  busy = 0;

  constructor() {
    this.worker = new Worker(WORKER_URL);
    this.worker.on('message', (msg: { id: number; result?: FrameResult; error?: { message: string; code?: string } }) => {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      this.busy--;
      if (msg.error) p.reject(Object.assign(new Error(msg.error.message), { code: msg.error.code }));
      else p.resolve(msg.result!);
    });
    this.worker.on('error', (err) => this.failAll(err));
    this.worker.on('exit', (code) => {
      if (this.pending.size) this.failAll(new Error(`frame worker exited with code ${code}`));
    });
  }

  run(task: FrameTask, transfer: ArrayBuffer[] = []): Promise<FrameResult> {
    const id = this.nextId++;
    this.busy++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, task }, transfer);
    });
  }

  private failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.busy = 0;
  }
}

/** Worker threads for compression, decode+verify+write and hashing; least busy worker first. */
export class FramePool {
  private workers: FrameWorker[];

  constructor(size = availableParallelism()) {
    this.workers = Array.from({ length: Math.max(1, size) }, () => new FrameWorker());
  }

  get size(): number {
    return this.workers.length;
  }

  run<T extends FrameResult['op']>(task: FrameTask & { op: T }, transfer: ArrayBuffer[] = []): Promise<Extract<FrameResult, { op: T }>> {
    const w = this.workers.reduce((a, b) => (b.busy < a.busy ? b : a));
    return w.run(task, transfer) as Promise<Extract<FrameResult, { op: T }>>;
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.worker.terminate()));
  }
}

/** One dedicated worker that hashes an image in order, from the file, while frames land out of order. */
export class OrderedHasher {
  private worker = new FrameWorker();
  private chain: Promise<unknown> = Promise.resolve();
  private hashedTo = 0;

  constructor(private readonly fd: number) {}

  /** Hash the file up to `end` (everything before it is final). Calls are serialised. */
  advanceTo(end: number): void {
    if (end <= this.hashedTo) return;
    const start = this.hashedTo;
    this.hashedTo = end;
    this.chain = this.chain.then(() => this.worker.run({ op: 'hash-feed', fd: this.fd, start, end }));
  }

  async digest(): Promise<string> {
    await this.chain;
    const r = (await this.worker.run({ op: 'hash-digest' })) as Extract<FrameResult, { op: 'hash-digest' }>;
    return r.sha256;
  }

  async close(): Promise<void> {
    await this.chain.catch(() => undefined);
    await this.worker.worker.terminate();
  }
}
