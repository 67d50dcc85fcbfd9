/**
 * Host side of the control port (`hypeman.control`), served by init itself so it works with
 * skipGuestAgent. One text command per line, one reply line each:
 *
 *   stop <grace-ms>   → "ok"     SIGTERM to the program now, SIGKILL after grace-ms, then power off
 *   signal <n>        → "ok" | "error program not running"
 *   ping              → "pong running" | "pong stopping"
 *
 * The guest reads the port only once the program runs; a command sent during boot waits in the
 * VMM until then. QEMU serves one client at a time on the socket: connect, ask, disconnect.
 */
import { connect as netConnect } from 'node:net'
import { AbortedError } from '@hypeman-ts/common'
import { GuestError } from './errors.js'

export interface ControlOptions {
  /** How long to wait for the reply, connecting included. Default 10 s. */
  timeoutMs?: number
  signal?: AbortSignal
}

/** Sends one command line and returns the reply line. */
export function sendControlCommand(socketPath: string, command: string, opts: ControlOptions = {}): Promise<string> {
  if (command.includes('\n')) throw new RangeError('a control command is one line')
  const timeoutMs = opts.timeoutMs ?? 10_000
  return new Promise<string>((resolve, reject) => {
    const sock = netConnect(socketPath)
    let reply = ''
    let settled = false
    const finish = (err: Error | undefined, value?: string) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      opts.signal?.removeEventListener('abort', onAbort)
      sock.destroy()
      if (err) reject(err)
      else resolve(value!)
    }
    const timer = setTimeout(() => finish(new GuestError('control_unreachable', `no reply to "${command}" on ${socketPath} within ${timeoutMs} ms`)), timeoutMs)
    const onAbort = () => finish(new AbortedError('control command aborted', { cause: opts.signal?.reason }))
    if (opts.signal?.aborted) return onAbort()
    opts.signal?.addEventListener('abort', onAbort, { once: true })
    sock.on('connect', () => sock.write(`${command}\n`))
    sock.on('data', (d: Buffer) => {
      reply += d.toString('utf8')
      const nl = reply.indexOf('\n')
      if (nl >= 0) finish(undefined, reply.slice(0, nl))
    })
    sock.on('error', (err) => finish(new GuestError('control_unreachable', `control port ${socketPath}: ${err.message}`, { cause: err })))
    sock.on('close', () => finish(new GuestError('control_unreachable', `the control port ${socketPath} closed before replying (the VM may have ended)`)))
  })
}

function expectOk(reply: string, command: string): void {
  if (reply !== 'ok') throw new GuestError('control_refused', `guest refused "${command}": ${reply}`)
}

/**
 * Asks init to stop the program: SIGTERM now, SIGKILL after `graceMs`, then power off. Resolves
 * when init accepted; watch the VMM's exit (and the status channel's `exited`) for the end.
 */
export async function requestGuestStop(socketPath: string, graceMs: number, opts: ControlOptions = {}): Promise<void> {
  if (!Number.isSafeInteger(graceMs) || graceMs < 0) throw new RangeError('graceMs must be a non-negative integer')
  expectOk(await sendControlCommand(socketPath, `stop ${graceMs}`, opts), 'stop')
}

/** Delivers a signal to the program (not to init). */
export async function signalGuestProgram(socketPath: string, signal: number, opts: ControlOptions = {}): Promise<void> {
  if (!Number.isInteger(signal) || signal < 1 || signal > 64) throw new RangeError('signal must be 1..64')
  expectOk(await sendControlCommand(socketPath, `signal ${signal}`, opts), 'signal')
}

export async function pingGuestControl(socketPath: string, opts: ControlOptions = {}): Promise<'running' | 'stopping'> {
  const reply = await sendControlCommand(socketPath, 'ping', opts)
  const m = /^pong (running|stopping)$/.exec(reply)
  if (!m) throw new GuestError('control_refused', `unexpected reply to ping: ${reply}`)
  return m[1] as 'running' | 'stopping'
}
