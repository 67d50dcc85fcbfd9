/**
 * The HTTP/1.1 fast path: one guest connection served without Node's HTTP server or undici.
 * The request head is parsed here (src/http1.ts), the same policy and header rewrite as the
 * general path apply (prepare), the new head and the body bytes go to a pooled, kept-alive,
 * verified upstream connection (src/pool.ts), and the response comes back as the bytes the
 * upstream sent, with only its head rewritten: the body is followed by its framing
 * (Content-Length, chunked, or close) to know where it ends, never decoded or re-encoded.
 * Backpressure pauses the side that sends faster; a connection holds at most a fixed budget
 * (256 KiB of response towards the guest, 64 KiB of request bytes) plus one read.
 *
 * Anything the parser calls unusual (Expect, upgrades, chunked requests, HTTP/1.0, a head
 * that did not arrive whole, ...) hands the connection, with the bytes already read, to the
 * general path for the rest of its life, at a request boundary.
 */
import type { Socket } from 'node:net'
import { batchedWrite } from './batch.js'
import { GuestWriter } from './guest-writer.js'
import type { Conn, ProxyContext } from './context.js'
import { decide, type Destination } from './decision.js'
import { http1Answer, type ProxyAnswer } from './error-response.js'
import { EgressError } from './errors.js'
import { ChunkedScanner } from './chunked.js'
import { parseRequestHead, type RequestHead, upstreamRequestHead } from './http1.js'
import { type BodyFraming, guestResponse, parseResponseHead, type ResponseHead, responseFraming } from './http1-response.js'
import type { Outcome, Outcomes } from './outcome.js'
import type { PooledConnection, PoolWaiter, UpstreamUser } from './pool.js'
import { upstreamClosed, upstreamTimeout } from './upstream-errors.js'
import type { Watched } from './watchdog.js'

/** Gives the connection to the general path, with the bytes read from it but not yet used. */
export type Handoff = (socket: Socket, unread: Buffer | null) => void

/** Guest bytes held (a pipelined request, a body before the upstream is ready) before reading pauses. */
const GUEST_PENDING_MAX = 64 * 1024
/** Requests that may be sent again when a reused upstream connection turns out to be closed. */
const REPLAYABLE = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE'])
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

export class FastH1 implements Watched {
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

  pause(reason: number): void {
    if (this.paused === 0) this.socket.pause()
    this.paused |= reason
  }

  resume(reason: number): void {
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

const enum Phase {
  Connecting,
  Head,
  Body,
  Done,
}

/** One request and its response on the fast path. */
class Exchange implements UpstreamUser, PoolWaiter {
  /** Request body bytes still to come from the guest. */
  bodyLeft: number
  private readonly ctx: ProxyContext
  private phase = Phase.Connecting
  private dest: Destination | undefined
  private head: Buffer | undefined
  private up: PooledConnection | null = null
  /** Body bytes that arrived before the upstream connection did. */
  private pending: Buffer[] | null = null
  private pendingBytes = 0
  /** Response head bytes so far, when a head spans reads. */
  private headBuf: Buffer | null = null
  /** Its `source` is a view into the pool's read buffer: only its parsed fields are used after startResponse. */
  private response: ResponseHead | undefined
  private framing: BodyFraming = { kind: 'none' }
  private left = 0
  private chunked: ChunkedScanner | null = null
  /** The guest has the response head: errors from now on can only cut the connection. */
  private guestStarted = false
  private guestClose: boolean
  /** The upstream sent bytes beyond the response, or will close: its connection is not reused. */
  private upstreamSpoiled = false
  private retried = false
  /** The upstream connection had carried requests before this one. */
  private reused = false
  private waitingGuestDrain = false

  constructor(
    private readonly fast: FastH1,
    private readonly req: RequestHead,
    readonly outcome: Outcome,
  ) {
    this.ctx = fast.ctx
    this.bodyLeft = req.contentLength
    this.guestClose = req.close
  }

  start(bodyNow: Buffer | null): void {
    const { ctx, fast, req, outcome } = this
    const d = decide(ctx, fast.conn, req.method, req.target, req.host, req.headers)
    outcome.decided(req.method, d)
    if (d.kind === 'refuse') {
      if (bodyNow !== null) this.bodyLeft -= bodyNow.length
      this.respondError(outcome.answerWith(d.err))
      return
    }
    this.dest = d.dest
    this.head = upstreamRequestHead(req.method, d.dest.path, d.rewrite.headers)
    // Held until the connection is there, so head and body leave in one write.
    if (bodyNow !== null) this.requestBody(bodyNow)
    this.connect(false)
  }

  private connect(fresh: boolean): void {
    const dest = this.dest!
    const pool = this.ctx.upstreams.pool
    const source = this.fast.conn.source
    if (fresh) pool.acquireFresh(source, dest.host, dest.port, dest.scheme === 'https', this)
    else pool.acquire(source, dest.host, dest.port, dest.scheme === 'https', this)
  }

  acquired(err: Error | null, up: PooledConnection | null): void {
    if (this.phase === Phase.Done) {
      if (up) this.ctx.upstreams.pool.release(up)
      return
    }
    if (err || !up) {
      this.failed(err ?? upstreamClosed(this.dest!.host, this.dest!.port, false))
      return
    }
    this.up = up
    this.reused = up.uses > 0
    up.user = this
    this.phase = Phase.Head
    const s = up.socket
    up.deadline = performance.now() + this.ctx.upstreams.timeouts.headersTimeoutMs
    const pending = this.pending
    this.pending = null
    this.pendingBytes = 0
    let ok = batchedWrite(s, this.head!)
    if (pending !== null) for (const b of pending) ok = batchedWrite(s, b)
    if (ok) this.fast.resume(PAUSE_UPSTREAM)
    else this.fast.pause(PAUSE_UPSTREAM)
  }

  /** Request body bytes from the guest (never more than bodyLeft). */
  requestBody(chunk: Buffer): void {
    this.bodyLeft -= chunk.length
    if (this.phase === Phase.Done) {
      // Answered already (an error, or the upstream responded early): the rest is read and dropped.
      if (this.bodyLeft === 0) this.fast.exchangeDone(this, this.guestClose)
      return
    }
    const up = this.up
    if (up === null) {
      ;(this.pending ??= []).push(chunk)
      this.pendingBytes += chunk.length
      if (this.pendingBytes > GUEST_PENDING_MAX) this.fast.pause(PAUSE_UPSTREAM)
      return
    }
    if (!batchedWrite(up.socket, chunk)) this.fast.pause(PAUSE_UPSTREAM)
  }

  onUpstreamDrain(): void {
    this.fast.resume(PAUSE_UPSTREAM)
  }

  guestDrained(): void {
    if (!this.waitingGuestDrain) return
    this.waitingGuestDrain = false
    const up = this.up
    if (up && this.phase === Phase.Body) {
      up.deadline = performance.now() + this.ctx.upstreams.timeouts.bodyTimeoutMs
      up.socket.resume()
    }
  }

  onUpstreamData(chunk: Buffer): void {
    if (this.phase === Phase.Body) {
      this.up!.deadline = performance.now() + this.ctx.upstreams.timeouts.bodyTimeoutMs
      this.body(chunk, 0)
    } else if (this.phase === Phase.Head) this.responseHead(chunk)
    else this.upstreamSpoiled = true
  }

  private responseHead(chunk: Buffer): void {
    let buf = this.headBuf === null ? chunk : Buffer.concat([this.headBuf, chunk])
    this.headBuf = null
    let at = 0
    for (;;) {
      const parsed = parseResponseHead(buf, this.ctx.upstreams.timeouts.maxResponseHeaderSize, at)
      if (parsed.kind === 'incomplete') {
        // Copied: `chunk` is only valid during this call.
        this.headBuf = Buffer.from(at === 0 ? buf : buf.subarray(at))
        return
      }
      if (parsed.kind === 'invalid') {
        this.failed(new EgressError('upstream_failed', `upstream ${this.dest!.host}:${this.dest!.port} sent a response the proxy cannot frame: ${parsed.reason}`))
        return
      }
      at += parsed.headLength
      if (parsed.status >= 200) {
        this.startResponse(parsed, buf, at)
        return
      }
      if (parsed.status === 101) {
        this.failed(new EgressError('upstream_failed', `upstream ${this.dest!.host}:${this.dest!.port} switched protocols without being asked to`))
        return
      }
      // Interim responses (100, 103) are not relayed, as on the general path.
      if (at === buf.length) return
      buf = buf.subarray(at)
      at = 0
    }
  }

  private startResponse(head: ResponseHead, buf: Buffer, at: number): void {
    const { ctx, fast } = this
    this.response = head
    this.pending = null
    this.framing = responseFraming(this.req.method, head)
    this.guestClose ||= this.framing.kind === 'close' || ctx.closing
    this.upstreamSpoiled ||= head.close || this.framing.kind === 'close'
    this.phase = Phase.Body
    this.guestStarted = true
    this.up!.deadline = performance.now() + ctx.upstreams.timeouts.bodyTimeoutMs
    switch (this.framing.kind) {
      case 'none':
        fast.write(guestResponse(head, this.guestClose))
        if (at < buf.length) this.upstreamSpoiled = true
        this.complete()
        return
      case 'length':
        this.left = this.framing.length
        break
      case 'chunked':
        this.chunked = new ChunkedScanner()
        break
      case 'close':
        break
    }
    // The head and the body bytes that came with it leave in one write (one TLS record when small).
    this.body(buf, at, true)
  }

  private body(buf: Buffer, at: number, withHead = false): void {
    let end = buf.length
    let done = false
    switch (this.framing.kind) {
      case 'length':
        if (end - at >= this.left) {
          end = at + this.left
          done = true
        }
        this.left -= end - at
        break
      case 'chunked': {
        const scanner = this.chunked!
        end = scanner.scan(buf, at)
        if (end < 0) {
          const err = new EgressError('upstream_failed', `upstream ${this.dest!.host}:${this.dest!.port} sent a malformed chunked body`)
          if (withHead) {
            // Nothing reached the guest yet: it can still get a clean error.
            this.guestStarted = false
            this.failed(err)
          } else this.abort(err)
          return
        }
        done = scanner.done
        break
      }
      default:
        break
    }
    // Streaming body pieces go straight out (the writer joins those that arrive while a write is in
    // flight); holding them to the end of the turn only delays the guest.
    let writable = true
    if (withHead) writable = this.fast.write(guestResponse(this.response!, this.guestClose, buf, at, end))
    else if (end > at) writable = this.fast.writeTransient(at === 0 && end === buf.length ? buf : buf.subarray(at, end))
    if (!writable && !done) {
      // The guest is behind: the upstream pauses, and its body timeout with it.
      this.waitingGuestDrain = true
      this.up!.deadline = Number.POSITIVE_INFINITY
      this.up!.socket.pause()
    }
    if (done) {
      if (end < buf.length) this.upstreamSpoiled = true
      this.complete()
    }
  }

  onUpstreamEnd(): void {
    if (this.phase === Phase.Body && this.framing.kind === 'close') {
      this.complete()
      return
    }
    this.lost(undefined)
  }

  onUpstreamClose(error: Error | undefined): void {
    if (this.phase !== Phase.Done) this.lost(error)
  }

  onUpstreamTimeout(): void {
    // A timeout is never replayed: the upstream was slow, not gone.
    const { host, port } = this.dest!
    this.upstreamGone(upstreamTimeout(host, port, this.phase === Phase.Head ? 'headers' : 'body'))
  }

  /** The upstream connection failed or ended before the response did. */
  private lost(error: Error | undefined): void {
    if (this.phase === Phase.Done) return
    // A kept-alive connection the upstream closed while it sat in the pool: send the request again
    // on a new connection when nothing came back and the request can be replayed.
    if (this.phase === Phase.Head && this.reused && this.headBuf === null && !this.retried && this.req.contentLength === 0 && REPLAYABLE.has(this.req.method)) {
      this.retried = true
      this.detach(false)
      this.phase = Phase.Connecting
      this.connect(true)
      return
    }
    this.upstreamGone(error ?? upstreamClosed(this.dest!.host, this.dest!.port, this.guestStarted))
  }

  private upstreamGone(error: unknown): void {
    if (this.phase === Phase.Done) return
    if (this.guestStarted) this.abort(error)
    else this.failed(error)
  }

  /** Fails before the guest saw a response: it gets an error answer and keeps its connection. */
  private failed(error: unknown): void {
    const err = this.outcome.upstreamFailed(error, this.dest!)
    this.detach(false)
    this.respondError(this.outcome.answerWith(err))
  }

  /** Fails after the guest saw the response head: only cutting the connection tells it. */
  private abort(error: unknown): void {
    this.outcome.upstreamFailed(error, this.dest!)
    this.detach(false)
    this.outcome.aborted()
    this.phase = Phase.Done
    this.fast.socket.destroy()
  }

  private respondError(answer: ProxyAnswer): void {
    this.phase = Phase.Done
    this.guestStarted = true
    this.fast.write(http1Answer(answer, { close: this.guestClose || this.ctx.closing, head: this.req.method === 'HEAD' }))
    this.fast.resume(PAUSE_UPSTREAM)
    if (this.bodyLeft === 0) this.fast.exchangeDone(this, this.guestClose)
  }

  private complete(): void {
    this.phase = Phase.Done
    this.outcome.answered(this.response!.status)
    // After a HEAD the connection is not reused (as undici does): servers that wrongly send the body anyway would have it read as the next response.
    this.detach(!this.upstreamSpoiled && this.bodyLeft === 0 && this.req.method !== 'HEAD')
    if (this.bodyLeft === 0) this.fast.exchangeDone(this, this.guestClose)
    else this.fast.resume(PAUSE_UPSTREAM)
  }

  /** The guest went away: stop the upstream side too. */
  guestGone(): void {
    if (this.phase === Phase.Done) {
      this.fast.exchangeDone(this, true)
      return
    }
    this.phase = Phase.Done
    this.outcome.aborted()
    this.detach(false)
    this.fast.exchangeDone(this, true)
  }

  /** Lets go of the upstream connection: back to the pool when `reuse`, else closed. */
  private detach(reuse: boolean): void {
    const up = this.up
    if (up === null) return
    this.up = null
    up.user = null
    if (reuse) this.ctx.upstreams.pool.release(up, this.response?.keepAliveMs)
    else up.socket.destroy()
  }
}
