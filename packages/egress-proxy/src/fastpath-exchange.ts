/**
 * One request and its response on the fast path: the decision (src/decision.ts), the new head
 * and the body bytes written to a pooled upstream connection (src/pool.ts), and the response
 * relayed as the bytes the upstream sent, with only its head rewritten; the body is followed by
 * its framing (Content-Length, chunked, or close) to know where it ends, never decoded. What
 * became of it is told to its Outcome (src/outcome.ts).
 */
import { batchedWrite } from './batch.js'
import { ChunkedScanner } from './chunked.js'
import type { Conn, ProxyContext } from './context.js'
import { decide, type Destination } from './decision.js'
import { http1Answer, type ProxyAnswer } from './error-response.js'
import { EgressError } from './errors.js'
import { type RequestHead, upstreamRequestHead } from './http1.js'
import { type BodyFraming, guestResponse, parseResponseHead, type ResponseHead, responseFraming } from './http1-response.js'
import type { Outcome } from './outcome.js'
import type { PooledConnection, PoolWaiter, UpstreamUser } from './pool.js'
import { upstreamClosed, upstreamTimeout } from './upstream-errors.js'

/** Guest bytes held (a pipelined request, a body before the upstream is ready) before reading pauses. */
export const GUEST_PENDING_MAX = 64 * 1024
/** Requests that may be sent again when a reused upstream connection turns out to be closed. */
const REPLAYABLE = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE'])

/** The guest connection an exchange answers on (FastH1, src/fastpath.ts). */
export interface GuestConnection {
  readonly ctx: ProxyContext
  readonly conn: Conn
  /** Writes a buffer of the proxy's own; false once the guest is behind by the write budget. */
  write(data: Buffer): boolean
  /** Writes bytes that are only valid during this call (a view into the pool's read buffer). */
  writeTransient(data: Buffer): boolean
  /** Stops reading the guest while the upstream cannot take more of its bytes. */
  holdGuest(): void
  releaseGuest(): void
  /** The exchange is over (response sent, request body read); `close` ends the connection. */
  exchangeDone(ex: Exchange, close: boolean): void
  /** Cuts the connection: a response the guest has started to read cannot be finished. */
  cut(): void
}

const enum Phase {
  Connecting,
  Head,
  Body,
  Done,
}

/** One request and its response on the fast path. */
export class Exchange implements UpstreamUser, PoolWaiter {
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
  /** performance.now() when the response head arrived. */
  private responseAt = 0
  private waitingGuestDrain = false

  constructor(
    private readonly fast: GuestConnection,
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
    if (ok) this.fast.releaseGuest()
    else this.fast.holdGuest()
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
      if (this.pendingBytes > GUEST_PENDING_MAX) this.fast.holdGuest()
      return
    }
    if (!batchedWrite(up.socket, chunk)) this.fast.holdGuest()
  }

  onUpstreamDrain(): void {
    this.fast.releaseGuest()
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
    this.responseAt = performance.now()
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
    this.fast.cut()
  }

  private respondError(answer: ProxyAnswer): void {
    this.phase = Phase.Done
    this.guestStarted = true
    this.fast.write(http1Answer(answer, { close: this.guestClose || this.ctx.closing, head: this.req.method === 'HEAD' }))
    this.fast.releaseGuest()
    if (this.bodyLeft === 0) this.fast.exchangeDone(this, this.guestClose)
  }

  private complete(): void {
    this.phase = Phase.Done
    this.outcome.answered(this.response!.status)
    // After a HEAD the connection is not reused (as undici does): servers that wrongly send the body anyway would have it read as the next response.
    this.detach(!this.upstreamSpoiled && this.bodyLeft === 0 && this.req.method !== 'HEAD')
    if (this.bodyLeft === 0) this.fast.exchangeDone(this, this.guestClose)
    else this.fast.releaseGuest()
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
    if (!reuse) {
      up.socket.destroy()
      return
    }
    // The upstream's keep-alive clock started when it finished writing the response, which can
    // be long before a slow guest has taken the body and the connection comes back here (the
    // body waited in kernel buffers); counted from the head's arrival, a reused connection is
    // never one the upstream is already closing (a POST sent on such a connection cannot be
    // retried). Node's HTTP server, for one, starts that clock on 'finish'.
    const keepAliveMs = this.response?.keepAliveMs
    this.ctx.upstreams.pool.release(up, keepAliveMs === undefined ? undefined : keepAliveMs - (performance.now() - this.responseAt))
  }
}
