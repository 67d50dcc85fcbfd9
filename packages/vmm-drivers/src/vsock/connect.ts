/**
 * Opens a stream to a guest vsock port through the VMM's unix socket (Firecracker, Cloud
 * Hypervisor). A guest that is not listening yet makes the VMM close the connection before its
 * `OK`; that, and a socket that does not exist yet, are retried until the deadline, the way an
 * agent that is still booting needs. A malformed answer is not retried: it is not a vsock muxer.
 */
import { createConnection, type Socket } from 'node:net'
import { AbortedError, pollUntil, TimeoutError } from '@hypeman-ts/common'
import { VmmError } from '../errors.js'
import { AckDecoder, encodeConnect } from './handshake.js'

export interface VsockConnectOptions {
  /** Overall deadline, retries included. Default 5 s. */
  timeoutMs?: number
  signal?: AbortSignal
  /** How long one attempt waits for the `OK` line. Default 2 s. */
  attemptTimeoutMs?: number
}

type Attempt = { socket: Socket; hostPort: number } | { retry: string; timedOut?: true }

const RETRY_ERRNO = new Set(['ENOENT', 'ECONNREFUSED', 'ECONNRESET', 'EPIPE'])

/** One CONNECT; resolves with the socket positioned after the `OK` line, or says why to retry. */
export function vsockAttempt(udsPath: string, port: number, timeoutMs: number, signal?: AbortSignal): Promise<Attempt> {
  return new Promise<Attempt>((resolve, reject) => {
    const socket = createConnection(udsPath)
    const decoder = new AckDecoder()
    let settled = false
    const finish = (outcome: { ok: Attempt } | { err: unknown }) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
      socket.removeListener('readable', onReadable)
      socket.removeListener('error', onError)
      socket.removeListener('close', onClose)
      if ('ok' in outcome && 'socket' in outcome.ok) resolve(outcome.ok)
      else {
        socket.destroy()
        if ('ok' in outcome) resolve(outcome.ok)
        else reject(outcome.err)
      }
    }
    const onReadable = () => {
      for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) {
        let r
        try {
          r = decoder.push(chunk)
        } catch (err) {
          finish({ err })
          return
        }
        if (r.done) {
          // Removing the only 'readable' listener hands the socket back in its initial mode: a
          // caller's 'data' listener or pipe starts the flow, and sees the guest's first bytes.
          socket.removeListener('readable', onReadable)
          // The guest's first bytes may have arrived in the same segment as the OK line.
          if (r.rest.length > 0) socket.unshift(r.rest)
          finish({ ok: { socket, hostPort: r.hostPort } })
          return
        }
      }
    }
    const onError = (err: NodeJS.ErrnoException) => {
      if (err.code && RETRY_ERRNO.has(err.code)) finish({ ok: { retry: `${udsPath}: ${err.code}` } })
      else finish({ err: new VmmError('control_closed', `vsock ${udsPath}: ${err.message}`, { step: 'vsock.connect', cause: err }) })
    }
    const onClose = () => finish({ ok: { retry: `the VMM closed the connection before OK (nothing listening on guest port ${port} yet?)` } })
    const onAbort = () => finish({ err: new AbortedError('vsock.connect: aborted', { step: 'vsock.connect', cause: signal?.reason }) })
    const timer = setTimeout(() => finish({ ok: { retry: `no OK within ${timeoutMs} ms`, timedOut: true } }), timeoutMs)
    socket.once('connect', () => socket.write(encodeConnect(port)))
    socket.on('readable', onReadable)
    socket.on('error', onError)
    socket.on('close', onClose)
    if (signal?.aborted) onAbort()
    else signal?.addEventListener('abort', onAbort, { once: true })
  })
}

/** Connects to guest vsock `port` through `udsPath`, retrying until the deadline. */
export async function connectVsock(udsPath: string, port: number, opts: VsockConnectOptions = {}): Promise<Socket> {
  const timeoutMs = opts.timeoutMs ?? 5000
  const deadline = Date.now() + timeoutMs
  let last = 'no attempt yet'
  try {
    return await pollUntil(
      async () => {
        const left = deadline - Date.now()
        if (left < 10) return undefined
        const attemptMs = opts.attemptTimeoutMs ?? 2000
        const r = await vsockAttempt(udsPath, port, Math.min(left, attemptMs), opts.signal)
        if ('socket' in r) return r.socket
        // An attempt cut short by the overall deadline says less than the one before it.
        if (!(r.timedOut && left < attemptMs && last !== 'no attempt yet')) last = r.retry
        return undefined
      },
      { deadline, ...(opts.signal ? { signal: opts.signal } : {}), what: `guest vsock port ${port} via ${udsPath}`, step: 'vsock.connect' },
    )
  } catch (err) {
    if (err instanceof TimeoutError) throw new TimeoutError(`${err.message} (last: ${last})`, { step: 'vsock.connect', cause: err })
    throw err
  }
}
