/**
 * The embedded egress proxy's audit events through core's public API: `onAudit` (given to
 * `Hypeman.open`, so nothing is missed from the start) and `hm.egress.events()`, an async
 * iterator. The proxy starts on first use, possibly long after either was set up, so the events
 * are relayed from whichever proxy this manager runs; the relay listens to the proxy only while
 * someone listens here, since the proxy builds no events when nobody does.
 */
import { type Logger, ValidationError } from '@hypeman-ts/common'
import type { AuditEvent, EgressProxy } from '@hypeman-ts/egress-proxy'
import { EgressEventsError } from './errors.js'

export interface EgressEventsOptions {
  /** Ends the iteration (after the events already buffered). */
  signal?: AbortSignal
  /**
   * Events held for a reader that has not asked for them yet (default 10 000). A reader further
   * behind gets an `events_overflow` error rather than a silent gap in the audit trail.
   */
  maxBuffered?: number
}

/** `hm.egress`: what a caller sees of the embedded proxy. */
export interface HypemanEgress {
  /**
   * Audit events from now on (`injected`, `placeholder_unmatched`, `denied` with the rule in
   * `reason`, `upstream_error`, `policy_set`, `policy_deleted`), until `return()` (a `break`
   * out of `for await`), the signal, or `hm.close()`.
   */
  events(opts?: EgressEventsOptions): AsyncIterableIterator<AuditEvent>
}

type Sink = (event: AuditEvent) => void

export class EgressEvents implements HypemanEgress {
  private proxy: EgressProxy | undefined
  private listening = false
  private readonly sinks = new Set<Sink>()
  private readonly endings = new Set<() => void>()
  private closed = false

  constructor(private readonly logger: Logger) {}

  private readonly relay = (event: AuditEvent): void => {
    for (const sink of this.sinks) {
      try {
        sink(event)
      } catch (err) {
        // One consumer's bug must neither fail the request nor starve the other consumers.
        this.logger.error('an egress audit consumer threw', { type: event.type, error: (err as Error)?.message })
      }
    }
  }

  /** The proxy this manager started; its events are relayed from now on. */
  attach(proxy: EgressProxy): void {
    this.proxy = proxy
    this.sync()
  }

  /** Adds a consumer; the returned function removes it. */
  subscribe(sink: Sink): () => void {
    this.sinks.add(sink)
    this.sync()
    return () => {
      this.sinks.delete(sink)
      this.sync()
    }
  }

  private sync(): void {
    const want = this.proxy !== undefined && this.sinks.size > 0
    if (want === this.listening) return
    if (want) this.proxy!.audit.on('event', this.relay)
    else this.proxy?.audit.off('event', this.relay)
    this.listening = want
  }

  events(opts: EgressEventsOptions = {}): AsyncIterableIterator<AuditEvent> {
    const max = opts.maxBuffered ?? 10_000
    if (!Number.isInteger(max) || max < 1) throw new ValidationError('maxBuffered', 'must be a positive whole number')
    const queue: AuditEvent[] = []
    let waiting: ((r: IteratorResult<AuditEvent>) => void) | undefined
    let failWaiting: ((err: Error) => void) | undefined
    let ended = this.closed || opts.signal?.aborted === true
    let overflow: EgressEventsError | undefined
    const settle = () => {
      if (!waiting) return
      const resolve = waiting
      const reject = failWaiting!
      waiting = failWaiting = undefined
      if (queue.length > 0) resolve({ value: queue.shift()!, done: false })
      else if (overflow) reject(overflow)
      else resolve({ value: undefined, done: true })
    }
    const finish = () => {
      if (ended && !unsubscribe) return
      ended = true
      unsubscribe?.()
      unsubscribe = undefined
      this.endings.delete(finish)
      opts.signal?.removeEventListener('abort', finish)
      settle()
    }
    let unsubscribe: (() => void) | undefined = ended
      ? undefined
      : this.subscribe((event) => {
          if (queue.length >= max) {
            overflow = new EgressEventsError('events_overflow', `the reader of egress events fell more than ${max} events behind; events after that were not kept`, { field: 'maxBuffered' })
            finish()
            return
          }
          queue.push(event)
          settle()
        })
    if (unsubscribe) {
      this.endings.add(finish)
      opts.signal?.addEventListener('abort', finish, { once: true })
    }
    const iterator: AsyncIterableIterator<AuditEvent> = {
      next: () => {
        if (queue.length > 0) return Promise.resolve({ value: queue.shift()!, done: false })
        if (overflow) {
          const err = overflow
          overflow = undefined
          return Promise.reject(err)
        }
        if (ended) return Promise.resolve({ value: undefined, done: true })
        return new Promise((resolve, reject) => {
          waiting = resolve
          failWaiting = reject
        })
      },
      return: () => {
        queue.length = 0
        overflow = undefined
        finish()
        return Promise.resolve({ value: undefined, done: true })
      },
      [Symbol.asyncIterator]: () => iterator,
    }
    return iterator
  }

  /** The manager is closing: stop relaying; iterators end once they have handed out what they hold. */
  close(): void {
    this.closed = true
    for (const end of [...this.endings]) end()
    this.sinks.clear()
    this.sync()
  }
}
