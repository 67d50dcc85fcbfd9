/**
 * Bounded concurrency: at most `maxRunning` runs at a time, at most `maxQueued` waiting for a
 * turn (first come, first served), and a clear "no" beyond that.
 */
export class RunQueue {
  running = 0
  private readonly waiting: { start: () => void; signal: AbortSignal }[] = []

  constructor(
    readonly maxRunning: number,
    readonly maxQueued: number,
  ) {}

  get queued(): number {
    return this.waiting.length
  }

  /**
   * `null` when the queue is full (answer 429). Otherwise a promise that resolves when this run
   * may start (call `done()` when it ends), or rejects with the signal's reason if that aborts
   * first (the client left the queue).
   */
  enter(signal: AbortSignal): Promise<void> | null {
    if (this.running < this.maxRunning) {
      this.running++
      return Promise.resolve()
    }
    if (this.waiting.length >= this.maxQueued) return null
    return new Promise<void>((resolve, reject) => {
      const entry = { start: resolve, signal }
      this.waiting.push(entry)
      signal.addEventListener('abort', () => {
        const i = this.waiting.indexOf(entry)
        if (i >= 0) this.waiting.splice(i, 1)
        reject(signal.reason)
      }, { once: true })
    })
  }

  /** A run ended: its slot goes to the next one waiting. */
  done(): void {
    const next = this.waiting.shift()
    if (next) next.start()
    else this.running--
  }
}
