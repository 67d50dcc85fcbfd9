/**
 * One request through the proxy: find the source's policy, work out the destination, rewrite
 * the headers (inject, swap, strip hop-by-hop), and stream it through undici to the upstream,
 * streaming the response back with backpressure both ways. HTTP/1.1 and HTTP/2 guests differ
 * only in the small Guest adapter that writes the response.
 */
import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http'
import { constants as h2, type ServerHttp2Stream } from 'node:http2'
import { PassThrough, type Readable } from 'node:stream'
import type { Dispatcher } from 'undici'
import { type Conn, entryOf, type ProxyContext } from './context.js'
import { errorAnswer } from './error-response.js'
import { EgressError } from './errors.js'
import { rewriteRequestHeaders, rewriteResponseHeaders, type RequestRewrite } from './headers.js'
import { hostForUrl, normalizeHost, splitHostPort } from './hosts.js'
import { statusClass } from './metrics.js'
import type { CompiledPolicy } from './policy.js'
import { GUARD_REFUSALS } from './guard.js'
import { upstreamError } from './upstream-errors.js'

export interface Destination {
  scheme: 'http' | 'https'
  host: string
  port: number
  /** Origin-form request target. */
  path: string
  /** Host / :authority to send upstream. */
  authority: string
}

function authorityOf(host: string, port: number, scheme: 'http' | 'https'): string {
  const h = hostForUrl(host)
  return port === (scheme === 'https' ? 443 : 80) ? h : `${h}:${port}`
}

/**
 * Where a request goes. A tunnel or a transparent TLS connection has a fixed target; an
 * explicit-proxy request names it in its absolute URI; a transparent plain-HTTP request in
 * its Host header. The Host header never chooses where a secret goes on a TLS connection.
 */
export function destinationOf(ctx: ProxyContext, conn: Conn, url: string, hostHeader: string | undefined): Destination | EgressError {
  const t = conn.target
  if (t) {
    const scheme = t.tls ? 'https' : 'http'
    let path = url
    if (!url.startsWith('/') && url !== '*') {
      try {
        const u = new URL(url)
        path = u.pathname + u.search
      } catch {
        return new EgressError('bad_request', 'the request target is neither a path nor an absolute URI')
      }
    }
    return { scheme, host: t.host, port: t.port, path, authority: hostHeader || authorityOf(t.host, t.port, scheme) }
  }
  if (conn.listener === 'explicit') {
    let u: URL
    try {
      u = new URL(url)
    } catch {
      return new EgressError('bad_request', 'this is a proxy: send an absolute URI (http://host/path) or use CONNECT')
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return new EgressError('bad_request', `the proxy does not forward ${u.protocol} URLs`)
    const host = normalizeHost(u.hostname)
    if (!host) return new EgressError('bad_request', 'the request URI has an invalid host')
    const scheme = u.protocol === 'https:' ? 'https' : 'http'
    const port = u.port ? Number(u.port) : scheme === 'https' ? 443 : 80
    return { scheme, host, port, path: u.pathname + u.search, authority: u.host }
  }
  const split = hostHeader ? splitHostPort(hostHeader) : null
  const host = split ? normalizeHost(split.host) : null
  if (!split || !host) return new EgressError('bad_request', 'a transparent plain-HTTP request needs a valid Host header')
  const port = split.port || ctx.transparentPorts.http
  return { scheme: 'http', host, port, path: url, authority: hostHeader! }
}

interface Prepared {
  dest: Destination
  rewrite: RequestRewrite
}

/**
 * Whether the Host header (or :authority) sent upstream names the destination's host. Ports are
 * not compared: a transparent connection's real port is not known (it is `transparentPorts`),
 * and front ends pick a site by name.
 */
function namesDestination(dest: Destination): boolean {
  return normalizeHost(dest.authority) === dest.host
}

/**
 * Methods whose response echoes the request back (RFC 9110 §9.3.8 TRACE, and TRACK, its IIS
 * twin): a real secret put in one would reach the guest in the response body, so they get none,
 * exactly as plain HTTP does. Compared case-insensitively, as some servers treat methods.
 */
const ECHOING_METHODS = new Set(['TRACE', 'TRACK'])

/** Policy, destination and headers for one request; an error to answer with instead, if any. */
export function prepare(ctx: ProxyContext, conn: Conn, method: string, url: string, hostHeader: string | undefined, raw: readonly string[], upgrade = false): Prepared | EgressError {
  const entry = entryOf(ctx, conn)
  if (!entry) {
    const err = new EgressError('unregistered_source', `no policy is registered for source ${conn.source}`)
    ctx.metrics.denied.inc(['unregistered_source'])
    ctx.audit.emit({ type: 'denied', source: conn.source, reason: err.code, message: err.message })
    return err
  }
  const dest = destinationOf(ctx, conn, url, hostHeader)
  if (dest instanceof EgressError) return dest
  const policy: CompiledPolicy = entry.policy
  const plan = dest.scheme === 'https' && !ECHOING_METHODS.has(method.toUpperCase()) ? policy.planFor(dest.host) : undefined
  if (plan && plan.credentials.length > 0 && !namesDestination(dest)) {
    // Domain fronting: behind a shared front end (a CDN) the Host header, not the TLS name,
    // picks the site, so a secret for the connection's host would reach the site the guest named.
    const err = new EgressError(
      'misdirected_request',
      `the request names ${JSON.stringify(dest.authority)} but its connection goes to ${authorityOf(dest.host, dest.port, dest.scheme)}; a request that gets ${plan.credentials.join(', ')} must name the host it goes to`,
    )
    ctx.metrics.denied.inc([err.code])
    ctx.audit.emit({ type: 'denied', source: conn.source, host: dest.host, reason: err.code, message: err.message })
    return err
  }
  const rewrite = rewriteRequestHeaders(raw, { authority: dest.authority, policy, plan, upgrade })
  if (rewrite.unmatched.length > 0) {
    const block = policy.unmatchedPlaceholder === 'block'
    const action = block ? 'blocked' : 'forwarded'
    for (const cred of rewrite.unmatched) {
      ctx.metrics.unmatchedPlaceholders.inc([action])
      ctx.audit.emit({ type: 'placeholder_unmatched', source: conn.source, host: dest.host, scheme: dest.scheme, method, credential: cred.name, action })
    }
    if (block) {
      const names = rewrite.unmatched.map((c) => c.name).join(', ')
      ctx.metrics.denied.inc(['placeholder_blocked'])
      return new EgressError(
        'placeholder_blocked',
        `the request carries the placeholder of ${names} towards ${dest.scheme}://${dest.host}, which ${rewrite.unmatched.length > 1 ? 'those credentials do' : 'that credential does'} not name; this source's policy blocks such requests`,
      )
    }
  }
  if (rewrite.injected.length > 0) {
    for (const name of rewrite.injected) ctx.metrics.injections.inc([name])
    if (ctx.audit.active) ctx.audit.emit({ type: 'injected', source: conn.source, host: dest.host, method, credentials: rewrite.injected })
  }
  return { dest, rewrite }
}

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

/** Answers with one of our errors: status, a code header scripts can read, and the message. */
export function sendError(guest: Guest, err: EgressError): void {
  const answer = errorAnswer(err)
  const headers: OutgoingHttpHeaders = Object.fromEntries(answer.fields)
  headers['content-length'] = answer.body.length
  guest.respond(answer.status, headers)
  guest.write(answer.body)
  guest.end()
}

/** Counts, audits and logs a failed upstream exchange; returns what the guest is answered with. */
export function upstreamFailure(ctx: ProxyContext, conn: Conn, dest: { host: string; port: number }, error: unknown): EgressError {
  const err = upstreamError(error, dest.host, dest.port)
  if (GUARD_REFUSALS.has(err.code)) {
    // The guard refused the address the dial resolved to: nothing reached the upstream.
    ctx.metrics.denied.inc([err.code])
    ctx.audit.emit({ type: 'denied', source: conn.source, host: dest.host, port: dest.port, reason: err.code, message: err.message })
  } else {
    ctx.metrics.upstreamFailures.inc([err.code])
    ctx.audit.emit({ type: 'upstream_error', source: conn.source, host: dest.host, code: err.code, message: err.message })
  }
  ctx.logger.debug('upstream request failed', { source: conn.source, host: dest.host, port: dest.port, code: err.code, message: err.message })
  return err
}

const CLIENT_GONE = new Error('the client went away')

/** The undici handler that streams one upstream response into a Guest. */
export class Forward implements Dispatcher.DispatchHandler {
  private controller: Dispatcher.DispatchController | undefined
  private finished = false
  private guestGone = false
  private status = 0

  constructor(
    private readonly ctx: ProxyContext,
    private readonly conn: Conn,
    private readonly guest: Guest,
    private readonly dest: Destination,
    private readonly startedAt: number,
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
    this.finish(statusClass(this.status))
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
    if (this.guestGone) {
      this.finish('aborted')
      return
    }
    const err = upstreamFailure(this.ctx, this.conn, this.dest, error)
    if (this.guest.started) {
      this.finish('aborted')
      this.guest.reset()
    } else {
      this.finish(statusClass(err.status))
      sendError(this.guest, err)
    }
  }

  /** Answers with `err` before anything was sent upstream. */
  refuse(err: EgressError): void {
    if (this.finished || this.guest.started) return
    this.finish(statusClass(err.status))
    sendError(this.guest, err)
  }

  private finish(status: string): void {
    this.finished = true
    const { ctx, conn } = this
    ctx.metrics.requests.inc([conn.listener, this.dest.scheme, status])
    ctx.metrics.duration.observe((performance.now() - this.startedAt) / 1000)
  }
}

/** Sends a prepared request upstream. */
export function forward(ctx: ProxyContext, conn: Conn, guest: Guest, method: string, prepared: Prepared, body: Readable | null, h2Upstream: boolean, startedAt: number): Forward {
  const { dest, rewrite } = prepared
  const handler = new Forward(ctx, conn, guest, dest, startedAt)
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

/** The Host header of a raw header list, without building the parsed headers object. */
export function findHost(raw: readonly string[]): string | undefined {
  for (let i = 0; i < raw.length; i += 2) {
    const n = raw[i]!
    if (n.length === 4 && n.toLowerCase() === 'host') return raw[i + 1]
  }
  return undefined
}

/** Answers with an error instead of forwarding, and counts it. */
export function reject(ctx: ProxyContext, conn: Conn, guest: Guest, err: EgressError, scheme: string): void {
  ctx.metrics.requests.inc([conn.listener, scheme, statusClass(err.status)])
  sendError(guest, err)
}

/** Tracks an exchange on its connection, so a graceful close knows when the connection is idle. */
function track(ctx: ProxyContext, conn: Conn, onClose: (fn: () => void) => void, onIdle: (conn: Conn) => void): void {
  conn.active++
  onClose(() => {
    conn.active--
    if (ctx.closing && conn.active === 0) onIdle(conn)
  })
}

export type IdleHook = (conn: Conn) => void

/** An HTTP/1.1 request from the guest. */
export function handleH1(ctx: ProxyContext, conn: Conn, req: IncomingMessage, res: ServerResponse, onIdle: IdleHook): void {
  const startedAt = performance.now()
  track(ctx, conn, (fn) => res.once('close', fn), onIdle)
  const guest = new H1Guest(res, ctx)
  const raw = req.rawHeaders
  const prepared = prepare(ctx, conn, req.method!, req.url!, findHost(raw), raw)
  if (prepared instanceof EgressError) {
    req.resume()
    reject(ctx, conn, guest, prepared, conn.target?.tls ? 'https' : 'http')
    return
  }
  const handler = forward(ctx, conn, guest, req.method!, prepared, req, false, startedAt)
  res.once('close', () => handler.guestClosed())
}

/** An HTTP/2 stream from the guest. */
export function handleH2(ctx: ProxyContext, conn: Conn, stream: ServerHttp2Stream, headers: IncomingHttpHeaders, rawHeaders: string[], onIdle: IdleHook): void {
  const startedAt = performance.now()
  stream.on('error', () => {})
  track(ctx, conn, (fn) => stream.once('close', fn), onIdle)
  const method = headers[h2.HTTP2_HEADER_METHOD] as string
  const path = headers[h2.HTTP2_HEADER_PATH] as string | undefined
  const raw: string[] = []
  let authority = headers[h2.HTTP2_HEADER_AUTHORITY] as string | undefined
  let trailers = false
  // nghttp2 advertises SETTINGS_MAX_HEADER_LIST_SIZE but does not enforce it; do it here
  // (RFC 9113 §6.5.2 counts 32 octets of overhead per field).
  let size = 0
  for (let i = 0; i < rawHeaders.length; i += 2) size += rawHeaders[i]!.length + rawHeaders[i + 1]!.length + 32
  if (size > ctx.limits.maxHeaderSize) {
    const guest = new H2Guest(stream, false)
    ctx.metrics.denied.inc(['header_too_large'])
    reject(ctx, conn, guest, new EgressError('header_too_large', `the request header list is ${size} bytes; the limit is ${ctx.limits.maxHeaderSize}`), 'https')
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
    reject(ctx, conn, guest, new EgressError('bad_request', 'CONNECT over HTTP/2 is not supported by this proxy'), 'https')
    return
  }
  const prepared = prepare(ctx, conn, method, path, authority, raw)
  if (prepared instanceof EgressError) {
    reject(ctx, conn, guest, prepared, conn.target?.tls ? 'https' : 'http')
    return
  }
  // The stream is also where the response goes: undici destroys a body it has finished
  // reading, so it gets the readable side through a PassThrough instead.
  const body = stream.endAfterHeaders ? null : stream.pipe(new PassThrough())
  if (body) {
    prepared.rewrite.hasBody = true
    guest.body = body
  }
  const handler = forward(ctx, conn, guest, method, prepared, body, true, startedAt)
  stream.once('close', () => handler.guestClosed())
}
