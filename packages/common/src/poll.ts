/**
 * Waiting with a deadline, the one way the repo does it: poll an attempt until it yields a value,
 * the deadline passes, or the signal fires (a VMM start wires that signal to the process's exit,
 * so a VMM that dies while we wait is noticed at once rather than at the deadline); or race one
 * promise against a deadline.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { AbortedError, TimeoutError } from './errors.js'

export interface PollOptions {
  /** Absolute time (Date.now() scale) after which to give up. */
  deadline: number
  signal?: AbortSignal
  /** First pause between attempts; it doubles up to `maxIntervalMs`. */
  intervalMs?: number
  maxIntervalMs?: number
  /**
   * The pause between attempts, at most `ms`; default a timer that the signal ends. A reader of a
   * file passes one that a change to the file ends early, so it does not wait out the interval.
   */
  wait?: (ms: number) => Promise<void>
  /** For the error: what we were waiting for, and the lifecycle step. */
  what: string
  step: string
}

/** Calls `attempt` until it returns something other than `undefined`; its errors propagate. */
export async function pollUntil<T>(attempt: () => Promise<T | undefined> | T | undefined, opts: PollOptions): Promise<T> {
  let interval = opts.intervalMs ?? 10
  const max = opts.maxIntervalMs ?? 200
  for (;;) {
    abortCheck(opts.signal, opts)
    const value = await attempt()
    if (value !== undefined) return value
    const left = opts.deadline - Date.now()
    if (left <= 0) throw new TimeoutError(`timed out waiting for ${opts.what}`, { step: opts.step })
    try {
      await (opts.wait ? opts.wait(Math.min(interval, left)) : sleep(Math.min(interval, left), undefined, opts.signal ? { signal: opts.signal } : {}))
    } catch {
      abortCheck(opts.signal, opts)
    }
    interval = Math.min(interval * 2, max)
  }
}

function abortCheck(signal: AbortSignal | undefined, opts: PollOptions): void {
  if (signal?.aborted) throw new AbortedError(`${opts.step}: gave up waiting for ${opts.what}`, { step: opts.step, cause: signal.reason })
}

/** Races a promise against a deadline and a signal; the promise itself is not cancelled. */
export async function withDeadline<T>(promise: Promise<T>, timeoutMs: number, what: string, step: string, signal?: AbortSignal): Promise<T> {
  const ac = new AbortController()
  const onAbort = () => ac.abort()
  signal?.addEventListener('abort', onAbort, { once: true })
  const timer = sleep(timeoutMs, undefined, { signal: ac.signal }).then(
    () => {
      throw new TimeoutError(`timed out after ${timeoutMs} ms waiting for ${what}`, { step })
    },
    () => {
      throw new AbortedError(`${step}: gave up waiting for ${what}`, { step, cause: signal?.reason })
    },
  )
  // The loser of the race rejects later; nobody awaits it then.
  timer.catch(() => {})
  promise.catch(() => {})
  if (signal?.aborted) ac.abort()
  try {
    return await Promise.race([promise, timer])
  } finally {
    signal?.removeEventListener('abort', onAbort)
    ac.abort()
  }
}
