/**
 * The HTTP/1.1 fast path: one guest connection served without Node's HTTP server or undici.
 * This file is the connection: it reads the guest, parses each request head (src/http1.ts),
 * runs one exchange at a time (src/fastpath-exchange.ts: the upstream side, relaying the
 * response as the upstream sent it), and pauses the side that sends faster; a connection holds
 * at most a fixed budget (256 KiB of response towards the guest, 64 KiB of request bytes) plus
 * one read.
 *
 * Anything the parser calls unusual (Expect, upgrades, chunked requests, HTTP/1.0, a head
 * that did not arrive whole, ...) hands the connection, with the bytes already read, to the
 * general path for the rest of its life, at a request boundary.
 */
import type { Socket } from 'node:net'
import type { Conn, ProxyContext } from './context.js'
import { Exchange, GUEST_PENDING_MAX, type GuestConnection } from './fastpath-exchange.js'
import { GuestWriter } from './guest-writer.js'
import { parseRequestHead } from './http1.js'
import type { Outcomes } from './outcome.js'
import type { Watched } from './watchdog.js'

/** Gives the connection to the general path, with the bytes read from it but not yet used. */
export type Handoff = (socket: Socket, unread: Buffer | null) => void

/**
 * Response bytes queued towards a guest before the upstream side pauses. Enough to keep a TLS
 * write in flight while the next reads stage; more only keeps bytes (and the objects around
 * them) alive long enough to reach V8's old generation.
 */
const GUEST_WRITE_BUDGET = 256 * 1024
const PAUSE_PENDING = 1
const PAUSE_UPSTREAM = 2

/** Serves HTTP/1.1 on `socket` (TLS terminated by the proxy, or plain) until it closes or is handed off. */
export function serveFastH1(ctx: ProxyContext, conn: Conn, socket: Socket, outcomes: Outcomes, handoff: Handoff): void {
  new FastH1(ctx, conn, socket, outcomes, handoff)
}

export class FastH1 implements Watched, GuestConnection {
  /** Closes the connection when the guest has been idle for the idle timeout (as Node's server does). */
  deadline: number
  private buf: Buffer | null = null
  private ex: Exchange | null = null
  private paused = 0
  /** No more requests: the connection ends (or ended) after the current exchange. */
  private finished = false
  readonly writer: GuestWriter
  private readonly onData = (chunk: Buffer) => this.guestData(chunk)
  private readonly onEnd = () => {
    if (!this.ex) this.endGuest()
  }
  private readonly onClose = () => {
    this.finished = true
    this.writer.drop()
    this.ctx.watchdog.delete(this)
    this.ex?.guestGone()
  }

  constructor(
    readonly ctx: ProxyContext,
    readonly conn: Conn,
    readonly socket: Socket,
    private readonly outcomes: Outcomes,
    private readonly handoffTo: Handoff,
  ) {
    this.writer = new GuestWriter(socket, () => {
      if (this.ex !== null && this.writable) this.ex.guestDrained()
    })
    socket.on('data', this.onData)
    socket.on('end', this.onEnd)
    socket.on('close', this.onClose)
    this.deadline = performance.now() + ctx.limits.idleTimeoutMs
    ctx.watchdog.add(this)
    socket.resume()
  }

  expire(): void {
    this.socket.destroy()
  }

  /**
   * The guest is behind by less than the write budget. Writes made while an earlier one is in
   * flight leave together as one TLS write (src/guest-writer.ts), which is what keeps large bodies
   * at a few writes per MiB; pausing at the socket's own 64 KiB mark instead costs a pause/resume
   * (and epoll changes) every 64 KiB.
   */
  get writable(): boolean {
    return this.writer.pending < GUEST_WRITE_BUDGET
  }

  /** Writes a buffer of the proxy's own to the guest; `batch` holds it to the end of the turn. */
  write(data: Buffer, batch = true): boolean {
    this.deadline = performance.now() + this.ctx.limits.idleTimeoutMs
    this.writer.write(data, batch)
    return this.writable
  }

  /** Writes response bytes that are only valid during this call (a view into a read buffer). */
  writeTransient(data: Buffer): boolean {
    this.deadline = performance.now() + this.ctx.limits.idleTimeoutMs
    this.writer.writeTransient(data)
    return this.writable
  }

  holdGuest(): void {
    this.pause(PAUSE_UPSTREAM)
  }

  releaseGuest(): void {
    this.resume(PAUSE_UPSTREAM)
  }

  cut(): void {
    this.socket.destroy()
  }

  private pause(reason: number): void {
    if (this.paused === 0) this.socket.pause()
    this.paused |= reason
  }

  private resume(reason: number): void {
    if ((this.paused & reason) === 0) return
    this.paused &= ~reason
    if (this.paused === 0) this.socket.resume()
  }

  private guestData(chunk: Buffer): void {
    if (this.finished) return
    this.deadline = performance.now() + this.ctx.limits.idleTimeoutMs
    const ex = this.ex
    if (ex !== null && ex.bodyLeft > 0) {
      const n = Math.min(ex.bodyLeft, chunk.length)
      ex.requestBody(n === chunk.length ? chunk : chunk.subarray(0, n))
      if (n === chunk.length) return
      chunk = chunk.subarray(n)
    }
    this.buf = this.buf === null ? chunk : Buffer.concat([this.buf, chunk])
    if (this.ex !== null) {
      if (this.buf.length > GUEST_PENDING_MAX) this.pause(PAUSE_PENDING)
      return
    }
    this.next()
  }

  /** Starts the next request in the buffer, or hands the connection off. */
  private next(): void {
    const buf = this.buf
    if (buf === null || this.ex !== null || this.finished) return
    const parsed = parseRequestHead(buf, this.ctx.limits.maxHeaderSize)
    if (parsed.kind !== 'request') {
      this.ctx.metrics.handoffs.inc([parsed.kind === 'unusual' ? parsed.reason : 'incomplete_head'])
      this.handoff()
      return
    }
    const rest = buf.length > parsed.headLength ? buf.subarray(parsed.headLength) : null
    const bodyNow = rest === null ? null : rest.length <= parsed.contentLength ? rest : rest.subarray(0, parsed.contentLength)
    this.buf = rest === null || bodyNow === rest ? null : rest.subarray(parsed.contentLength)
    this.resume(PAUSE_PENDING)
    this.ex = new Exchange(this, parsed, this.outcomes.begin(this.conn))
    this.ex.start(bodyNow)
  }

  /** The exchange is over (response sent, request body read); `close` ends the connection. */
  exchangeDone(ex: Exchange, close: boolean): void {
    if (this.ex !== ex) return
    this.ex = null
    this.resume(PAUSE_UPSTREAM)
    if (close || this.ctx.closing) this.endGuest()
    // After endGuest: the connection's end must follow what the writer still holds.
    ex.outcome.end()
    if (!this.finished && this.buf !== null) this.next()
  }

  private endGuest(): void {
    this.finished = true
    this.buf = null
    this.writer.release()
    this.socket.end()
  }

  private handoff(): void {
    const { socket } = this
    socket.pause()
    socket.removeListener('data', this.onData)
    this.writer.release()
    socket.removeListener('end', this.onEnd)
    socket.removeListener('close', this.onClose)
    this.ctx.watchdog.delete(this)
    this.finished = true
    const unread = this.buf
    this.buf = null
    this.handoffTo(socket, unread)
  }
}
