/**
 * HTTP/1.1 upgrades (WebSocket). The handshake request goes through the same policy and header
 * rewrite as any request, so a credential is injected into it; once the upstream answers 101
 * the two sockets are joined and bytes flow untouched. Any other answer is relayed as a normal
 * response and the connection closed. Upgrades other than WebSocket are forwarded as plain
 * requests without their Upgrade header.
 */
import { request as httpRequest, ServerResponse, type IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { TLSSocket } from 'node:tls'
import { type Conn, type ProxyContext } from './context.js'
import { errorAnswer, http1Answer } from './error-response.js'
import { EgressError } from './errors.js'
import { rewriteRawResponseHeaders } from './headers.js'
import { hasToken } from './http1.js'
import { statusClass } from './metrics.js'
import { findHost, forward, H1Guest, type IdleHook, prepare, reject, upstreamFailure } from './pipeline.js'

function head(status: number, message: string, raw: readonly string[]): string {
  let out = `HTTP/1.1 ${status} ${message}\r\n`
  for (let i = 0; i < raw.length; i += 2) out += `${raw[i]}: ${raw[i + 1]}\r\n`
  return `${out}\r\n`
}

function plainError(socket: Duplex, err: EgressError): void {
  socket.end(http1Answer(errorAnswer(err), { close: true }))
}

export function handleUpgrade(ctx: ProxyContext, conn: Conn, req: IncomingMessage, socket: Duplex, bodyHead: Buffer, onIdle: IdleHook): void {
  const startedAt = performance.now()
  socket.on('error', () => {})
  const raw = req.rawHeaders
  let websocket = false
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === 'upgrade' && hasToken(raw[i + 1]!, 'websocket')) websocket = true
  }
  if (!websocket) {
    // Serve it as the ordinary request it also is; the connection closes after the response.
    const res = new ServerResponse(req)
    res.shouldKeepAlive = false
    res.assignSocket(socket as never)
    res.once('finish', () => socket.end())
    conn.active++
    res.once('close', () => {
      conn.active--
      if (ctx.closing && conn.active === 0) onIdle(conn)
    })
    const prepared = prepare(ctx, conn, req.method!, req.url!, findHost(raw), raw)
    const guest = new H1Guest(res, ctx)
    if (prepared instanceof EgressError) {
      reject(ctx, conn, guest, prepared, conn.target?.tls ? 'https' : 'http')
      return
    }
    const handler = forward(ctx, conn, guest, req.method!, prepared, req, false, startedAt)
    res.once('close', () => handler.guestClosed())
    return
  }

  const prepared = prepare(ctx, conn, req.method!, req.url!, findHost(raw), raw, true)
  const scheme = conn.target?.tls ? 'https' : 'http'
  if (prepared instanceof EgressError) {
    ctx.metrics.requests.inc([conn.listener, scheme, statusClass(prepared.status)])
    plainError(socket, prepared)
    return
  }
  const { dest, rewrite } = prepared
  conn.active++
  let released = false
  const release = () => {
    if (released) return
    released = true
    conn.active--
    if (ctx.closing && conn.active === 0) onIdle(conn)
  }
  socket.once('close', release)
  const fail = (error: unknown) => {
    const err = upstreamFailure(ctx, conn, dest, error)
    ctx.metrics.requests.inc([conn.listener, dest.scheme, statusClass(err.status)])
    if (socket.writable) plainError(socket, err)
    else socket.destroy()
  }
  const joined = (upstream: Socket | TLSSocket) => {
    if (socket.destroyed) {
      upstream.destroy()
      return
    }
    upstream.on('error', () => {})
    const upReq = httpRequest({
      method: req.method,
      path: dest.path,
      headers: rewrite.headers,
      createConnection: () => upstream,
    })
    upReq.on('error', fail)
    upReq.on('upgrade', (res, upSocket, upHead) => {
      ctx.metrics.requests.inc([conn.listener, dest.scheme, statusClass(res.statusCode ?? 101)])
      ctx.metrics.duration.observe((performance.now() - startedAt) / 1000)
      socket.write(head(res.statusCode ?? 101, res.statusMessage ?? 'Switching Protocols', res.rawHeaders))
      if (upHead.length) socket.write(upHead)
      if (bodyHead.length) upSocket.write(bodyHead)
      upSocket.on('error', () => socket.destroy())
      socket.on('error', () => upSocket.destroy())
      // When one side closes, let the other flush what it still holds, then end it.
      const endSoon = (s: Duplex) => {
        s.end()
        setTimeout(() => s.destroy(), 5000).unref()
      }
      upSocket.on('close', () => endSoon(socket))
      socket.on('close', () => endSoon(upSocket))
      upSocket.pipe(socket)
      socket.pipe(upSocket)
    })
    upReq.on('response', (res) => {
      // Declined: relay the answer as an ordinary response and close.
      ctx.metrics.requests.inc([conn.listener, dest.scheme, statusClass(res.statusCode ?? 502)])
      const rawOut = rewriteRawResponseHeaders(res.rawHeaders)
      rawOut.push('Connection', 'close')
      socket.write(head(res.statusCode ?? 502, res.statusMessage ?? '', rawOut))
      res.pipe(socket)
      res.on('end', () => upstream.destroy())
    })
    upReq.end()
  }
  ctx.upstreams.connect(dest.host, dest.port, dest.scheme === 'https').then((upstream) => {
    try {
      joined(upstream)
    } catch (err) {
      upstream.destroy()
      fail(err)
    }
  }, fail)
  req.on('error', () => {})
}
