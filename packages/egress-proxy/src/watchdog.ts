/**
 * Deadlines checked by one periodic timer instead of a timer per socket: the fast path's
 * per-request deadlines (upstream headers and body, guest idleness) only move a number, which
 * costs nothing on the hot path, and the check runs a few times per shortest timeout.
 */

export interface Watched {
  /** performance.now() value after which `expire` is called; Infinity when nothing is pending. */
  deadline: number
  expire(): void
}

export class Watchdog {
  private readonly items = new Set<Watched>()
  private readonly timer: NodeJS.Timeout

  /** `periodMs` bounds how late an expiry can be noticed. */
  constructor(periodMs: number) {
    this.timer = setInterval(() => this.check(), Math.max(10, Math.floor(periodMs)))
    this.timer.unref()
  }

  add(item: Watched): void {
    this.items.add(item)
  }

  delete(item: Watched): void {
    this.items.delete(item)
  }

  get size(): number {
    return this.items.size
  }

  check(now = performance.now()): void {
    for (const item of this.items) {
      if (item.deadline <= now) {
        item.deadline = Number.POSITIVE_INFINITY
        item.expire()
      }
    }
  }

  stop(): void {
    clearInterval(this.timer)
    this.items.clear()
  }
}

/** A period that notices a timeout of `shortestMs` within about a quarter of it, at most once a second. */
export function watchdogPeriod(shortestMs: number): number {
  return Math.min(1000, Math.max(10, shortestMs / 4))
}
