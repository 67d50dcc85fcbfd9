/**
 * The general path: one request through Node's HTTP/1.1 or HTTP/2 server and undici. The
 * decision (src/decision.ts) says where it goes and with which headers; undici (src/upstream.ts)
 * carries it, and the response streams back with backpressure both ways. HTTP/1.1 and HTTP/2
 * guests differ only in the small Guest adapter that writes the response. What became of the
 * exchange is told to its Outcome (src/outcome.ts).
 */
import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http'
import { constants as h2, type ServerHttp2Stream } from 'node:http2'
import { PassThrough, type Readable } from 'node:stream'
import type { Dispatcher } from 'undici'
import type { Conn, ProxyContext } from './context.js'
import { decide, type Decision, type Destination, findHost } from './decision.js'
import type { ProxyAnswer } from './error-response.js'
import { EgressError } from './errors.js'
import { rewriteResponseHeaders } from './headers.js'
import { hostForUrl } from './hosts.js'
import type { Outcome, Outcomes } from './outcome.js'

/** The guest side of one exchange: how to write the response on HTTP/1.1 or on an HTTP/2 stream. */
export interface Guest {
  readonly started: boolean
  respond(status: number, headers: OutgoingHttpHeaders, statusText?: string): void
  write(chunk: Buffer): boolean
  onDrain(fn: () => void): void
  end(trailers?: IncomingHttpHeaders): void
  /** Abandon a response already under way (the guest sees a reset, not a truncated success). */
  reset(): void
}

export class H1Guest implements Guest {
  constructor(
    private readonly res: ServerResponse,
    private readonly ctx: ProxyContext,
  ) {}

  get started(): boolean {
    return this.res.headersSent
  }

  respond(status: number, headers: OutgoingHttpHeaders, statusText?: string): void {
    if (this.ctx.closing) headers.connection = 'close'
    if (statusText) this.res.writeHead(status, statusText, headers)
    else this.res.writeHead(status, headers)
  }

  write(chunk: Buffer): boolean {
    return this.res.write(chunk)
  }

  onDrain(fn: () => void): void {
    this.res.once('drain', fn)
  }

  end(trailers?: IncomingHttpHeaders): void {
    if (trailers && this.res.chunkedEncoding) this.res.addTrailers(trailers as OutgoingHttpHeaders)
    this.res.end()
  }

  reset(): void {
    this.res.destroy()
  }
}

export class H2Guest implements Guest {
  started = false

  constructor(
    private readonly stream: ServerHttp2Stream,
    /** The guest announced it accepts trailers (gRPC does): keep the stream open for them. */
    private readonly trailers: boolean,
  ) {}

  /** Where the request body is piped, when there is one. */
  body: PassThrough | undefined

  respond(status: number, headers: OutgoingHttpHeaders): void {
    if (this.stream.destroyed) return
    headers[h2.HTTP2_HEADER_STATUS] = status
    this.started = true
    this.stream.respond(headers, { waitForTrailers: this.trailers })
  }

  write(chunk: Buffer): boolean {
    return this.stream.destroyed ? true : this.stream.write(chunk)
  }

  onDrain(fn: () => void): void {
    this.stream.once('drain', fn)
  }

  end(trailers?: IncomingHttpHeaders): void {
    const stream = this.stream
    if (stream.destroyed) return
    if (this.trailers) {
      stream.once('wantTrailers', () => {
        const out: OutgoingHttpHeaders = {}
        for (const k in trailers) if (trailers[k] !== undefined) out[k] = trailers[k]
        stream.sendTrailers(out)
      })
    }
    stream.end()
    // The upstream answered before reading the whole request: discard the rest rather than
    // leave the guest blocked on flow control (curl reports RST_STREAM NO_ERROR as an error).
    if (!stream.readableEnded) {
      if (this.body) {
        stream.unpipe(this.body)
        this.body.destroy()
      }
      stream.resume()
    }
  }

  reset(): void {
    if (!this.stream.destroyed) this.stream.close(h2.NGHTTP2_INTERNAL_ERROR)
  }
}

/** Puts one of the proxy's own answers on the guest's stream (Node adds the reason phrase on HTTP/1.1). */
function sendAnswer(guest: Guest, answer: ProxyAnswer): void {
  const headers: OutgoingHttpHeaders = Object.fromEntries(answer.fields)
  headers['content-length'] = answer.body.length
  guest.respond(answer.status, headers)
  guest.write(answer.body)
  guest.end()
}

const CLIENT_GONE = new Error('the client went away')

/** The undici handler that streams one upstream response into a Guest. */
export class Forward implements Dispatcher.DispatchHandler {
  private controller: Dispatcher.DispatchController | undefined
  private finished = false
  private guestGone = false
  private status = 0

  constructor(
    private readonly outcome: Outcome,
    private readonly guest: Guest,
    private readonly dest: Destination,
  ) {}

  /** The guest disconnected before the response completed: stop the upstream side too. */
  guestClosed(): void {
    if (this.finished) return
    this.guestGone = true
    this.controller?.abort(CLIENT_GONE)
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller
    if (this.guestGone) controller.abort(CLIENT_GONE)
  }

  onResponseStart(controller: Dispatcher.DispatchController, status: number, headers: IncomingHttpHeaders, statusText?: string): void {
    this.status = status
    try {
      this.guest.respond(status, rewriteResponseHeaders(headers), statusText)
    } catch (err) {
      controller.abort(err as Error)
    }
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.guest.write(chunk)) {
      controller.pause()
      this.guest.onDrain(() => controller.resume())
    }
  }

  onResponseEnd(controller: Dispatcher.DispatchController, trailers: IncomingHttpHeaders): void {
    this.finished = true
    this.outcome.answered(this.status)
    // undici 7 hands HTTP/2 trailers over as an object, which its header parser (expecting a
    // flat list) turns into {}; the raw object still has them.
    const raw = controller.rawTrailers
    if (raw && !Array.isArray(raw)) trailers = raw
    let any = false
    for (const _ in trailers) {
      any = true
      break
    }
    this.guest.end(any ? trailers : undefined)
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    if (this.finished) return
    this.finished = true
    if (this.guestGone) {
      this.outcome.aborted()
      return
    }
    const err = this.outcome.upstreamFailed(error, this.dest)
    if (this.guest.started) {
      this.outcome.aborted()
      this.guest.reset()
    } else sendAnswer(this.guest, this.outcome.answerWith(err))
  }

  /** Answers with `err` before anything was sent upstream. */
  refuse(err: EgressError): void {
    if (this.finished || this.guest.started) return
    this.finished = true
    sendAnswer(this.guest, this.outcome.answerWith(err))
  }
}

/** Sends a forwarded request upstream. */
function forward(ctx: ProxyContext, conn: Conn, outcome: Outcome, guest: Guest, method: string, d: Decision & { kind: 'forward' }, body: Readable | null, h2Upstream: boolean): Forward {
  const { dest, rewrite } = d
  const handler = new Forward(outcome, guest, dest)
  const agent = ctx.upstreams.agentFor(conn.source, h2Upstream)
  try {
    agent.dispatch(
      {
        origin: `${dest.scheme}://${hostForUrl(dest.host)}:${dest.port}`,
        path: dest.path,
        method: method as Dispatcher.HttpMethod,
        headers: rewrite.headers,
        body: rewrite.hasBody ? body : null,
      },
      handler,
    )
  } catch (err) {
    // undici rejects some requests Node's parser let through (e.g. two Content-Length fields).
    handler.refuse(new EgressError('bad_request', `the request cannot be forwarded: ${(err as Error).message}`, { cause: err }))
  }
  return handler
}

/** An HTTP/1.1 request from the guest (and an upgrade other than WebSocket, served as the request it also is). */
export function handleH1(ctx: ProxyContext, conn: Conn, req: IncomingMessage, res: ServerResponse, outcomes: Outcomes): void {
  const outcome = outcomes.begin(conn)
  res.once('close', () => outcome.end())
  const guest = new H1Guest(res, ctx)
  const raw = req.rawHeaders
  const d = decide(ctx, conn, req.method!, req.url!, findHost(raw), raw)
  outcome.decided(req.method!, d)
  if (d.kind === 'refuse') {
    req.resume()
    sendAnswer(guest, outcome.answerWith(d.err))
    return
  }
  const handler = forward(ctx, conn, outcome, guest, req.method!, d, req, false)
  res.once('close', () => handler.guestClosed())
}

/** An HTTP/2 stream from the guest. */
export function handleH2(ctx: ProxyContext, conn: Conn, stream: ServerHttp2Stream, headers: IncomingHttpHeaders, rawHeaders: string[], outcomes: Outcomes): void {
  stream.on('error', () => {})
  const outcome = outcomes.begin(conn)
  stream.once('close', () => outcome.end())
  const method = headers[h2.HTTP2_HEADER_METHOD] as string
  const path = headers[h2.HTTP2_HEADER_PATH] as string | undefined
  const refuse = (guest: H2Guest, err: EgressError) => {
    outcome.decided(method, { kind: 'refuse', err })
    sendAnswer(guest, outcome.answerWith(err))
  }
  const raw: string[] = []
  let authority = headers[h2.HTTP2_HEADER_AUTHORITY] as string | undefined
  let trailers = false
  // nghttp2 advertises SETTINGS_MAX_HEADER_LIST_SIZE but does not enforce it; do it here
  // (RFC 9113 §6.5.2 counts 32 octets of overhead per field).
  let size = 0
  for (let i = 0; i < rawHeaders.length; i += 2) size += rawHeaders[i]!.length + rawHeaders[i + 1]!.length + 32
  if (size > ctx.limits.maxHeaderSize) {
    refuse(new H2Guest(stream, false), new EgressError('header_too_large', `the request header list is ${size} bytes; the limit is ${ctx.limits.maxHeaderSize}`))
    return
  }
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!
    if (name.charCodeAt(0) === 58 /* ':' */) continue
    if (name === 'host') authority ??= rawHeaders[i + 1]
    if (name === 'te' && rawHeaders[i + 1] === 'trailers') trailers = true
    raw.push(name, rawHeaders[i + 1]!)
  }
  const guest = new H2Guest(stream, trailers)
  if (method === 'CONNECT' || !path) {
    refuse(guest, new EgressError('bad_request', 'CONNECT over HTTP/2 is not supported by this proxy'))
    return
  }
  const d = decide(ctx, conn, method, path, authority, raw)
  outcome.decided(method, d)
  if (d.kind === 'refuse') {
    sendAnswer(guest, outcome.answerWith(d.err))
    return
  }
  // The stream is also where the response goes: undici destroys a body it has finished
  // reading, so it gets the readable side through a PassThrough instead.
  const body = stream.endAfterHeaders ? null : stream.pipe(new PassThrough())
  if (body) {
    d.rewrite.hasBody = true
    guest.body = body
  }
  const handler = forward(ctx, conn, outcome, guest, method, d, body, true)
  stream.once('close', () => handler.guestClosed())
}
