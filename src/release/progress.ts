/**
 * Progress of long work (publish, prepare): bytes done of a total, rate and ETA. Library code only
 * advances it; the CLI decides whether to draw it (a terminal) and `status` reads the persisted copy.
 */
export class Progress {
  done = 0;
  private readonly started = Date.now();
  private listeners: Array<(p: Progress) => void> = [];

  constructor(
    readonly label: string,
    public total: number,
  ) {}

  advance(bytes: number): void {
    this.done += bytes;
    for (const l of this.listeners) l(this);
  }

  onChange(listener: (p: Progress) => void): void {
    this.listeners.push(listener);
  }

  get seconds(): number {
    return (Date.now() - this.started) / 1000;
  }

  /** Bytes per second since start. */
  get rate(): number {
    return this.seconds > 0 ? this.done / this.seconds : 0;
  }

  get etaSeconds(): number | undefined {
    if (!this.total || this.rate <= 0) return undefined;
    return Math.max(0, (this.total - this.done) / this.rate);
  }

  get fraction(): number {
    return this.total ? Math.min(1, this.done / this.total) : 0;
  }
}
