/**
 * Audit events: what a security reviewer wants to know happened, one object each. They name
 * the source, the destination host and the credential by its env var name; never a value.
 */
import { EventEmitter } from 'node:events'
import type { Logger } from '@hypeman-ts/common'

interface Base {
  /** ISO timestamp. */
  time: string
  /** The client's address (the instance's IP when embedded). */
  source: string
}

export type AuditEvent =
  | (Base & { type: 'injected'; host: string; method: string; credentials: string[] })
  | (Base & {
      type: 'placeholder_unmatched'
      host: string
      scheme: 'http' | 'https'
      method: string
      credential: string
      action: 'forwarded' | 'blocked'
    })
  | (Base & { type: 'denied'; host?: string; port?: number; reason: string; message: string })
  | (Base & { type: 'upstream_error'; host: string; code: string; message: string })
  | (Base & { type: 'policy_set' | 'policy_deleted' })

export type AuditEmitter = EventEmitter<{ event: [AuditEvent] }>

/** Distributes events to whoever listens, without building them when nobody does. */
export class Audit {
  readonly emitter: AuditEmitter = new EventEmitter<{ event: [AuditEvent] }>()

  constructor(private readonly logger: Logger) {}

  get active(): boolean {
    return this.emitter.listenerCount('event') > 0
  }

  emit(event: DistributiveOmit<AuditEvent, 'time'>): void {
    if (!this.active) return
    try {
      this.emitter.emit('event', { time: new Date().toISOString(), ...event } as AuditEvent)
    } catch (err) {
      // A listener's bug must not fail the request that triggered the event.
      this.logger.error('an audit listener threw', { type: event.type, error: (err as Error)?.message })
    }
  }
}

type DistributiveOmit<T, K extends keyof T> = T extends unknown ? Omit<T, K> : never
